"""Client-side apply (DESIGN §8): what to send so the live service ends up as Git wants it.

canaryd works like `kubectl apply` without server-side apply. It remembers the manifest it last applied and
sends an RFC 7386 JSON merge patch that carries every field Git sets (so drift, e.g. a `kubectl edit`, is
re-asserted by the same write) and `null` for every field it set last time that Git no longer has (so a
removal in Git takes effect). Nothing else is in the patch, so fields written by others (KServe's
defaults, other controllers) stay as they are. Only the parts of a manifest canaryd owns are considered:
`metadata.labels`, `metadata.annotations` and `spec` (names, status and server metadata never are).

Where the canary percent lives depends on the InferenceService API version; `PERCENT_PATHS` is the one
table that knows it for the per-component percent of KServe's v1beta1. KFServing's v1alpha2 has one percent
for the whole service, the share of `spec.canary`, which only means something together with that canary:
`canaryd.adapters.kserve.V1Alpha2` writes the two together.

Everything here is pure: dicts in, new dicts out (inputs are never modified).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from canaryd.rollout.model import PERCENT_FIELD

V1BETA1 = "serving.kserve.io/v1beta1"
V1ALPHA2 = "serving.kubeflow.org/v1alpha2"

#: The parts of a manifest canaryd owns and writes; everything else belongs to the server or to others.
MANAGED: tuple[tuple[str, ...], ...] = (("metadata", "labels"), ("metadata", "annotations"), ("spec",))

#: apiVersion -> where a component's canary percent lives in the manifest.
PERCENT_PATHS: dict[str, Callable[[str], tuple[str, ...]]] = {
    V1BETA1: lambda component: ("spec", component, PERCENT_FIELD),
}

_MISSING: Any = object()
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class UnsupportedApiVersion(ValueError):
    """An InferenceService API version canaryd has no traffic strategy for."""


# -- merge patch ------------------------------------------------------------------------------------


def merge_patch(last_applied: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `last_applied` into `desired` (managed parts only), as kubectl apply does.

    With no `last_applied` (first apply, or adopting an existing service) nothing is removed: the patch is
    just the managed part of `desired`. Lists are replaced whole (RFC 7386 has no list merging).
    """
    patch: dict[str, Any] = {}
    for path in MANAGED:
        new = _get(desired, path)
        old = _get(last_applied, path) if last_applied is not None else _MISSING
        if new is _MISSING or new is None:  # `labels:` with no value in YAML means none
            if isinstance(old, Mapping) and old:
                _put(patch, path, {key: None for key in old})  # Git dropped the whole section
            continue
        if isinstance(new, Mapping):
            _put(patch, path, _diff(old if isinstance(old, Mapping) else {}, new))
        else:
            _put(patch, path, copy.deepcopy(new))
    return patch


def replacing_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that makes a map that is `old` exactly `new` (every key `new` lacks is nulled).

    For parts canaryd owns whole, such as KFServing's `spec.canary`: compared with what is live rather
    than with what was last applied, so anything else in it (a default, someone's edit) goes too.
    """
    return _diff(old or {}, new)


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, Mapping) and isinstance(previous, Mapping):
            out[key] = _diff(previous, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch(target, patch): what the API server does with a merge patch (returns a copy)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(copy.deepcopy(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def managed_part(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Only the managed sections of `manifest` (a copy), e.g. to remember as the last applied manifest."""
    out: dict[str, Any] = {}
    for path in MANAGED:
        value = _get(manifest, path)
        if value is not _MISSING:
            _put(out, path, copy.deepcopy(value))
    return out


# -- canary percent ---------------------------------------------------------------------------------


def check_percent(percent: int) -> int:
    """Defensive bound: KServe's v1beta1 API stores any integer, and a bad one breaks the service."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be an integer in 0..100, got {percent!r}")
    return percent


def percent_path(api_version: str, component: str) -> tuple[str, ...]:
    try:
        return PERCENT_PATHS[api_version](component)
    except KeyError:
        supported = ", ".join(sorted(PERCENT_PATHS))
        raise UnsupportedApiVersion(
            f"InferenceService apiVersion {api_version!r} is not supported (supported: {supported})"
        ) from None


def with_canary_percent(
    patch: Mapping[str, Any], component: str, percent: int | None, api_version: str = V1BETA1
) -> dict[str, Any]:
    """`patch` with the component's canary percent set; None writes `null`, which removes the field."""
    if percent is not None:
        check_percent(percent)
    out = copy.deepcopy(dict(patch))
    _put(out, percent_path(api_version, component), percent)
    return out


def canary_percent(manifest: Mapping[str, Any], component: str, api_version: str = V1BETA1) -> int | None:
    """The component's canary percent as written in `manifest` (None when the field is absent)."""
    value = _get(manifest, percent_path(api_version, component))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- comparison (adoption, drift) -------------------------------------------------------------------


def spec_differences(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Dotted paths of managed fields that `desired` sets and `live` does not have with the same value.

    Live may have more (KServe fills defaults, others add labels): only what `desired` sets counts. A
    `null` in desired means "absent". Lists must have the same length and match element by element.
    """
    found: list[str] = []
    for path in MANAGED:
        want = _get(desired, path)
        if want is _MISSING or want is None:
            continue
        _compare(want, _get(live, path), ".".join(path), found)
    return found


def subset_matches(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Every managed field set in `desired` has the same value in `live`."""
    return not spec_differences(desired, live)


def _compare(want: Any, have: Any, where: str, found: list[str]) -> None:
    if isinstance(want, Mapping):
        if not want and (have is _MISSING or have is None):
            return  # the API server drops empty maps (labels: {}), so "absent" equals "empty"
        if not isinstance(have, Mapping):
            found.append(where)
            return
        for key, value in want.items():
            sub = where + _segment(str(key))
            if value is None:
                if have.get(key) is not None:
                    found.append(sub)
            else:
                _compare(value, have.get(key, _MISSING), sub, found)
    elif isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            found.append(where)
            return
        for index, (w, h) in enumerate(zip(want, have, strict=True)):
            _compare(w, h, f"{where}[{index}]", found)
    elif not _same_scalar(want, have):
        found.append(where)


def _same_scalar(a: Any, b: Any) -> bool:
    # JSON has no int/bool overlap, Python does (True == 1): keep them apart.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _segment(key: str) -> str:
    return f".{key}" if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"


# -- paths ------------------------------------------------------------------------------------------


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _put(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            child = {}
            obj[key] = child
        obj = child
    obj[path[-1]] = value


def already_applied(last_applied: Mapping[str, Any] | None, desired: Mapping[str, Any],
                    live: Mapping[str, Any]) -> bool:
    """Applying `desired` (from `last_applied`) would change nothing on `live`.

    Stricter than `subset_matches`: a field removed in Git that is still live counts as a change, since
    the merge patch would remove it.
    """
    if not subset_matches(desired, live):
        return False
    if last_applied is None:
        return True
    patch = merge_patch(last_applied, desired)
    return not _removals_pending(patch, live)


def _removals_pending(patch: Any, live: Any) -> bool:
    if not isinstance(patch, Mapping) or not isinstance(live, Mapping):
        return False
    for key, value in patch.items():
        if value is None:
            if live.get(key) is not None:
                return True
        elif _removals_pending(value, live.get(key)):
            return True
    return False
