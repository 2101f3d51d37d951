"""Private config repos against real servers: `git http-backend` behind HTTP Basic auth (AuthGitServer)
and, where installed, a real `sshd` with a client key and a known_hosts file.

Every test that handles a secret checks that it reached the server (so the transport really was
authenticated) and that it is nowhere canaryd could leak it: the error, its traceback, the captured
logs, the checkout's `.git` directory.
"""

from __future__ import annotations

import base64
import getpass
import itertools
import logging
import os
import shlex
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from canaryd.adapters.git import GitAuth, GitSource, GitSyncError, split_credentials
from canaryd.httpserver import ThreadedServer
from canaryd.sandbox.githttp import AuthGitServer, SeenRequest
from canaryd.sandbox.gitrepo import ConfigRepo

USER = "deploy-bot"
TOKEN = "ghp_Tok3nF0rTests0123456789abcdef"
ROTATED = "ghp_R0tatedT0ken9876543210fedcba"
WRONG = "ghp_Wr0ngT0kenAAAAAAAAAAAAAAAAAA"


# -- helpers ---------------------------------------------------------------------------------------


class Served:
    def __init__(self, server: AuthGitServer, repo: ConfigRepo, token_file: Path) -> None:
        self.server, self.repo, self.token_file = server, repo, token_file

    def source(self, workdir: Path, *, fetch_retries: int = 0, retry_wait: float = 1.0) -> GitSource:
        return GitSource(self.server.repo_url(), workdir=workdir, username=USER, token_file=self.token_file,
                         timeout=20.0, fetch_retries=fetch_retries, retry_wait=retry_wait)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    repo = ConfigRepo(tmp_path / "remote")
    repo.commit({"svc/a.yaml": "one\n"}, "first")
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")  # `kubectl create secret --from-file` keeps a trailing newline
    with AuthGitServer(tmp_path / "remote", USER, TOKEN) as server:
        yield Served(server, repo, token_file)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def authenticated(seen: list[SeenRequest]) -> list[SeenRequest]:
    return [r for r in seen if r.authorization]


def assert_nowhere(secret: str, *, exc: BaseException | None = None, logs: str = "", tree: Path | None = None
                   ) -> None:
    if exc is not None:
        rendered = str(exc) + "".join(traceback.format_exception(exc))
        assert secret not in rendered, rendered
    assert secret not in logs
    if tree is not None and tree.exists():
        for path in tree.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # gitpython logs every git command line at DEBUG


# -- HTTPS token ---------------------------------------------------------------------------------


