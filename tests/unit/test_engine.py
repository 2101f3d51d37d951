"""The rollout engine as tables: (state, observation, now) -> (phase, status, actions), every transition.

Each row is one tick of `decide`. The scenario is always the same (see engine_fixtures): stable spec v1
runs as revision 1, the canary v2 becomes revision 2, a later commit v3 becomes revision 3. Every row is
also replayed from a persisted-and-reloaded state (restart safety), and a property test drives the
engine with random verdict schedules through a tiny model of KServe's traffic behaviour.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canaryd.analysis.samples import AnalysisSamples
from canaryd.apply import apply_merge_patch, merge_patch
from canaryd.policy import PolicySpec, policy_snapshot
from canaryd.rollout.engine import IDLE_RECHECK_S, POLL_S, analysis_request, decide
from canaryd.rollout.model import (
    Action,
    ApplySpec,
    Condition,
    Decision,
    Desired,
    LiveService,
    Observation,
    Promote,
    Rollback,
    SetTraffic,
)
from canaryd.rollout.state import ALLOWED, IllegalTransition, Phase, RolloutState
from tests.unit.engine_fixtures import (
    COMP,
    ERRORS,
    FEW,
    GOOD,
    NODATA,
    POLICY,
    SLOW,
    T0,
    V2,
    V3,
    at,
    desired,
    effects,
    events,
    initializing,
    kserve_reacts,
    live,
    manifest,
    policy,
    progressing,
    rev,
    roundtrip,
    samples,
    state,
)

ROLLBACK_POLICY = policy(analysis={"onInconclusive": "rollback"})
GATED_POLICY = policy(gates={"confirmPromotion": True})


@dataclass(frozen=True)
class Case:
    """One tick. `status`/`spec` list only the fields the row is about; `events` must be among those emitted."""

    state: RolloutState
    live: LiveService | None
    now: datetime
    phase: Phase
    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    desired: Desired | None = V2
    samples: AnalysisSamples | None = None
    policy: PolicySpec = POLICY

    def decide(self, s: RolloutState | None = None) -> Decision:
        obs = Observation(desired=self.desired, live=self.live, samples=self.samples)
        return decide(self.state if s is None else s, obs, self.policy, self.now)


def row(id: str, **kw: Any) -> ParameterSet:
    return pytest.param(Case(**kw), id=id)


def find(table: list[ParameterSet], id: str) -> Case:
    (case,) = [p.values[0] for p in table if p.id == id]
    assert isinstance(case, Case)
    return case


def check(case: Case) -> Decision:
    d = case.decide()
    assert d.state.status.phase == case.phase, d.state.status.message
    assert effects(d) == case.actions
    for name, want in case.status.items():
        assert getattr(d.state.status, name) == want, name
    for name, want in case.spec.items():
        assert getattr(d.state.spec, name) == want, name
    for ev in case.events:
        assert ev in events(d)
    return d


def soon(now: datetime) -> datetime:
    return now + timedelta(seconds=POLL_S)


# -- first sight -------------------------------------------------------------------------------------

NEW = state(Phase.IDLE, spec=None)

FIRST_SIGHT = [
    row("missing-service-is-created", state=NEW, live=None, now=T0, phase=Phase.SUCCEEDED,
        actions=[ApplySpec(V2.manifest, None, COMP, None, create=True)],
        spec={"spec_hash": V2.spec_hash, "last_applied": V2.manifest, "commit": V2.commit},
        status={"canary_revision": None, "next_check_at": soon(T0)}, events=[("Created", "Normal")]),
    row("matching-service-is-adopted", state=NEW, live=live("v2", created=2, ready=2, rolledout=2), now=T0,
        phase=Phase.SUCCEEDED, actions=[],
        spec={"spec_hash": V2.spec_hash}, status={"stable_revision": rev(2), "weight": 100},
        events=[("Adopted", "Normal")]),
    row("differing-service-starts-at-0", state=NEW,
        live=live("v1", created=3, ready=3, rolledout=2, percent=0), now=T0, phase=Phase.INITIALIZING,
        actions=[ApplySpec(V2.manifest, None, COMP, 0)],
        spec={"spec_hash": V2.spec_hash, "last_applied": V2.manifest},
        status={"baseline_created_revision": rev(3), "stable_revision": rev(2), "weight": 0, "step": -1,
                "canary_revision": None, "rollout_started_at": T0, "next_check_at": soon(T0)},
        events=[("RolloutStarted", "Normal")]),
    row("raw-deployment-refused", state=NEW,
        live=live("v1", created=1, ready=1, rolledout=1, mode="RawDeployment"), now=T0, phase=Phase.FAILED,
        actions=[], status={"failed_spec_hashes": [V2.spec_hash]},
        events=[("UnsupportedDeploymentMode", "Warning")]),
    row("standard-mode-refused", state=NEW,
        live=live("v1", created=1, ready=1, rolledout=1, mode="Standard"), now=T0, phase=Phase.FAILED,
        actions=[], events=[("UnsupportedDeploymentMode", "Warning")]),
    row("raw-failed-stays-quiet", state=state(Phase.FAILED, V2, failed_spec_hashes=[V2.spec_hash]),
        live=live("v1", created=1, ready=1, rolledout=1, mode="RawDeployment"), now=T0, phase=Phase.FAILED,
        actions=[]),
    row("gone-from-git-takes-canary-traffic-away", state=progressing(), desired=None, live=live(percent=10),
        now=at(100), phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)], status={"weight": 0}),
]


@pytest.mark.parametrize("case", FIRST_SIGHT)
def test_first_sight(case: Case) -> None:
    check(case)


def test_raw_deployment_message_is_clear() -> None:
    d = check(find(FIRST_SIGHT, "raw-deployment-refused"))
    assert "RawDeployment" in d.state.status.message and "canaryTrafficPercent" in d.state.status.message


# -- Initializing -------------------------------------------------------------------------------------

INITIALIZING = [
    row("revision-not-created-yet", state=initializing(),
        live=live(created=1, ready=1, rolledout=1, percent=0, generation=2, observed=1), now=at(2),
        phase=Phase.INITIALIZING, actions=[], status={"weight": 0, "next_check_at": soon(at(2))}),
    row("reconciled-but-no-new-revision", state=initializing(),
        live=live(created=1, ready=1, rolledout=1, percent=0), now=at(2), phase=Phase.INITIALIZING, actions=[]),
    row("HAZARD-new-revision-not-ready-old-one-is", state=initializing(),
        live=live(created=2, ready=1, rolledout=1, percent=0), now=at(20), phase=Phase.INITIALIZING,
        actions=[], status={"weight": 0, "canary_revision": None, "step": -1}),
    row("HAZARD-rolled-back-revision-is-ready-new-one-is-not",
        state=state(Phase.INITIALIZING, V3, step=-1, weight=0, stable_revision=rev(1),
                     baseline_created_revision=rev(2), rollout_started_at=T0, failed_spec_hashes=[V2.spec_hash]),
        desired=V3, live=live("v3", created=3, ready=2, rolledout=1, percent=0), now=at(20),
        phase=Phase.INITIALIZING, actions=[], status={"weight": 0, "canary_revision": None}),
    # Real KServe's observedGeneration is the Knative Service's generation (kserve#6081): it may lag the
    # InferenceService's forever, so it must not hold a Ready canary back.
    row("ready-although-observed-generation-lags", state=initializing(),
        live=live(created=2, ready=2, rolledout=1, percent=0, generation=3, observed=2), now=at(20),
        phase=Phase.PROGRESSING, actions=[SetTraffic(COMP, 10)]),
    row("ready-moves-to-first-step", state=initializing(),
        live=live(created=2, ready=2, rolledout=1, percent=0), now=at(30), phase=Phase.PROGRESSING,
        actions=[SetTraffic(COMP, 10)],
        status={"step": 0, "weight": 10, "canary_revision": rev(2), "stable_revision": rev(1),
                "ready_at": at(30), "step_started_at": at(30), "next_check_at": at(30 + 30 + 10)},
        events=[("CanaryReady", "Normal")]),
    row("deadline-not-yet", state=initializing(), live=live(created=2, ready=1, rolledout=1, percent=0),
        now=at(599), phase=Phase.INITIALIZING, actions=[]),
    row("deadline-exceeded-rolls-back", state=initializing(),
        live=live(created=2, ready=1, rolledout=1, percent=0, conditions={
            "Ready": Condition(status="False"),
            "LatestDeploymentReady": Condition(status="False", message="RevisionFailed: image pull backoff")}),
        now=at(600), phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)],
        status={"weight": 0, "failed_spec_hashes": [V2.spec_hash], "next_check_at": soon(at(600))},
        events=[("ProgressDeadlineExceeded", "Warning")]),
    row("spec-lost-in-crash-is-reapplied", state=initializing(),
        live=live("v1", created=1, ready=1, rolledout=1, percent=None, generation=1), now=at(2),
        phase=Phase.INITIALIZING, actions=[ApplySpec(V2.manifest, None, COMP, 0)]),
    row("foreign-percent-is-reset-to-0", state=initializing(),
        live=live(created=2, ready=1, rolledout=1, percent=30), now=at(2), phase=Phase.INITIALIZING,
        actions=[ApplySpec(V2.manifest, None, COMP, 0)]),
]


@pytest.mark.parametrize("case", INITIALIZING)
def test_initializing(case: Case) -> None:
    check(case)


def test_deadline_message_carries_kserve_reason() -> None:
    d = check(find(INITIALIZING, "deadline-exceeded-rolls-back"))
    assert "image pull backoff" in d.state.status.message
    assert "10m" in d.state.status.message


# -- Progressing, Holding, WaitingPromotion ----------------------------------------------------------
# READY_AT = 60 s, warmup 30 s: the first window starts at 90 s; interval 60 s: step 0 may end at 120 s.

L10, L50 = live(percent=10), live(percent=50)
STEP1 = 120.0  # when step 1 started in the rows below

ANALYSING = [
    row("not-due-ignores-samples", state=progressing(next_check_at=at(125)), live=L10, now=at(120),
        samples=ERRORS, phase=Phase.PROGRESSING, actions=[],
        status={"failed_analyses": 0, "analyses_run": 0, "next_check_at": at(125)}),
    row("warmup-no-analysis", state=progressing(), live=L10, now=at(80), samples=ERRORS,
        phase=Phase.PROGRESSING, actions=[],
        status={"analyses_run": 0, "failed_analyses": 0, "next_check_at": at(90 + 10)}),
    row("pass-before-interval-stays", state=progressing(), live=L10, now=at(100), samples=GOOD,
        phase=Phase.PROGRESSING, actions=[],
        status={"step": 0, "weight": 10, "analyses_run": 1, "next_check_at": at(110)}),
    row("pass-after-interval-advances", state=progressing(inconclusive_in_row=2), live=L10, now=at(120),
        samples=GOOD, phase=Phase.PROGRESSING, actions=[SetTraffic(COMP, 50)],
        status={"step": 1, "weight": 50, "step_started_at": at(120), "inconclusive_in_row": 0,
                "next_check_at": at(130)},
        events=[("StepAdvanced", "Normal")]),
    row("last-step-pass-before-interval-stays", state=progressing(step=1, started=STEP1), live=L50,
        now=at(170), samples=GOOD, phase=Phase.PROGRESSING, actions=[], status={"step": 1, "weight": 50}),
    row("last-step-pass-promotes", state=progressing(step=1, started=STEP1), live=L50, now=at(180),
        samples=GOOD, phase=Phase.PROMOTING, actions=[Promote(COMP)],
        status={"weight": 100, "canary_revision": rev(2), "next_check_at": soon(at(180))},
        events=[("Promoting", "Normal")]),
    row("confirm-gate-waits", state=progressing(step=1, started=STEP1, pol=GATED_POLICY), live=L50,
        now=at(180), samples=GOOD, phase=Phase.WAITING_PROMOTION, actions=[], status={"weight": 50},
        events=[("WaitingPromotion", "Normal")]),
    row("fail-below-limit-counted", state=progressing(inconclusive_in_row=2), live=L10, now=at(100),
        samples=ERRORS, phase=Phase.PROGRESSING, actions=[],
        status={"failed_analyses": 1, "inconclusive_in_row": 0, "weight": 10},
        events=[("AnalysisFailed", "Warning")]),
    row("fail-at-limit-rolls-back", state=progressing(failed_analyses=1), live=L10, now=at(100), samples=SLOW,
        phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)],
        status={"failed_analyses": 2, "weight": 0, "failed_spec_hashes": [V2.spec_hash]},
        events=[("AnalysisFailed", "Warning")]),
    row("fail-counts-across-steps", state=progressing(step=1, started=STEP1, failed_analyses=1), live=L50,
        now=at(140), samples=ERRORS, phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)]),
    row("no-data-below-limit", state=progressing(), live=L10, now=at(100), samples=NODATA,
        phase=Phase.PROGRESSING, actions=[], status={"inconclusive_in_row": 1, "failed_analyses": 0},
        events=[("AnalysisInconclusive", "Warning")]),
    row("too-few-requests-never-advance", state=progressing(), live=L10, now=at(300), samples=FEW,
        phase=Phase.PROGRESSING, actions=[], status={"step": 0, "weight": 10, "inconclusive_in_row": 1}),
    row("inconclusive-limit-holds", state=progressing(inconclusive_in_row=2), live=L10, now=at(100),
        samples=NODATA, phase=Phase.HOLDING, actions=[],
        status={"hold_since": at(100), "inconclusive_in_row": 3, "weight": 10},
        events=[("Holding", "Warning")]),
    row("inconclusive-limit-rolls-back", state=progressing(inconclusive_in_row=2, pol=ROLLBACK_POLICY),
        live=L10, now=at(100), samples=FEW, phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)],
        status={"weight": 0, "failed_spec_hashes": [V2.spec_hash]}, events=[("InconclusiveLimit", "Warning")]),
    row("holding-pass-resumes", state=progressing(Phase.HOLDING, hold_since=at(90), inconclusive_in_row=3),
        live=L10, now=at(100), samples=GOOD, phase=Phase.PROGRESSING, actions=[],
        status={"hold_since": None, "inconclusive_in_row": 0, "step": 0}, events=[("Resumed", "Normal")]),
    row("holding-pass-after-interval-resumes-and-advances",
        state=progressing(Phase.HOLDING, hold_since=at(90), inconclusive_in_row=3), live=L10, now=at(120),
        samples=GOOD, phase=Phase.PROGRESSING, actions=[SetTraffic(COMP, 50)], status={"step": 1, "weight": 50}),
    row("holding-inconclusive-within-max-hold",
        state=progressing(Phase.HOLDING, hold_since=at(100), inconclusive_in_row=3), live=L10, now=at(399),
        samples=NODATA, phase=Phase.HOLDING, actions=[], status={"inconclusive_in_row": 4, "weight": 10}),
    row("holding-beyond-max-hold-rolls-back",
        state=progressing(Phase.HOLDING, hold_since=at(100), inconclusive_in_row=3), live=L10, now=at(400),
        samples=NODATA, phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)],
        status={"weight": 0, "failed_spec_hashes": [V2.spec_hash]}, events=[("MaxHoldExceeded", "Warning")]),
    row("holding-fail-counted", state=progressing(Phase.HOLDING, hold_since=at(90), inconclusive_in_row=3),
        live=L10, now=at(100), samples=ERRORS, phase=Phase.HOLDING, actions=[],
        status={"failed_analyses": 1, "inconclusive_in_row": 0}),
    row("waiting-promotion-pass-does-not-promote",
        state=progressing(Phase.WAITING_PROMOTION, step=1, started=STEP1, pol=GATED_POLICY), live=L50,
        now=at(300), samples=GOOD, phase=Phase.WAITING_PROMOTION, actions=[], status={"weight": 50}),
    row("waiting-promotion-fail-at-limit-rolls-back",
        state=progressing(Phase.WAITING_PROMOTION, step=1, started=STEP1, pol=GATED_POLICY, failed_analyses=1),
        live=L50, now=at(300), samples=ERRORS, phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)]),
    row("waiting-promotion-inconclusive-stays",
        state=progressing(Phase.WAITING_PROMOTION, step=1, started=STEP1, pol=GATED_POLICY,
                          inconclusive_in_row=5), live=L50, now=at(300), samples=NODATA,
        phase=Phase.WAITING_PROMOTION, actions=[]),
    row("live-percent-reset-is-reasserted", state=progressing(next_check_at=at(125)), live=live(percent=0),
        now=at(120), phase=Phase.PROGRESSING, actions=[SetTraffic(COMP, 10)]),
    row("live-percent-removed-is-reasserted", state=progressing(next_check_at=at(125)),
        live=live(percent=None), now=at(120), phase=Phase.PROGRESSING, actions=[SetTraffic(COMP, 10)]),
    # The step's traffic was not in force (a crash between saving it and applying it): it is re-asserted and
    # its clock restarts, rather than passing a step that was never served (see test_crash_invariants).
    row("reassert-restarts-the-step", state=progressing(), live=live(percent=0), now=at(120), samples=GOOD,
        phase=Phase.PROGRESSING, actions=[SetTraffic(COMP, 10)],
        status={"weight": 10, "step": 0, "step_started_at": at(120)}),
    row("holding-reasserts-its-weight", state=progressing(Phase.HOLDING, hold_since=at(90),
                                                          next_check_at=at(125)),
        live=live(percent=25), now=at(120), phase=Phase.HOLDING, actions=[SetTraffic(COMP, 10)]),
]


@pytest.mark.parametrize("case", ANALYSING)
def test_analysing(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", ANALYSING)
def test_samples_are_judged_exactly_when_analysis_is_due(case: Case) -> None:
    """The controller asks Prometheus only when `analysis_request` says so; decide must agree with it."""
    due = analysis_request(case.state, case.policy, case.now) is not None
    d = case.decide()
    judged = d.state.status.analyses_run - case.state.status.analyses_run
    assert judged == (1 if due and case.samples is not None else 0)


def test_analysis_record_keeps_the_numbers() -> None:
    d = progressing_tick(now=at(100), samples_=ERRORS)
    record = d.state.status.analyses[-1]
    assert (record.at, record.step, record.weight, record.canary_revision) == (at(100), 0, 10, rev(2))
    assert record.verdict.outcome == "fail"
    assert "error rate 0.2 > max 0.01" in (d.state.status.last_verdict or "")


def progressing_tick(now: datetime, samples_: AnalysisSamples, s: RolloutState | None = None) -> Decision:
    return decide(s or progressing(), Observation(desired=V2, live=L10, samples=samples_), POLICY, now)


# -- analysis_request ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("s", "now", "window"),
    [
        pytest.param(progressing(), at(100), 10.0, id="window-starts-after-warmup"),
        pytest.param(progressing(step=1, started=STEP1), at(150), 30.0, id="window-starts-at-step-start"),
        pytest.param(progressing(Phase.HOLDING), at(200), 110.0, id="holding-analyses"),
        pytest.param(progressing(Phase.WAITING_PROMOTION, step=1, started=STEP1), at(200), 80.0,
                     id="waiting-promotion-analyses"),
        pytest.param(progressing(), at(90), None, id="warmup-end-is-not-yet"),
        pytest.param(progressing(), at(60), None, id="in-warmup"),
        pytest.param(progressing(next_check_at=at(101)), at(100), None, id="not-due"),
        pytest.param(initializing(), at(100), None, id="initializing"),
        pytest.param(progressing(Phase.PROMOTING), at(200), None, id="promoting"),
        pytest.param(progressing(Phase.ROLLING_BACK), at(200), None, id="rolling-back"),
        pytest.param(state(Phase.SUCCEEDED, V2), at(200), None, id="succeeded"),
    ],
)
def test_analysis_request(s: RolloutState, now: datetime, window: float | None) -> None:
    req = analysis_request(s, POLICY, now)
    if window is None:
        assert req is None
        return
    assert req is not None
    assert (req.namespace, req.service, req.canary_revision, req.stable_revision) == (
        "models", "iris", rev(2), rev(1))
    assert req.window_s == window


# -- Promoting -------------------------------------------------------------------------------------------

PROMOTING_STATE = progressing(Phase.PROMOTING, step=1, started=STEP1, weight=100)

PROMOTING = [
    row("promote-not-visible-is-reissued", state=PROMOTING_STATE, live=L50, now=at(190),
        phase=Phase.PROMOTING, actions=[Promote(COMP)], status={"next_check_at": soon(at(190))}),
    row("kserve-not-caught-up-waits", state=PROMOTING_STATE,
        live=live(created=2, ready=2, rolledout=1, percent=None, traffic={1: 50, 2: 50}), now=at(190),
        phase=Phase.PROMOTING, actions=[]),
    row("rolled-out-at-100-succeeds", state=PROMOTING_STATE,
        live=live(created=2, ready=2, rolledout=2, previous=1, percent=None), now=at(190),
        phase=Phase.SUCCEEDED, actions=[],
        status={"stable_revision": rev(2), "canary_revision": None, "weight": 100, "step": -1,
                "next_check_at": at(190 + IDLE_RECHECK_S)},
        events=[("Promoted", "Normal")]),
]


@pytest.mark.parametrize("case", PROMOTING)
def test_promoting(case: Case) -> None:
    check(case)


# -- RollingBack, Failed, retry rules -------------------------------------------------------------------

ROLLING_BACK_STATE = progressing(Phase.ROLLING_BACK, weight=0, failed_spec_hashes=[V2.spec_hash])
ROLLED_BACK = live(created=2, ready=2, rolledout=1, percent=0)
FAILED_STATE = ROLLING_BACK_STATE.evolve(phase=Phase.FAILED)

ROLLING_BACK = [
    row("rollback-not-visible-is-reissued", state=ROLLING_BACK_STATE, live=L10, now=at(200),
        phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)]),
    row("kserve-still-routes-to-canary-waits", state=ROLLING_BACK_STATE,
        live=live(created=2, ready=2, rolledout=1, percent=0, traffic={1: 90, 2: 10}), now=at(200),
        phase=Phase.ROLLING_BACK, actions=[]),
    row("rolled-back-fails", state=ROLLING_BACK_STATE, live=ROLLED_BACK, now=at(200), phase=Phase.FAILED,
        actions=[], status={"failed_spec_hashes": [V2.spec_hash], "next_check_at": at(200 + IDLE_RECHECK_S)},
        events=[("RolledBack", "Warning")]),
    row("abandoned-canary-aborts", state=ROLLING_BACK_STATE.evolve(failed_spec_hashes=[]), live=ROLLED_BACK,
        now=at(200), phase=Phase.ABORTED, actions=[], events=[("Aborted", "Normal")]),
    row("failed-spec-not-retried", state=FAILED_STATE, live=ROLLED_BACK, now=at(900), phase=Phase.FAILED,
        actions=[]),
    row("failed-spec-not-retried-after-another-commit",
        state=state(Phase.SUCCEEDED, V3, stable_revision=rev(3), failed_spec_hashes=[V2.spec_hash]),
        live=live("v3", created=3, ready=3, rolledout=3), desired=V2, now=at(900), phase=Phase.SUCCEEDED,
        actions=[]),
    row("failed-spec-not-recreated-when-service-deleted", state=FAILED_STATE, live=None, now=at(900),
        phase=Phase.FAILED, actions=[], events=[("NotRecreated", "Warning")]),
    row("new-commit-after-failure-starts-again", state=FAILED_STATE, live=ROLLED_BACK, desired=V3,
        now=at(900), phase=Phase.INITIALIZING, actions=[ApplySpec(V3.manifest, V2.manifest, COMP, 0)],
        spec={"spec_hash": V3.spec_hash, "last_applied": V3.manifest},
        status={"baseline_created_revision": rev(2), "stable_revision": rev(1), "failed_analyses": 0,
                "failed_spec_hashes": [V2.spec_hash], "rollout_started_at": at(900)},
        events=[("RolloutStarted", "Normal")]),
    row("new-commit-after-failure-recreates-deleted-service", state=FAILED_STATE, live=None, desired=V3,
        now=at(900), phase=Phase.SUCCEEDED, actions=[ApplySpec(V3.manifest, None, COMP, None, create=True)]),
]


@pytest.mark.parametrize("case", ROLLING_BACK)
def test_rolling_back_and_failed(case: Case) -> None:
    check(case)


# -- superseding ------------------------------------------------------------------------------------------

IN_FLIGHT = {
    Phase.INITIALIZING: initializing(),
    Phase.PROGRESSING: progressing(step=1, started=STEP1, failed_analyses=1, inconclusive_in_row=2),
    Phase.HOLDING: progressing(Phase.HOLDING, hold_since=at(100), failed_analyses=1, inconclusive_in_row=4),
    Phase.WAITING_PROMOTION: progressing(Phase.WAITING_PROMOTION, step=1, started=STEP1, pol=GATED_POLICY),
    Phase.PROMOTING: PROMOTING_STATE,
    Phase.ROLLING_BACK: ROLLING_BACK_STATE,
}

SUPERSEDING = [
    row(f"new-commit-during-{phase}", state=s, live=live(created=2, ready=2, rolledout=1, percent=s.status.weight
                                                          if s.status.weight not in (0, 100) else 0),
        desired=V3, now=at(300), phase=Phase.INITIALIZING, actions=[ApplySpec(V3.manifest, V2.manifest, COMP, 0)],
        spec={"spec_hash": V3.spec_hash, "commit": V3.commit},
        status={"step": -1, "weight": 0, "canary_revision": None, "failed_analyses": 0, "inconclusive_in_row": 0,
                "hold_since": None, "ready_at": None, "step_started_at": None, "rollout_started_at": at(300),
                "baseline_created_revision": rev(2), "stable_revision": rev(1)},
        events=[("Superseded", "Normal")])
    for phase, s in IN_FLIGHT.items()
]

V3_IN_FLIGHT = state(Phase.PROGRESSING, V3, step=0, weight=10, stable_revision=rev(1), canary_revision=rev(3),
                     baseline_created_revision=rev(2), rollout_started_at=T0, ready_at=at(60),
                     step_started_at=at(60), failed_spec_hashes=[V2.spec_hash])
V3_LIVE = live("v3", created=3, ready=3, rolledout=1, percent=10)
V3_ROLLED_BACK = live("v3", created=3, ready=3, rolledout=1, percent=0)

SUPERSEDING += [
    row("return-to-failed-spec-takes-canary-traffic-away", state=V3_IN_FLIGHT, live=V3_LIVE, desired=V2,
        now=at(100), samples=GOOD, phase=Phase.ROLLING_BACK, actions=[Rollback(COMP)],
        spec={"spec_hash": V3.spec_hash}, status={"weight": 0, "failed_spec_hashes": [V2.spec_hash],
                                                   "analyses_run": 0},
        events=[("Superseded", "Warning")]),
    row("return-to-failed-spec-then-aborts", state=V3_IN_FLIGHT.evolve(phase=Phase.ROLLING_BACK, weight=0),
        live=V3_ROLLED_BACK, desired=V2, now=at(102), phase=Phase.ABORTED, actions=[],
        status={"failed_spec_hashes": [V2.spec_hash]}),
    row("return-to-failed-spec-then-stays-quiet", state=V3_IN_FLIGHT.evolve(phase=Phase.ABORTED, weight=0),
        live=V3_ROLLED_BACK, desired=V2, now=at(200), phase=Phase.ABORTED, actions=[]),
    row("return-to-failed-spec-while-promoting-finishes-promotion",
        state=V3_IN_FLIGHT.evolve(phase=Phase.PROMOTING, weight=100, step=0),
        live=live("v3", created=3, ready=3, rolledout=3, previous=1), desired=V2, now=at(200),
        phase=Phase.SUCCEEDED, actions=[], status={"stable_revision": rev(3)}),
]


@pytest.mark.parametrize("case", SUPERSEDING)
def test_superseding(case: Case) -> None:
    check(case)


# -- policy snapshot ----------------------------------------------------------------------------------------

GIT_POLICY = policy(steps=[20, 40, 60], interval="5m", analysis={"warmup": "0s", "failureLimit": 1})


def test_rollout_in_flight_keeps_its_policy_snapshot() -> None:
    # Git now has another policy (desired carries it, and it is the `policy` argument), same spec.
    now_git = desired("v2", GIT_POLICY)
    assert now_git.spec_hash == V2.spec_hash
    s = progressing()
    assert analysis_request(s, GIT_POLICY, at(70)) is None  # snapshot's 30 s warmup, not Git's 0 s

    d = decide(s, Observation(desired=now_git, live=L10, samples=GOOD), GIT_POLICY, at(120))
    assert effects(d) == [SetTraffic(COMP, 50)]  # snapshot steps [10, 50] and 1m interval, not [20,40,60]/5m

    d = decide(s, Observation(desired=now_git, live=L10, samples=ERRORS), GIT_POLICY, at(120))
    assert d.state.status.phase == Phase.PROGRESSING  # snapshot failureLimit 2, not Git's 1
    assert d.state.spec.policy == policy_snapshot(POLICY)


def test_next_rollout_takes_the_new_policy() -> None:
    s = state(Phase.SUCCEEDED, V2, stable_revision=rev(2))
    v3 = desired("v3", GIT_POLICY)
    d = decide(s, Observation(desired=v3, live=live("v2", created=2, ready=2, rolledout=2)), GIT_POLICY, at(0))
    assert d.state.spec.policy == policy_snapshot(GIT_POLICY)
    d = decide(d.state, Observation(desired=v3, live=live("v3", created=3, ready=3, rolledout=2, percent=0)),
               POLICY, at(10))
    assert effects(d) == [SetTraffic(COMP, 20)]


# -- restart safety -----------------------------------------------------------------------------------------

ALL_ROWS = [*FIRST_SIGHT, *INITIALIZING, *ANALYSING, *PROMOTING, *ROLLING_BACK, *SUPERSEDING]


@pytest.mark.parametrize("case", ALL_ROWS)
def test_decision_from_reloaded_state_is_the_same(case: Case) -> None:
    fresh, reloaded = case.decide(), case.decide(roundtrip(case.state))
    assert reloaded.actions == fresh.actions
    assert reloaded.state.for_storage() == fresh.state.for_storage()
    assert reloaded.log == fresh.log
    # And what it persists reloads to itself, so the next tick starts from the same place.
    assert roundtrip(fresh.state).for_storage() == fresh.state.for_storage()


# -- the phase table ------------------------------------------------------------------------------------------

PAIRS = list(itertools.product(Phase, Phase))


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition_table(src: Phase, dst: Phase) -> None:
    s = state(src, V2)
    if dst in ALLOWED[src]:
        moved = s.transition(dst, now=at(5), reason="Test", message="m", weight=7)
        assert moved.status.phase == dst and moved.status.weight == 7
        assert moved.status.history[-1].from_phase == src
        assert moved.status.phase_since == (at(5) if dst != src else s.status.phase_since)
    else:
        with pytest.raises(IllegalTransition, match=f"{src} -> {dst}"):
            s.transition(dst, now=at(5), reason="Test")


@pytest.mark.parametrize(("src", "dst"), [
    (Phase.SUCCEEDED, Phase.PROGRESSING), (Phase.FAILED, Phase.PROMOTING), (Phase.IDLE, Phase.PROGRESSING),
    (Phase.ROLLING_BACK, Phase.PROGRESSING), (Phase.PROMOTING, Phase.ROLLING_BACK),
    (Phase.INITIALIZING, Phase.PROMOTING), (Phase.WAITING_PROMOTION, Phase.PROGRESSING),
])
def test_named_illegal_transitions(src: Phase, dst: Phase) -> None:
    with pytest.raises(IllegalTransition):
        state(src, V2).transition(dst, now=T0, reason="Test")


# -- property: random verdict schedules -----------------------------------------------------------------------

OUTCOME = {"good": "pass", "errors": "fail", "slow": "fail", "nodata": "inconclusive", "few": "inconclusive"}
POLICIES = [
    POLICY,
    ROLLBACK_POLICY,
    GATED_POLICY,
    policy(steps=[5, 25, 50, 75], analysis={"failureLimit": 3, "inconclusiveLimit": 2, "maxHold": "1m"}),
    policy(steps=[1, 99], interval="10s", analysis={"warmup": "0s", "failureLimit": 1}),
]


@dataclass
class Run:
    """A simulated rollout: every tick at the state's next check, KServe applying each action at once."""

    pol: PolicySpec
    state: RolloutState
    live: LiveService
    now: datetime
    outcomes: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)  # each SetTraffic that raised the weight
    promoted: bool = False


