"""One reconcile tick per service: observe -> decide -> persist -> act.

The order matters for crash safety. The new state (the intent: which spec, step and weight) is saved
*before* any action runs, with the resourceVersion it was read at; a conflict means another writer got
there first, so nothing is executed and the tick re-reads and decides again. A crash after the save and
before the actions is repaired by the next tick, because the engine re-asserts the persisted intent with
absolute actions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from canaryd.adapters.events import EventRecorder
from canaryd.adapters.hooks import WebhookCaller
from canaryd.adapters.kserve import KServeAdapter
from canaryd.adapters.prometheus import PrometheusSource
from canaryd.adapters.statestore import Conflict, StateStore, UntrustedState
from canaryd.analysis.samples import AnalysisSamples, RevisionReading
from canaryd.policy import PolicySpec
from canaryd.rollout.engine import analysis_request, decide, gate_requests, in_force
from canaryd.rollout.model import (
    Action,
    ApplySpec,
    CallWebhook,
    DeleteService,
    Desired,
    Notify,
    Observation,
    Promote,
    RecordEvent,
    Rollback,
    SetTraffic,
)
from canaryd.rollout.state import Phase, RolloutState, TargetRef

log = logging.getLogger("canaryd.controller")

#: Test-only switch: when set to a directory, a tick whose actions include the one named by
#: `CANARYD_TEST_HOLD_ON` (e.g. `traffic=30`) writes `<dir>/held` after saving the state and before
#: patching the InferenceService, then waits until `<dir>/release` exists. End-to-end tests use it to
#: SIGKILL the daemon exactly between the two writes.
HOLD_ENV = "CANARYD_TEST_HOLD_DIR"
HOLD_ON_ENV = "CANARYD_TEST_HOLD_ON"


class NotifySink(Protocol):
    def send(self, target_key: str, kind: str, message: str, fields: Mapping[str, str]) -> None: ...


class _NoNotifier:
    def send(self, target_key: str, kind: str, message: str, fields: Mapping[str, str]) -> None:
        return None


@dataclass
class Adapters:
    """Everything a tick talks to, grouped so the controller does not pass six arguments around."""

    kserve: KServeAdapter
    store: StateStore
    events: EventRecorder
    prometheus: PrometheusSource
    hooks: WebhookCaller = field(default_factory=WebhookCaller)
    notifier: NotifySink = field(default_factory=_NoNotifier)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class TickResult:
    next_check_at: datetime | None
    phase: str
    changed: bool


#: How soon a refused state is looked at again (someone may fix or delete it).
REFUSED_RECHECK_S = 60.0


class Controller:
    def __init__(self, adapters: Adapters, default_policy: PolicySpec,
                 namespaces: frozenset[str] = frozenset()) -> None:
        self.a = adapters
        self.default_policy = default_policy
        #: The namespaces canaryd may act in (empty: all); every write is checked against it.
        self.namespaces = namespaces
        self._hold_dir = os.environ.get(HOLD_ENV)
        self._hold_on = os.environ.get(HOLD_ON_ENV, "")
        self.on_decision: list[Callable[[RolloutState, RolloutState], None]] = []
        #: Called with the duration (seconds) of every Prometheus read, for canaryd's own metrics.
        self.on_analysis: list[Callable[[float], None]] = []

    def tick(self, target: TargetRef, desired: Desired | None, policy: PolicySpec | None,
             prune: bool = False) -> TickResult:
        """Reconcile one service; retries a few times when another writer changed its ModelRollout."""
        for _attempt in range(5):
            try:
                return self._tick_once(target, desired, policy or self.default_policy, prune)
            except Conflict:
                log.info("state conflict, re-reading", extra={"service": target.key})
        raise RuntimeError(f"{target.key}: ModelRollout kept changing under us (5 conflicts in a row)")

    def _tick_once(self, target: TargetRef, desired: Desired | None, policy: PolicySpec,
                   prune: bool) -> TickResult:
        now = self.a.clock()
        try:
            self._check_target(target)
            state = self.a.store.load(target.namespace, target.name)
        except UntrustedState as exc:
            return self._refuse(target, str(exc), now)
        if state is None:
            if desired is None:
                return TickResult(None, "Unknown", False)
            state = RolloutState.new(target)  # the engine picks the component from the policy
        api_version = desired.manifest["apiVersion"] if desired else state.spec.target.api_version
        live = self.a.kserve.read(target.namespace, target.name, api_version)
        samples = None
        readings = None
        # Gates run beside the tick: this starts the due calls and collects the answers that are in. A gate
        # still waiting makes the engine wait too, so the analysis is not read now (it would be discarded).
        gates = self.a.hooks.poll(target.key, gate_requests(state, live, policy, now))
        waiting = any(g.pending for g in gates)
        request = analysis_request(state, in_force(state, policy), now)
        if request is not None and not waiting:
            p = in_force(state, policy)
            started = time.monotonic()
            at = now.timestamp()
            statistical = request.mode != "threshold"
            if statistical and not p.analysis.metrics:
                # The statistical judges read only exact counts: the per-metric window queries would be
                # sent for nothing (two per revision per analysis).
                samples = AnalysisSamples(window_s=request.window_s,
                                          canary=RevisionReading(revision=request.canary_revision, requests=None))
            else:
                samples = self.a.prometheus.read(
                    request.namespace, request.service, request.canary_revision, request.stable_revision,
                    list(p.analysis.metrics), request.window_s, at=at,
                )
            if statistical and request.window_start is not None:
                counts_start = request.counts_start or request.window_start
                counts, readings = self.a.prometheus.window_counts(
                    request.namespace, request.canary_revision, request.stable_revision, request.counters,
                    counts_start.timestamp(), latency_start=request.window_start.timestamp(), at=at,
                )
                samples = samples.model_copy(update={"counts": counts})
            for observe in self.on_analysis:
                observe(time.monotonic() - started)
        obs = Observation(desired=desired, live=live, samples=samples, counters=readings, gates=gates,
                          prune=prune)
        decision = decide(state, obs, policy, now)
        new = decision.state
        try:
            self._check_writes(target, new, decision.actions)
        except UntrustedState as exc:
            return self._refuse(target, str(exc), now)
        changed = (new != state and not _rescheduled_only(state, new)) or new.generation_unobserved
        if changed:
            new = self.a.store.save(new)
        self._hold_point(target, decision.actions)
        uid = (live.manifest.get("metadata") or {}).get("uid") if live is not None else None
        for action in decision.actions:
            self._execute(new, action, uid)
        # A resting tick that was not saved still logs what the engine found worth saying (left running...).
        if changed or decision.log or any(not isinstance(a, RecordEvent) for a in decision.actions):
            log.info(
                "decision",
                extra={
                    "service": target.key,
                    "phase": str(new.status.phase),
                    "step": new.status.step,
                    "weight": new.status.weight,
                    "canary": new.status.canary_revision,
                    "stable": new.status.stable_revision,
                    "commit": new.spec.commit,
                    "actions": [_describe(a) for a in decision.actions],
                    **{k: v for k, v in decision.log.items()},
                },
            )
        for hook in self.on_decision:
            hook(state, new)
        return TickResult(decision.recheck_at or new.status.next_check_at, str(new.status.phase), changed)

    # -- trust: canaryd writes only its own target, in its own namespaces --------------------------------
    def _check_target(self, target: TargetRef) -> None:
        if self.namespaces and target.namespace not in self.namespaces:
            raise UntrustedState(f"namespace {target.namespace} is not one canaryd manages"
                                 f" (kubernetes.namespaces: {', '.join(sorted(self.namespaces))})")

    def _check_writes(self, target: TargetRef, state: RolloutState, actions: list[Action]) -> None:
        """Every object the tick would write is the service this tick is for: whatever a stored state or a
        manifest says, canaryd never patches, creates or deletes anything else."""
        t = state.spec.target
        if (t.namespace, t.name) != (target.namespace, target.name):
            raise UntrustedState(f"the state names {t.key}, not {target.key}")
        self._check_target(t)
        state.check_identity()
        for action in actions:
            match action:
                case ApplySpec(manifest=m):
                    meta = m.get("metadata") or {}
                    if (meta.get("namespace", t.namespace), meta.get("name")) != (t.namespace, t.name):
                        raise UntrustedState(f"refusing to apply {meta.get('namespace')}/{meta.get('name')}:"
                                             f" this rollout is for {t.key}")
                case DeleteService(namespace=ns, name=n):
                    if (ns, n) != (t.namespace, t.name):
                        raise UntrustedState(f"refusing to delete {ns}/{n}: this rollout is for {t.key}")
                case _:
                    pass

    def _refuse(self, target: TargetRef, why: str, now: datetime) -> TickResult:
        """Report a state canaryd must not act on (log, Event, status message) and act on nothing."""
        message = f"canaryd refuses to act on this ModelRollout: {why}"
        log.warning("state refused", extra={"service": target.key, "reason": why})
        if not self.namespaces or target.namespace in self.namespaces:
            with contextlib.suppress(Exception):  # reporting must not turn a refusal into a crash loop
                obj = self.a.store.read(target.namespace, target.name)
                if obj is not None and (obj.get("status") or {}).get("message") != message:
                    self.a.store.report_refusal(target.namespace, target.name, message)
                    self.a.events.record(target, "StateRefused", message, "Warning")
        return TickResult(now + timedelta(seconds=REFUSED_RECHECK_S), "Refused", False)

    def _hold_point(self, target: TargetRef, actions: list[Action]) -> None:
        if not self._hold_dir or not any(_describe(a) == self._hold_on for a in actions):
            return
        d = Path(self._hold_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "held").write_text(target.key)
        while not (d / "release").exists():
            time.sleep(0.05)

    def _execute(self, state: RolloutState, action: Action, uid: str | None) -> None:
        t = state.spec.target
        k = self.a.kserve
        match action:
            case ApplySpec():
                k.apply(action)
            case SetTraffic(component=c, percent=pct):
                k.set_traffic(t.namespace, t.name, c, pct, api_version=t.api_version)
            case Promote(component=c):
                k.promote(t.namespace, t.name, c, api_version=t.api_version)
            case Rollback(component=c):
                k.rollback(t.namespace, t.name, c, api_version=t.api_version)
            case RecordEvent(reason=r, message=m, type=ty):
                self.a.events.record(t, r, m, ty, uid=uid if isinstance(uid, str) else None)
            case Notify(kind=kind, message=m, fields=f):
                self.a.notifier.send(t.key, kind, m, f)
            case CallWebhook(call=c):
                self.a.hooks.fire(c)
            case DeleteService(api_version=v, namespace=ns, name=n):
                self.a.kserve.delete(ns, n, v)
                self.a.store.delete(ns, n)  # the memory goes with the service: Git no longer has it
            case _:
                log.warning("no executor for %s", type(action).__name__)


#: Phases whose `next_check_at` times nothing (no analysis, no deadline): only when to look again.
_RESTING = frozenset({Phase.IDLE, Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED})


def _rescheduled_only(old: RolloutState, new: RolloutState) -> bool:
    """Whether a resting service's tick only moved its next check. Not saved: with a thousand services,
    a ModelRollout write per service per tick would be most of canaryd's API traffic, for a hint."""
    if new.status.phase not in _RESTING or old.status.phase != new.status.phase:
        return False
    same_time = new.status.model_copy(update={"next_check_at": old.status.next_check_at})
    return new.model_copy(update={"status": same_time}) == old


def _describe(action: Action) -> str:
    match action:
        case ApplySpec(create=True):
            return "create"
        case ApplySpec(canary_percent=p):
            return f"apply(canary={p})"
        case SetTraffic(percent=p):
            return f"traffic={p}"
        case RecordEvent(reason=r):
            return f"event:{r}"
        case _:
            return type(action).__name__.lower()
