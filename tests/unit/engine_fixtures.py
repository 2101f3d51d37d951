"""Builders for the rollout-engine tables: desired services, live KServe status, samples, states.

The scenario is always the same service (`models/iris`) so a table row only says what differs: the
stable spec `v1` runs as revision `rev(1)`, the canary spec `v2` becomes `rev(2)`, a later commit `v3`
becomes `rev(3)`. Time is the fixed `T0` moved forward explicitly; the clock is never read.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from canaryd.analysis.samples import AnalysisSamples, MetricReading, RevisionReading
from canaryd.manifests import spec_hash
from canaryd.policy import PolicySpec, policy_snapshot
from canaryd.rollout.model import (
    PERCENT_FIELD,
    Action,
    ComponentStatus,
    Condition,
    Decision,
    Desired,
    LiveService,
    Notify,
    Promote,
    RecordEvent,
    Rollback,
    SetTraffic,
    TrafficTarget,
)
from canaryd.rollout.state import Phase, RolloutState, TargetRef

NS, NAME, COMP = "models", "iris", "predictor"
API = "serving.kserve.io/v1beta1"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TARGET = TargetRef(namespace=NS, name=NAME)


def at(seconds: float) -> datetime:
    """T0 plus `seconds`: every instant in the tables is written relative to T0."""
    return T0 + timedelta(seconds=seconds)


def rev(n: int) -> str:
    return f"{NAME}-predictor-{n:05d}"


# -- policy ----------------------------------------------------------------------------------------

def policy(**overrides: Any) -> PolicySpec:
    """The test policy: two steps, 1m interval, 10s analyses after a 30s warmup, small limits.

    `overrides` are top-level policy fields, or `analysis={...}` / `gates={...}` merged into the defaults.
    """
    data: dict[str, Any] = {
        "steps": [10, 50],
        "interval": "1m",
        "progressDeadline": "10m",
        "analysis": {
            "mode": "threshold",
            "every": "10s",
            "warmup": "30s",
            "minRequests": 100,
            "failureLimit": 2,
            "inconclusiveLimit": 3,
            "onInconclusive": "hold",
            "maxHold": "5m",
            "metrics": [
                {"name": "error-rate", "max": 0.01},
                {"name": "latency", "quantile": 0.99, "maxMs": 500},
            ],
        },
    }
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return PolicySpec.model_validate(data)


POLICY = policy()


# -- desired ---------------------------------------------------------------------------------------

def manifest(version: str, **predictor_extra: Any) -> dict[str, Any]:
    """The InferenceService as Git has it; `version` changes the model, so each version is a new revision."""
    return {
        "apiVersion": API,
        "kind": "InferenceService",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "predictor": {
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": f"gs://models/iris/{version}"},
                **predictor_extra,
            }
        },
    }


def desired(version: str, pol: PolicySpec = POLICY, *, commit: str | None = None,
            body: dict[str, Any] | None = None) -> Desired:
    m = body if body is not None else manifest(version)
    return Desired(manifest=m, spec_hash=spec_hash(m), commit=commit or f"{version}-commit-0123456789",
                   policy=policy_snapshot(pol), policy_source=f"policies/{NAME}.yaml")


V1, V2, V3 = desired("v1"), desired("v2"), desired("v3")


# -- live ------------------------------------------------------------------------------------------

def live(
    version: str = "v2",
    *,
    created: int | None = 2,
    ready: int | None = 2,
    rolledout: int | None = 1,
    previous: int | None = None,
    traffic: Mapping[int, int] | None = None,
    percent: int | None = None,
    generation: int = 2,
    observed: int | None = None,
    mode: str | None = None,
    body: dict[str, Any] | None = None,
    conditions: Mapping[str, Condition] | None = None,
) -> LiveService:
    """A KServe v1beta1 service as the adapter reads it: the spec of `version` plus KServe's defaults.

    `traffic` maps revision number to percent; by default it is what KServe would do: all on the rolled
    out revision, or `percent` on the newest Ready one and the rest on the rolled out one.
    """
    m = copy.deepcopy(body if body is not None else manifest(version))
    m["spec"]["predictor"].setdefault("minReplicas", 1)  # a KServe default the desired spec never sets
    if percent is not None:
        m["spec"]["predictor"][PERCENT_FIELD] = percent
    if traffic is None:
        traffic = _kserve_split(ready, rolledout, percent)
    targets = [
        TrafficTarget(revision=rev(n), percent=p, latest=(n == ready), tag=None if n == ready else "prev")
        for n, p in traffic.items()
    ]
    comp = ComponentStatus(
        latest_created=_r(created), latest_ready=_r(ready), latest_rolledout=_r(rolledout),
        previous_rolledout=_r(previous), traffic=targets,
    )
    return LiveService(
        api_version=API, generation=generation, observed_generation=generation if observed is None else observed,
        manifest=m, canary_percent=percent, deployment_mode=mode, components={COMP: comp},
        conditions=dict(conditions or {"Ready": Condition(status="True")}),
    )


def _r(n: int | None) -> str | None:
    return None if n is None else rev(n)


def _kserve_split(ready: int | None, rolledout: int | None, percent: int | None) -> dict[int, int]:
    if ready is None:
        return {}
    if rolledout is None or rolledout == ready:
        return {ready: 100}
    if percent is None:
        return {ready: 100}
    split = {rolledout: 100 - percent, ready: percent}
    return {n: p for n, p in split.items() if p > 0} or {rolledout: 100}


def kserve_reacts(svc: LiveService, actions: Iterable[Action]) -> LiveService:
    """What KServe shows after the controller executed `actions` (traffic only; specs do not change here)."""
    for action in actions:
        comp = svc.component(COMP)
        canary, stable = comp.latest_ready, comp.latest_rolledout
        if isinstance(action, SetTraffic):
            svc = _with(svc, action.percent, comp, {stable: 100 - action.percent, canary: action.percent})
        elif isinstance(action, Rollback):
            svc = _with(svc, 0, comp, {stable: 100})
        elif isinstance(action, Promote):
            promoted = comp.model_copy(update={"latest_rolledout": canary, "previous_rolledout": stable})
            svc = _with(svc, None, promoted, {canary: 100})
    return svc


def _with(svc: LiveService, percent: int | None, comp: ComponentStatus,
          split: Mapping[str | None, int]) -> LiveService:
    m = copy.deepcopy(svc.manifest)
    if percent is None:
        m["spec"][COMP].pop(PERCENT_FIELD, None)
    else:
        m["spec"][COMP][PERCENT_FIELD] = percent
    traffic = [TrafficTarget(revision=r, percent=p, latest=(r == comp.latest_ready))
               for r, p in split.items() if p > 0]
    return svc.model_copy(update={"manifest": m, "canary_percent": percent,
                                  "components": {COMP: comp.model_copy(update={"traffic": traffic})}})


# -- samples ---------------------------------------------------------------------------------------

def _reading(name: str, requests: float | None, error_rate: float | None, p99_ms: float | None) -> RevisionReading:
    return RevisionReading(
        revision=name,
        requests=requests,
        metrics={
            "error-rate": MetricReading(name="error-rate", value=error_rate,
                                        error=None if error_rate is not None else "empty result"),
            "latency": MetricReading(name="latency", value=p99_ms,
                                     error=None if p99_ms is not None else "empty result"),
        },
    )


def samples(kind: str, canary: str = rev(2), stable: str = rev(1), window_s: float = 30.0) -> AnalysisSamples:
    """One analysis's readings: good | errors | slow | nodata | few (fewer requests than minRequests)."""
    values: dict[str, tuple[float | None, float | None, float | None]] = {
        "good": (1000, 0.001, 120.0),
        "errors": (1000, 0.2, 120.0),
        "slow": (1000, 0.001, 2400.0),
        "nodata": (None, None, None),
        "few": (12, 0.0, 90.0),
    }
    requests, errors, p99 = values[kind]
    return AnalysisSamples(window_s=window_s, canary=_reading(canary, requests, errors, p99),
                           stable=_reading(stable, 5000, 0.001, 110.0))


