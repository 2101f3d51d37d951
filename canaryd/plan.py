"""`canaryd plan`: what the newest commit would change, without changing anything.

It runs the real engine on the real current state (ModelRollouts and live services) with the desired set
from Git, and reports the actions it would take instead of executing them: the plan cannot drift from
what the daemon does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes import client

from canaryd.adapters.kserve import KServeAdapter
from canaryd.adapters.statestore import StateStore
from canaryd.desired import DesiredSet
from canaryd.policy import policy_snapshot
from canaryd.rollout.engine import decide
from canaryd.rollout.model import ApplySpec, Desired, Notify, Observation, Promote, RecordEvent, Rollback, SetTraffic
from canaryd.rollout.state import RolloutState, TargetRef


@dataclass(frozen=True)
class PlanLine:
    service: str
    change: str
    detail: str


def plan(api: client.ApiClient, ds: DesiredSet, commit: str | None) -> list[PlanLine]:
    store, kserve = StateStore(api), KServeAdapter(api)
    now = datetime.now(UTC)
    lines: list[PlanLine] = []
    for key, why in sorted(ds.blocked.items()):
        lines.append(PlanLine(str(key), "blocked", why))
    for key, d in sorted(ds.services.items()):
        api_version = str(d.manifest.get("apiVersion"))
        target = TargetRef(api_version=api_version, namespace=key.namespace, name=key.name)
        state = store.load(key.namespace, key.name) or RolloutState.new(target)
        live = kserve.read(key.namespace, key.name, api_version)
        desired = Desired(manifest=d.manifest, spec_hash=d.spec_hash, commit=commit,
                          policy=policy_snapshot(d.policy), policy_source=d.policy_source)
        decision = decide(state, Observation(desired=desired, live=live), d.policy, now)
        effects = [a for a in decision.actions if not isinstance(a, RecordEvent | Notify)]
        change, detail = _describe(state, decision.state, effects, d.policy.steps)
        if decision.log.get("skipped"):
            change, detail = "skip", str(decision.log["skipped"])
        elif decision.log.get("paused"):
            change, detail = "wait", str(decision.log["paused"])
        lines.append(PlanLine(str(key), change, detail))
    return lines


def _describe(old: RolloutState, new: RolloutState, effects: Sequence[object], steps: list[int]) -> tuple[str, str]:
    for a in effects:
        if isinstance(a, ApplySpec) and a.create:
            return "create", "new service: created at 100 % (nothing to compare against)"
        if isinstance(a, ApplySpec):
            verb = "supersede" if old.status.phase.value in ("Initializing", "Progressing", "Holding") else "rollout"
            return verb, f"canary at 0 % until Ready, then {' -> '.join(f'{s}%' for s in steps)} -> 100 %"
        if isinstance(a, Rollback):
            return "rollback", new.status.message
        if isinstance(a, Promote):
            return "promote", new.status.message
        if isinstance(a, SetTraffic):
            return "traffic", f"set canary to {a.percent}%"
    if new.status.phase != old.status.phase:
        return str(new.status.phase).lower(), new.status.message
    return "no change", f"{old.status.phase} (commit {(old.spec.commit or '-')[:8]})"


def render(lines: list[PlanLine]) -> str:
    if not lines:
        return "no services in the config repo"
    w1 = max(len(x.service) for x in lines)
    w2 = max(len(x.change) for x in lines)
    return "\n".join(f"{x.service.ljust(w1)}  {x.change.ljust(w2)}  {x.detail}" for x in lines)
