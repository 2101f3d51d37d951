"""The parsed-file cache: a sync re-parses only files whose git blob changed, and reads exactly as before.

A real git repo in a temporary directory (git is a dependency of canaryd). The desired set read through
the cache must equal the one read without it, after every kind of change: an edit, a new file, a removal,
a file that breaks, a symlink whose target changes (a symlink's blob is its target's name, so it is never
cached).
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from canaryd.desired import DesiredSet, load_desired
from canaryd.parsecache import ParsedFileCache


def isvc(name: str, uri: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {{name: {name}, namespace: models}}
        spec:
          predictor:
            model: {{modelFormat: {{name: sklearn}}, storageUri: {uri}}}
        """)


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "t@canaryd.invalid")
        self.git("config", "user.name", "t")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> None:
        subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True)

    def commit(self, files: dict[str, str | None]) -> None:
        for rel, text in files.items():
            path = self.root / rel
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", "change")


def both(repo: Repo, cache: ParsedFileCache) -> tuple[DesiredSet, DesiredSet]:
    cache.refresh(repo.root)
    return load_desired(repo.root, ["."]), load_desired(repo.root, ["."], read_file=cache.read)


def same(a: DesiredSet, b: DesiredSet) -> bool:
    return a.services == b.services and a.errors == b.errors and a.blocked == b.blocked


def test_only_changed_files_are_parsed_and_the_result_is_the_same(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    repo.commit({f"services/s{i}.yaml": isvc(f"s{i}", "gs://m/v1") for i in range(20)})
    cache = ParsedFileCache()
    plain, cached = both(repo, cache)
    assert same(plain, cached) and len(cached.services) == 20
    assert (cache.stats.parsed, cache.stats.hits) == (20, 0)

    repo.commit({"services/s3.yaml": isvc("s3", "gs://m/v2"), "services/new.yaml": isvc("new", "gs://m/v1"),
                 "services/s4.yaml": None})
    plain, cached = both(repo, cache)
    assert same(plain, cached)
    assert cached.services[next(k for k in cached.services if k.name == "s3")].manifest["spec"]["predictor"][
        "model"]["storageUri"] == "gs://m/v2"
    assert (cache.stats.parsed, cache.stats.hits) == (22, 18)
    assert len(cache) == 20  # the removed file's parse was forgotten


def test_a_copy_of_a_file_is_parsed_under_its_own_name(tmp_path: Path) -> None:
    """Same blob, two paths: the documents carry their file name (errors point at it)."""
    repo = Repo(tmp_path)
    broken_policy = "apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec: {bogus: 1}\n"
    repo.commit({"a/p.yaml": broken_policy})
    cache = ParsedFileCache()
    both(repo, cache)
    repo.commit({"b/p.yaml": broken_policy})
    plain, cached = both(repo, cache)
    assert same(plain, cached)
    assert {e.file for e in cached.errors} == {"a/p.yaml", "b/p.yaml"}


def test_broken_files_and_symlinks_are_never_cached(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    repo.commit({"services/bad.yaml": "apiVersion: [unclosed\n", "targets/x.yaml": isvc("x", "gs://m/v1")})
    (tmp_path / "services" / "link.yaml").symlink_to(tmp_path / "targets" / "x.yaml")
    repo.commit({})
    cache = ParsedFileCache()
    plain, cached = both(repo, cache)
    assert same(plain, cached) and cached.errors
    # The symlink's target changes; the symlink's own blob does not.
    repo.commit({"targets/x.yaml": isvc("x", "gs://m/v2")})
    plain, cached = both(repo, cache)
    assert same(plain, cached)
    assert not any(k[0] in ("services/bad.yaml", "services/link.yaml") for k in cache._parsed)


def test_without_git_every_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(isvc("s", "gs://m/v1"))
    cache = ParsedFileCache()
    cache.refresh(tmp_path)  # not a repository: ls-tree fails, nothing is cached
    first = load_desired(tmp_path, ["."], read_file=cache.read)
    second = load_desired(tmp_path, ["."], read_file=cache.read)
    assert same(first, second) and len(first.services) == 1
    assert (cache.stats.parsed, cache.stats.hits, len(cache)) == (2, 0, 0)
