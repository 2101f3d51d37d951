"""Config repo tree -> per-service desired state (DESIGN §3).

One broken document must not stop the other services, and must never make its own service quietly
roll out under weaker rules: a service whose policy is broken, duplicated or unreadable is *blocked*
(kept at its last good state by the caller), never given the default policy. Everything here is a pure
function of the files under `root`; the git adapter attaches the commit.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError

from canaryd import manifests
from canaryd.analysis.queries import check_custom_query
from canaryd.manifests import DocKind, ManifestError, Problem, render_path
from canaryd.policy import (
    Analysis,
    Gates,
    Metric,
    PolicyMetadata,
    PolicySpec,
    RolloutPolicy,
    Target,
)
from canaryd.yamlsafe import MAX_ALIAS_EXPANSION as MAX_ALIAS_EXPANSION
from canaryd.yamlsafe import MAX_ALIASES as MAX_ALIASES
from canaryd.yamlsafe import MAX_DEPTH as MAX_DEPTH
from canaryd.yamlsafe import MAX_FILE_BYTES as MAX_FILE_BYTES
from canaryd.yamlsafe import MAX_NODES as MAX_NODES
from canaryd.yamlsafe import MAX_REPO_BYTES as MAX_REPO_BYTES
from canaryd.yamlsafe import MAX_REPO_FILES as MAX_REPO_FILES
from canaryd.yamlsafe import MAX_REPO_NODES as MAX_REPO_NODES
from canaryd.yamlsafe import BoundedLoader, YamlLimitError, check_graph, short

# The limits (file size, nodes, aliases, depth, repo size) live in canaryd.yamlsafe; re-exported here.
YAML_SUFFIXES = (".yaml", ".yml")

Severity = Literal["error", "warning"]

#: Bounds on what a commit's config errors may cost. Errors are kept (the daemon holds the last commit's
#: set, logs each once, puts them in Events and `canaryd validate` prints them) and a hostile or broken
#: file could otherwise make megabytes of them: a 1 MB value quoted in a message, or 50,000 nodes that
#: are each wrong. Values quoted in messages are cut much shorter still (canaryd.yamlsafe.short).
MAX_ERROR_MESSAGE_CHARS = 1000
MAX_ERROR_FIELD_CHARS = 200
MAX_ERROR_FILE_CHARS = 300
#: Errors kept per file and per commit; the rest become one "... and N more" line.
MAX_ERRORS_PER_FILE = 20
MAX_ERRORS = 500
#: Reasons kept per blocked service (the rest are counted).
MAX_BLOCK_REASONS = 5


class ServiceKey(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class DocError:
    """A problem at `file:line` (file relative to the repo root, line 1-based) and a field path."""

    file: str
    line: int
    field: str
    message: str
    service: ServiceKey | None = None
    severity: Severity = "error"

    def __post_init__(self) -> None:
        # Every config error passes here, so this is where its size is bounded (see MAX_ERROR_*).
        object.__setattr__(self, "file", clip(self.file, MAX_ERROR_FILE_CHARS))
        object.__setattr__(self, "field", clip(self.field, MAX_ERROR_FIELD_CHARS))
        object.__setattr__(self, "message", clip(self.message, MAX_ERROR_MESSAGE_CHARS))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class DesiredService:
    key: ServiceKey
    manifest: dict[str, Any]
    spec_hash: str
    policy: PolicySpec
    policy_source: str  # "file:line" of its RolloutPolicy, or "default"
    source: str  # "file:line" of its InferenceService


@dataclass(frozen=True)
class DesiredSet:
    services: dict[ServiceKey, DesiredService]
    errors: list[DocError]  # errors and warnings, sorted by file and line (capped: see cap_errors)
    blocked: dict[ServiceKey, str]  # in Git but not to be rolled out now: why
    #: How many errors and warnings there were before `errors` was capped (None: not capped).
    counts: tuple[int, int] | None = None

    @property
    def problem_count(self) -> int:
        """Errors found, including those left out of `errors` (for the metric and summaries)."""
        return self.counts[0] if self.counts is not None else len(self.problems)

    @property
    def warning_count(self) -> int:
        return self.counts[1] if self.counts is not None else len(self.warnings)

    @property
    def problems(self) -> list[DocError]:
        return [e for e in self.errors if e.severity == "error"]

    @property
    def warnings(self) -> list[DocError]:
        return [e for e in self.errors if e.severity == "warning"]

    @property
    def refused(self) -> DocError | None:
        """The repo-wide limit the tree broke (field `(repo)`), if any: then `services` is empty because
        nothing was read, not because Git holds no services, and the daemon keeps its last good state."""
        return next((e for e in self.problems if e.field == "(repo)"), None)

    @property
    def prune_safe(self) -> bool:
        """True when every error names its service, so a service absent from `services` and `blocked`
        really left Git (a file lost to a YAML error may have held services nobody can name)."""
        return all(e.service is not None for e in self.problems)


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis that says how much was left out."""
    if len(text) <= limit:
        return text
    marker = f"... ({len(text) - limit} more characters)"
    return text[: max(0, limit - len(marker))] + marker