def simulate(kinds: list[str], pol: PolicySpec) -> Run:
    # The rollout starts with the canary becoming Ready; Git's policy (the `policy` argument) differs from
    # the snapshot on purpose: only the snapshot may govern.
    start = initializing(pol=pol)
    svc = live(created=2, ready=2, rolledout=1, percent=0)
    first = decide(start, Observation(desired=V2, live=svc, samples=None), GIT_POLICY, at(30))
    run = Run(pol, first.state, kserve_reacts(svc, first.actions), at(30), weights=[pol.steps[0]])
    todo = iter(kinds)
    for _ in range(4 * len(kinds) + 20):
        if run.state.status.phase in (Phase.SUCCEEDED, Phase.FAILED):
            break
        run.now = max(run.now + timedelta(seconds=1), run.state.status.next_check_at or run.now)
        kind = None
        if analysis_request(run.state, GIT_POLICY, run.now) is not None:
            kind = next(todo, None)
            if kind is None:
                break
        step_once(run, kind)
    return run


def step_once(run: Run, kind: str | None) -> None:
    before = run.state
    obs = Observation(desired=V2, live=run.live,
                      samples=None if kind is None else samples(kind, window_s=10.0))
    d = decide(before, obs, GIT_POLICY, run.now)
    again = decide(roundtrip(before), obs, GIT_POLICY, run.now)
    assert again.actions == d.actions and again.state.for_storage() == d.state.for_storage()

    outcome = OUTCOME[kind] if kind is not None else None
    if outcome is not None:
        run.outcomes.append(outcome)
    steps = run.pol.steps
    for action in effects(d):
        if isinstance(action, Promote):
            assert outcome == "pass" or before.status.phase == Phase.PROMOTING
            run.promoted = True
        if isinstance(action, SetTraffic):
            assert action.percent in steps
            if action.percent > before.status.weight:
                assert outcome == "pass", "traffic moved up without a passing analysis"
                run.weights.append(action.percent)
    new = d.state.status
    assert new.weight in {*steps, 0, 100}
    if new.phase in (Phase.PROGRESSING, Phase.HOLDING, Phase.WAITING_PROMOTION):
        assert new.step in (before.status.step, before.status.step + 1)
        assert new.weight == steps[new.step]
        if new.step != before.status.step:
            assert outcome == "pass"
    if new.phase == Phase.PROMOTING and before.status.phase != Phase.PROMOTING:
        assert outcome == "pass" and before.status.step == len(steps) - 1
    run.state, run.live = d.state, kserve_reacts(run.live, d.actions)


