"""GitSource against real git: local bare repos, commits and force-pushes made with the git CLI,
and a real HTTP server for the credential-leak checks."""

from __future__ import annotations

import socket
import subprocess
import threading
import traceback
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from canaryd.adapters.git import GitSource, GitSyncError, git_url, redact
from canaryd.desired import ServiceKey
from canaryd.httpserver import ThreadedServer

SERVICE = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris, namespace: models}
spec:
  predictor: {model: {modelFormat: {name: sklearn}, storageUri: "gs://b/iris/VERSION"}}
"""


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false",
         *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


class Remote:
    """A bare repo plus an author clone that commits and pushes to it."""

    def __init__(self, base: Path, name: str = "config.git") -> None:
        self.bare = base / name
        self.author = base / (name + "-author")
        base.mkdir(parents=True, exist_ok=True)
        git(base, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(base, "init", "--quiet", "--initial-branch=main", str(self.author))
        git(self.author, "remote", "add", "origin", str(self.bare))

    def commit(self, files: dict[str, str | None], message: str = "change", branch: str = "main") -> str:
        for rel, text in files.items():
            path = self.author / rel
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        git(self.author, "add", "-A")
        git(self.author, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.author, "push", "--quiet", "--force", "origin", f"HEAD:{branch}")
        return git(self.author, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path / "remotes")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_clone_is_shallow_and_sync_reports_changes(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "one"})
    first = remote.commit({"svc/iris.yaml": SERVICE.replace("VERSION", "v1")})
    src = GitSource(str(remote.bare), workdir=tmp_path / "checkout")
    result = src.sync()
    assert (result.commit, result.changed, result.root) == (first, True, tmp_path / "checkout")
    assert (result.root / "svc" / "iris.yaml").read_text().endswith('iris/v1"}}\n')
    assert git(result.root, "rev-list", "--count", "HEAD") == "1"  # shallow: --depth ignored for plain paths
    assert src.sync().changed is False
    assert src.read_at_head() == result.root


def test_new_commits_deletions_and_local_junk(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"keep.yaml": "k", "gone.yaml": "g"})
    src = GitSource(str(remote.bare), workdir=tmp_path / "checkout")
    root = src.sync().root
    (root / "keep.yaml").write_text("edited locally")
    (root / "junk.yaml").write_text("untracked")
    second = remote.commit({"gone.yaml": None, "new.yaml": "n"})
    result = src.sync()
    assert (result.commit, result.changed) == (second, True)
    assert sorted(p.name for p in root.iterdir() if p.name != ".git") == ["keep.yaml", "new.yaml"]
    assert (root / "keep.yaml").read_text() == "k"


def test_force_push_is_followed(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "1"})
    remote.commit({"a.yaml": "2"})
    src = GitSource(str(remote.bare), workdir=tmp_path / "checkout")
    src.sync()
    git(remote.author, "reset", "--quiet", "--hard", "HEAD~1")
    rewritten = remote.commit({"a.yaml": "rewritten"}, "rewrite history")
    result = src.sync()
    assert (result.commit, result.changed) == (rewritten, True)
    assert (result.root / "a.yaml").read_text() == "rewritten"


@pytest.mark.parametrize("form", ["path", "file-url", "relative"])
def test_url_forms_and_paths_with_spaces(tmp_path: Path, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = Remote(tmp_path / "dir with space")
    head = remote.commit({"a.yaml": "x"})
    url = {"path": str(remote.bare), "file-url": "file://" + str(remote.bare),
           "relative": "dir with space/config.git"}[form]
    monkeypatch.chdir(tmp_path)
    assert GitSource(url, workdir=tmp_path / "co").sync().commit == head


def test_full_history_and_changed_files(remote: Remote, tmp_path: Path) -> None:
    first = remote.commit({"a.yaml": "1", "b.yaml": "1"})
    remote.commit({"x.yaml": "x"})
    src = GitSource(str(remote.bare), workdir=tmp_path / "checkout", depth=None)
    assert git(src.sync().root, "rev-list", "--count", "HEAD") == "2"
    second = remote.commit({"a.yaml": "2", "b.yaml": None, "c/d.yaml": "new"})
    src.sync()
    assert src.changed_files(first, second) == ["a.yaml", "b.yaml", "c/d.yaml", "x.yaml"]
    assert src.changed_files("0" * 40, second) is None


def test_shallow_changed_files_between_synced_commits(remote: Remote, tmp_path: Path) -> None:
    old = remote.commit({"a.yaml": "1"})
    src = GitSource(str(remote.bare), workdir=tmp_path / "checkout")
    src.sync()
    new = remote.commit({"a.yaml": "2"})
    src.sync()
    assert src.changed_files(old, new) == ["a.yaml"]


def test_missing_branch_is_a_sync_error(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "x"})
    with pytest.raises(GitSyncError, match="nope"):
        GitSource(str(remote.bare), branch="nope", workdir=tmp_path / "checkout").sync()
    assert not (tmp_path / "checkout").exists()  # no half clone left behind
    assert [p.name for p in tmp_path.iterdir()] == ["remotes"]


def test_fetch_failure_keeps_the_checkout(remote: Remote, tmp_path: Path) -> None:
    head = remote.commit({"a.yaml": "x"})
    src = GitSource(str(remote.bare), workdir=tmp_path / "checkout")
    src.sync()
    remote.bare.rename(remote.bare.with_name("moved.git"))
    with pytest.raises(GitSyncError, match=r"git fetch of .*config\.git"):
        src.sync()
    root = src.read_at_head()
    assert (root / "a.yaml").read_text() == "x"
    assert git(root, "rev-parse", "HEAD") == head


@pytest.mark.parametrize("damage", ["no-head", "garbage-git-dir", "index-lock", "not-a-repo-empty"])
def test_broken_checkout_is_recloned(remote: Remote, tmp_path: Path, damage: str) -> None:
    head = remote.commit({"a.yaml": "x"})
    workdir = tmp_path / "checkout"
    GitSource(str(remote.bare), workdir=workdir).sync()
    if damage == "no-head":
        (workdir / ".git" / "HEAD").unlink()
    elif damage == "garbage-git-dir":
        for p in (workdir / ".git").iterdir():
            if p.is_file():
                p.write_text("garbage")
    elif damage == "index-lock":
        (workdir / ".git" / "index.lock").write_text("")  # a crash in the middle of a reset
    else:
        subprocess.run(["rm", "-rf", str(workdir)], check=True)
        workdir.mkdir()
    src = GitSource(str(remote.bare), workdir=workdir)  # a restarted daemon
    result = src.sync()
    assert result.commit == head and (workdir / "a.yaml").read_text() == "x"
    assert git(workdir, "status", "--porcelain") == ""


def test_other_url_in_workdir_is_replaced(tmp_path: Path) -> None:
    one, two = Remote(tmp_path / "r1"), Remote(tmp_path / "r2")
    one.commit({"one.yaml": "1"})
    head = two.commit({"two.yaml": "2"})
    GitSource(str(one.bare), workdir=tmp_path / "co").sync()
    assert GitSource(str(two.bare), workdir=tmp_path / "co").sync().commit == head
    assert [p.name for p in (tmp_path / "co").iterdir() if p.name != ".git"] == ["two.yaml"]


def test_foreign_directory_is_never_deleted(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "x"})
    workdir = tmp_path / "precious"
    workdir.mkdir()
    (workdir / "thesis.txt").write_text("years of work")
    with pytest.raises(GitSyncError, match="not a git checkout; refusing"):
        GitSource(str(remote.bare), workdir=workdir).sync()
    assert (workdir / "thesis.txt").read_text() == "years of work"


def test_read_at_head_before_sync(tmp_path: Path) -> None:
    with pytest.raises(GitSyncError, match="sync first"):
        GitSource("https://example.invalid/r.git", workdir=tmp_path / "co").read_at_head()


def test_sync_desired_attaches_the_commit(remote: Remote, tmp_path: Path) -> None:
    head = remote.commit({"svc/iris.yaml": SERVICE.replace("VERSION", "v1"), "other/x.yaml": "{{{"})
    snap = GitSource(str(remote.bare), workdir=tmp_path / "co", paths=["svc"]).sync_desired()
    assert snap.commit == head and snap.changed
    assert set(snap.desired.services) == {ServiceKey("models", "iris")}
    assert snap.desired.errors == []  # other/ is outside the configured paths


def _assert_no_secret(exc: GitSyncError, *secrets: str) -> None:
    rendered = str(exc) + "".join(traceback.format_exception(exc))
    for secret in secrets:
        assert secret not in rendered, rendered


def test_unreachable_url_hides_credentials(tmp_path: Path) -> None:
    url = f"https://deploy-bot:s3cr3t-t0ken@127.0.0.1:{closed_port()}/org/config.git"
    with pytest.raises(GitSyncError) as info:
        GitSource(url, workdir=tmp_path / "co", timeout=20).sync()
    _assert_no_secret(info.value, "s3cr3t-t0ken", "deploy-bot:")
    assert "https://***@127.0.0.1" in str(info.value)
    assert "git clone" in str(info.value)


def test_http_401_fails_fast_without_prompt_or_credentials(tmp_path: Path) -> None:
    seen: list[str] = []

    async def deny(request: Request) -> PlainTextResponse:
        seen.append(request.headers.get("authorization", ""))
        return PlainTextResponse("no", status_code=401, headers={"WWW-Authenticate": 'Basic realm="git"'})

    app = Starlette(routes=[Route("/{path:path}", deny)])
    with ThreadedServer(app) as server:
        token = "ghp_0123456789abcdefSECRET"
        url = f"http://{token}@127.0.0.1:{server.port}/org/config.git"
        with pytest.raises(GitSyncError) as info:
            GitSource(url, workdir=tmp_path / "co", timeout=20).sync()
    assert seen  # git really talked to the server
    _assert_no_secret(info.value, token)
    assert f"http://***@127.0.0.1:{server.port}/org/config.git" in str(info.value)


def test_fetch_error_after_clone_hides_credentials(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "x"})
    workdir = tmp_path / "co"
    src = GitSource(str(remote.bare), workdir=workdir)
    src.sync()
    url = f"https://user:pa%40ss-w0rd@127.0.0.1:{closed_port()}/r.git"
    git(workdir, "remote", "set-url", "origin", url)  # as if configured with credentials
    bad = GitSource(url, workdir=workdir, timeout=20)
    with pytest.raises(GitSyncError) as info:
        bad.sync()
    assert "git fetch" in str(info.value)
    _assert_no_secret(info.value, "pa%40ss-w0rd", "pa@ss-w0rd")


@pytest.mark.parametrize(
    ("text", "url", "expected"),
    [
        ("fatal: https://u:tok@h/r.git gone", "https://u:tok@h/r.git", "fatal: https://***@h/r.git gone"),
        ("token tok123 leaked", "https://tok123@h/r.git", "token *** leaked"),
        ("password p%2Fw and p/w", "https://u:p%2Fw@h/r", "password *** and ***"),
        ("ssh://git@host/r and git fetch", "ssh://git@host/r", "ssh://***@host/r and git fetch"),
        ("no secrets here", "https://h/r.git", "no secrets here"),
    ],
)
def test_redact(text: str, url: str, expected: str) -> None:
    assert redact(text, url) == expected


def test_git_url(tmp_path: Path) -> None:
    assert git_url(str(tmp_path)) == "file://" + tmp_path.as_posix()
    for url in ("https://h/r.git", "git@github.com:org/r.git", "ssh://git@h/r", "file:///x"):
        assert git_url(url) == url


def test_a_remote_that_accepts_and_never_answers_is_given_up_after_the_timeout(tmp_path: Path) -> None:
    """`repo.timeout`: git is killed, the failure is transient (retried) and hides the credentials; before it
    was configurable, such a remote held every sync for 120 s per attempt."""
    held: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(30)
        url = f"http://bot:t0ken-Silent-42@127.0.0.1:{listener.getsockname()[1]}/org/config.git"
        src = GitSource(url, workdir=tmp_path / "co", timeout=2)

        def accept() -> None:
            conn, _ = listener.accept()
            held.append(conn)  # never answered

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        with pytest.raises(GitSyncError) as info:
            src.sync()
        t.join(5)
    for conn in held:
        conn.close()
    assert held, "git never connected"
    assert "did not complete in 2 secs" in str(info.value) and info.value.transient
    _assert_no_secret(info.value, "t0ken-Silent-42")
