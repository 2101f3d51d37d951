"""Config repo tree -> per-service desired state (DESIGN §3).

One broken document must not stop the other services, and must never make its own service quietly
roll out under weaker rules: a service whose policy is broken, duplicated or unreadable is *blocked*
(kept at its last good state by the caller), never given the default policy. Everything here is a pure
function of the files under `root`; the git adapter attaches the commit.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError

from canaryd import manifests
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

MAX_FILE_BYTES = 1 << 20
# Nodes that aliases may add on top of the document's own nodes. Real configs use a handful of
# `<<: *defaults` merges; a "billion laughs" document needs millions.
MAX_ALIAS_EXPANSION = 10_000
YAML_SUFFIXES = (".yaml", ".yml")

Severity = Literal["error", "warning"]


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
    errors: list[DocError]  # errors and warnings, sorted by file and line
    blocked: dict[ServiceKey, str]  # in Git but not to be rolled out now: why

    @property
    def problems(self) -> list[DocError]:
        return [e for e in self.errors if e.severity == "error"]

    @property
    def warnings(self) -> list[DocError]:
        return [e for e in self.errors if e.severity == "warning"]

    @property
    def prune_safe(self) -> bool:
        """True when every error names its service, so a service absent from `services` and `blocked`
        really left Git (a file lost to a YAML error may have held services nobody can name)."""
        return all(e.service is not None for e in self.problems)


class PolicyFileError(ValueError):
    """The daemon's default policy file is unusable; the message lists `file:line: field: problem`."""


# ---------------------------------------------------------------------------------------------
# YAML reading


class _FileLost(Exception):
    def __init__(self, line: int, field: str, message: str) -> None:
        super().__init__(message)
        self.line, self.field, self.message = line, field, message


@dataclass
class _Doc:
    file: str
    node: yaml.Node
    data: Any
    problems: list[Problem] = field(default_factory=list)  # found while reading (duplicate keys)

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    def line_of(self, path: Sequence[str | int]) -> int:
        """Line of the deepest existing node on `path` (the key's line for a mapping entry)."""
        return _line_of(self.node, path)


