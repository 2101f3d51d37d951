"""Engine tables for issue 4's operations: webhook gates, operator requests, drift, notifications, prune."""

from __future__ import annotations

from datetime import datetime

import pytest

from canaryd.rollout.engine import analysis_request, decide, gate_requests
from canaryd.rollout.model import (
    ApplySpec,
    CallWebhook,
    DeleteService,
    GateResult,
    Notify,
    Observation,
    Promote,
    Rollback,
    SetTraffic,
)
from canaryd.rollout.state import Control, Phase, RolloutState
from tests.unit.engine_fixtures import (
    READY_AT,
    V2,
    at,
    effects,
    events,
    initializing,
    live,
    manifest,
    policy,
    progressing,
    rev,
    samples,
    state,
)

HOOKS = policy(webhooks=[
    {"name": "smoke", "type": "pre-rollout", "url": "http://smoke/x"},
    {"name": "check", "type": "rollout", "url": "http://check/x"},
    {"name": "pull", "type": "rollback", "url": "http://pull/x"},
    {"name": "ok", "type": "confirm-promotion", "url": "http://ok/x"},
    {"name": "tell", "type": "post-rollout", "url": "http://tell/x"},
])


def gate(name: str, kind: str, ok: bool, status: int = 200) -> GateResult:
    return GateResult(name=name, type=kind, ok=ok, status=status if ok else 500)


def with_control(s: RolloutState, **control: object) -> RolloutState:
    return s.model_copy(update={"spec": s.spec.model_copy(update={"control": Control.model_validate(control)})})


def run(s: RolloutState, now: datetime, **obs: object) -> tuple[RolloutState, list[object], list[object]]:
    o = Observation.model_validate({"desired": V2, "live": live(percent=0), **obs})
    d = decide(s, o, HOOKS, now)
    return d.state, effects(d), d.actions


# -- gates -----------------------------------------------------------------------------------------

def test_pre_rollout_gate_is_requested_once_the_canary_is_ready_and_before_traffic() -> None:
    s = initializing(HOOKS)
    calls = gate_requests(s, live(percent=0), HOOKS, at(5))
    assert [c.name for c in calls] == ["smoke"]
    assert calls[0].payload["canaryRevision"] == rev(2) and calls[0].payload["weight"] == 0
    assert gate_requests(s, live(ready=1, percent=0), HOOKS, at(5)) == []  # not Ready yet: nothing to test


def test_pre_rollout_gate_passing_moves_to_the_first_step() -> None:
    st, eff, _ = run(initializing(HOOKS), at(5), gates=[gate("smoke", "pre-rollout", True)])
    assert st.status.phase == Phase.PROGRESSING and st.status.pre_rollout_passed
    assert eff == [SetTraffic("predictor", 10)]


def test_pre_rollout_gate_failing_rolls_back_before_any_traffic() -> None:
    st, eff, _ = run(initializing(HOOKS), at(5), gates=[gate("smoke", "pre-rollout", False)])
    assert st.status.phase == Phase.ROLLING_BACK
    assert eff == [Rollback("predictor")]
    assert st.spec.spec_hash in st.status.failed_spec_hashes
    assert "smoke" in st.status.message and "HTTP 500" in st.status.message


def test_ready_canary_without_gate_answers_waits() -> None:
    st, eff, _ = run(initializing(HOOKS), at(5))
    assert st.status.phase == Phase.INITIALIZING and eff == []


def pending(name: str, kind: str) -> GateResult:
    return GateResult(name=name, type=kind, ok=False, pending=True)


def test_a_pre_rollout_gate_without_an_answer_yet_waits_until_the_progress_deadline() -> None:
    st, eff, _ = run(initializing(HOOKS), at(5), gates=[pending("smoke", "pre-rollout")])
    assert st.status.phase == Phase.INITIALIZING and eff == [] and not st.status.pre_rollout_passed
    assert st.status.next_check_at is not None and st.status.next_check_at <= at(7)
    st, eff, _ = run(initializing(HOOKS), at(5 + 3600), gates=[pending("smoke", "pre-rollout")])
    assert st.status.phase == Phase.ROLLING_BACK and "ProgressDeadlineExceeded" in st.status.history[-1].reason


