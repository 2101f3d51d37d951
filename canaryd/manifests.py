"""Recognise the config repo's documents and reduce an InferenceService to what canaryd applies.

A manifest exported from a cluster carries uid, resourceVersion, status, managedFields...; applying
those would fail or fight the API server, so only name, namespace, labels, annotations and spec are
kept. Fields canaryd owns (`canaryTrafficPercent`, v1alpha2 `spec.canary`) are refused rather than
dropped: silently ignoring a percent the user wrote would hide that it never takes effect.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

from canaryd.policy import API_VERSION as POLICY_API_VERSION
from canaryd.policy import KIND as POLICY_KIND
from canaryd.yamlsafe import short

V1BETA1 = "serving.kserve.io/v1beta1"
V1ALPHA2 = "serving.kubeflow.org/v1alpha2"
ISVC_KIND = "InferenceService"
COMPONENTS = ("predictor", "transformer", "explainer")
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe's Knative-backed modes ("Knative" is the newer name of "Serverless"); every other mode
# (RawDeployment, Standard, ModelMesh) ignores canaryTrafficPercent.
CANARY_CAPABLE_MODES = frozenset({"Serverless", "Knative"})

# ObjectMeta's fields: a manifest exported from a cluster carries them (and they are dropped); any
# other key is a typo such as `nmespace`, which would silently move the service to another namespace.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields", "clusterName",
})
POLICY_META_FIELDS = frozenset({"name", "namespace", "labels", "annotations"})

_ISVC_GROUPS = frozenset({"serving.kserve.io", "serving.kubeflow.org"})
_POLICY_GROUP = POLICY_API_VERSION.split("/", 1)[0]
# KServe's webhook is stricter than DNS-1123: an InferenceService name must start with a letter.
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class DocKind(enum.Enum):
    ISVC_V1BETA1 = V1BETA1
    ISVC_V1ALPHA2 = V1ALPHA2
    POLICY = POLICY_API_VERSION

    @property
    def is_isvc(self) -> bool:
        return self is not DocKind.POLICY


Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One fault at a field path (a tuple, since annotation keys contain dots)."""

    path: Path
    message: str

    @property
    def field(self) -> str:
        return render_path(self.path)


def render_path(path: Path) -> str:
    """`spec.analysis.metrics[0].maxMs`: dotted keys, indexes in brackets; '(document)' for the root."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


class ManifestError(Exception):
    """A document canaryd recognises but cannot use; `problems` lists every field at fault."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


def classify(doc: object) -> DocKind | None:
    """The document's kind, or None for documents canaryd ignores (ConfigMaps, Helm values...).

    A document that *looks* like ours but has an unknown version raises: ignoring a mistyped
    RolloutPolicy would let its service fall back to the default policy.
    """
    if not isinstance(doc, Mapping):
        return None
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if api_version == V1BETA1 and kind == ISVC_KIND:
        return DocKind.ISVC_V1BETA1
    if api_version == V1ALPHA2 and kind == ISVC_KIND:
        return DocKind.ISVC_V1ALPHA2
    if api_version == POLICY_API_VERSION and kind == POLICY_KIND:
        return DocKind.POLICY
    group = api_version.split("/", 1)[0] if isinstance(api_version, str) else None
    if kind == POLICY_KIND or group == _POLICY_GROUP:
        raise ManifestError([Problem(
            ("apiVersion",) if kind == POLICY_KIND else ("kind",),
            f"unsupported {api_version}/{kind}: canaryd reads {POLICY_API_VERSION} {POLICY_KIND}",
        )])
    if kind == ISVC_KIND:
        # Any group: a typo (`serving.kserv.io/v1beta1`) must not make the service silently leave Git.
        raise ManifestError([Problem(
            ("apiVersion",),
            f"unsupported InferenceService version {short(api_version)}: use {V1BETA1} or {V1ALPHA2}",
        )])
    if group in _ISVC_GROUPS and isinstance(kind, str) and kind != ISVC_KIND and \
            get_close_matches(kind, [ISVC_KIND], n=1, cutoff=0.8):
        # KServe's group has other kinds (ServingRuntime, InferenceGraph...), but not this close to ours.
        raise ManifestError([Problem(("kind",), f"unknown kind {short(kind)} (did you mean {ISVC_KIND!r}?)")])
    return None


def key_hint(doc: object, default_namespace: str) -> tuple[str, str] | None:
    """(namespace, name) of a document that may be broken, to attribute its errors to a service."""
    if not isinstance(doc, Mapping):
        return None
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, ns = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name or len(name) > 253:
        return None  # longer than any Kubernetes object name: no such service (and no megabyte keys)
    if ns is None:
        return (default_namespace, name)
    if not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.match(ns):
        # Unknown, not the default: `namespace: [models]` must not be filed under the default namespace,
        # where it would leave models/<name> looking deleted from Git (and prunable).
        return None
    return (ns, name)