KINDS = st.sampled_from(sorted(OUTCOME))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(KINDS, max_size=40), pol=st.sampled_from(POLICIES))
def test_random_verdicts_never_skip_or_promote_without_a_pass(kinds: list[str], pol: PolicySpec) -> None:
    run = simulate(kinds, pol)
    # Weights only ever rose through the policy's steps, in order, without skipping one.
    assert run.weights == pol.steps[: len(run.weights)]
    if run.promoted:
        assert run.weights == pol.steps and run.outcomes.count("pass") >= len(pol.steps)
    if run.state.status.phase == Phase.FAILED:
        assert V2.spec_hash in run.state.status.failed_spec_hashes
        assert run.live.canary_percent == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from(["nodata", "few"]), min_size=1, max_size=80),
       pol=st.sampled_from(POLICIES))
def test_never_promote_on_no_data(kinds: list[str], pol: PolicySpec) -> None:
    run = simulate(kinds, pol)
    assert not run.promoted
    assert run.weights == [pol.steps[0]]
    assert run.state.status.phase not in (Phase.PROMOTING, Phase.SUCCEEDED)
    assert run.state.status.weight in (pol.steps[0], 0)


def test_a_good_canary_goes_all_the_way() -> None:
    run = simulate(["good"] * 30, POLICY)
    assert run.state.status.phase == Phase.SUCCEEDED
    assert run.weights == [10, 50] and run.promoted
    assert run.state.status.stable_revision == rev(2)
    assert [h.reason for h in run.state.status.history] == ["CanaryReady", "StepAdvanced", "Promoting",
                                                             "Promoted"]