def cap_errors(errors: list[DocError]) -> list[DocError]:
    """At most MAX_ERRORS_PER_FILE errors per file and MAX_ERRORS in all (sorted by file and line); what is
    left out becomes one summary line per file (and one for the rest of the repo).

    A summary keeps what the daemon decides on: its severity is "error" if any error it stands for is,
    and it names a service only if all of those name the same one (otherwise none, so the set is not
    prune-safe: a left-out error may have been the only trace of a service that is still in Git).
    """
    out: list[DocError] = []
    dropped: list[DocError] = []
    by_file: dict[str, list[DocError]] = defaultdict(list)
    for e in errors:
        by_file[e.file].append(e)
    for file, errs in by_file.items():
        room = max(0, min(MAX_ERRORS_PER_FILE, MAX_ERRORS - len(out)))
        out.extend(errs[:room])
        rest = errs[room:]
        if rest and len(out) < MAX_ERRORS:
            out.append(_summary(file, rest[0].line, rest, "in this file"))
        else:
            dropped.extend(rest)
    if dropped:
        files = len({e.file for e in dropped})
        out.append(_summary(dropped[0].file, dropped[0].line, dropped, f"in {files} file(s) from here on"))
    return out


def _summary(file: str, line: int, rest: list[DocError], where: str) -> DocError:
    errors = [e for e in rest if e.severity == "error"]
    services = {e.service for e in (errors or rest)}
    service = services.pop() if len(services) == 1 else None
    kinds = f"{len(errors)} error(s), {len(rest) - len(errors)} warning(s)" if errors else f"{len(rest)} warning(s)"
    return DocError(file, line, "(more)", f"... and {len(rest)} more problems {where} ({kinds}) not shown",
                    service, "error" if errors else "warning")


def _some(reasons: list[str], limit: int = 3) -> str:
    shown = "; ".join(reasons[:limit])
    return shown + (f"; ... and {len(reasons) - limit} more" if len(reasons) > limit else "")


class PolicyFileError(ValueError):
    """The daemon's default policy file is unusable; the message lists `file:line: field: problem`."""


# ---------------------------------------------------------------------------------------------
# YAML reading