def test_clone_and_fetch_with_token_file(served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = served.source(tmp_path / "co")
    first = src.sync()
    assert first.commit == served.repo.head() and (first.root / "svc" / "a.yaml").read_text() == "one\n"
    second = served.repo.commit({"svc/a.yaml": "two\n"}, "second")
    result = src.sync()  # a fetch into the existing checkout, authenticated again
    assert (result.commit, result.changed) == (second, True)
    assert (result.root / "svc" / "a.yaml").read_text() == "two\n"

    seen = served.server.requests()
    assert [r.status for r in seen if not r.authorization] == [401] * 2  # git asks only after a 401
    assert {r.authorization for r in authenticated(seen)} == {basic(USER, TOKEN)}
    assert any(r.method == "POST" and r.path.endswith("git-upload-pack") and r.status == 200 for r in seen)
    config = (tmp_path / "co" / ".git" / "config").read_text()
    assert f"url = {served.server.repo_url()}\n" in config
    assert_nowhere(TOKEN, logs=caplog.text, tree=tmp_path / "co")


def test_wrong_token_fails_fast_without_leaking(served: Served, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    served.token_file.write_text(WRONG)
    src = served.source(tmp_path / "co", fetch_retries=3, retry_wait=5.0)
    started = time.monotonic()
    with pytest.raises(GitSyncError) as info:
        src.sync()
    assert time.monotonic() - started < 4.0  # an auth failure is not retried (retry_wait is 5 s)
    assert "Authentication failed" in str(info.value) and info.value.transient is False
    assert [r.authorization for r in authenticated(served.server.requests())] == [basic(USER, WRONG)]
    assert_nowhere(WRONG, exc=info.value, logs=caplog.text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["remote", "secret"]  # no half clone left behind


def test_rotated_token_is_picked_up_without_restart(served: Served, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    src = served.source(tmp_path / "co")
    src.sync()
    served.server.password = ROTATED  # the Git host rotated the token ...
    new = served.repo.commit({"svc/a.yaml": "rotated\n"}, "after rotation")
    with pytest.raises(GitSyncError, match="Authentication failed") as info:
        src.sync()
    assert (tmp_path / "co" / "svc" / "a.yaml").read_text() == "one\n"  # the last good checkout stays
    served.token_file.write_text(ROTATED + "\n")  # ... and the kubelet updated the mounted Secret
    assert src.sync().commit == new
    assert authenticated(served.server.requests())[-1].authorization == basic(USER, ROTATED)
    for secret in (TOKEN, ROTATED):
        assert_nowhere(secret, exc=info.value, logs=caplog.text, tree=tmp_path / "co")


def test_transient_failures_are_retried_with_backoff(served: Served, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    served.server.fail_next(2, status=503)
    src = served.source(tmp_path / "co", fetch_retries=2, retry_wait=0.2)
    assert src.sync().commit == served.repo.head()
    seen = served.server.requests()
    assert [r.status for r in seen[:3]] == [503, 503, 401]
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen[:3])]
    assert 0.2 <= gaps[0] < 2.0 and gaps[1] >= 0.4  # exponential: initial wait, then twice that (+ jitter)
    retries = [r for r in caplog.records if r.getMessage() == "config repo clone failed; retrying"]
    assert [getattr(r, "attempt", None) for r in retries] == [1, 2]

    served.server.fail_next(2, status=502)  # bounded: 1 retry, then the error reaches the caller
    src.fetch_retries = 1
    with pytest.raises(GitSyncError, match=r"git fetch .*502.*gave up after 2 attempts") as info:
        src.sync()
    assert info.value.transient is True
    assert [r.status for r in served.server.requests()[-2:]] == [502, 502]
    assert_nowhere(TOKEN, exc=info.value, logs=caplog.text)


@pytest.mark.parametrize(("content", "message"), [(None, "No such file or directory"), ("  \n", "is empty"),
                                                  ("a\nb\n", "exactly one line")])
def test_bad_token_file_is_a_clear_error_before_any_request(served: Served, tmp_path: Path, content: str | None,
                                                            message: str) -> None:
    if content is None:
        served.token_file.unlink()
    else:
        served.token_file.write_text(content)
    with pytest.raises(GitSyncError, match=f"repo token file {served.token_file}.*{message}"):
        served.source(tmp_path / "co", fetch_retries=3).sync()
    assert served.server.requests() == []


def test_credentials_in_the_url_stay_out_of_git_config(served: Served, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    port = served.server.port
    url = f"http://{USER}:{TOKEN}@127.0.0.1:{port}/config.git"
    assert split_credentials(url) == (f"http://127.0.0.1:{port}/config.git", USER, TOKEN)
    # A checkout made the old way: `git clone` with the credentials in the URL stores them in .git/config.
    workdir = tmp_path / "co"
    subprocess.run(["git", "clone", "--quiet", url, str(workdir)], check=True, capture_output=True)
    assert TOKEN in (workdir / ".git" / "config").read_text()
    (workdir / ".git" / "kept").write_text("same checkout")
    head = served.repo.commit({"b.yaml": "b"}, "more")
    src = GitSource(url, workdir=workdir, timeout=20)
    assert src.sync().commit == head
    assert (workdir / ".git" / "kept").exists()  # cleaned in place, not re-cloned
    assert_nowhere(TOKEN, logs=caplog.text, tree=workdir)
    assert basic(USER, TOKEN) in {r.authorization for r in served.server.requests()}
    assert str(src.safe_url) == f"http://***@127.0.0.1:{port}/config.git"


def test_credentials_are_never_sent_to_another_host(served: Served, tmp_path: Path) -> None:
    """A redirect to another origin gets nothing: the helper is scoped to the configured origin."""
    elsewhere = AuthGitServer(served.repo.bare.parent, USER, TOKEN).start()

    async def redirect(request: Request) -> RedirectResponse:
        target = f"{elsewhere.url}/{request.path_params['path']}?{request.url.query}"
        return RedirectResponse(target, status_code=302)

    try:
        with ThreadedServer(Starlette(routes=[Route("/{path:path}", redirect)])) as front:
            src = GitSource(f"{front.url}/config.git", workdir=tmp_path / "co", username=USER,
                            token_file=served.token_file, timeout=20)
            with pytest.raises(GitSyncError, match="could not read Username"):
                src.sync()
    finally:
        elsewhere.stop()
    seen = elsewhere.requests()
    assert seen and all(r.authorization == "" for r in seen)  # git followed the redirect, without creds


def test_helper_env_keeps_the_token_out_of_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    env = GitAuth(username=USER, token_file=token_file).helper_env("https://git.example.com/org/r.git", None, None)
    assert TOKEN not in "".join(env.values())
    keys = {env[k] for k in env if k.startswith("GIT_CONFIG_KEY_")}
    assert keys == {"credential.helper", "credential.https://git.example.com.helper"}
    assert GitAuth().helper_env("https://git.example.com/r.git", None, None) == {}


# -- SSH -----------------------------------------------------------------------------------------


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)
    return path


class SshGitServer:
    """A real OpenSSH server for one key, in inetd mode (`sshd -i`) behind a socket of ours on port 0:
    sshd itself cannot report the port it picked."""

    def __init__(self, base: Path, client_pub: Path) -> None:
        self.host_key = keygen(base / "host_key")
        config = base / "sshd_config"
        config.write_text("\n".join([
            f"HostKey {self.host_key}", f"AuthorizedKeysFile {client_pub}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            "PidFile none", "LogLevel VERBOSE", "",
        ]))
        self.log = base / "sshd.log"
        sshd, log = shutil.which("sshd") or "/usr/sbin/sshd", self.log

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                with log.open("ab") as err:
                    subprocess.run([sshd, "-i", "-e", "-f", str(config)], stdin=sock.fileno(), stdout=sock.fileno(),
                                   stderr=err, timeout=60, check=False)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def known_hosts_line(self, key: Path | None = None) -> str:
        kind, blob = (key or self.host_key).with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def __enter__(self) -> SshGitServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _sshd_missing() -> str | None:
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        return "sshd not installed (apt-get install -y openssh-server)"
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir, as root
    return None


@pytest.fixture
def ssh_served(tmp_path: Path) -> Iterator[tuple[SshGitServer, ConfigRepo, Path]]:
    skip = _sshd_missing()
    if skip:
        pytest.skip(skip)
    repo = ConfigRepo(tmp_path / "remote")
    repo.commit({"a.yaml": "over ssh\n"}, "first")
    key = keygen(tmp_path / "id_ed25519")
    with SshGitServer(tmp_path, key.with_suffix(".pub")) as server:
        yield server, repo, key


def ssh_url(server: SshGitServer, repo: ConfigRepo) -> str:
    return f"ssh://{getpass.getuser()}@127.0.0.1:{server.port}{repo.bare}"


def test_ssh_clone_with_key_and_known_hosts(ssh_served: tuple[SshGitServer, ConfigRepo, Path],
                                            tmp_path: Path) -> None:
    server, repo, key = ssh_served
    known = tmp_path / "known hosts %h"  # spaces and % must survive ssh's option parsing
    known.write_text(server.known_hosts_line())
    src = GitSource(ssh_url(server, repo), workdir=tmp_path / "co", ssh_key_file=key, known_hosts_file=known,
                    timeout=20)
    assert src.sync().commit == repo.head()
    head = repo.commit({"a.yaml": "again\n"}, "second")
    assert src.sync().commit == head
    assert "Accepted publickey" in server.log.read_text()


def test_ssh_unknown_host_key_is_refused_without_retry(ssh_served: tuple[SshGitServer, ConfigRepo, Path],
                                                       tmp_path: Path) -> None:
    server, repo, key = ssh_served
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line(keygen(tmp_path / "impostor")))  # a different host key
    src = GitSource(ssh_url(server, repo), workdir=tmp_path / "co", ssh_key_file=key, known_hosts_file=known,
                    timeout=20, fetch_retries=3, retry_wait=5.0)
    started = time.monotonic()
    with pytest.raises(GitSyncError, match="Host key verification failed") as info:
        src.sync()
    assert time.monotonic() - started < 4.0 and info.value.transient is False
    assert "@@@" not in str(info.value)
    assert "Accepted publickey" not in server.log.read_text()  # the key was never offered to a stranger


def test_ssh_key_without_known_hosts_is_refused_up_front(tmp_path: Path) -> None:
    key = keygen(tmp_path / "id_ed25519")
    with socket.socket() as listener:  # would notice any connection attempt
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.01)
        url = f"ssh://git@127.0.0.1:{listener.getsockname()[1]}/org/config.git"
        with pytest.raises(GitSyncError, match=r"knownHostsFile is not.*never trusts it on first use"):
            GitSource(url, workdir=tmp_path / "co", ssh_key_file=key).sync()
        with pytest.raises(GitSyncError, match=r"known_hosts file .*missing"):
            GitSource(url, workdir=tmp_path / "co", ssh_key_file=key, known_hosts_file=tmp_path / "nope").sync()
        with pytest.raises(TimeoutError):
            listener.accept()


def test_ssh_unreachable_port_is_retried_then_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = keygen(tmp_path / "id_ed25519")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} " + " ".join(key.with_suffix(".pub").read_text().split()[:2]) + "\n")
    src = GitSource(f"ssh://git@127.0.0.1:{port}/org/config.git", workdir=tmp_path / "co", ssh_key_file=key,
                    known_hosts_file=known, fetch_retries=2, retry_wait=0.05, timeout=20)
    with pytest.raises(GitSyncError, match=rf"port {port}: Connection refused.*gave up after 3 attempts") as info:
        src.sync()
    assert info.value.transient is True
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 2


def test_ssh_command_checks_host_keys_and_offers_only_the_key(tmp_path: Path) -> None:
    auth = GitAuth(ssh_key_file=tmp_path / "my key", known_hosts_file=tmp_path / "hosts 100%")
    argv = shlex.split(auth.ssh_command(10))
    assert argv[0] == "ssh"
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "IdentitiesOnly=yes", "GlobalKnownHostsFile=/dev/null",
            "ConnectTimeout=10", f'UserKnownHostsFile="{tmp_path}/hosts 100%%"'} <= opts
    assert argv[argv.index("-i") + 1] == str(tmp_path / "my key")
    # Without configured files the host's own known_hosts still applies, strictly (no TOFU).
    assert "StrictHostKeyChecking=yes" in GitAuth().ssh_command(5)