def test_a_bad_canary_is_rolled_back_at_the_failure_limit() -> None:
    run = simulate(["errors"] * 10, POLICY)
    assert run.state.status.phase == Phase.FAILED
    assert run.outcomes == ["fail", "fail"]
    assert run.live.component(COMP).percent_of(rev(2)) == 0


# -- known bugs / open questions (xfail strict: they turn red when fixed, so the marker gets removed) ---------

def test_initializing_reasserts_zero_when_percent_field_removed() -> None:
    d = Case(state=initializing(), live=live(created=2, ready=1, rolledout=1, percent=None), now=at(5),
             phase=Phase.INITIALIZING).decide()
    assert any(isinstance(a, ApplySpec) and a.canary_percent == 0 for a in d.actions)


def test_initializing_does_not_take_a_foreign_revision_as_canary() -> None:
    foreign = live(created=3, ready=3, rolledout=1, percent=0, body=manifest("v2-hotfix"))
    d = Case(state=initializing(), live=foreign, now=at(20), phase=Phase.INITIALIZING).decide()
    assert any(isinstance(a, ApplySpec) for a in d.actions)
    assert d.state.status.phase == Phase.INITIALIZING
    assert not any(isinstance(a, SetTraffic) for a in d.actions)


V1_WITH_MAX = desired("v1", body=manifest("v1", maxReplicas=4))