class _RepoTooLarge(Exception):
    """The files under the configured paths exceed a repo-wide limit: nothing of the tree is used."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(message)
        self.file, self.message = file, message


class _FileLost(Exception):
    def __init__(self, line: int, field: str, message: str) -> None:
        super().__init__(message)
        self.line, self.field, self.message = line, field, message


@dataclass
class _Doc:
    file: str
    lines: _Lines
    data: Any
    problems: list[Problem] = field(default_factory=list)  # found while reading (duplicate keys)

    @property
    def line(self) -> int:
        return self.lines.line

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    def line_of(self, path: Sequence[str | int]) -> int:
        """Line of the deepest existing node on `path` (the key's line for a mapping entry)."""
        return _line_of(self.lines, path)


class _Lines(NamedTuple):
    """What `line_of` needs of a document's node graph, kept instead of the graph (whose nodes and marks
    cost several hundred bytes each, for every document of the repo until the desired set is built):
    a node's line, a mapping's children by key as (key line, value), a sequence's items."""

    line: int
    keys: dict[str, tuple[int, _Lines]] | None = None
    items: list[_Lines] | None = None


def _line_tree(node: yaml.Node, memo: dict[int, _Lines] | None = None) -> _Lines:
    """The `_Lines` of a composed (and constructed: merge keys flattened) document; aliases stay shared.
    Recursion is bounded: check_graph refused documents nested deeper than MAX_DEPTH."""
    memo = {} if memo is None else memo
    done = memo.get(id(node))
    if done is not None:
        return done
    line = int(node.start_mark.line) + 1
    out = _Lines(line)
    if isinstance(node, yaml.MappingNode):
        keys: dict[str, tuple[int, _Lines]] = {}
        for k, v in node.value:  # the last of equal keys wins, as in the constructed mapping
            if isinstance(k, yaml.ScalarNode):
                keys[str(k.value)] = (int(k.start_mark.line) + 1, _line_tree(v, memo))
        out = _Lines(line, keys=keys)
    elif isinstance(node, yaml.SequenceNode):
        out = _Lines(line, items=[_line_tree(item, memo) for item in node.value])
    memo[id(node)] = out
    return out


def _read_docs(path: Path, rel: str, sink: list[_Doc], repo_nodes_left: int | None = None,
               repo_max_nodes: int = MAX_REPO_NODES) -> int:
    """Append the file's documents to `sink` as they parse; raise _FileLost for the whole file (or
    _RepoTooLarge when it takes the repo over `repo_nodes_left` nodes). Returns the nodes it composed.

    Reading is bounded (canaryd.yamlsafe): size, nodes, aliases and depth are checked while the file
    is read, and what aliases expand to before anything walks it.
    """
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise _FileLost(1, "(file)", "not a regular file")
    size = st.st_size
    if size > MAX_FILE_BYTES:
        raise _FileLost(1, "(file)", f"file is {size} bytes, larger than the {MAX_FILE_BYTES}-byte limit")
    with path.open("rb") as fh:
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:  # it grew after stat()
        raise _FileLost(1, "(file)", f"file is larger than the {MAX_FILE_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _FileLost(1, "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    loader = BoundedLoader(text, repo_nodes_left=repo_nodes_left, repo_max_nodes=repo_max_nodes)
    try:
        while loader.check_node():
            aliases = loader.aliases
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            if loader.aliases > aliases:  # without aliases it is a tree the composer has measured already
                check_graph(node)
            problems = _duplicate_keys_in(node)
            data = loader.construct_document(node)
            if data is not None:
                sink.append(_Doc(rel, _line_tree(node), data, problems))
    except YamlLimitError as exc:
        if exc.field == "(repo)":
            raise _RepoTooLarge(rel, f"{exc.message}; nothing under the configured paths is used") from None
        raise _FileLost(exc.line, exc.field, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise _FileLost(line, "(yaml)", f"YAML error: {detail}") from None
    except yaml.YAMLError as exc:
        raise _FileLost(1, "(yaml)", f"YAML error: {exc}") from None
    except RecursionError:
        raise _FileLost(1, "(yaml)", "YAML nesting is too deep") from None
    finally:
        loader.dispose()
    return loader.nodes


def _duplicate_keys_in(root: yaml.Node) -> list[Problem]:
    """Duplicate keys of every distinct mapping (check_graph has ruled out cycles and alias bombs)."""
    problems: list[Problem] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            problems.extend(_duplicate_keys(node, path))
        stack.extend(reversed(list(_child_paths(node, path))))
    return problems


def _child_paths(
    node: yaml.Node, path: tuple[str | int, ...]
) -> Iterator[tuple[yaml.Node, tuple[str | int, ...]]]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            yield k, (*path, key)
            yield v, (*path, key)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield item, (*path, i)


def _duplicate_keys(node: yaml.MappingNode, path: tuple[str | int, ...]) -> Iterator[Problem]:
    # PyYAML keeps the last of two equal keys; a repeated `failureLimit` would hide the first value.
    seen: set[tuple[str, str]] = set()
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
            continue
        ident = (str(k.tag), str(k.value))
        if ident in seen:
            yield Problem((*path, str(k.value)), "duplicate key: YAML would silently keep only the last one")
        seen.add(ident)


def _line_of(lines: _Lines, path: Sequence[str | int]) -> int:
    line = lines.line
    for part in path:
        nxt: _Lines | None = None
        if lines.keys is not None and str(part) in lines.keys:
            line, nxt = lines.keys[str(part)]
        elif lines.items is not None and isinstance(part, int) and 0 <= part < len(lines.items):
            nxt = lines.items[part]
            line = nxt.line
        if nxt is None:
            break
        lines = nxt
    return line


# ---------------------------------------------------------------------------------------------
# file discovery


def _yaml_files(root: Path, paths: Iterable[str], errors: list[DocError]) -> list[tuple[Path, str]]:
    """(absolute path, path relative to root) of every YAML file under `paths`, sorted, no `.git`.

    Symlinked directories are not followed and symlinked files must stay inside the repository:
    a config repo must not make canaryd read (and echo in errors) files from the host.
    """
    real_root = root.resolve()
    found: dict[str, Path] = {}
    for entry in paths:
        start = (root / entry).resolve()
        if not start.is_relative_to(real_root):
            errors.append(DocError(entry, 1, "(path)", "configured path leaves the repository"))
            continue
        if start.is_file():
            candidates: Iterable[Path] = [start]
        elif start.is_dir():
            candidates = _walk(start)
        else:
            # an error, not a warning: a renamed directory must not look like every service left Git
            errors.append(DocError(entry, 1, "(path)", "configured path does not exist in the repository"))
            continue
        for file in candidates:
            rel = file.relative_to(real_root).as_posix() if file.is_relative_to(real_root) else str(file)
            if file.is_symlink() and not file.resolve().is_relative_to(real_root):
                errors.append(DocError(rel, 1, "(file)", "symlink points outside the repository; skipped"))
                continue
            found[rel] = file
            if len(found) > MAX_REPO_FILES:
                raise _RepoTooLarge(rel, f"more than {MAX_REPO_FILES} YAML files under the configured paths"
                                         f" (limit: {MAX_REPO_FILES} files per repo); nothing is used")
    files = [(found[rel], rel) for rel in sorted(found)]
    total = 0
    for file, rel in files:
        try:
            total += file.stat().st_size
        except OSError:
            continue  # reported when it is read
        if total > MAX_REPO_BYTES:
            raise _RepoTooLarge(rel, f"YAML files under the configured paths add up to more than {MAX_REPO_BYTES}"
                                     f" bytes (limit: {MAX_REPO_BYTES} bytes per repo); nothing is used")
    return files


def repo_size_problem(root: Path, paths: Sequence[str] = (".",)) -> str | None:
    """Why the YAML files under `paths` are too many or too large to read, or None (cheap: no parsing).

    The git adapter asks before the daemon reads a new commit, so a repo over the limits fails the sync
    and the last good desired state stays in force.
    """
    try:
        _yaml_files(root, paths, [])
    except _RepoTooLarge as exc:
        return f"{exc.file}: {exc.message}"
    return None


def _walk(start: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            if name.endswith(YAML_SUFFIXES):
                yield Path(dirpath) / name


# ---------------------------------------------------------------------------------------------
# policy errors


_POLICY_MODELS: tuple[type[BaseModel], ...] = (RolloutPolicy, PolicyMetadata, PolicySpec, Target, Analysis,
                                               Metric, Gates)
_KNOWN_FIELDS = sorted({
    (info.alias or name) for model in _POLICY_MODELS for name, info in model.model_fields.items()
})


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        path = tuple(p for p in err["loc"] if isinstance(p, str | int))
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden" and path:
            msg = f"unknown field {short(path[-1])}"
            close = get_close_matches(str(path[-1]), _KNOWN_FIELDS, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append(Problem(path, msg))
    return out


def _query_problems(spec: PolicySpec) -> list[Problem]:
    """Custom queries that pass the model's checks but cannot be rendered safely (a placeholder outside
    a double-quoted label value, an unterminated string): every analysis would be "no data" and the
    rollout would hold until it rolls back, so the policy is refused up front."""
    out: list[Problem] = []
    for i, metric in enumerate(spec.analysis.metrics):
        if metric.query is None:
            continue
        try:
            check_custom_query(metric.query)
        except ValueError as exc:
            out.append(Problem(("spec", "analysis", "metrics", i, "query"), f"{exc}; it could never be analysed"))
    return out


def _doc_errors(doc: _Doc, problems: Iterable[Problem], service: ServiceKey | None,
                severity: Severity = "error") -> list[DocError]:
    return [DocError(doc.file, doc.line_of(p.path), p.field, p.message, service, severity) for p in problems]


def load_policy_file(path: Path) -> PolicySpec:
    """The daemon's default policy: exactly one RolloutPolicy document without `target`."""
    docs: list[_Doc] = []
    name = str(path)
    try:
        _read_docs(path, name, docs)
    except _FileLost as lost:
        raise PolicyFileError(f"{name}:{lost.line}: {lost.field}: {lost.message}") from None
    except OSError as exc:
        raise PolicyFileError(f"{name}: cannot read: {exc.strerror}") from None
    policies = [d for d in docs if isinstance(d.data, Mapping) and d.data.get("kind") == "RolloutPolicy"]
    if len(policies) != 1:
        raise PolicyFileError(f"{name}: expected exactly one RolloutPolicy document, found {len(policies)}")
    doc = policies[0]
    problems = list(doc.problems)
    try:
        policy = RolloutPolicy.model_validate(doc.data)
    except ValidationError as exc:
        problems += _pydantic_problems(exc)
    else:
        if policy.spec.target is not None:
            problems.append(Problem(("spec", "target"), "must be absent: the default policy applies to all"))
        problems += _query_problems(policy.spec)
    if problems:
        raise PolicyFileError("\n".join(str(e) for e in _doc_errors(doc, problems, None)))
    return policy.spec


# ---------------------------------------------------------------------------------------------
# the desired set


@dataclass
class _Isvc:
    doc: _Doc
    manifest: dict[str, Any]


@dataclass
class _Policy:
    doc: _Doc
    spec: PolicySpec


@dataclass
class _Builder:
    default_namespace: str
    namespaces: frozenset[str] | None
    errors: list[DocError] = field(default_factory=list)
    blocked: dict[ServiceKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    blocked_more: dict[ServiceKey, int] = field(default_factory=lambda: defaultdict(int))
    isvcs: dict[ServiceKey, list[_Isvc]] = field(default_factory=lambda: defaultdict(list))
    policies: dict[ServiceKey, list[_Policy]] = field(default_factory=lambda: defaultdict(list))
    named: set[ServiceKey] = field(default_factory=set)  # every InferenceService key seen, broken or not
    # Broken policies whose target cannot be read: services on the default policy in these namespaces
    # (None = any namespace) are held, since the broken policy may have been theirs.
    held_defaults: dict[str | None, list[str]] = field(default_factory=lambda: defaultdict(list))

    def block(self, key: ServiceKey, reason: str) -> None:
        if not self.ours(key):
            return  # never acted on, so never "blocked" either: the daemon writes an Event for a blocked one
        reasons = self.blocked[key]
        if reason in reasons:
            return
        if len(reasons) < MAX_BLOCK_REASONS:
            reasons.append(clip(reason, MAX_ERROR_MESSAGE_CHARS))
        else:
            self.blocked_more[key] += 1

    def ours(self, key: ServiceKey) -> bool:
        return self.namespaces is None or key.namespace in self.namespaces

    def managed(self, doc: _Doc, key: ServiceKey, path: tuple[str | int, ...]) -> bool:
        if self.ours(key):
            return True
        allowed = ", ".join(sorted(self.namespaces or ())) or "none"
        self.errors.append(DocError(
            doc.file, doc.line_of(path), render_path(path),
            f"namespace {short(key.namespace)} is not managed by this canaryd (kubernetes.namespaces: {allowed});"
            " refused: nothing is applied or written there",
            key,
        ))
        return False

    # -- documents ------------------------------------------------------------------------------

    def add(self, doc: _Doc) -> None:
        try:
            kind = manifests.classify(doc.data)
        except ManifestError as exc:
            is_policy = _looks_like_policy(doc.data)
            self._broken(doc, exc.problems, self._key_hint(doc.data, is_policy), is_policy=is_policy)
            return
        if kind is None:
            return
        if kind is DocKind.POLICY:
            self._add_policy(doc)
        else:
            self._add_isvc(doc)

    def _broken(self, doc: _Doc, problems: list[Problem], key: ServiceKey | None, *, is_policy: bool) -> None:
        errors = _doc_errors(doc, problems, key)
        self.errors.extend(errors)
        if key is not None and not self.ours(key):
            self.managed(doc, key, ("metadata", "namespace"))  # say it would be refused anyway
            return
        what = "its RolloutPolicy" if is_policy else "its InferenceService"
        if key is not None:
            first = min(errors, key=lambda e: e.line)
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            self.block(key, f"{what} at {doc.source} is invalid: {first}{more}")
        elif is_policy:
            ns = _policy_namespace_hint(doc.data, self.default_namespace)
            self.held_defaults[ns].append(f"RolloutPolicy at {doc.source} is invalid, its target unknown")

    def _add_isvc(self, doc: _Doc) -> None:
        hint = manifests.key_hint(doc.data, self.default_namespace)
        key = ServiceKey(*hint) if hint else None
        if key is not None:
            self.named.add(key)
        problems = list(doc.problems)
        manifest: dict[str, Any] | None = None
        try:
            manifest = manifests.normalise_isvc(doc.data, self.default_namespace)
        except ManifestError as exc:
            problems += exc.problems
        if problems or manifest is None:
            self._broken(doc, problems, key, is_policy=False)
            return
        meta = manifest["metadata"]
        key = ServiceKey(meta["namespace"], meta["name"])
        if self.managed(doc, key, ("metadata", "namespace") if "namespace" in doc.data["metadata"]
                        else ("metadata", "name")):
            self.isvcs[key].append(_Isvc(doc, manifest))

    def _add_policy(self, doc: _Doc) -> None:
        key = _policy_target_hint(doc.data, self.default_namespace)
        problems = list(doc.problems)
        meta = doc.data.get("metadata")
        if isinstance(meta, Mapping):  # PolicyMetadata allows extra keys; a typo'd namespace must not
            problems += manifests.unknown_keys(meta, manifests.POLICY_META_FIELDS, ("metadata",))
        policy: RolloutPolicy | None = None
        try:
            policy = RolloutPolicy.model_validate(doc.data)
        except ValidationError as exc:
            problems += _pydantic_problems(exc)
        else:
            if policy.spec.target is None:
                problems.append(Problem(
                    ("spec", "target"),
                    "required in the config repo: name the InferenceService this policy rolls out",
                ))
        if policy is not None:
            problems += _query_problems(policy.spec)
        if problems or policy is None:
            self._broken(doc, problems, key, is_policy=True)
            return
        assert key is not None  # a valid policy has metadata.name and spec.target.name
        if self.managed(doc, key, ("spec", "target", "name")):
            self.policies[key].append(_Policy(doc, policy.spec))

    def _key_hint(self, data: object, is_policy: bool) -> ServiceKey | None:
        if is_policy:
            return _policy_target_hint(data, self.default_namespace)
        hint = manifests.key_hint(data, self.default_namespace)
        return ServiceKey(*hint) if hint else None

    def lose_file(self, rel: str, lost: _FileLost, parsed: list[_Doc], raw: bytes | None) -> None:
        """A file that cannot be read at all: block what can still be named, hold what cannot."""
        self.errors.append(DocError(
            rel, lost.line, lost.field, f"{lost.message}; the whole file is skipped", None,
        ))
        reason = f"{rel} cannot be read ({lost.message})"
        for doc in parsed:
            key = self._key_hint(doc.data, _looks_like_policy(doc.data))
            if key is not None:
                self.named.add(key)
                self.block(key, reason)
        if raw is None or b"RolloutPolicy" in raw or b"canaryd.io/" in raw:
            self.held_defaults[None].append(f"{reason} and may hold RolloutPolicies")

    # -- cross-document rules ----------------------------------------------------------------------

    def build(self, default_policy: PolicySpec) -> DesiredSet:
        for key, docs in self.isvcs.items():
            if len(docs) > 1:
                others = ", ".join(d.doc.source for d in docs)
                for d in docs:
                    self.errors.append(DocError(
                        d.doc.file, d.doc.line_of(("metadata", "name")), "metadata.name",
                        f"InferenceService {key} is defined {len(docs)} times ({others})", key,
                    ))
                self.block(key, f"InferenceService defined {len(docs)} times: {others}")
        for key, pols in self.policies.items():
            if len(pols) > 1:
                others = ", ".join(p.doc.source for p in pols)
                for p in pols:
                    self.errors.append(DocError(
                        p.doc.file, p.doc.line_of(("spec", "target", "name")), "spec.target.name",
                        f"{len(pols)} RolloutPolicies target {key} ({others})", key,
                    ))
                self.block(key, f"{len(pols)} RolloutPolicies target it: {others}")
            if key not in self.named:
                for p in pols:
                    self.errors.append(DocError(
                        p.doc.file, p.doc.line_of(("spec", "target", "name")), "spec.target.name",
                        f"no InferenceService {key} in the config repo; this policy applies to nothing",
                        None, "warning",
                    ))

        services: dict[ServiceKey, DesiredService] = {}
        for key, docs in sorted(self.isvcs.items()):
            if key in self.blocked:
                continue
            isvc = docs[0]
            pols = self.policies.get(key, [])
            if pols:
                policy, policy_source = pols[0].spec, pols[0].doc.source
                if not self._components_ok(key, isvc, pols[0]):
                    continue
            else:
                holds = self.held_defaults.get(None, []) + self.held_defaults.get(key.namespace, [])
                if holds:
                    self.block(key, _some(holds) + ": services without their own policy are held"
                               " (the default policy must not replace a broken one)")
                    continue
                policy, policy_source = default_policy, "default"
            services[key] = DesiredService(
                key=key, manifest=isvc.manifest, spec_hash=manifests.spec_hash(isvc.manifest),
                policy=policy, policy_source=policy_source, source=isvc.doc.source,
            )
        errors = sorted(self.errors, key=lambda e: (e.file, e.line, e.field, e.message))
        n_errors = sum(1 for e in errors if e.severity == "error")
        more = {k: f"; ... and {n} more" for k, n in self.blocked_more.items()}
        return DesiredSet(
            services=services,
            errors=cap_errors(errors),
            blocked={k: "; ".join(v) + more.get(k, "") for k, v in sorted(self.blocked.items())},
            counts=(n_errors, len(errors) - n_errors),
        )

    def _components_ok(self, key: ServiceKey, isvc: _Isvc, pol: _Policy) -> bool:
        assert pol.spec.target is not None
        missing = [c for c in pol.spec.target.components if c not in manifests.components_of(isvc.manifest)]
        if not missing:
            return True
        self.errors.append(DocError(
            pol.doc.file, pol.doc.line_of(("spec", "target", "components")), "spec.target.components",
            f"{', '.join(missing)} not in InferenceService {key} ({isvc.doc.source})", key,
        ))
        self.block(key, f"its RolloutPolicy at {pol.doc.source} names components the service lacks")
        return False


def _looks_like_policy(data: object) -> bool:
    if not isinstance(data, Mapping):
        return False
    api_version = data.get("apiVersion")
    return data.get("kind") == "RolloutPolicy" or (
        isinstance(api_version, str) and api_version.startswith("canaryd.io/"))


def _policy_namespace_hint(data: object, default_namespace: str) -> str | None:
    if not isinstance(data, Mapping):
        return None
    meta = data.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    ns = meta.get("namespace")
    if ns is None:
        return default_namespace
    return ns if isinstance(ns, str) and ns else None


def _policy_target_hint(data: object, default_namespace: str) -> ServiceKey | None:
    ns = _policy_namespace_hint(data, default_namespace)
    if ns is None or not isinstance(data, Mapping):
        return None
    spec = data.get("spec")
    target = spec.get("target") if isinstance(spec, Mapping) else None
    name = target.get("name") if isinstance(target, Mapping) else None
    return ServiceKey(ns, name) if isinstance(name, str) and 0 < len(name) <= 253 else None


def load_desired(
    root: Path,
    paths: Sequence[str] = (".",),
    default_namespace: str = "default",
    default_policy: PolicySpec | None = None,
    namespaces: Iterable[str] | None = None,
    read_file: Callable[..., int] | None = None,
) -> DesiredSet:
    """Read every YAML file under `paths` (relative to `root`) into the desired set.

    `default_policy` (None = the built-in defaults, identical to policies/default.yaml) applies to
    services that have no RolloutPolicy; `namespaces` (None = all) limits what this canaryd manages.
    `read_file` replaces `_read_docs` (same arguments and result): the daemon passes a cache of parsed
    files keyed by git blob (canaryd.parsecache), so a sync re-parses only the files that changed.
    """
    builder = _Builder(default_namespace, frozenset(namespaces) if namespaces is not None else None)
    policy = default_policy if default_policy is not None else PolicySpec()
    try:
        files = _yaml_files(root, paths, builder.errors)
        nodes_left = MAX_REPO_NODES
        for path, rel in files:
            parsed: list[_Doc] = []
            try:
                nodes_left -= (read_file or _read_docs)(path, rel, parsed, nodes_left, MAX_REPO_NODES)
            except _FileLost as lost:
                raw = path.read_bytes() if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES else None
                builder.lose_file(rel, lost, parsed, raw)
                continue
            except OSError as exc:
                builder.lose_file(rel, _FileLost(1, "(file)", f"cannot read: {exc.strerror}"), parsed, None)
                continue
            for doc in parsed:
                builder.add(doc)
    except _RepoTooLarge as exc:
        # Nothing of a tree over the limits is used (not a partial desired state); the error names no
        # service, so the set is not prune-safe and nothing is deleted for having "left Git".
        refused = _Builder(default_namespace, builder.namespaces)
        refused.errors.append(DocError(exc.file, 1, "(repo)", exc.message))
        return refused.build(policy)
    return builder.build(policy)