def test_an_analysis_waits_for_a_gate_still_running_instead_of_passing_without_it() -> None:
    """Issue 13: gates run beside the tick; one not answered yet neither passes nor fails the analysis."""
    s = progressing(pol=HOOKS)
    now = at(READY_AT + 40)
    o = Observation.model_validate({"desired": V2, "live": live(percent=10), "samples": samples("good"),
                                    "gates": [pending("check", "rollout"), gate("pull", "rollback", False)]})
    d = decide(s, o, HOOKS, now)
    st = d.state
    assert st.status.analyses_run == s.status.analyses_run and effects(d) == []
    assert st.status.failed_analyses == 0
    assert d.recheck_at is not None and 0 < (d.recheck_at - now).total_seconds() <= 2
    # Still due: the tick the answer triggers asks for the same calls (and so gets the answer).
    assert analysis_request(st, HOOKS, now) is not None
    assert gate_requests(st, live(percent=10), HOOKS, now) == gate_requests(s, live(percent=10), HOOKS, now)


def test_failing_rollout_hook_fails_the_analysis() -> None:
    s = progressing(pol=HOOKS)
    now = at(READY_AT + 40)
    assert {c.type for c in gate_requests(s, live(percent=10), HOOKS, now)} == {"rollout", "rollback"}
    st, _, _ = run(s, now, live=live(percent=10), samples=samples("good"),
                   gates=[gate("check", "rollout", False), gate("pull", "rollback", False)])
    assert st.status.failed_analyses == 1
    assert any(m.name == "webhook:check" for m in st.status.analyses[-1].verdict.metrics)


def test_rollback_hook_saying_yes_rolls_back() -> None:
    st, eff, _ = run(progressing(pol=HOOKS), at(READY_AT + 40), live=live(percent=10), samples=samples("good"),
                     gates=[gate("pull", "rollback", True)])
    assert st.status.phase == Phase.ROLLING_BACK and eff == [Rollback("predictor")]


def test_confirm_promotion_hook_promotes_when_it_says_yes() -> None:
    s = progressing(Phase.WAITING_PROMOTION, step=1, pol=HOOKS)
    st, eff, _ = run(s, at(300), live=live(percent=50), samples=samples("good"),
                     gates=[gate("ok", "confirm-promotion", True), gate("check", "rollout", True)])
    assert st.status.phase == Phase.PROMOTING and eff == [Promote("predictor")]
    st, eff, _ = run(s, at(300), live=live(percent=50), samples=samples("good"),
                     gates=[gate("ok", "confirm-promotion", False), gate("check", "rollout", True)])
    assert st.status.phase == Phase.WAITING_PROMOTION and eff == []


def test_post_rollout_hook_fires_when_the_rollout_ends() -> None:
    s = progressing(Phase.ROLLING_BACK, pol=HOOKS, weight=0, failed_spec_hashes=[V2.spec_hash])
    _, _, actions = run(s, at(300), live=live(percent=0, traffic={1: 100}))
    fired = [a for a in actions if isinstance(a, CallWebhook)]
    assert [f.call.name for f in fired] == ["tell"] and fired[0].call.payload["phase"] == "Failed"


# -- operator requests -----------------------------------------------------------------------------

def test_pause_holds_traffic_and_resume_continues() -> None:
    s = with_control(progressing(), paused=True)
    st, eff, _ = run(s, at(200), live=live(percent=10), samples=samples("good"))
    assert st.status.phase == Phase.PAUSED and st.status.paused_from == Phase.PROGRESSING and eff == []
    # while paused, someone resets the percent: held where it was
    st2, eff2, _ = run(st, at(210), live=live(percent=0))
    assert st2.status.phase == Phase.PAUSED and eff2 == [SetTraffic("predictor", 10)]
    resumed = with_control(st2, paused=False)
    st3, _, _ = run(resumed, at(400), live=live(percent=10))
    assert st3.status.phase == Phase.PROGRESSING and st3.status.step_started_at == at(400)


def test_pause_blocks_a_new_rollout() -> None:
    s = with_control(state(Phase.SUCCEEDED, V2, stable_revision=rev(2)), paused=True)
    from tests.unit.engine_fixtures import V3

    d = decide(s, Observation(desired=V3, live=live(rolledout=2)), HOOKS, at(10))
    assert effects(d) == [] and d.log.get("paused")


def test_abort_takes_the_traffic_away_and_ends_aborted() -> None:
    s = progressing()
    s = with_control(s, abort=s.attempt_id)
    st, eff, _ = run(s, at(200), live=live(percent=10))
    assert st.status.phase == Phase.ROLLING_BACK and eff == [Rollback("predictor")]
    st2, _, _ = run(st, at(202), live=live(percent=0, traffic={1: 100}))
    assert st2.status.phase == Phase.ABORTED


