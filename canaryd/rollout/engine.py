"""The rollout decision logic: `decide(state, observation, policy, now) -> Decision`.

Pure: no clock, network or disk. `now` and every observation are arguments and every effect is an
action value, so each rollout path is a row in a table test and restart-safety is a property of the
persisted state alone.

The engine is level-triggered: the persisted state is the *intent* (which spec, which step, which weight),
and every tick re-asserts it on the live service with absolute actions. The controller persists the new
state before it executes the actions, so a crash between the two is repaired by the next tick, without a
step being repeated or skipped.

Policy in force: a rollout runs under the policy snapshot taken when it started (stored in the state), so
a policy edit cannot change the rules halfway through a canary; `policy` (the one from Git) is used for
the next rollout.

Components: the policy lists the components to canary (`target.components`). When a new spec changes
several of them, they roll out one after another in that order, each with its own canary, steps and
analyses: `spec.component` is the one in flight, `spec.pendingComponents` the rest, which keep their
previous spec in the applied manifest until their turn (`canaryd.rollout.components`). A rollback of any
of them fails the whole spec; the ones already promoted stay promoted.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from canaryd.analysis.samples import MetricVerdict, Verdict
from canaryd.apply import already_applied, managed_part, spec_differences, subset_matches
from canaryd.policy import PolicySpec, Webhook, spec_from_snapshot
from canaryd.rollout import components as comps
from canaryd.rollout.judging import judge_analysis, next_step_evidence, statistical
from canaryd.rollout.model import (
    Action,
    AnalysisRequest,
    ApplySpec,
    CallWebhook,
    Decision,
    DeleteService,
    Desired,
    GateCall,
    GateResult,
    LiveService,
    Notify,
    Observation,
    Promote,
    RecordEvent,
    Rollback,
    SetTraffic,
)
from canaryd.rollout.state import ACTIVE, AnalysisRecord, Phase, RolloutState

#: How often to look at a service that is waiting for KServe (new revision Ready, promotion visible).
POLL_S = 2.0
#: How often to re-check a service with nothing going on (drift, missed Git syncs).
IDLE_RECHECK_S = 60.0

_ANALYSING = (Phase.PROGRESSING, Phase.HOLDING, Phase.WAITING_PROMOTION)

#: Transition reasons that people want to hear about (Slack, webhooks), and under which kind.
_NOTIFY = {
    "RolloutStarted": "started", "Superseded": "started", "CanaryReady": "step", "StepAdvanced": "step",
    "Promoted": "promoted", "ComponentStarted": "started", "WaitingPromotion": "waiting", "Paused": "paused",
    "Resumed": "resumed",
    "UnsupportedDeploymentMode": "error",
    "ServiceMissing": "error", "DriftCorrected": "drift",
}


def in_force(state: RolloutState, policy: PolicySpec) -> PolicySpec:
    """The policy that governs `state`'s rollout: its snapshot if it has one."""
    if state.spec.policy:
        return spec_from_snapshot(state.spec.policy)
    return policy


def listed_components(p: PolicySpec) -> list[str]:
    """The components a policy canaries, in order (the predictor when it names none)."""
    return list(p.target.components) if p.target is not None else ["predictor"]


def component_percent(live: LiveService, component: str) -> int | None:
    """The canary percent of `component` on the live service.

    v1beta1 keeps one per component in the spec, read from the live manifest (the adapter's
    `canary_percent` is the predictor's); KFServing's v1alpha2 has one for the whole service.
    """
    if comps.sequenced(live.api_version):
        return comps.percent_of(live.manifest, component)
    return live.canary_percent


def analysis_request(state: RolloutState, policy: PolicySpec, now: datetime) -> AnalysisRequest | None:
    """Whether an analysis is due now, and over which window (the current step so far, after warmup).

    The warmup delays the first analysis and keeps the canary's first seconds out of its latency (a cold
    start, a model loading through the activator, slows requests) and out of threshold-mode windows. The
    statistical judges' request and error counts start with the step instead, for the first step at the
    canary's first traffic: a cold start rarely fails requests, and the 30 s of errors a warmup would
    throw away are a quarter of what a doubled 1 % error rate needs to show (bench/decisions.py).
    """
    st = state.status
    if st.phase not in _ANALYSING or st.canary_revision is None:
        return None
    if st.next_check_at is not None and now < st.next_check_at:
        return None
    p = in_force(state, policy)
    start = _window_start(state, p)
    if start is None or now <= start:
        return None
    return AnalysisRequest(
        namespace=state.spec.target.namespace,
        service=state.spec.target.name,
        canary_revision=st.canary_revision,
        stable_revision=st.stable_revision,
        window_s=(now - start).total_seconds(),
        mode=p.analysis.mode,
        window_start=start,
        counts_start=min(start, st.step_started_at) if st.step_started_at is not None else start,
        counters=dict(st.counters) if statistical(p.analysis) else {},
    )


def _window_start(state: RolloutState, p: PolicySpec) -> datetime | None:
    st = state.status
    if st.ready_at is None or st.step_started_at is None:
        return None
    return max(st.step_started_at, st.ready_at + timedelta(seconds=p.analysis.warmup_s))


def ready_candidate(state: RolloutState, live: LiveService) -> str | None:
    """The revision canaryd created for this rollout, once it is Ready (else None).

    Not gated on status.observedGeneration: real KServe copies the Knative Service's generation there,
    which drifts from the InferenceService's (kserve#6081), so it can lag forever.
    """
    comp = live.component(state.spec.component)
    candidate = comp.latest_created
    if candidate is None or candidate == state.status.baseline_created_revision or comp.latest_ready != candidate:
        return None
    if candidate == state.status.stable_revision:
        return None  # the revision serving now is never its own canary (KServe has not made ours yet)
    return candidate