def test_first_apply_removes_fields_dropped_in_git() -> None:
    svc = live("v1", created=1, ready=1, rolledout=1, body=V1_WITH_MAX.manifest)
    d = decide(state(Phase.SUCCEEDED, V1_WITH_MAX, stable_revision=rev(1)),
               Observation(desired=V2, live=svc), POLICY, T0)
    (apply,) = effects(d)
    assert isinstance(apply, ApplySpec)
    patched = apply_merge_patch(svc.manifest, merge_patch(apply.last_applied, apply.manifest))
    assert "maxReplicas" not in patched["spec"]["predictor"]


def test_reapply_after_crash_still_removes_fields_dropped_in_git() -> None:
    svc = live("v1", created=1, ready=1, rolledout=1, body=V1_WITH_MAX.manifest)
    first = decide(state(Phase.SUCCEEDED, V1_WITH_MAX, stable_revision=rev(1)),
                   Observation(desired=V2, live=svc), POLICY, T0)
    # crash: the ApplySpec was never executed; the saved state is reloaded by the next leader
    d = decide(roundtrip(first.state), Observation(desired=V2, live=svc), POLICY, at(2))
    (apply,) = effects(d)
    assert isinstance(apply, ApplySpec)
    patched = apply_merge_patch(svc.manifest, merge_patch(apply.last_applied, apply.manifest))
    assert "maxReplicas" not in patched["spec"]["predictor"]


