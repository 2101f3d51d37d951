"""The config repo checkout: clone once, then fetch and hard-reset to the branch head.

A hard reset to `origin/<branch>` (never a merge or pull) makes force-pushes and rewritten history
just work, and the checkout always equals the commit it reports. Errors never carry the credentials a
URL may embed (`https://user:token@host/...`): they end up in logs, Events and metrics labels.
Synchronous on purpose: the scheduler decides when to sync.

Private repos (see `GitAuth`): credentials come from files (mounted Secrets) and reach git only through
a pipe from a credential helper or through ssh's own options, so they are never in argv (visible to
every user in `ps`), in the environment of git and its children, or in the checkout's `.git/config`.
A transient fetch failure is retried with exponential backoff and jitter; an authentication or
configuration failure is not (retrying cannot fix it, and it would only hammer the remote).
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import git
import tenacity
from git.exc import GitCommandError, GitError, InvalidGitRepositoryError, NoSuchPathError, UnsafeProtocolError

from canaryd.desired import DesiredSet, load_desired, repo_size_problem
from canaryd.policy import PolicySpec

log = logging.getLogger(__name__)
T = TypeVar("T")

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SCP_LIKE = re.compile(r"^[^/:]+:(?!//)")  # user@host:path or host:path (git's scp-like syntax)
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}
DEFAULT_TOKEN_USER = "x-access-token"  # GitHub's name for token auth; GitLab and Gitea accept any user

# Failures that another attempt cannot fix: wrong or missing credentials, unknown host key, a missing
# repo or branch. Everything else (refused or reset connections, timeouts, 5xx, DNS) is retried.
_PERMANENT = re.compile(
    "|".join([
        r"Authentication failed", r"could not read (Username|Password)", r"terminal prompts disabled",
        r"returned error: 40[0134]", r"Permission denied \(", r"Host key verification failed",
        r"host key .* (is not known|has changed)", r"REMOTE HOST IDENTIFICATION HAS CHANGED",
        r"Remote branch .* not found", r"couldn't find remote ref", r"repository .* not found",
        r"does not appear to be a git repository", r"Load key .*: ",
        r"UNPROTECTED PRIVATE KEY FILE", r"no such identity",
    ]),
    re.IGNORECASE,
)

# Failures of our own checkout rather than of the remote: git names a file of the checkout's `.git`
# directory (a corrupt index or object, a lock left by a crash, an unwritable FETCH_HEAD) or reports
# corruption. Fetching again cannot fix them; a fresh clone does.
_BROKEN_CHECKOUT = re.compile(
    r"""(?:^|[\s'"/(])\.git/|index file|is corrupt|bad config|bad object|unable to read tree""", re.IGNORECASE)

# The credential helper git runs (`!cmd get`): it reads the token file on every call, so a rotated
# Secret takes effect at the next fetch, and it answers only `get` (it never stores what git approves).
_HELPER_CODE = """\
import os, sys
sys.stdin.read()
if sys.argv[1:2] == ["get"]:
    path = os.environ.get("CANARYD_GIT_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            secret = fh.read().strip()
    else:
        secret = os.environ.get("CANARYD_GIT_PASSWORD", "")
    print("username=" + os.environ["CANARYD_GIT_USERNAME"])
    print("password=" + secret)
"""


class GitSyncError(Exception):
    """Clone or fetch failed; the caller keeps its last good desired state. Credential-free message.

    `transient` says whether another attempt may succeed (network trouble), as opposed to a problem
    that needs a person (credentials, host keys, a missing branch, a misconfiguration). `broken_checkout`:
    git failed on our own checkout (see `_BROKEN_CHECKOUT`), which a fresh clone repairs."""

    def __init__(self, message: str, *, transient: bool = False, broken_checkout: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.broken_checkout = broken_checkout


@dataclass(frozen=True)
class SyncResult:
    commit: str
    root: Path
    changed: bool  # commit differs from this source's previous sync (always True on the first)


@dataclass(frozen=True)
class DesiredSnapshot:
    """The desired set and the commit it was read from (DESIGN §1 step 2)."""

    commit: str
    changed: bool
    desired: DesiredSet


def git_url(url: str) -> str:
    """The URL handed to git: a plain local path becomes `file://`, since git ignores `--depth` for
    local paths (and a shallow clone is what keeps big config repos cheap)."""
    if "://" in url or _SCP_LIKE.match(url):
        return url
    return "file://" + Path(url).expanduser().resolve().as_posix()


def _secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    # `https://TOKEN@host` is the common way to pass a token; an ssh user (`git@`) is not a secret.
    if parts.username and parts.scheme in ("http", "https"):
        found += [parts.username, unquote(parts.username)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """`text` without any `scheme://userinfo@` part and without the secrets of `url`."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(URL without userinfo, user, password) for http(s) URLs; other URLs come back unchanged (an ssh
    user like `git@` is not a secret, and ssh never takes a password from the URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=hostport))
    return clean, unquote(user) or None, unquote(password) if colon else None


def is_ssh_url(url: str) -> bool:
    if "://" in url:
        return urlsplit(url).scheme.lower() in _SSH_SCHEMES
    return bool(_SCP_LIKE.match(url))


def _ssh_option_path(name: str, path: Path) -> str:
    """`-o Name="path"`: ssh splits option values on spaces and expands `%` tokens and `~`."""
    text = str(path.absolute())
    if '"' in text:
        raise GitSyncError(f"{name} path {text!r} contains a double quote, which ssh cannot take")
    return f'{name}="{text.replace("%", "%%")}"'


@dataclass(frozen=True)
class GitAuth:
    """Where the credentials of a private repo live: files (mounted Secrets), re-read on every sync.

    HTTPS: git's credential protocol with a helper scoped to the repo's origin. This beats the other
    ways of handing git a token: a URL with userinfo lands in argv and `.git/config`; an
    `http.extraHeader` (even passed via `GIT_CONFIG_*` variables) sits in the environment of git and of
    every child it starts, is sent to whatever host a redirect points at, and is fixed for the process;
    `GIT_ASKPASS` works too but answers any prompt for any host. The helper's answer travels over a
    pipe; other helpers (a `store` configured on the host) are switched off, so git cannot persist it.

    SSH: ssh's own options; host keys are always checked against `known_hosts_file` only (no trust on
    first use, no global file), and only the given key is offered.
    """

    username: str | None = None
    token_file: Path | None = None
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None

    def read_token(self) -> str | None:
        """The current token (stripped), or None when no token file is configured."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise GitSyncError(f"cannot read repo token file {self.token_file}: {why}") from None
        if not token:
            raise GitSyncError(f"repo token file {self.token_file} is empty")
        if any(c in token for c in "\r\n\0"):
            raise GitSyncError(f"repo token file {self.token_file} must hold exactly one line")
        return token

    def check_ssh(self) -> None:
        """Refuse a setup that could not verify the server, before ssh ever connects."""
        if self.ssh_key_file is not None and self.known_hosts_file is None:
            raise GitSyncError("repo.sshKeyFile is set but repo.knownHostsFile is not: canaryd always checks "
                               "the server's host key and never trusts it on first use; mount a known_hosts file "
                               "(e.g. from `ssh-keyscan HOST`, verified out of band)")
        for what, path in (("known_hosts file", self.known_hosts_file), ("SSH key file", self.ssh_key_file)):
            if path is not None and not os.access(path, os.R_OK):
                why = "missing" if not path.exists() else "not readable"
                raise GitSyncError(f"repo {what} {path} is {why}")
        if self.known_hosts_file is not None:
            try:
                hosts = self.known_hosts_file.read_text(errors="replace")
            except OSError as exc:
                raise GitSyncError(f"cannot read repo known_hosts file {self.known_hosts_file}: {exc.strerror}") \
                    from None
            if not hosts.strip():
                raise GitSyncError(f"repo known_hosts file {self.known_hosts_file} is empty: "
                                   "no host could be verified")

    def ssh_command(self, connect_timeout: float) -> str:
        """The `GIT_SSH_COMMAND` git runs (through a shell, hence the quoting)."""
        args = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={max(1, round(connect_timeout))}"]
        if self.ssh_key_file is not None:
            args += ["-i", str(self.ssh_key_file.absolute()), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts_file is not None:
            args += ["-o", _ssh_option_path("UserKnownHostsFile", self.known_hosts_file),
                     "-o", "GlobalKnownHostsFile=/dev/null"]
        return shlex.join(args)

    def helper_env(self, clean_url: str, url_user: str | None, url_password: str | None) -> dict[str, str]:
        """Environment that makes git ask our credential helper, and only it, for `clean_url`'s origin.

        With a token file, only its *path* is here, never the token. A password embedded in the URL
        (discouraged) has no file to come from: it is passed in `CANARYD_GIT_PASSWORD`, which keeps it
        out of argv and `.git/config` at least. Empty when no credentials are configured (git's own
        setup applies)."""
        if self.token_file is None and url_user is None and url_password is None:
            return {}
        parts = urlsplit(clean_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        helper = "!" + shlex.join([sys.executable, "-I", "-c", _HELPER_CODE])
        inherited = os.environ.get("GIT_CONFIG_COUNT", "0")
        base = int(inherited) if inherited.isdigit() else 0  # append to config passed down to us
        env = {"CANARYD_GIT_USERNAME": self.username or url_user or DEFAULT_TOKEN_USER}
        if any(c in env["CANARYD_GIT_USERNAME"] for c in "\r\n\0"):
            raise GitSyncError("repo.username must be a single line")
        if self.token_file is not None:
            env["CANARYD_GIT_TOKEN_FILE"] = str(self.token_file.absolute())
        else:
            env["CANARYD_GIT_PASSWORD"] = url_password or ""
        entries = [("credential.helper", ""),  # an empty helper resets the list: no store, no cache
                   (f"credential.{origin}.helper", helper)]
        for i, (key, value) in enumerate(entries, start=base):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        env["GIT_CONFIG_COUNT"] = str(base + len(entries))
        return env


class GitSource:
    """One branch of one config repo, checked out in `workdir` (created; replaced when corrupt).

    `fetch_retries` extra attempts follow a transient clone/fetch failure, `retry_wait` seconds apart
    at first, doubling up to `retry_max_wait`, with as much random jitter (so many daemons that lost
    the same remote do not come back in lockstep). The default is no retry: the daemon passes its
    setting (`repo.fetchRetries`).
    """

    def __init__(
        self,
        url: str,
        branch: str = "main",
        *,
        workdir: Path,
        paths: Sequence[str] = (".",),
        depth: int | None = 1,
        timeout: float = 120.0,
        username: str | None = None,
        token_file: Path | None = None,
        ssh_key_file: Path | None = None,
        known_hosts_file: Path | None = None,
        fetch_retries: int = 0,
        retry_wait: float = 1.0,
        retry_max_wait: float = 30.0,
    ) -> None:
        self.url = url
        self.branch = branch
        self.workdir = Path(workdir).absolute()
        self.paths = tuple(paths)
        self.depth = depth
        self.timeout = timeout
        self.auth = GitAuth(username=username, token_file=token_file, ssh_key_file=ssh_key_file,
                            known_hosts_file=known_hosts_file)
        self.fetch_retries = max(0, fetch_retries)
        self.retry_wait = retry_wait
        self.retry_max_wait = retry_max_wait
        # The checkout's remote is the URL without credentials; those embedded in `url` go to the helper.
        self._url_with_credentials = git_url(url)
        self._git_url, self._url_user, self._url_password = split_credentials(self._url_with_credentials)
        self._ssh = is_ssh_url(self._git_url)
        self._last_commit: str | None = None
        self.safe_url = redact(url, url)

    # -- public ----------------------------------------------------------------------------------

    def sync(self) -> SyncResult:
        """Bring the checkout to the branch head; clone on first use or when the checkout is unusable."""
        self._preflight()
        commit = None
        repo = self._open()
        if repo is not None:
            with repo:
                try:
                    self._retrying("fetch", lambda: self._run(
                        repo.git, "fetch", "--prune", "--no-tags", *self._depth_args(), "origin",
                        f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"))
                except GitSyncError as exc:
                    if not exc.broken_checkout:
                        raise  # the remote's problem: keep the checkout we have
                    log.warning("config repo checkout is broken; cloning it again", extra={"error": str(exc)})
                else:
                    commit = self._reset(repo)
        if commit is None:
            commit = self._retrying("clone", self._clone)
        too_large = repo_size_problem(self.workdir, self.paths)
        if too_large is not None:  # not retried: the commit itself is over the limits
            raise GitSyncError(f"config repo {self.safe_url} at {commit[:12]} refused: {too_large}")
        changed = commit != self._last_commit
        self._last_commit = commit
        return SyncResult(commit=commit, root=self.workdir, changed=changed)

    def sync_desired(
        self,
        *,
        default_policy: PolicySpec | None = None,
        default_namespace: str = "default",
        namespaces: Iterable[str] | None = None,
    ) -> DesiredSnapshot:
        result = self.sync()
        desired = load_desired(result.root, self.paths, default_namespace, default_policy, namespaces)
        return DesiredSnapshot(commit=result.commit, changed=result.changed, desired=desired)

    def read_at_head(self) -> Path:
        """The checkout root of the last sync (raises GitSyncError when there is none yet)."""
        repo = self._open()
        if repo is None:
            raise GitSyncError(f"no usable checkout of {self.safe_url} in {self.workdir}: sync first")
        repo.close()
        return self.workdir

    def changed_files(self, old: str, new: str) -> list[str] | None:
        """Paths changed between two commits, or None when unknown (a shallow clone lacks `old`)."""
        repo = self._open()
        if repo is None:
            return None
        with repo:
            try:
                out = repo.git.diff("--name-only", "-z", "--no-renames", old, new)
            except GitCommandError:
                return None
        return sorted(p for p in str(out).split("\0") if p)

    # -- internals -------------------------------------------------------------------------------

    def _depth_args(self) -> list[str]:
        return [f"--depth={self.depth}"] if self.depth is not None else []

    def _preflight(self) -> None:
        """Configuration problems, reported clearly before git runs (and never retried)."""
        if self._ssh:
            self.auth.check_ssh()
        elif self.auth.token_file is not None:
            self.auth.read_token()

    def _env(self) -> dict[str, str]:
        # Never prompt: not on a terminal, not through an askpass program inherited from a desktop.
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": ""}
        a = self.auth
        # Configured keys win over an inherited GIT_SSH_COMMAND; without them the host's own one is kept.
        if a.ssh_key_file is not None or a.known_hosts_file is not None or "GIT_SSH_COMMAND" not in os.environ:
            env["GIT_SSH_COMMAND"] = a.ssh_command(min(self.timeout, 30.0))
        if not self._ssh and self._git_url.startswith(("http://", "https://")):
            env.update(a.helper_env(self._git_url, self._url_user, self._url_password))
        return env

    def _run(self, cmd: git.Git, op: str, *args: str) -> str:
        try:
            out = getattr(cmd, op)(*args, env=self._env(), kill_after_timeout=self.timeout)
        except GitCommandError as exc:
            detail = self._stderr(exc)
            broken = bool(_BROKEN_CHECKOUT.search(detail))
            raise GitSyncError(f"git {op} of {self.safe_url} (branch {self.branch}) failed: {detail}",
                               transient=not _PERMANENT.search(detail) and not broken, broken_checkout=broken) from None
        return str(out)

    def _retrying(self, op: str, attempt: Callable[[], T]) -> T:
        """`attempt()`, retried on transient GitSyncErrors with capped exponential backoff and jitter."""
        attempts = 0

        def counted() -> T:
            nonlocal attempts
            attempts += 1
            return attempt()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("config repo %s failed; retrying", op, extra={
                "attempt": state.attempt_number, "of": self.fetch_retries + 1,
                "retry_in_s": round(state.upcoming_sleep, 2), "error": str(exc)})

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.fetch_retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.retry_wait, max=self.retry_max_wait)
            + tenacity.wait_random(0, self.retry_wait),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, GitSyncError) and e.transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(counted)
        except GitSyncError as exc:
            if attempts > 1:
                raise GitSyncError(f"{exc} (gave up after {attempts} attempts)", transient=exc.transient) from None
            raise

    def _stderr(self, exc: GitCommandError) -> str:
        text = str(exc.stderr or "").strip()
        text = re.sub(r"^stderr: '(.*)'$", r"\1", text, flags=re.S).strip()
        lines = [line.strip() for line in text.splitlines()
                 if line.strip().strip("@") and not line.startswith("Cloning into")]  # no ssh @@@ banners
        return self._redact("; ".join(lines)[:2000] or f"exit status {exc.status}")

    def _redact(self, text: str) -> str:
        """Defence in depth: git never gets the token in a place it would echo, but scrub it anyway."""
        text = redact(text, self.url)
        secrets = [self._url_password or ""]
        with contextlib.suppress(GitSyncError):
            secrets.append(self.auth.read_token() or "")
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _open(self) -> git.Repo | None:
        """The existing checkout if it is a healthy clone of this URL, else None."""
        try:
            repo = git.Repo(self.workdir)
        except (InvalidGitRepositoryError, NoSuchPathError, GitError, OSError, ValueError):
            return None
        try:
            if repo.bare or repo.working_tree_dir is None:
                raise ValueError("bare")
            if Path(repo.working_tree_dir).resolve() != self.workdir.resolve():
                raise ValueError("nested in another repository")
            remote = repo.remotes.origin.url
            if remote == self._url_with_credentials != self._git_url:
                # Written by an older canaryd: keep the checkout, move the credentials out of .git/config.
                repo.git.remote("set-url", "origin", self._git_url)
            elif remote != self._git_url:
                raise ValueError("other remote")
            repo.git.rev_parse("--verify", "HEAD^{tree}")
        except (GitError, OSError, ValueError, AttributeError, IndexError, configparser.Error):
            repo.close()
            return None
        return repo

    def _reset(self, repo: git.Repo) -> str | None:
        """Hard reset to the fetched head; None when the checkout is broken (then it is re-cloned)."""
        try:
            repo.git.reset("--hard", f"refs/remotes/origin/{self.branch}", env=self._env())
            repo.git.clean("-ffdx", env=self._env())
            return str(repo.git.rev_parse("HEAD")).strip()
        except GitCommandError:
            return None

    def _clone(self) -> str:
        self._remove_workdir()
        self.workdir.parent.mkdir(parents=True, exist_ok=True)
        try:
            git.Git.check_unsafe_protocols(self._git_url)
        except UnsafeProtocolError:
            raise GitSyncError(f"refusing unsafe git URL {self.safe_url}") from None
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.workdir.name}.clone-", dir=self.workdir.parent))
        try:
            self._run(git.Git(str(self.workdir.parent)), "clone", "--single-branch", "--no-tags",
                      f"--branch={self.branch}", *self._depth_args(), "--", self._git_url, str(tmp))
            with git.Repo(tmp) as repo:
                commit = str(repo.git.rev_parse("HEAD")).strip()
            tmp.rename(self.workdir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return commit

    def _remove_workdir(self) -> None:
        """Delete an unusable checkout, but never a directory that is not a git checkout: a
        misconfigured workdir must not wipe someone's files."""
        wd = self.workdir
        if not wd.exists() and not wd.is_symlink():
            return
        if wd.is_symlink() or not wd.is_dir():
            raise GitSyncError(f"workdir {wd} is not a directory; refusing to replace it")
        if any(wd.iterdir()) and not (wd / ".git").exists():
            raise GitSyncError(f"workdir {wd} is not empty and not a git checkout; refusing to delete it")
        shutil.rmtree(wd)