GOOD, ERRORS, SLOW, NODATA, FEW = (samples(k) for k in ("good", "errors", "slow", "nodata", "few"))


# -- states ----------------------------------------------------------------------------------------

def state(phase: Phase = Phase.IDLE, spec: Desired | None = V2, pol: PolicySpec | None = None,
          **status: Any) -> RolloutState:
    """A persisted state in `phase` rolling out `spec` (None: never rolled anything out)."""
    s = RolloutState.new(TARGET)
    if spec is not None:
        s = s.evolve(spec={
            "commit": spec.commit, "spec_hash": spec.spec_hash, "last_applied": spec.manifest,
            "policy": policy_snapshot(pol) if pol is not None else spec.policy,
            "policy_source": spec.policy_source,
        })
    return s.evolve(phase=phase, **status)


#: Where the canary became Ready in the analysing tables; step 0 started then.
READY_AT = 60.0


def progressing(phase: Phase = Phase.PROGRESSING, *, step: int = 0, started: float = READY_AT,
                pol: PolicySpec = POLICY, **status: Any) -> RolloutState:
    """v2 (revision 2) being analysed against v1 (revision 1) at `step`, which began at `started`."""
    fields: dict[str, Any] = {
        "step": step, "weight": pol.steps[step], "stable_revision": rev(1), "canary_revision": rev(2),
        "baseline_created_revision": rev(1), "rollout_started_at": T0, "ready_at": at(READY_AT),
        "step_started_at": at(started), "phase_since": at(started),
    }
    fields.update(status)
    return state(phase, V2, pol, **fields)


def initializing(pol: PolicySpec = POLICY, **status: Any) -> RolloutState:
    """v2 applied with 0 % on top of v1 (revision 1) at T0, waiting for its revision to become Ready."""
    fields: dict[str, Any] = {
        "step": -1, "weight": 0, "stable_revision": rev(1), "baseline_created_revision": rev(1),
        "rollout_started_at": T0, "phase_since": T0,
    }
    fields.update(status)
    return state(Phase.INITIALIZING, V2, pol, **fields)


# -- reading decisions -----------------------------------------------------------------------------

def effects(decision: Decision) -> list[Action]:
    """The actions that touch the service (events and notifications left out)."""
    return [a for a in decision.actions if not isinstance(a, RecordEvent | Notify)]


def events(decision: Decision) -> list[tuple[str, str]]:
    return [(a.reason, a.type) for a in decision.actions if isinstance(a, RecordEvent)]


def roundtrip(s: RolloutState) -> RolloutState:
    """The state as a restarted daemon (or a new leader) reads it back from the ModelRollout."""
    return RolloutState.from_storage(copy.deepcopy(s.for_storage()))