def test_raw_deployment_mid_rollout_fails_cleanly() -> None:
    d = Case(state=progressing(), live=live(percent=10, mode="RawDeployment"), desired=V3, now=at(100),
             phase=Phase.FAILED).decide()
    assert d.state.status.phase in (Phase.FAILED, Phase.ROLLING_BACK)
    assert not any(isinstance(a, ApplySpec) for a in d.actions)


@pytest.mark.parametrize("s", [state(Phase.SUCCEEDED, V2, stable_revision=rev(2)), progressing()],
                         ids=["succeeded", "progressing"])
def test_spec_drift_is_reported(s: RolloutState) -> None:
    drifted = live(created=3, ready=3, rolledout=2 if s.status.phase == Phase.SUCCEEDED else 1,
                   percent=s.status.weight or None, body=manifest("v2-kubectl-edit"))
    d = Case(state=s, live=drifted, now=at(100), phase=s.status.phase).decide()
    assert any(reason.lower().startswith("drift") for reason, _ in events(d))


def test_new_desired_already_running_is_not_failed() -> None:
    s = state(Phase.SUCCEEDED, V2, stable_revision=rev(2))
    svc = live("v3", created=3, ready=3, rolledout=3, previous=2)  # v3 already serves 100 %
    d = decide(s, Observation(desired=V3, live=svc), POLICY, T0)
    svc = svc.model_copy(update={"canary_percent": 0})  # the ApplySpec only added the 0 %: no new revision
    d = decide(d.state, Observation(desired=V3, live=svc), POLICY, at(600))
    assert V3.spec_hash not in d.state.status.failed_spec_hashes
    assert d.state.status.phase not in (Phase.ROLLING_BACK, Phase.FAILED)


