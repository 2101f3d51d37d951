"""The config repo checkout: clone once, then fetch and hard-reset to the branch head.

A hard reset to `origin/<branch>` (never a merge or pull) makes force-pushes and rewritten history
just work, and the checkout always equals the commit it reports. Errors never carry the credentials a
URL may embed (`https://user:token@host/...`): they end up in logs, Events and metrics labels.
Synchronous on purpose: the scheduler decides when to sync.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import git
from git.exc import GitCommandError, GitError, InvalidGitRepositoryError, NoSuchPathError, UnsafeProtocolError

from canaryd.desired import DesiredSet, load_desired
from canaryd.policy import PolicySpec

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SCP_LIKE = re.compile(r"^[^/:]+:(?!//)")  # user@host:path or host:path (git's scp-like syntax)


class GitSyncError(Exception):
    """Clone or fetch failed; the caller keeps its last good desired state. Credential-free message."""


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


class GitSource:
    """One branch of one config repo, checked out in `workdir` (created; replaced when corrupt)."""

    def __init__(
        self,
        url: str,
        branch: str = "main",
        *,
        workdir: Path,
        paths: Sequence[str] = (".",),
        depth: int | None = 1,
        timeout: float = 120.0,
    ) -> None:
        self.url = url
        self.branch = branch
        self.workdir = Path(workdir).absolute()
        self.paths = tuple(paths)
        self.depth = depth
        self.timeout = timeout
        self._git_url = git_url(url)
        self._last_commit: str | None = None
        self.safe_url = redact(url, url)

    # -- public ----------------------------------------------------------------------------------

    def sync(self) -> SyncResult:
        """Bring the checkout to the branch head; clone on first use or when the checkout is unusable."""
        commit = None
        repo = self._open()
        if repo is not None:
            with repo:
                self._run(repo.git, "fetch", "--prune", "--no-tags", *self._depth_args(), "origin",
                          f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}")
                commit = self._reset(repo)
        if commit is None:
            commit = self._clone()
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

    def _env(self) -> dict[str, str]:
        env = {"GIT_TERMINAL_PROMPT": "0"}  # never wait for a password on a terminal
        if "GIT_SSH_COMMAND" not in os.environ:
            env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
        return env

    def _run(self, cmd: git.Git, op: str, *args: str) -> str:
        try:
            out = getattr(cmd, op)(*args, env=self._env(), kill_after_timeout=self.timeout)
        except GitCommandError as exc:
            raise GitSyncError(
                f"git {op} of {self.safe_url} (branch {self.branch}) failed: {self._stderr(exc)}"
            ) from None
        return str(out)

    def _stderr(self, exc: GitCommandError) -> str:
        text = str(exc.stderr or "").strip()
        text = re.sub(r"^stderr: '(.*)'$", r"\1", text, flags=re.S).strip()
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.startswith("Cloning into")]
        return redact("; ".join(lines) or f"exit status {exc.status}", self.url)

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
            if repo.remotes.origin.url != self._git_url:
                raise ValueError("other remote")
            repo.git.rev_parse("--verify", "HEAD^{tree}")
        except (GitError, OSError, ValueError, AttributeError, IndexError):
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
