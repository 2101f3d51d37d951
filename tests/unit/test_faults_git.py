"""Git faults against `GitSource` with real git: a running source (as in the daemon, not a fresh one)
must follow force-pushed history, repair every kind of corrupt clone by cloning again, and keep its
checkout while the remote is unreachable (over HTTP, through a TCP proxy that refuses, resets or
black-holes connections)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from canaryd.adapters.git import GitSource, GitSyncError
from canaryd.sandbox.githttp import AuthGitServer
from canaryd.sandbox.gitrepo import ConfigRepo
from tests.campaigns.faults import CORRUPTIONS, CorruptionKind, TcpFaultProxy, corrupt_checkout, force_push, moved_away

USER, TOKEN = "bot", "unit-faults-token-0123456789"


@pytest.fixture
def repo(tmp_path: Path) -> ConfigRepo:
    r = ConfigRepo(tmp_path / "remote")
    r.commit({"a.yaml": "1", "b.yaml": "1"}, "first")
    return r


def source(repo: ConfigRepo, tmp_path: Path, **kw: object) -> GitSource:
    return GitSource(repo.url, branch=repo.branch, workdir=tmp_path / "checkout", **kw)  # type: ignore[arg-type]


def test_force_push_is_followed_by_a_running_source(repo: ConfigRepo, tmp_path: Path) -> None:
    src = source(repo, tmp_path)
    repo.commit({"a.yaml": "2"}, "second")
    assert src.sync().commit == repo.head()
    rewritten = force_push(repo, {"a.yaml": "rewritten", "c.yaml": "new"}, "history rewritten")
    result = src.sync()
    assert (result.commit, result.changed) == (rewritten, True)
    assert (result.root / "a.yaml").read_text() == "rewritten" and (result.root / "c.yaml").exists()
    # Rewritten again, onto the very first commit: files of the dropped commits disappear.
    first = repo.repo.git.rev_list("--max-parents=0", "HEAD").strip()
    again = force_push(repo, {"b.yaml": "3"}, "rewritten onto the root", base=first)
    result = src.sync()
    assert result.commit == again and not (result.root / "c.yaml").exists()
    assert (result.root / "a.yaml").read_text() == "1"


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_checkout_is_recloned(repo: ConfigRepo, tmp_path: Path, kind: CorruptionKind) -> None:
    src = source(repo, tmp_path)
    src.sync()
    head = repo.commit({"a.yaml": "2"}, "second")
    corrupt_checkout(tmp_path / "checkout", kind)
    result = src.sync()
    assert result.commit == head and (result.root / "a.yaml").read_text() == "2"
    assert src.read_at_head() == result.root
    # and it keeps working afterwards
    head = repo.commit({"a.yaml": "3"}, "third")
    assert src.sync().commit == head


def test_regression_corrupt_git_config_escaped_sync_as_a_configparser_error(repo: ConfigRepo,
                                                                           tmp_path: Path) -> None:
    """An unparsable `.git/config` raised configparser's MissingSectionHeaderError out of `sync()`, which
    the daemon does not catch (it expects GitSyncError): every poll failed, forever, and nothing re-cloned."""
    src = source(repo, tmp_path)
    src.sync()
    corrupt_checkout(tmp_path / "checkout", "config-garbage")
    assert src.sync().commit == repo.head()


@pytest.mark.parametrize("kind", ["stale-locks", "index-garbage"])
def test_regression_broken_checkout_failed_every_fetch_forever(repo: ConfigRepo, tmp_path: Path,
                                                               kind: CorruptionKind) -> None:
    """A lock left by a SIGKILLed fetch (`shallow.lock`, a ref's `.lock`) or a corrupt index made every
    `git fetch` fail; the failure was taken for a network problem (retried, then reported) and the
    checkout, which looked healthy, was never re-cloned: the daemon stopped seeing new commits."""
    src = source(repo, tmp_path, fetch_retries=2, retry_wait=0.01)
    src.sync()
    head = repo.commit({"a.yaml": "2"}, "second")
    corrupt_checkout(tmp_path / "checkout", kind)
    started = time.monotonic()
    assert src.sync().commit == head
    assert time.monotonic() - started < 5  # no backoff spent on a local problem


def test_unreachable_remote_keeps_the_checkout(repo: ConfigRepo, tmp_path: Path) -> None:
    src = source(repo, tmp_path)
    first = src.sync().commit
    with moved_away(repo.bare):
        with pytest.raises(GitSyncError):
            src.sync()
        assert (src.read_at_head() / "a.yaml").read_text() == "1"
    head = repo.commit({"a.yaml": "2"}, "second")
    assert first != head and src.sync().commit == head


@pytest.mark.parametrize("mode", ["refuse", "reset", "blackhole"])
def test_remote_unreachable_over_the_network_then_back(repo: ConfigRepo, tmp_path: Path, mode: str) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with AuthGitServer(repo.bare.parent, USER, TOKEN) as server, TcpFaultProxy(server.url) as tcp:
        url = f"{tcp.url}/{repo.bare.name}"
        src = GitSource(url, branch=repo.branch, workdir=tmp_path / "checkout", username=USER, token_file=token,
                        fetch_retries=1, retry_wait=0.05, timeout=3.0)
        assert src.sync().commit == repo.head()
        tcp.set_mode(mode)  # type: ignore[arg-type]
        head = repo.commit({"a.yaml": "2"}, "second")
        started = time.monotonic()
        with pytest.raises(GitSyncError, match="gave up after 2 attempts") as info:
            src.sync()
        assert info.value.transient and not info.value.broken_checkout
        assert time.monotonic() - started < 10  # bounded: two attempts, each within the timeout
        assert TOKEN not in str(info.value)
        assert (src.read_at_head() / "a.yaml").read_text() == "1"  # the last good checkout is kept
        tcp.set_mode("pass")
        assert src.sync().commit == head
        assert tcp.port == int(url.split(":")[2].split("/")[0])  # the same address all along


def test_force_push_of_a_root_commit_rewrites_it(repo: ConfigRepo, tmp_path: Path) -> None:
    src = source(repo, tmp_path)
    root = src.sync().commit
    rewritten = force_push(repo, {"a.yaml": "amended"}, "the only commit, rewritten")
    assert rewritten != root and not repo.repo.head.commit.parents
    result = src.sync()
    assert result.commit == rewritten and (result.root / "a.yaml").read_text() == "amended"