def _read_docs(path: Path, rel: str, sink: list[_Doc]) -> None:
    """Append the file's documents to `sink` as they parse; raise _FileLost for the whole file."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _FileLost(1, "(file)", f"file is {size} bytes, larger than the {MAX_FILE_BYTES}-byte limit")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _FileLost(1, "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            problems = _check_graph(node)
            data = loader.construct_document(node)
            if data is not None:
                sink.append(_Doc(rel, node, data, problems))
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


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield k
            yield v
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def _check_graph(root: yaml.Node) -> list[Problem]:
    """Refuse alias bombs and recursive aliases before construction; report duplicate keys.

    PyYAML builds aliases as shared objects, so the bomb goes off later (JSON, pydantic, hashing
    walk it expanded); counting the expanded size on the node graph costs one pass over the distinct
    nodes.
    """
    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    problems: list[Problem] = []
    stack: list[tuple[yaml.Node, tuple[str | int, ...], bool]] = [(root, (), False)]
    while stack:
        node, path, done = stack.pop()
        nid = id(node)
        if done:
            open_nodes.discard(nid)
            size[nid] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        if nid in size:
            continue
        open_nodes.add(nid)
        stack.append((node, path, True))
        if isinstance(node, yaml.MappingNode):
            problems.extend(_duplicate_keys(node, path))
        for child_node, child_path in _child_paths(node, path):
            if id(child_node) in open_nodes:
                raise _FileLost(
                    int(child_node.start_mark.line) + 1, render_path(child_path) if child_path else "(yaml)",
                    "recursive YAML alias (a node that contains itself) is not allowed",
                )
            if id(child_node) not in size:
                stack.append((child_node, child_path, False))
    extra = size[id(root)] - len(size)
    if extra > MAX_ALIAS_EXPANSION:
        raise _FileLost(
            int(root.start_mark.line) + 1, "(yaml)",
            f"YAML aliases expand this document by {extra} nodes (limit {MAX_ALIAS_EXPANSION});"
            " refusing a possible alias bomb",
        )
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


def _line_of(node: yaml.Node, path: Sequence[str | int]) -> int:
    line = int(node.start_mark.line) + 1
    for part in path:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:  # the last match wins, as in the constructed mapping
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    line, nxt = int(k.start_mark.line) + 1, v
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
            line = int(nxt.start_mark.line) + 1
        if nxt is None:
            break
        node = nxt
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
    return [(found[rel], rel) for rel in sorted(found)]


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
            msg = f"unknown field {path[-1]!r}"
            close = get_close_matches(str(path[-1]), _KNOWN_FIELDS, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append(Problem(path, msg))
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
    isvcs: dict[ServiceKey, list[_Isvc]] = field(default_factory=lambda: defaultdict(list))
    policies: dict[ServiceKey, list[_Policy]] = field(default_factory=lambda: defaultdict(list))
    named: set[ServiceKey] = field(default_factory=set)  # every InferenceService key seen, broken or not
    # Broken policies whose target cannot be read: services on the default policy in these namespaces
    # (None = any namespace) are held, since the broken policy may have been theirs.
    held_defaults: dict[str | None, list[str]] = field(default_factory=lambda: defaultdict(list))

    def block(self, key: ServiceKey, reason: str) -> None:
        if reason not in self.blocked[key]:
            self.blocked[key].append(reason)

    def managed(self, doc: _Doc, key: ServiceKey, path: tuple[str | int, ...]) -> bool:
        if self.namespaces is None or key.namespace in self.namespaces:
            return True
        allowed = ", ".join(sorted(self.namespaces)) or "none"
        self.errors.append(DocError(
            doc.file, doc.line_of(path), render_path(path),
            f"namespace {key.namespace!r} is not managed by this canaryd (namespaces: {allowed}); refused",
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
        if raw is None or b"RolloutPolicy" in raw:
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
                    self.block(key, "; ".join(holds) + ": services without their own policy are held"
                               " (the default policy must not replace a broken one)")
                    continue
                policy, policy_source = default_policy, "default"
            services[key] = DesiredService(
                key=key, manifest=isvc.manifest, spec_hash=manifests.spec_hash(isvc.manifest),
                policy=policy, policy_source=policy_source, source=isvc.doc.source,
            )
        errors = sorted(self.errors, key=lambda e: (e.file, e.line, e.field, e.message))
        return DesiredSet(
            services=services,
            errors=errors,
            blocked={k: "; ".join(v) for k, v in sorted(self.blocked.items())},
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
    return ServiceKey(ns, name) if isinstance(name, str) and name else None


def load_desired(
    root: Path,
    paths: Sequence[str] = (".",),
    default_namespace: str = "default",
    default_policy: PolicySpec | None = None,
    namespaces: Iterable[str] | None = None,
) -> DesiredSet:
    """Read every YAML file under `paths` (relative to `root`) into the desired set.

    `default_policy` (None = the built-in defaults, identical to policies/default.yaml) applies to
    services that have no RolloutPolicy; `namespaces` (None = all) limits what this canaryd manages.
    """
    builder = _Builder(default_namespace, frozenset(namespaces) if namespaces is not None else None)
    for path, rel in _yaml_files(root, paths, builder.errors):
        parsed: list[_Doc] = []
        try:
            _read_docs(path, rel, parsed)
        except _FileLost as lost:
            raw = path.read_bytes() if path.stat().st_size <= MAX_FILE_BYTES else None
            builder.lose_file(rel, lost, parsed, raw)
            continue
        except OSError as exc:
            builder.lose_file(rel, _FileLost(1, "(file)", f"cannot read: {exc.strerror}"), parsed, None)
            continue
        for doc in parsed:
            builder.add(doc)
    return builder.build(default_policy if default_policy is not None else PolicySpec())
