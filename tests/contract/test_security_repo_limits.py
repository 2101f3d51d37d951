"""A config repo over the size limits, through real git: the sync of that commit fails with an error that
names the limit (so the daemon keeps its last good desired state, as for any failed sync), is not retried,
and the next commit back under the limits syncs normally."""

from __future__ import annotations

from pathlib import Path

import pytest

from canaryd import desired
from canaryd.adapters.git import GitSource, GitSyncError
from canaryd.desired import MAX_FILE_BYTES, MAX_REPO_BYTES, ServiceKey
from tests.contract.test_git_source import SERVICE, Remote

FILLER = "# " + "x" * (MAX_FILE_BYTES - 3) + "\n"  # each file just under the per-file limit


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path / "remotes")


def test_commit_over_the_byte_limit_fails_the_sync_and_keeps_the_last_good_state(remote: Remote,
                                                                                 tmp_path: Path) -> None:
    good = remote.commit({"svc/iris.yaml": SERVICE.replace("VERSION", "v1")})
    src = GitSource(str(remote.bare), workdir=tmp_path / "checkout", fetch_retries=3, retry_wait=30)
    assert src.sync_desired().desired.services.keys() == {ServiceKey("models", "iris")}

    n = MAX_REPO_BYTES // MAX_FILE_BYTES + 1
    big = remote.commit({f"filler/f{i}.yaml": FILLER for i in range(n)} |
                        {"svc/iris.yaml": SERVICE.replace("VERSION", "v2")})
    with pytest.raises(GitSyncError) as info:
        src.sync()  # retry_wait=30: a retry would take 30 s; the limit is not a transient failure
    message = str(info.value)
    assert big[:12] in message and f"limit: {MAX_REPO_BYTES} bytes per repo" in message
    assert not info.value.transient

    back = remote.commit({f"filler/f{i}.yaml": None for i in range(n)})
    snap = src.sync_desired()
    assert snap.commit == back and snap.commit != good and snap.changed
    assert snap.desired.services[ServiceKey("models", "iris")].manifest["spec"]["predictor"]["model"][
        "storageUri"].endswith("/v2")


def test_too_many_files_under_the_configured_paths_only(remote: Remote, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the YAML files under `repo.paths` count: a big docs/ tree elsewhere in the repo does not.
    (A limit of 20 here: the real one is exercised without git in tests/unit/test_yaml_limits.py.)"""
    monkeypatch.setattr(desired, "MAX_REPO_FILES", 20)
    remote.commit({"svc/iris.yaml": SERVICE.replace("VERSION", "v1")} | {f"docs/d{i}.yaml": "" for i in range(21)})
    assert GitSource(str(remote.bare), workdir=tmp_path / "a", paths=["svc"]).sync().changed
    with pytest.raises(GitSyncError, match="limit: 20 files per repo"):
        GitSource(str(remote.bare), workdir=tmp_path / "b").sync()