def gate_requests(state: RolloutState, live: LiveService | None, policy: PolicySpec, now: datetime
                  ) -> list[GateCall]:
    """The webhooks the controller must call before `decide` (their answers go into the observation)."""
    p = in_force(state, policy)
    st = state.status
    if not p.webhooks or live is None or state.spec.control.paused:
        return []
    if st.phase == Phase.INITIALIZING:
        candidate = ready_candidate(state, live)
        if st.pre_rollout_passed or candidate is None:
            return []
        return [_call(state, live, w, candidate) for w in p.hooks("pre-rollout")]
    if analysis_request(state, p, now) is None:
        return []
    kinds = ["rollout", "rollback"] + (["confirm-promotion"] if st.phase == Phase.WAITING_PROMOTION else [])
    return [_call(state, live, w, st.canary_revision) for k in kinds for w in p.hooks(k)]


def _call(state: RolloutState, live: LiveService | None, hook: Webhook, canary: str | None) -> GateCall:
    st = state.status
    t = state.spec.target
    comp = live.component(state.spec.component) if live is not None else None
    payload: dict[str, Any] = {
        "name": t.name, "namespace": t.namespace, "apiVersion": t.api_version, "component": state.spec.component,
        "type": hook.type, "phase": str(st.phase), "commit": state.spec.commit, "specHash": state.spec.spec_hash,
        "canaryRevision": canary, "stableRevision": st.stable_revision, "weight": st.weight,
        "canaryUrl": comp.url_of(canary) if comp is not None else None, "metadata": dict(hook.metadata),
    }
    return GateCall(hook.name, hook.type, hook.url, hook.timeout_s, hook.retries, payload)


def decide(state: RolloutState, obs: Observation, policy: PolicySpec, now: datetime) -> Decision:
    """The next state and the actions that move the live service towards it."""
    return _Tick(state, obs, policy, now).run()