def test_abort_for_another_spec_is_ignored() -> None:
    s = with_control(progressing(), abort="some-older-spec")
    st, _, _ = run(s, at(200), live=live(percent=10))
    assert st.status.phase == Phase.PROGRESSING


def test_promote_request_promotes_at_once() -> None:
    s = progressing()
    s = with_control(s, promote=s.attempt_id)
    st, eff, _ = run(s, at(70), live=live(percent=10))
    assert st.status.phase == Phase.PROMOTING and eff == [Promote("predictor")]


@pytest.mark.parametrize("request_kind", ["promote", "abort"])
def test_regression_operator_promote_outlived_its_rollout(request_kind: str) -> None:
    """Issue 13 item 2: a promote (or abort) an operator gave for one rollout attempt applied again when Git
    later returned to the same spec, promoting its new canary with zero analyses. A request names one
    attempt; a later attempt of the same spec is a new one."""
    earlier = progressing(attempt=4)
    later = progressing(attempt=6)  # Git went v2 -> v3 -> v2: same spec hash, a new attempt
    assert earlier.spec.spec_hash == later.spec.spec_hash
    s = with_control(later, **{request_kind: earlier.attempt_id})
    st, eff, _ = run(s, at(70), live=live(percent=10))
    assert st.status.phase == Phase.PROGRESSING and eff == []
    # the request format of canaryd 0.1 (a spec hash) is spent with the upgrade, never honoured
    s = with_control(later, **{request_kind: V2.spec_hash})
    st, eff, _ = run(s, at(70), live=live(percent=10))
    assert st.status.phase == Phase.PROGRESSING and eff == []


def test_every_rollout_start_is_a_new_attempt() -> None:
    from tests.unit.engine_fixtures import V3

    s = progressing(attempt=4)
    superseded = decide(s, Observation(desired=V3, live=live(percent=10)), HOOKS, at(70)).state
    assert superseded.status.attempt == 5 and superseded.attempt_id != s.attempt_id


# -- drift -----------------------------------------------------------------------------------------

def test_spec_drift_after_promotion_is_rolled_back_through_a_canary() -> None:
    s = state(Phase.SUCCEEDED, V2, stable_revision=rev(2))
    edited = live(created=3, ready=3, rolledout=3, previous=2, body=manifest("v2-hotfix"))
    st, eff, actions = run(s, at(10), live=edited)
    assert st.status.phase == Phase.INITIALIZING and st.status.drift_count == 1
    assert isinstance(eff[0], ApplySpec) and eff[0].canary_percent == 0 and eff[0].manifest == V2.manifest
    assert ("DriftCorrected", "Warning") in events(decide(s, Observation(desired=V2, live=edited), HOOKS, at(10)))
    assert any(isinstance(a, Notify) and a.kind == "drift" for a in actions)


def test_stray_percent_after_promotion_is_removed() -> None:
    s = state(Phase.SUCCEEDED, V2, stable_revision=rev(2))
    st, eff, _ = run(s, at(10), live=live(created=2, ready=2, rolledout=2, percent=30))
    assert eff == [Promote("predictor")] and st.status.drift_count == 1


# -- notifications and prune -----------------------------------------------------------------------

@pytest.mark.parametrize("phase_from, live_kwargs, kind", [
    (Phase.PROMOTING, {"created": 2, "ready": 2, "rolledout": 2}, "promoted"),
])
def test_transitions_notify(phase_from: Phase, live_kwargs: dict[str, int], kind: str) -> None:
    s = progressing(phase_from, weight=100)
    _, _, actions = run(s, at(300), live=live(**live_kwargs))
    notes = [a for a in actions if isinstance(a, Notify)]
    assert [n.kind for n in notes] == [kind] and notes[0].fields["commit"] == V2.commit[:8]  # type: ignore[index]


def test_prune_deletes_only_when_asked_and_nothing_is_in_flight() -> None:
    s = state(Phase.SUCCEEDED, V2, stable_revision=rev(2))
    keep = decide(s, Observation(desired=None, live=live(rolledout=2)), HOOKS, at(1))
    assert effects(keep) == []
    gone = decide(s, Observation(desired=None, live=live(rolledout=2), prune=True), HOOKS, at(1))
    assert effects(gone) == [DeleteService("serving.kserve.io/v1beta1", "models", "iris")]
    inflight = decide(progressing(), Observation(desired=None, live=live(percent=10), prune=True), HOOKS, at(100))
    assert effects(inflight) == [Rollback("predictor")]
