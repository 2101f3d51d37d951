"""Which components of an InferenceService a new spec changes, and the manifests that roll them out in turn.

KServe makes a new revision of a component when its spec changes, and of *every* component when the
service's labels or annotations change (it copies them into each revision template). A policy lists the
components to canary (`target.components`, in order); they go one after another, so each canary is
judged alone. While one is in flight, the components still pending keep their previous spec: the
manifest applied is the desired one with those sections taken from the last applied manifest (and, when
their revision is renewed anyway, with their percent pinned at 0 so it serves nothing before its turn).

Pure: manifests in, new manifests out (inputs are never modified).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from canaryd.apply import PERCENT_PATHS, V1BETA1, canary_percent, spec_differences
from canaryd.rollout.model import PERCENT_FIELD

COMPONENTS = ("predictor", "transformer", "explainer")


def sequenced(api_version: str) -> bool:
    """Whether components can roll out one at a time: only where each has its own canary percent (v1beta1).

    KFServing's v1alpha2 has one percent for the whole canary endpoint: its components move together.
    """
    return api_version in PERCENT_PATHS


def component_spec(manifest: Mapping[str, Any] | None, component: str) -> dict[str, Any] | None:
    """The component's section of a v1beta1 manifest, without the canary percent (None when absent)."""
    spec = (manifest or {}).get("spec")
    part = spec.get(component) if isinstance(spec, Mapping) else None
    if not isinstance(part, Mapping):
        return None
    return {k: copy.deepcopy(v) for k, v in part.items() if k != PERCENT_FIELD}


def present(manifest: Mapping[str, Any], components: Iterable[str] = COMPONENTS) -> list[str]:
    return [c for c in components if component_spec(manifest, c) is not None]


def metadata_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Labels or annotations differ: KServe then makes a new revision of every component."""
    def meta(m: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
        value = ((m or {}).get("metadata") or {}).get(key)
        return dict(value) if isinstance(value, Mapping) else {}

    return any(meta(old, key) != meta(new, key) for key in ("labels", "annotations"))


def spec_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any], component: str, *, exact: bool = True
                 ) -> bool:
    """The component's spec differs (the percent aside). `exact=False` compares with a live object, where
    KServe's defaults add fields: then only what `new` sets counts."""
    before, after = component_spec(old, component), component_spec(new, component)
    if exact or before is None or after is None:
        return before != after
    return bool(spec_differences({"spec": {component: after}}, {"spec": {component: before}}))


def template_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any], component: str) -> bool:
    """Applying `new` over `old` makes a new revision of `component` (it is in `new`, and its spec or the
    service's labels/annotations change)."""
    if component_spec(new, component) is None:
        return False
    return metadata_changed(old, new) or spec_changed(old, new, component)


@dataclass(frozen=True)
class Plan:
    """What a new desired spec changes, compared with the last applied (or live) manifest."""

    #: Listed components to canary, in the policy's order.
    canary: list[str]
    #: Changed components the policy does not list (or new/removed ones): applied at once, no canary.
    direct: list[str]
    metadata: bool
    #: Components whose percent the first apply pins at 0 (pending ones that get a new revision anyway).
    pinned: list[str] = field(default_factory=list)


def plan(listed: Sequence[str], old: Mapping[str, Any], desired: Mapping[str, Any], *, exact: bool = True,
         in_flight: str | None = None) -> Plan:
    """Which components to canary and which to apply directly.

    A listed component counts when it is in both manifests and its spec changed, or the labels/annotations
    changed; `in_flight` (a canary being superseded, never promoted) counts whenever it is still there. A
    component added or removed has nothing to compare against: it is applied at once.
    """
    meta = metadata_changed(old, desired) if exact else bool(
        spec_differences({"metadata": _meta(desired)}, {"metadata": _meta(old)}))
    canary, direct = [], []
    for c in COMPONENTS:
        before, after = component_spec(old, c), component_spec(desired, c)
        if before is None and after is None:
            continue
        changed = spec_changed(old, desired, c, exact=exact)
        if c in listed and before is not None and after is not None:
            if changed or meta or c == in_flight:
                canary.append(c)
        elif changed:
            direct.append(c)
    canary.sort(key=list(listed).index)
    pinned = [c for c in canary[1:] if meta or c == in_flight]
    return Plan(canary=canary, direct=direct, metadata=meta, pinned=pinned)


def _meta(manifest: Mapping[str, Any]) -> dict[str, Any]:
    meta = manifest.get("metadata") or {}
    return {k: meta[k] for k in ("labels", "annotations") if isinstance(meta.get(k), Mapping)}


def intermediate(desired: Mapping[str, Any], base: Mapping[str, Any], pending: Iterable[str],
                 pinned: Iterable[str] = ()) -> dict[str, Any]:
    """`desired`, except that each pending component keeps its section from `base` (percent included, so a
    pin made earlier stays), and each `pinned` one gets percent 0."""
    out = copy.deepcopy(dict(desired))
    spec = out.setdefault("spec", {})
    base_spec = base.get("spec") or {}
    for c in pending:
        if isinstance(base_spec.get(c), Mapping):
            spec[c] = copy.deepcopy(dict(base_spec[c]))
        else:
            spec.pop(c, None)
    for c in pinned:
        if isinstance(spec.get(c), dict):
            spec[c][PERCENT_FIELD] = 0
    return out


def percent_of(manifest: Mapping[str, Any], component: str) -> int | None:
    return canary_percent(manifest, component, V1BETA1)
