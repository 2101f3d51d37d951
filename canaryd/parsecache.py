"""Parsed config-repo files, kept across syncs by git blob, so a sync costs what changed, not the whole repo.

Parsing YAML is the bulk of a sync: with a thousand services, re-reading every file on every poll takes
seconds of CPU each time, although a commit usually touches one or two files. After each sync the daemon
asks git for the blob SHA of every file in HEAD (`git ls-tree -r`, one cheap command); a file whose
(path, blob) was parsed before is not read again, and its documents are reused as they were. The parse
is a pure function of the file's bytes, and the checkout is hard-reset and cleaned to HEAD on every sync,
so the blob names the bytes exactly.

Only regular files tracked by git are cached: a symlink's blob is its target's *name* (the target may
change while the link does not), and a file git does not know has no blob. Files that failed to parse are
never cached (their errors are produced afresh), and neither is anything when `git ls-tree` fails: the
cache then just reads every file, as before. The repo-wide node budget still applies: a cached file that
no longer fits what is left is read again so that the limit's own error is reported.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canaryd import desired

log = logging.getLogger(__name__)

_REGULAR_MODES = frozenset({b"100644", b"100755"})


@dataclass
class ParseStats:
    hits: int = 0
    parsed: int = 0


class ParsedFileCache:
    """`read` has `desired._read_docs`'s signature: pass it to `load_desired(read_file=...)` after `refresh`."""

    def __init__(self, git_timeout_s: float = 60.0) -> None:
        self._blobs: dict[str, str] = {}
        self._parsed: dict[tuple[str, str], tuple[tuple[Any, ...], int]] = {}
        self._git_timeout_s = git_timeout_s
        self.stats = ParseStats()

    def __len__(self) -> int:
        return len(self._parsed)

    def refresh(self, root: Path) -> None:
        """Learn the blobs of the checkout's HEAD; forget parses of blobs no longer in it (the cache stays
        the size of the repo)."""
        self._blobs = self._ls_tree(root)
        live = set(self._blobs.items())
        for key in [k for k in self._parsed if k not in live]:
            del self._parsed[key]

    def _ls_tree(self, root: Path) -> dict[str, str]:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "ls-tree", "-r", "-z", "--full-tree", "HEAD"],
                capture_output=True, check=True, timeout=self._git_timeout_s, stdin=subprocess.DEVNULL,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("git ls-tree failed; every config file is parsed again", extra={"error": str(exc)[:300]})
            return {}
        blobs: dict[str, str] = {}
        for entry in out.split(b"\0"):
            meta, tab, path = entry.partition(b"\t")
            fields = meta.split()
            if not tab or len(fields) != 3:
                continue
            mode, kind, sha = fields
            if kind == b"blob" and mode in _REGULAR_MODES:
                blobs[path.decode("utf-8", "surrogateescape")] = sha.decode()
        return blobs

    def read(self, path: Path, rel: str, sink: list[Any], repo_nodes_left: int | None = None, *rest: Any) -> int:
        """Append the file's documents to `sink` and return its node count, from the cache when its blob
        was parsed before (see `desired._read_docs` for the errors it raises)."""
        sha = self._blobs.get(rel)
        key = (rel, sha) if sha is not None else None
        hit = self._parsed.get(key) if key is not None else None
        if hit is not None and (repo_nodes_left is None or hit[1] <= repo_nodes_left):
            sink.extend(hit[0])
            self.stats.hits += 1
            return hit[1]
        local: list[Any] = []
        try:
            nodes = desired._read_docs(path, rel, local, repo_nodes_left, *rest)
        finally:
            sink.extend(local)  # a file lost half-way still names the services it held
        self.stats.parsed += 1
        if key is not None:
            self._parsed[key] = (tuple(local), nodes)
        return nodes