class _Tick:
    """One decision. A class only to share the arguments between the phase handlers."""

    def __init__(self, state: RolloutState, obs: Observation, policy: PolicySpec, now: datetime) -> None:
        self.state = state
        self.obs = obs
        self.policy = policy
        self.now = now
        self.actions: list[Action] = []
        self.log: dict[str, object] = {}
        self.recheck_at: datetime | None = None

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def comp(self) -> str:
        return self.state.spec.component

    def pct(self, live: LiveService) -> int | None:
        """The live canary percent of the component in flight."""
        return component_percent(live, self.comp)

    @property
    def p(self) -> PolicySpec:
        return in_force(self.state, self.policy)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(RecordEvent(reason, message, "Warning" if warning else "Normal"))

    def move(self, phase: Phase, reason: str, message: str, *, warning: bool = False, **status: object) -> None:
        ending = self.state.status.phase in (Phase.PROMOTING, Phase.ROLLING_BACK)
        self.state = self.state.transition(phase, now=self.now, reason=reason, message=message, **status)
        self.event(reason, message, warning)
        if ending and phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED):
            for hook in self.p.hooks("post-rollout"):
                self.actions.append(CallWebhook(_call(self.state, self.obs.live, hook,
                                                      self.state.status.canary_revision)))
        if phase == Phase.ROLLING_BACK:
            kind: str | None = "aborted" if reason in ("AbortRequested", "Superseded") else "rolled-back"
        else:
            kind = _NOTIFY.get(reason)
        if kind is not None:
            st = self.state.status
            self.actions.append(Notify(kind, message, {
                "phase": str(phase), "component": self.comp, "weight": f"{st.weight}%",
                "commit": _short(self.state.spec.commit),
                "canary": st.canary_revision or "-", "stable": st.stable_revision or "-", "reason": reason,
            }))
        self.log.setdefault("transitions", [])
        assert isinstance(self.log["transitions"], list)
        self.log["transitions"].append(f"{phase}: {reason}")

    def later(self, seconds: float) -> datetime:
        return self.now + timedelta(seconds=seconds)

    def schedule(self, at: datetime) -> None:
        self.state = self.state.evolve(next_check_at=at)

    def done(self) -> Decision:
        return Decision(state=self.state, actions=self.actions, log=self.log, recheck_at=self.recheck_at)

    # -- entry -------------------------------------------------------------------------------------
    def run(self) -> Decision:
        desired, live = self.obs.desired, self.obs.live
        st = self.state.status
        if desired is None:
            return self._gone_from_git(live)
        control = self._control(live)
        if control is not None:
            return control
        if live is None:
            return self._create(desired)
        st = self.state.status  # _control may have resumed the rollout
        if desired.spec_hash != self.state.spec.spec_hash:
            if self.state.spec.control.paused:
                self.log["paused"] = "new commit waits: rollouts of this service are paused"
                self.schedule(self.later(IDLE_RECHECK_S))
                return self.done()
            return self._new_desired(desired, live)
        handler = {
            Phase.INITIALIZING: self._initializing,
            Phase.PROGRESSING: self._analysing,
            Phase.HOLDING: self._analysing,
            Phase.WAITING_PROMOTION: self._analysing,
            Phase.PROMOTING: self._promoting,
            Phase.ROLLING_BACK: self._rolling_back,
            Phase.PAUSED: self._paused,
        }.get(st.phase)
        if handler is None:
            return self._idle(live)
        return handler(live)

    def _gone_from_git(self, live: LiveService | None) -> Decision:
        """Left running (no prune by default), but an unfinished canary must not keep its traffic
        without analysis: take it away. With prune, delete the service once nothing is in flight."""
        st = self.state.status
        if live is not None and (st.phase in _ANALYSING or st.phase in (Phase.INITIALIZING, Phase.PAUSED)):
            return self._abort_for("the service was removed from Git")
        if live is not None and st.phase == Phase.PROMOTING:
            return self._promoting(live)
        if live is not None and st.phase == Phase.ROLLING_BACK:
            return self._rolling_back(live)
        t = self.state.spec.target
        if self.obs.prune and live is not None:
            self.actions.append(DeleteService(t.api_version, t.namespace, t.name))
            self.event("Pruned", "removed from Git and prune is on: deleting the InferenceService", warning=True)
        self.log["gone_from_git"] = "pruned" if self.obs.prune else "left running (prune is off)"
        self.schedule(self.later(IDLE_RECHECK_S))
        return self.done()

    # -- operator requests -------------------------------------------------------------------------
    def _control(self, live: LiveService | None) -> Decision | None:
        """Pause, resume, promote and abort, as recorded in the ModelRollout by the CLI."""
        c = self.state.spec.control
        st = self.state.status
        # promote/abort name one rollout attempt: spent when it ends, never applied to a later attempt
        attempt = self.state.attempt_id
        if live is None:
            return None
        if c.abort is not None and c.abort == attempt and (st.phase in ACTIVE and st.phase != Phase.ROLLING_BACK):
            self.actions.append(Rollback(self.comp))
            self.move(Phase.ROLLING_BACK, "AbortRequested", f"an operator aborted the rollout; taking all"
                      f" {self.comp} traffic back to {st.stable_revision}", warning=True, weight=0, paused_from=None)
            self.schedule(self.later(POLL_S))
            return self.done()
        if c.paused and st.phase in ACTIVE and st.phase not in (Phase.PAUSED, Phase.PROMOTING, Phase.ROLLING_BACK):
            self.move(Phase.PAUSED, "Paused", f"paused by an operator at {st.weight}%; traffic held",
                      paused_from=st.phase)
            self.schedule(self.later(IDLE_RECHECK_S))
            return self.done()
        if not c.paused and st.phase == Phase.PAUSED:
            back = st.paused_from or Phase.PROGRESSING
            # The clocks restart: a paused step or deadline must not expire the moment it resumes.
            self.move(back, "Resumed", f"resumed by an operator at {st.weight}%", paused_from=None,
                      step_started_at=self.now if st.step_started_at else None,
                      rollout_started_at=self.now, hold_since=self.now if st.hold_since else None,
                      next_check_at=self.now)
            return None
        if (c.promote is not None and c.promote == attempt and st.phase in _ANALYSING
                and st.canary_revision is not None):
            return self._promote("an operator requested promotion")
        return None

    def _paused(self, live: LiveService) -> Decision:
        st = self.state.status
        if st.paused_from in _ANALYSING and self.pct(live) != st.weight:
            self.actions.append(SetTraffic(self.comp, st.weight))  # hold the traffic where it was
        self.schedule(self.later(IDLE_RECHECK_S))
        return self.done()

    def _idle(self, live: LiveService) -> Decision:
        st = self.state.status
        comp = live.component(self.comp)
        stable = comp.latest_rolledout or comp.latest_ready
        if st.phase == Phase.SUCCEEDED and stable and stable != st.stable_revision and self.pct(live) is None:
            self.state = self.state.evolve(stable_revision=stable)
        if st.phase == Phase.SUCCEEDED and self.state.spec.last_applied is not None:
            drift = self._drift(live, expect_percent=None)
            if drift:
                return self._correct_drift(live, drift)
        self.schedule(self.later(IDLE_RECHECK_S))
        return self.done()

    def _drift(self, live: LiveService, expect_percent: int | None) -> str | None:
        """What differs between the live service and what canaryd applied (None = no drift)."""
        manifest = self.state.spec.last_applied or {}
        found = spec_differences(manifest, live.manifest)
        if self.pct(live) != expect_percent:
            found.append(f"{self.comp} canaryTrafficPercent is {self.pct(live)}, canaryd set {expect_percent}")
        return ", ".join(found[:8]) if found else None

    def _correct_drift(self, live: LiveService, drift: str) -> Decision:
        """Someone changed the service outside Git. Re-assert Git's spec; a spec change goes through a
        canary like any other (the drifted revision is what serves now), a stray percent is removed."""
        st = self.state.status
        self.state = self.state.evolve(drift_count=st.drift_count + 1, last_drift=drift)
        manifest = self.state.spec.last_applied or {}
        self.actions.append(Notify("drift", f"live service differs from Git: {drift}", {"drift": drift}))
        if subset_matches(manifest, live.manifest):
            self.event("DriftCorrected", f"live service differed from Git ({drift}); removed the stray percent",
                       warning=True)
            self.actions.append(Promote(self.comp))
            self.schedule(self.later(POLL_S))
            return self.done()
        if self.state.status.phase == Phase.SUCCEEDED:
            # The canary goes to the component the edit changed (the others are re-asserted at once).
            listed = [c for c in listed_components(self.p) if c in comps.present(manifest)]
            target = next((c for c in listed if _renews(manifest, live, c, spec_only=True)), self.comp)
            self.state = self.state.evolve(spec={"component": target, "pending_components": []})
        renewed = _renews(manifest, live, self.comp)
        if not renewed and self.state.status.phase == Phase.SUCCEEDED:
            # Nothing that makes a revision drifted (only other fields): re-assert them, no canary needed.
            self.actions.append(ApplySpec(manifest, manifest, self.comp, None))
            self.event("DriftCorrected", f"live service differed from Git ({drift}); re-applied Git's spec",
                       warning=True)
            self.schedule(self.later(POLL_S))
            return self.done()
        comp = live.component(self.comp)
        stable = comp.latest_rolledout or comp.latest_ready
        # Untouched by the edit, the canary in flight is still the one to judge: no new revision to wait for.
        baseline = comp.latest_created if renewed else st.baseline_created_revision
        self.actions.append(ApplySpec(manifest, manifest, self.comp, 0))
        self.move(Phase.INITIALIZING, "DriftCorrected",
                  f"live service differed from Git ({drift}); re-applying Git's spec through a {self.comp} canary",
                  warning=True, step=-1, weight=0, canary_revision=None, stable_revision=stable,
                  baseline_created_revision=baseline, failed_analyses=0, inconclusive_in_row=0,
                  rollout_started_at=self.now, ready_at=None, step_started_at=None, hold_since=None,
                  pre_rollout_passed=False, analyses=[], last_verdict=None)
        self.schedule(self.later(POLL_S))
        return self.done()

    # -- starting ----------------------------------------------------------------------------------
    def _create(self, desired: Desired) -> Decision:
        st = self.state.status
        if desired.spec_hash in st.failed_spec_hashes:
            # Recreating it would put a spec that already failed its canary at 100 %: refuse.
            self.log["missing"] = "service not found; its desired spec failed before, so it is not recreated"
            self.event("NotRecreated", "InferenceService is missing and its desired spec (commit "
                       f"{_short(desired.commit)}) failed its canary before: not recreating it", warning=True)
            self.schedule(self.later(IDLE_RECHECK_S))
            return self.done()
        if st.phase in ACTIVE and desired.spec_hash == self.state.spec.spec_hash:
            # Deleted mid-canary: recreating it would serve a spec that was never analysed at 100 %.
            msg = ("InferenceService was deleted mid-rollout; not recreating it with a spec that was never"
                   " analysed; push a new commit to deploy it")
            self.state = self.state.reset(now=self.now, reason="ServiceMissing", message=msg)
            self.move(Phase.FAILED, "ServiceMissing", msg, warning=True,
                      failed_spec_hashes=_add(st.failed_spec_hashes, desired.spec_hash))
            self.state = self.state.evolve(spec={"pending_components": []})
            self.schedule(self.later(IDLE_RECHECK_S))
            return self.done()
        if st.phase not in (Phase.IDLE, Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED):
            self.state = self.state.reset(now=self.now, reason="ServiceMissing",
                                          message="InferenceService disappeared mid-rollout")
        self._take_spec(desired)
        self.actions.append(ApplySpec(desired.manifest, None, self.comp, None, create=True))
        self.move(Phase.SUCCEEDED, "Created", f"created from commit {_short(desired.commit)}: nothing to compare"
                  " against, so no canary", step=-1, weight=100, canary_revision=None)
        self.schedule(self.later(POLL_S))
        return self.done()

    def _take_spec(self, desired: Desired) -> None:
        """Start on `desired` under its policy; the first listed component is the one to watch."""
        first = listed_components(spec_from_snapshot(desired.policy) if desired.policy else self.policy)[0]
        self.state = self.state.evolve(spec={
            "commit": desired.commit, "spec_hash": desired.spec_hash, "last_applied": desired.manifest,
            "policy": desired.policy, "policy_source": desired.policy_source, "component": first,
            "pending_components": [],
        }, promoted_components=[], component_baselines={}, attempt=self.state.status.attempt + 1)

    def _new_desired(self, desired: Desired, live: LiveService) -> Decision:
        st = self.state.status
        if desired.spec_hash in st.failed_spec_hashes:
            if st.phase in _ANALYSING or st.phase == Phase.INITIALIZING:
                return self._abort_for("the desired spec failed before")
            if st.phase == Phase.PROMOTING:
                return self._promoting(live)
            if st.phase == Phase.ROLLING_BACK:
                return self._rolling_back(live)
            self.schedule(self.later(IDLE_RECHECK_S))
            self.log["skipped"] = f"spec {desired.spec_hash} was rolled back before; waiting for a new commit"
            return self.done()
        already = already_applied(self.state.spec.last_applied, desired.manifest, live.manifest)
        listed = listed_components(spec_from_snapshot(desired.policy) if desired.policy else self.policy)
        if already and st.phase not in ACTIVE and all(component_percent(live, c) is None for c in listed):
            # The service already runs what Git wants (first sight, or someone applied it before Git got
            # it): adopt it. A canary would wait forever for a revision that applying it does not make.
            self._take_spec(desired)
            comp = live.component(self.comp)
            self.move(Phase.SUCCEEDED, "Adopted", "live service already matches Git; adopted without a rollout",
                      stable_revision=comp.latest_rolledout or comp.latest_ready, weight=100, step=-1,
                      canary_revision=None)
            self.schedule(self.later(IDLE_RECHECK_S))
            return self.done()
        if live.raw_deployment:
            if st.phase in ACTIVE:
                self.state = self.state.reset(now=self.now, reason="DeploymentModeChanged",
                                              message="service switched to RawDeployment/Standard mid-rollout")
            self._take_spec(desired)
            msg = ("service runs in RawDeployment/Standard mode, where KServe ignores canaryTrafficPercent:"
                   " canaryd cannot canary it; not applied")
            self.move(Phase.FAILED, "UnsupportedDeploymentMode", msg, warning=True)
            self.state = self.state.evolve(
                failed_spec_hashes=_add(st.failed_spec_hashes, desired.spec_hash))
            self.schedule(self.later(IDLE_RECHECK_S))
            return self.done()
        superseding = st.phase in ACTIVE
        in_flight = self.comp if superseding else None
        previous = self.state.spec.last_applied
        before = self.state
        self._take_spec(desired)
        self.state = self.state.evolve(spec={"previous_applied": previous})
        if not comps.sequenced(live.api_version):
            # One canary for the whole service (KFServing v1alpha2): every component moves with it.
            first = listed[0]
            baseline = None if already else live.component(first).latest_created
            if baseline is None and not already and not superseding and self._revision_due(before):
                return self._wait_for_revision(before, desired, first)
            return self._begin(live, first, [], desired.manifest, previous, baseline, {}, superseding)
        old = previous if previous is not None else managed_part(live.manifest)
        plan = comps.plan(listed, old, desired.manifest, exact=previous is not None, in_flight=in_flight)
        if plan.direct:
            self.log["applied_without_canary"] = plan.direct
        if not plan.canary:
            return self._apply_directly(desired, live, previous, plan, in_flight)
        first, rest = plan.canary[0], plan.canary[1:]
        manifest = comps.intermediate(desired.manifest, old, rest, plan.pinned)
        if already:
            # The live service already has this spec (applied by someone, at 0 %): its newest revision is
            # the canary, no baseline to wait past.
            baseline = None
        elif first == in_flight and not comps.template_changes(previous, manifest, first):
            baseline = st.baseline_created_revision  # the superseded canary is still the one to judge
        else:
            baseline = live.component(first).latest_created
            if baseline is None and not superseding and self._revision_due(before):
                return self._wait_for_revision(before, desired, first)
        baselines: dict[str, str] = {}
        for c in rest:
            known = st.baseline_created_revision if c == in_flight else live.component(c).latest_created
            if known is not None and (plan.metadata or c == in_flight):
                baselines[c] = known
        if in_flight is not None and in_flight not in plan.canary and comps.component_spec(
                desired.manifest, in_flight) is not None:
            # The policy no longer canaries it: like any unlisted component, KServe moves it at once.
            self.actions.append(Promote(in_flight))
        return self._begin(live, first, rest, manifest, previous, baseline, baselines, superseding, plan.direct)

    def _revision_due(self, before: RolloutState) -> bool:
        """Whether KServe may still report a revision of the spec in force: within progressDeadline of the
        phase it was applied in. Past that, it never made one (a spec KServe could not turn into a Knative
        Service): the first revision after the new apply is the new spec's, and waiting would block the fix."""
        since = before.status.phase_since
        return since is None or (self.now - since).total_seconds() < self.p.progress_deadline_s

    def _wait_for_revision(self, before: RolloutState, desired: Desired, comp: str) -> Decision:
        """KServe has not reported the component's current revision yet (a service created moments ago,
        or a status not written yet): the canary cannot start. Its candidate is "the first revision created
        after the baseline", so with no baseline the revision serving now would be judged as the canary
        and the new one promoted without analysis (found under API faults: a bad model pushed right after
        its service was created was promoted). Nothing is applied; the next tick looks again."""
        self.state = before
        msg = (f"commit {_short(desired.commit)} waits: KServe has not reported the {comp}'s current revision"
               " (status.components.*.latestCreatedRevision) yet, so there is no baseline to canary against")
        self.log["waiting"] = msg
        if self.state.status.message != msg:
            self.state = self.state.evolve(message=msg)
        self.schedule(self.later(POLL_S))
        return self.done()

    def _begin(self, live: LiveService, first: str, rest: list[str], manifest: dict[str, Any],
               previous: dict[str, Any] | None, baseline: str | None, baselines: dict[str, str],
               superseding: bool, direct: list[str] | None = None) -> Decision:
        """Apply the first changed component's spec at 0 % (the pending ones kept as they were)."""
        desired_commit, spec_hash = self.state.spec.commit, self.state.spec.spec_hash
        self.state = self.state.evolve(spec={"component": first, "pending_components": rest,
                                             "last_applied": manifest})
        self.actions.append(ApplySpec(manifest, previous, first, 0))
        comp = live.component(first)
        stable = comp.latest_rolledout or comp.latest_ready
        then = f"; then {', '.join(rest)}, one after another" if rest else ""
        now_too = f"; {', '.join(direct)} changed too and move at once (not in target.components)" if direct else ""
        self.move(
            Phase.INITIALIZING, "Superseded" if superseding else "RolloutStarted",
            f"{'new commit supersedes the running canary; ' if superseding else ''}"
            f"applying commit {_short(desired_commit)} (spec {spec_hash}) with 0% traffic to the {first};"
            f" stable revision {stable}{then}{now_too}",
            step=-1, weight=0, canary_revision=None, stable_revision=stable,
            baseline_created_revision=baseline, failed_analyses=0, inconclusive_in_row=0,
            rollout_started_at=self.now, ready_at=None, step_started_at=None, hold_since=None,
            pre_rollout_passed=False, analyses=[], last_verdict=None, component_baselines=baselines,
        )
        self.schedule(self.later(POLL_S))
        return self.done()

    def _apply_directly(self, desired: Desired, live: LiveService, previous: dict[str, Any] | None,
                        plan: comps.Plan, in_flight: str | None) -> Decision:
        """No listed component changed: nothing to canary (no new revision of theirs), so apply at once."""
        if in_flight is not None:
            if comps.component_spec(desired.manifest, in_flight) is not None:
                self.actions.append(Promote(in_flight))  # no longer canaried: KServe moves it at once
            self.state = self.state.reset(now=self.now, reason="Superseded",
                                          message="new commit no longer canaries the component in flight")
        self.actions.append(ApplySpec(desired.manifest, previous, self.comp, None))
        what = ", ".join(plan.direct) if plan.direct else "fields that make no new revision"
        comp = live.component(self.comp)
        self.move(Phase.SUCCEEDED, "Applied",
                  f"commit {_short(desired.commit)} changes no component in target.components"
                  f" ({', '.join(listed_components(self.p))}): applied at once without a canary ({what})",
                  stable_revision=comp.latest_rolledout or comp.latest_ready, weight=100, step=-1,
                  canary_revision=None)
        self.schedule(self.later(POLL_S))
        return self.done()

    def _next_component(self, live: LiveService, promoted: str, desired: Desired) -> Decision:
        """The one in flight is promoted: record it, then start the next pending component's canary."""
        st = self.state.status
        done = [*st.promoted_components, self.comp]
        pending = self.state.spec.pending_components
        nxt, rest = pending[0], pending[1:]
        previous = self.state.spec.last_applied or {}
        manifest = comps.intermediate(desired.manifest, previous, rest)  # pins made earlier stay
        comp = live.component(nxt)
        renewed = comps.template_changes(previous, manifest, nxt)
        baseline = comp.latest_created if renewed else st.component_baselines.get(nxt)
        self.move(Phase.INITIALIZING, "Promoted",
                  f"{self.comp} revision {promoted} serves 100% (commit {_short(self.state.spec.commit)});"
                  f" next: {nxt}", stable_revision=promoted, canary_revision=None, step=-1, weight=100,
                  promoted_components=done)
        self.state = self.state.evolve(spec={"component": nxt, "pending_components": rest,
                                             "last_applied": manifest, "previous_applied": previous})
        self.actions.append(ApplySpec(manifest, previous, nxt, 0))
        stable = comp.latest_rolledout or comp.latest_ready
        then = f"; then {', '.join(rest)}" if rest else ""
        self.move(Phase.INITIALIZING, "ComponentStarted",
                  f"{', '.join(done)} promoted; applying the {nxt} of commit {_short(self.state.spec.commit)}"
                  f" with 0% traffic; stable revision {stable}{then}",
                  step=-1, weight=0, canary_revision=None, stable_revision=stable,
                  baseline_created_revision=baseline, failed_analyses=0, inconclusive_in_row=0,
                  rollout_started_at=self.now, ready_at=None, step_started_at=None, hold_since=None,
                  pre_rollout_passed=False)
        self.schedule(self.later(POLL_S))
        return self.done()

    def _abort_for(self, why: str) -> Decision:
        """A desired spec we will not roll out replaced the one in flight: take the canary's traffic away."""
        self.actions.append(Rollback(self.comp))
        self.move(Phase.ROLLING_BACK, "Superseded", f"{why}; taking traffic away from the {self.comp} canary",
                  warning=True, weight=0)
        self.schedule(self.later(POLL_S))
        return self.done()

    # -- phases ------------------------------------------------------------------------------------
    def _initializing(self, live: LiveService) -> Decision:
        st = self.state.status
        manifest = self.state.spec.last_applied or {}
        comp = live.component(self.comp)
        if not subset_matches(manifest, live.manifest) or self.pct(live) != 0:
            # Our spec (at 0 %) is not, or no longer, on the service: a crash between saving the state and
            # patching, or someone else's write. Apply it again, from what was applied before, so removals
            # are sent too. Any revision created meanwhile is not ours: wait past it.
            self.actions.append(ApplySpec(manifest, self.state.spec.previous_applied, self.comp, 0))
            self.log["reapplied"] = True
            self.state = self.state.evolve(baseline_created_revision=comp.latest_created)
            self.schedule(self.later(min(POLL_S, self.p.analysis.every_s)))
            return self._check_deadline(live)
        candidate = ready_candidate(self.state, live)
        p = self.p
        if candidate is not None and p.hooks("pre-rollout") and not st.pre_rollout_passed:
            results = [g for g in self.obs.gates if g.type == "pre-rollout"]
            if not results or any(g.pending for g in results):
                # Not called yet, or no answer yet: wait (progressDeadline bounds it; so does each call's deadline).
                self.schedule(self.later(min(POLL_S, p.analysis.every_s)))
                return self._check_deadline(live)
            failed = [g for g in results if not g.ok]
            if failed:
                self.state = self.state.evolve(canary_revision=candidate)
                return self._rollback("PreRolloutFailed", "; ".join(g.summary for g in failed))
            self.state = self.state.evolve(pre_rollout_passed=True)
            self.event("PreRolloutPassed", "; ".join(g.summary for g in results))
        if candidate is not None:
            first = p.steps[0]
            # A canary started while the previous revision was not Ready yet has no stable one recorded;
            # KServe has rolled it out by now, and the comparisons and the rollback name it.
            rolled = comp.latest_rolledout
            stable = st.stable_revision or (rolled if rolled != candidate else None)
            self.state = self.state.evolve(spec={"previous_applied": None})
            self.actions.append(SetTraffic(self.comp, first))
            self.move(Phase.PROGRESSING, "CanaryReady",
                      f"{self.comp} revision {candidate} is Ready; step 1/{len(p.steps)}: {first}% of traffic",
                      step=0, weight=first, canary_revision=candidate, ready_at=self.now, stable_revision=stable,
                      step_started_at=self.now, step_applied=False, evidence=None, counters={})
            self.schedule(self.later(p.analysis.warmup_s + p.analysis.every_s))
            return self.done()
        self.schedule(self.later(min(POLL_S, p.analysis.every_s)))
        return self._check_deadline(live)

    def _check_deadline(self, live: LiveService) -> Decision:
        st = self.state.status
        p = self.p
        comp = live.component(self.comp)
        candidate = comp.latest_created
        started = st.rollout_started_at or self.now
        if (self.now - started).total_seconds() >= p.progress_deadline_s:
            detail = f"latest created {candidate}, latest ready {comp.latest_ready}"
            # The component's own condition says why (KServe's aggregates only name the failing part).
            kinds = (f"{self.comp.capitalize()}ConfigurationReady", "LatestDeploymentReady", "Ready")
            found = [c for k in kinds if (c := live.conditions.get(k)) is not None and c.message]
            cond = next((c for c in found if c.status != "True"), None)
            if cond is not None:
                detail += f"; {cond.message}"
            return self._rollback("ProgressDeadlineExceeded",
                                  f"new {self.comp} revision not Ready within progressDeadline"
                                  f" {p.progress_deadline} ({detail})")
        self.schedule(self.later(min(POLL_S, p.analysis.every_s)))
        return self.done()

    def _analysing(self, live: LiveService) -> Decision:
        st = self.state.status
        p = self.p
        if not subset_matches(self.state.spec.last_applied or {}, live.manifest):
            # A foreign edit made a new revision, which now takes the canary share (KServe gives it to the
            # newest Ready revision): the analysis would judge the wrong one. Start over with Git's spec.
            return self._correct_drift(live, ", ".join(spec_differences(self.state.spec.last_applied or {},
                                                                         live.manifest)[:8]))
        if self.pct(live) != st.weight:
            # Live traffic differs from the intent (a crash after saving the state, or someone else's
            # write): re-assert it. Absolute, so repeating it is harmless.
            self.actions.append(SetTraffic(self.comp, st.weight))
            self.log["reasserted_weight"] = st.weight
            if self.pct(live) is not None and st.weight not in (0,) and live.reconciled and st.step_applied:
                # Only a percent seen in force and then changed is someone's drift; a step never seen
                # applied is our own unfinished write (a crash between saving and patching).
                drift = f"{self.comp} canaryTrafficPercent is {self.pct(live)}, canaryd set {st.weight}"
                self.state = self.state.evolve(drift_count=st.drift_count + 1, last_drift=drift)
                self.event("DriftCorrected", f"{drift}; set back to {st.weight}%", warning=True)
        request = analysis_request(self.state, p, self.now)
        if self.pct(live) != st.weight and not st.step_applied:
            # The step's traffic was never seen in force, for as long as we cannot tell (after a crash between
            # saving the step and applying it: the whole downtime). Its clock starts now that it is applied:
            # an analysis due now is still judged (a fail is the canary's), but its pass cannot end a step
            # that was never served (found by the crash campaign: 10 % -> 60 % with 30 % applied for
            # milliseconds). Once seen applied, a changed percent is someone else's drift: corrected above,
            # but the clock goes on, or a tool that keeps resetting it would stall the step forever.
            self.state = self.state.evolve(step_started_at=self.now)
        elif self.pct(live) == st.weight and not st.step_applied:
            self.state = self.state.evolve(step_applied=True)
        if request is None:
            if st.next_check_at is None or st.next_check_at <= self.now:
                start = _window_start(self.state, p)
                base = start if start is not None and start > self.now else self.now
                self.schedule(base + timedelta(seconds=p.analysis.every_s))
            return self.done()
        waiting = [g.name for g in self.obs.gates if g.pending]
        if waiting:
            # A gate has not answered yet: the analysis waits for it rather than pass without it, and stays
            # due: the answer re-triggers the tick, which asks for the same calls and gets it. The recheck
            # is the fallback.
            self.log["waiting_for_webhooks"] = waiting
            self.recheck_at = self.later(min(POLL_S, p.analysis.every_s))
            return self.done()
        samples = self.obs.samples
        if samples is None:
            self.schedule(self.later(p.analysis.every_s))
            return self.done()
        judged = judge_analysis(p.analysis, samples, st.evidence, self.obs.counters)
        if judged.evidence is not None:
            self.state = self.state.evolve(evidence=judged.evidence, counters=judged.counters or st.counters)
        verdict = _with_gates(judged.verdict, self.obs.gates)
        rollback_yes = [g for g in self.obs.gates if g.type == "rollback" and g.ok]
        if rollback_yes:
            return self._rollback("RollbackWebhook", "; ".join(g.summary for g in rollback_yes))
        self.state = self.state.with_analysis(AnalysisRecord(
            at=self.now, step=st.step, weight=st.weight, canary_revision=st.canary_revision, verdict=verdict))
        self.log["verdict"] = verdict.summary
        self.schedule(self.later(p.analysis.every_s))
        if verdict.outcome == "fail":
            return self._on_fail(verdict, conclusive=judged.conclusive_fail)
        if verdict.outcome == "inconclusive":
            return self._on_inconclusive(verdict)
        return self._on_pass(verdict)

    def _on_fail(self, verdict: Verdict, *, conclusive: bool = False) -> Decision:
        failed = self.state.status.failed_analyses + 1
        limit = self.p.analysis.failure_limit
        self.state = self.state.evolve(failed_analyses=failed, inconclusive_in_row=0)
        self.event("AnalysisFailed", f"analysis failed ({failed}/{limit}): {verdict.summary}", warning=True)
        if conclusive:
            return self._rollback("AnalysisFailed", f"{self.p.analysis.mode} judge: regression detected"
                                  f" (alpha {self.p.analysis.statistics.alpha:g} over the rollout): {verdict.summary}")
        if failed >= limit:
            return self._rollback("AnalysisFailed",
                                  f"failed analyses ({failed}) reached failureLimit ({limit}): {verdict.summary}")
        return self.done()

    def _on_inconclusive(self, verdict: Verdict) -> Decision:
        st = self.state.status
        a = self.p.analysis
        count = st.inconclusive_in_row + 1
        self.state = self.state.evolve(inconclusive_in_row=count)
        self.event("AnalysisInconclusive", f"analysis inconclusive ({count}/{a.inconclusive_limit}):"
                   f" {verdict.summary}", warning=True)
        if st.phase == Phase.HOLDING:
            held = (self.now - (st.hold_since or self.now)).total_seconds()
            if held >= a.max_hold_s:
                return self._rollback("MaxHoldExceeded",
                                      f"held {held:.0f}s >= maxHold {a.max_hold} without conclusive data")
            return self.done()
        if count >= a.inconclusive_limit:
            why = f"inconclusive analyses in a row ({count}) reached inconclusiveLimit ({a.inconclusive_limit})"
            if a.on_inconclusive == "rollback":
                return self._rollback("InconclusiveLimit", f"{why}; onInconclusive is rollback")
            if st.phase == Phase.PROGRESSING:
                self.move(Phase.HOLDING, "Holding", f"{why}; holding at {st.weight}% (maxHold {a.max_hold})",
                          warning=True, hold_since=self.now)
        return self.done()

    def _on_pass(self, verdict: Verdict) -> Decision:
        st = self.state.status
        p = self.p
        self.state = self.state.evolve(inconclusive_in_row=0)
        self.event("AnalysisPassed", f"analysis passed at {st.weight}%: {verdict.summary}")
        if st.phase == Phase.HOLDING:
            self.move(Phase.PROGRESSING, "Resumed", f"analysis passed again: {verdict.summary}", hold_since=None)
        if st.phase == Phase.WAITING_PROMOTION:
            confirms = [g for g in self.obs.gates if g.type == "confirm-promotion"]
            if p.hooks("confirm-promotion") and confirms and all(g.ok for g in confirms):
                return self._promote("confirm-promotion webhooks said yes: "
                                     + "; ".join(g.summary for g in confirms))
            return self.done()
        elapsed = (self.now - (st.step_started_at or self.now)).total_seconds()
        if elapsed < p.interval_s:
            return self.done()
        nxt = st.step + 1
        if nxt < len(p.steps):
            weight = p.steps[nxt]
            self.actions.append(SetTraffic(self.comp, weight))
            self.state = self.state.evolve(evidence=next_step_evidence(p.analysis, self.state.status.evidence))
            self.move(Phase.PROGRESSING, "StepAdvanced",
                      f"{self.comp} step {nxt + 1}/{len(p.steps)}: {weight}% of traffic; {verdict.summary}",
                      step=nxt, weight=weight, step_started_at=self.now, step_applied=False)
            return self.done()
        if p.gates.confirm_promotion or p.hooks("confirm-promotion"):
            self.move(Phase.WAITING_PROMOTION, "WaitingPromotion",
                      f"all steps passed; waiting for confirmation to promote; {verdict.summary}")
            return self.done()
        return self._promote(f"all {len(p.steps)} steps passed; {verdict.summary}")

    def _promote(self, why: str) -> Decision:
        self.actions.append(Promote(self.comp))
        self.move(Phase.PROMOTING, "Promoting",
                  f"promoting {self.comp} revision {self.state.status.canary_revision} to 100%: {why}",
                  weight=100)
        self.schedule(self.later(POLL_S))
        return self.done()

    def _promoting(self, live: LiveService) -> Decision:
        if self.pct(live) is not None:
            self.actions.append(Promote(self.comp))  # not visible yet, or reset by someone: again
        promoted = _promoted_revision(self.state, live)
        if promoted is not None:
            pending = self.state.spec.pending_components
            desired = self.obs.desired
            if pending and desired is not None and desired.spec_hash == self.state.spec.spec_hash:
                return self._next_component(live, promoted, desired)
            left = ""
            if pending:
                # Git moved on (to a spec that failed before, or away): the rest of this one is not rolled
                # out. Forget its hash, so that Git coming back to it rolls the rest out.
                left = f"; {', '.join(pending)} not rolled out: Git no longer wants spec {self.state.spec.spec_hash}"
                self.log["not_rolled_out"] = pending
            self.move(Phase.SUCCEEDED, "Promoted",
                      f"{self.comp} revision {promoted} serves 100% (commit {_short(self.state.spec.commit)}){left}",
                      stable_revision=promoted, canary_revision=None, step=-1, weight=100,
                      promoted_components=[*self.state.status.promoted_components, self.comp])
            if pending:
                self.state = self.state.evolve(spec={"pending_components": [], "spec_hash": None})
            self.schedule(self.later(IDLE_RECHECK_S))
            return self.done()
        self.schedule(self.later(POLL_S))
        return self.done()

    def _rollback(self, reason: str, message: str) -> Decision:
        st = self.state.status
        self.actions.append(Rollback(self.comp))
        self.move(Phase.ROLLING_BACK, reason, f"rolling back the {self.comp} to {st.stable_revision}: {message}",
                  warning=True,
                  weight=0, failed_spec_hashes=_add(st.failed_spec_hashes, self.state.spec.spec_hash))
        self.schedule(self.later(POLL_S))
        return self.done()

    def _rolling_back(self, live: LiveService) -> Decision:
        st = self.state.status
        comp = live.component(self.comp)
        if self.pct(live) not in (0, None):
            self.actions.append(Rollback(self.comp))
        if self.pct(live) in (0, None) and comp.percent_of(st.canary_revision) == 0:
            spec_hash = self.state.spec.spec_hash
            others = _others_note(st.promoted_components, self.state.spec.pending_components)
            if spec_hash in st.failed_spec_hashes:
                self.move(Phase.FAILED, "RolledBack",
                          f"all {self.comp} traffic on {st.stable_revision}; spec {spec_hash} (commit "
                          f"{_short(self.state.spec.commit)}) will not be retried until Git changes{others}",
                          warning=True)
            else:
                self.move(Phase.ABORTED, "Aborted",
                          f"all {self.comp} traffic on {st.stable_revision}; canary abandoned{others}")
            self.state = self.state.evolve(spec={"pending_components": []})
            self.schedule(self.later(IDLE_RECHECK_S))
            return self.done()
        self.schedule(self.later(POLL_S))
        return self.done()