def test_resume_continues_analysing_at_once() -> None:
    """Regression: resuming dispatched on the phase read before the resume (Paused), so the next analysis
    was scheduled a whole idle interval (60 s) later."""
    from canaryd.rollout.state import Control

    paused = progressing().evolve(phase=Phase.PAUSED, paused_from=Phase.PROGRESSING)
    resumed = paused.model_copy(update={"spec": paused.spec.model_copy(update={"control": Control(paused=False)})})
    d = Case(state=resumed, live=live(percent=10), now=at(100), phase=Phase.PROGRESSING).decide()
    assert d.state.status.next_check_at is not None
    assert (d.state.status.next_check_at - at(100)).total_seconds() <= POLICY.analysis.every_s


# -- regression: a bad model promoted when pushed before KServe reported the first revision ------------------
# Found under API faults (tests/e2e/test_faults.py): the service was created, then the bad commit pushed
# while KServe had not written status.components yet. The rollout started with no baseline, so the revision
# serving v1 (created moments later) was taken for the canary, passed its analyses, and Promote sent 100 %
# to the bad revision that nobody had analysed.

def test_regression_bad_model_promoted_when_pushed_before_kserve_reported_the_first_revision() -> None:
    created = state(Phase.SUCCEEDED, desired("v1"), stable_revision=None, weight=100, step=-1)
    no_status = live("v1", created=None, ready=None, rolledout=None)
    d = decide(created, Observation(desired=V2, live=no_status), POLICY, T0)
    assert effects(d) == []  # nothing applied without a baseline
    assert d.state.status.phase == Phase.SUCCEEDED and d.state.spec.spec_hash == created.spec.spec_hash
    assert "no baseline" in d.state.status.message
    assert d.state.status.next_check_at == soon(T0)
    # KServe reports revision 1: the canary starts, with revision 1 as the baseline to wait past.
    reported = live("v1", created=1, ready=1, rolledout=1)
    d = decide(roundtrip(d.state), Observation(desired=V2, live=reported), POLICY, at(2))
    assert effects(d) == [ApplySpec(V2.manifest, desired("v1").manifest, COMP, 0)]
    assert d.state.status.phase == Phase.INITIALIZING
    assert d.state.status.baseline_created_revision == rev(1)
    # Until KServe creates revision 2, revision 1 is never the candidate.
    d = decide(d.state, Observation(desired=V2, live=live("v2", created=1, ready=1, rolledout=1, percent=0)),
               POLICY, at(4))
    assert d.state.status.phase == Phase.INITIALIZING and d.state.status.canary_revision is None