def normalise_isvc(doc: Mapping[str, Any], default_namespace: str) -> dict[str, Any]:
    """The manifest canaryd applies: apiVersion, kind, metadata{name, namespace, labels, annotations}, spec.

    labels and annotations are always present (possibly empty) so that a merge patch from the last
    applied manifest removes exactly the keys that left Git, never the whole map.
    """
    kind = classify(doc)
    if kind is None or not kind.is_isvc:
        raise ManifestError([Problem(("kind",), "not an InferenceService")])
    problems: list[Problem] = []
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        raise ManifestError([Problem(("metadata",), "required mapping with at least a name")])
    problems += unknown_keys(meta, OBJECT_META_FIELDS, ("metadata",))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        problems.append(Problem(("metadata", "name"), "required"))
    elif len(name) > 63 or not _ISVC_NAME.match(name):
        problems.append(Problem(
            ("metadata", "name"),
            f"{short(name)} is not a valid InferenceService name: at most 63 lower case letters, digits"
            " or '-', starting with a letter and ending with a letter or digit",
        ))
    namespace = meta.get("namespace", default_namespace)
    if namespace is None:
        namespace = default_namespace
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS1123_LABEL.match(namespace):
        problems.append(Problem(
            ("metadata", "namespace"), f"{short(namespace)} is not a valid namespace (DNS-1123 label)"
        ))
    labels = _string_map(meta.get("labels"), ("metadata", "labels"), problems)
    annotations = _string_map(meta.get("annotations"), ("metadata", "annotations"), problems)

    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if mode is not None and mode not in CANARY_CAPABLE_MODES:
        problems.append(Problem(
            ("metadata", "annotations", DEPLOYMENT_MODE_ANNOTATION),
            f"deployment mode {short(mode)} cannot be canaried: KServe splits traffic only in Serverless"
            " (Knative) mode, so canaryd refuses to roll this service out",
        ))

    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        problems.append(Problem(("spec",), "required mapping"))
    else:
        _check_spec(kind, spec, problems)

    if problems:
        raise ManifestError(problems)
    manifest: dict[str, Any] = {
        "apiVersion": kind.value,
        "kind": ISVC_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": spec,
    }
    unsendable = _json_problems(spec, ("spec",))
    if unsendable:
        raise ManifestError(unsendable)
    try:
        plain: dict[str, Any] = json.loads(json.dumps(manifest, default=_json_default, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:  # pragma: no cover - _json_problems found them
        raise ManifestError([Problem(("spec",), f"cannot be sent as JSON: {exc}")]) from None
    return plain


def _json_problems(value: object, path: Path) -> list[Problem]:
    """Where `value` holds what JSON cannot carry (NaN/Infinity, `!!binary`, `!!set`, date keys...), so the
    error names that field rather than all of `spec`. Shared (aliased) objects are visited once."""
    out: list[Problem] = []
    seen: set[int] = set()
    stack: list[tuple[object, Path]] = [(value, path)]
    while stack and len(out) < 20:
        item, where = stack.pop()
        if isinstance(item, dict | list):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str | int | float | bool) and k is not None:
                    out.append(Problem((*where, str(k)), f"a {type(k).__name__} key cannot be sent as JSON;"
                                                         " quote it"))
                elif isinstance(k, float) and not math.isfinite(k):
                    out.append(Problem((*where, str(k)), "a NaN or infinite key cannot be sent as JSON"))
                else:
                    stack.append((v, (*where, str(k))))
        elif isinstance(item, list):
            stack.extend((v, (*where, i)) for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            out.append(Problem(where, f"{item} cannot be sent as JSON (Kubernetes takes finite numbers only)"))
        elif not isinstance(item, str | int | float | bool | dt.date) and item is not None:
            out.append(Problem(where, f"a {type(item).__name__} value cannot be sent as JSON"))
    return sorted(out, key=lambda p: render_path(p.path))


def unknown_keys(mapping: Mapping[Any, Any], allowed: frozenset[str], where: Path) -> list[Problem]:
    out = []
    for key in mapping:
        if key not in allowed:
            close = get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(Problem((*where, str(key)), f"unknown field {short(key)}{hint}"))
    return out


def _check_spec(kind: DocKind, spec: Mapping[str, Any], problems: list[Problem]) -> None:
    base: Mapping[str, Any]
    where: Path
    if kind is DocKind.ISVC_V1BETA1:
        base, where = spec, ("spec",)
        if not isinstance(spec.get("predictor"), Mapping):
            problems.append(Problem(
                ("spec", "predictor"), "required mapping (every InferenceService has a predictor)"
            ))
    else:
        if "canaryTrafficPercent" in spec:
            problems.append(_owned(("spec", "canaryTrafficPercent")))
        if "canary" in spec:
            problems.append(Problem(
                ("spec", "canary"), "is managed by canaryd: put the new version in spec.default and commit it"
            ))
        default = spec.get("default")
        if not isinstance(default, Mapping) or not isinstance(default.get("predictor"), Mapping):
            problems.append(Problem(
                ("spec", "default", "predictor"), "required mapping (the v1alpha2 endpoint spec)"
            ))
            return
        base, where = default, ("spec", "default")
    for component in COMPONENTS:
        part = base.get(component)
        if isinstance(part, Mapping) and "canaryTrafficPercent" in part:
            problems.append(_owned((*where, component, "canaryTrafficPercent")))


def components_of(manifest: Mapping[str, Any]) -> set[str]:
    """Components present in a normalised manifest (what a policy's target.components may name)."""
    spec = manifest["spec"]
    base = spec if manifest["apiVersion"] == V1BETA1 else spec.get("default", {})
    return {c for c in COMPONENTS if isinstance(base.get(c), Mapping)}


def _owned(path: Path) -> Problem:
    return Problem(
        path,
        "is owned by canaryd, which sets the traffic split itself during a rollout; remove it from Git",
    )


def _string_map(value: object, field: Path, problems: list[Problem]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(Problem(field, "must be a mapping of strings"))
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            problems.append(Problem((*field, str(k)), f"keys and values must be strings (quote {short(v)})"))
        else:
            out[k] = v
    return out


def _json_default(value: object) -> str:
    # YAML turns unquoted dates into date objects; the API server would receive them as strings.
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    raise TypeError(f"unsupported value of type {type(value).__name__}")


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """Identity of a revision: KServe makes a new one for any change of spec, labels or annotations."""
    meta = manifest.get("metadata", {})
    payload = {
        "spec": manifest.get("spec"),
        "labels": meta.get("labels") or {},
        "annotations": meta.get("annotations") or {},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_json_default, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