def _with_gates(verdict: Verdict, gates: list[GateResult]) -> Verdict:
    """A failed `rollout` webhook fails the analysis, with its answer among the reasons."""
    failed = [g for g in gates if g.type == "rollout" and not g.ok]
    if not failed:
        return verdict
    extra = [MetricVerdict(name=f"webhook:{g.name}", outcome="fail", reason=g.summary) for g in failed]
    return verdict.model_copy(update={"outcome": "fail", "metrics": [*verdict.metrics, *extra]})


def _promoted_revision(state: RolloutState, live: LiveService) -> str | None:
    """The revision that serves the promoted spec at 100 %, once the promotion is visible (None before).

    Usually the canary itself (KServe v1beta1). Some APIs promote by making another revision of the same
    spec (KFServing v1alpha2 copies spec.canary into spec.default, whose new revision takes over): then it
    is done when no canary percent is left, the live spec is the one applied, and the rolled-out revision
    is Ready and serves everything.
    """
    st = state.status
    comp = live.component(state.spec.component)
    if comp.latest_rolledout == st.canary_revision and comp.percent_of(st.canary_revision) == 100:
        return st.canary_revision
    rolled = comp.latest_rolledout
    if (component_percent(live, state.spec.component) is None and rolled is not None and comp.latest_ready == rolled
            and comp.percent_of(rolled) == 100 and subset_matches(state.spec.last_applied or {}, live.manifest)):
        return rolled
    return None


def _renews(applied: dict[str, Any], live: LiveService, component: str, *, spec_only: bool = False) -> bool:
    """Re-applying `applied` would make a new revision of `component`: its spec section (or, unless
    `spec_only`, the labels/annotations KServe copies into every revision) differs on the live service."""
    part: dict[str, Any] = {"spec": {component: comps.component_spec(applied, component) or {}}}
    if not spec_only:
        meta = applied.get("metadata") or {}
        part["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    return bool(spec_differences(part, live.manifest))


def _others_note(promoted: list[str], pending: list[str]) -> str:
    """How the other components of a failed or aborted spec were left."""
    note = ""
    if promoted:
        note += f"; {', '.join(promoted)} already promoted and stay{'s' if len(promoted) == 1 else ''} promoted"
    if pending:
        note += f"; {', '.join(pending)} not rolled out (left on the stable revision)"
    return note


def _add(items: list[str], item: str | None) -> list[str]:
    if item is None or item in items:
        return items
    return [*items, item][-20:]


def _short(commit: str | None) -> str:
    return commit[:8] if commit else "?"