def test_regression_the_revision_serving_now_is_never_its_own_canary() -> None:
    # Someone applied v2 at 0 % before Git got it ("already"): no baseline by design, but the candidate must
    # still not be the stable revision while KServe has not created the new one.
    s = initializing(baseline_created_revision=None, stable_revision=rev(1))
    d = decide(s, Observation(desired=V2, live=live("v2", created=1, ready=1, rolledout=1, percent=0)),
               POLICY, at(4))
    assert d.state.status.phase == Phase.INITIALIZING and d.state.status.canary_revision is None
    d = decide(s, Observation(desired=V2, live=live("v2", created=2, ready=2, rolledout=1, percent=0)),
               POLICY, at(6))
    assert d.state.status.phase == Phase.PROGRESSING and d.state.status.canary_revision == rev(2)


def test_a_spec_that_never_made_a_revision_does_not_block_its_fix() -> None:
    """The wait for a baseline is bounded by progressDeadline (10m here) from when the spec in force was
    applied: past it, KServe never made a revision of that spec, so the next revision is the fix's own."""
    created = state(Phase.SUCCEEDED, desired("v1"), stable_revision=None, weight=100, step=-1, phase_since=T0)
    no_status = live("v1", created=None, ready=None, rolledout=None)
    d = decide(created, Observation(desired=V2, live=no_status), POLICY, at(30))
    assert effects(d) == [] and "no baseline" in d.state.status.message
    d = decide(created, Observation(desired=V2, live=no_status), POLICY, at(601))
    assert effects(d) == [ApplySpec(V2.manifest, desired("v1").manifest, COMP, 0)]
    assert d.state.status.phase == Phase.INITIALIZING and d.state.status.baseline_created_revision is None


def test_a_stable_revision_unknown_at_the_start_is_taken_when_the_canary_is_ready() -> None:
    s = initializing(stable_revision=None)  # v1's revision was not Ready yet when v2 was applied
    d = decide(s, Observation(desired=V2, live=live("v2", created=2, ready=2, rolledout=1, percent=0)),
               POLICY, at(6))
    assert d.state.status.phase == Phase.PROGRESSING
    assert (d.state.status.canary_revision, d.state.status.stable_revision) == (rev(2), rev(1))
    # Never the canary itself.
    d = decide(s, Observation(desired=V2, live=live("v2", created=2, ready=2, rolledout=2, percent=0)),
               POLICY, at(6))
    assert d.state.status.stable_revision is None
