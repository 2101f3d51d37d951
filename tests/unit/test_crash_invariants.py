"""The crash campaign's invariant checkers, on synthetic inputs: a checker that cannot flag a skipped or
repeated step would make a clean campaign mean nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from canaryd.policy import PolicySpec, policy_snapshot
from canaryd.rollout.state import HistoryRecord, Phase, RolloutState, TargetRef
from tests.campaigns.crashes import (
    KILL_POINTS,
    ApiTrigger,
    check_percent_writes,
    check_rollout_object,
    check_step_dwell,
    collapse,
    patch_kind,
)

STEPS = [10, 30, 60]
NOW = datetime(2025, 1, 1, tzinfo=UTC)
SNAPSHOT = policy_snapshot(PolicySpec.model_validate(
    {"steps": STEPS, "interval": "2s", "analysis": {"mode": "threshold", "every": "1s"}}))


def test_collapse_merges_only_consecutive_repeats() -> None:
    assert collapse([0, 0, 10, 10, 30, 10, None, None]) == [0, 10, 30, 10, None]


@pytest.mark.parametrize("values", [
    [0, 10, 30, 60, None],          # promoted
    [0, 10, 0],                     # rolled back at the first step
    [0, 10, 30, 60, 0],             # rolled back at the last step
    [0, 0],                         # rolled back before any traffic (e.g. never Ready)
    [0, 10, 10, 30, 30, 60, None],  # a restart re-asserting the value in force is not a new step
    [0, 10, 30, 60, None, None],    # a promotion written twice
])
def test_valid_complete_sequences_pass(values: list[int | None]) -> None:
    assert check_percent_writes(values, STEPS, complete=True) == []


@pytest.mark.parametrize("values", [[], [0, 10], [0, 10, 30, 60]])
def test_prefixes_of_a_running_rollout_pass_until_it_is_complete(values: list[int | None]) -> None:
    assert check_percent_writes(values, STEPS, complete=False) == []
    assert check_percent_writes(values, STEPS, complete=True) != []


def test_a_skipped_step_is_flagged() -> None:
    problems = check_percent_writes([0, 10, 60, None], STEPS, complete=True)
    assert any("[30] skipped" in p for p in problems), problems


def test_skipping_the_first_step_is_flagged() -> None:
    problems = check_percent_writes([0, 30, 60, None], STEPS, complete=True)
    assert any("[10] skipped" in p for p in problems), problems


def test_a_step_applied_twice_is_flagged() -> None:
    problems = check_percent_writes([0, 10, 30, 10, 30, 60, None], STEPS, complete=True)
    assert any("step 10 % applied twice" in p for p in problems), problems


def test_going_back_to_zero_and_up_again_is_flagged() -> None:
    # 0 is a rollback: traffic given to the canary again afterwards repeats a step.
    problems = check_percent_writes([0, 10, 0, 10], STEPS, complete=True)
    assert any("after the rollout ended" in p for p in problems), problems


def test_a_value_outside_the_policy_is_flagged() -> None:
    problems = check_percent_writes([0, 10, 25, 30, 60, None], STEPS, complete=True)
    assert any("percent 25 is not allowed" in p for p in problems), problems


def test_a_promotion_before_the_last_step_is_flagged() -> None:
    problems = check_percent_writes([0, 10, None], STEPS, complete=True)
    assert any("promoted after 1 of 3 steps" in p for p in problems), problems


def test_a_rollout_must_start_at_zero() -> None:
    problems = check_percent_writes([10, 30, 60, None], STEPS, complete=True)
    assert any("not at 0 %" in p for p in problems), problems


def test_writes_after_the_promotion_are_flagged() -> None:
    problems = check_percent_writes([0, 10, 30, 60, None, 60], STEPS, complete=True)
    assert any("after the rollout ended" in p for p in problems), problems


def test_a_created_service_is_written_once_without_a_percent() -> None:
    assert check_percent_writes([None], STEPS, complete=True, created=True) == []
    assert check_percent_writes([], STEPS, complete=False, created=True) == []
    assert check_percent_writes([None, 10], STEPS, complete=True, created=True) != []


def test_steps_that_last_their_interval_pass() -> None:
    writes = [(0.0, 0), (1.0, 10), (3.1, 30), (5.2, 60), (7.3, None)]
    assert check_step_dwell(writes, STEPS, min_dwell_s=1.5) == []


def test_a_step_replaced_at_once_is_flagged_although_it_was_written() -> None:
    # A restart re-asserts 30 % and, in the same tick, advances to 60 %: 30 % was never served.
    writes = [(0.0, 0), (1.0, 10), (9.0, 30), (9.02, 60), (11.5, None)]
    problems = check_step_dwell(writes, STEPS, min_dwell_s=1.5)
    assert len(problems) == 1 and "step 30 % was in force for 0.02s only" in problems[0], problems


def test_a_last_step_cut_short_by_the_promotion_is_flagged() -> None:
    writes = [(0.0, 0), (1.0, 10), (3.0, 30), (5.0, 60), (5.1, None)]
    assert any("before the promotion" in p for p in check_step_dwell(writes, STEPS, min_dwell_s=1.5))


def test_a_quick_rollback_is_not_a_short_step() -> None:
    # Rolling back may happen at any moment; repeated writes of one value count from the first.
    writes = [(0.0, 0), (1.0, 10), (1.2, 10), (1.3, 0)]
    assert check_step_dwell(writes, STEPS, min_dwell_s=1.5) == []


# -- ModelRollout objects ----------------------------------------------------------------------------


def _stored(**status: Any) -> dict[str, Any]:
    target = TargetRef(namespace="crash", name="svc0")
    st = RolloutState.new(target).evolve(
        spec={"policy": SNAPSHOT, "spec_hash": "h"}, **status)
    obj: dict[str, Any] = json.loads(json.dumps(st.for_storage()))
    obj["metadata"]["resourceVersion"] = "7"
    return obj


def test_a_consistent_rollout_passes() -> None:
    obj = _stored(phase=Phase.PROGRESSING, step=1, weight=30, canary_revision="svc0-predictor-00002")
    assert check_rollout_object(obj) == []


def test_an_unknown_phase_does_not_parse() -> None:
    obj = _stored()
    obj["status"]["phase"] = "Exploding"
    problems = check_rollout_object(obj)
    assert problems and "does not parse" in problems[0]


def test_a_weight_that_is_not_the_step_is_flagged() -> None:
    obj = _stored(phase=Phase.PROGRESSING, step=1, weight=60, canary_revision="svc0-predictor-00002")
    assert any("step 1 with weight 60" in p for p in check_rollout_object(obj))


def test_an_illegal_transition_in_the_history_is_flagged() -> None:
    bad = HistoryRecord(at=NOW, phase=Phase.PROGRESSING, from_phase=Phase.FAILED, reason="Magic")
    obj = _stored(phase=Phase.PROGRESSING, step=0, weight=10, canary_revision="r", history=[bad])
    assert any("illegal transition Failed -> Progressing" in p for p in check_rollout_object(obj))


@pytest.mark.parametrize(("status", "needle"), [
    ({"phase": Phase.PROMOTING, "weight": 60}, "Promoting with weight 60"),
    ({"phase": Phase.ROLLING_BACK, "weight": 10}, "RollingBack with weight 10"),
    ({"phase": Phase.SUCCEEDED, "weight": 100, "canary_revision": "r", "stable_revision": "s"}, "Succeeded"),
    ({"phase": Phase.SUCCEEDED, "weight": 60, "stable_revision": "s"}, "Succeeded with weight 60"),
    ({"phase": Phase.INITIALIZING, "weight": 10, "step": 0}, "Initializing at step 0"),
])
def test_weights_that_disagree_with_the_phase_are_flagged(status: dict[str, Any], needle: str) -> None:
    assert any(needle in p for p in check_rollout_object(_stored(**status)))


# -- the kill points ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("patch", "kind"), [
    ({"spec": {"predictor": {"canaryTrafficPercent": None}}}, "promote"),
    ({"spec": {"predictor": {"canaryTrafficPercent": 0}}}, "rollback"),
    ({"spec": {"predictor": {"canaryTrafficPercent": 30}}}, "traffic"),
    ({"spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": "gs://x"}}}}, "apply"),
    ({"metadata": {"labels": {"a": "b"}}, "spec": {"predictor": {"canaryTrafficPercent": 0}}}, "apply"),
])
def test_patch_kinds(patch: dict[str, Any], kind: str) -> None:
    assert patch_kind(patch) == kind


def test_api_triggers_match_only_their_request() -> None:
    state = "/apis/canaryd.io/v1alpha1/namespaces/crash/modelrollouts/svc0"
    isvc = "/apis/serving.kserve.io/v1beta1/namespaces/crash/inferenceservices/svc0"
    promoting = json.dumps({"status": {"phase": "Promoting"}}).encode()
    rollback = json.dumps({"spec": {"predictor": {"canaryTrafficPercent": 0}}}).encode()
    assert ApiTrigger.parse("after:state-read").matches("GET", state, b"")
    assert not ApiTrigger.parse("after:state-read").matches("GET", isvc, b"")
    assert ApiTrigger.parse("before:state-write:Promoting").matches("PUT", state, promoting)
    assert not ApiTrigger.parse("before:state-write:RollingBack").matches("PUT", state, promoting)
    assert ApiTrigger.parse("before:isvc-patch:rollback").matches("PATCH", isvc, rollback)
    assert not ApiTrigger.parse("before:isvc-patch:promote").matches("PATCH", isvc, rollback)
    assert not ApiTrigger.parse("before:isvc-patch").matches("GET", isvc, b"")


def test_every_kill_point_is_understood() -> None:
    for point in KILL_POINTS:
        if point != "random" and not point.startswith("hold:"):
            ApiTrigger.parse(point)


# -- regressions: defects the campaign found ---------------------------------------------------------


def test_crash_between_saving_a_step_and_applying_it_does_not_skip_the_step() -> None:
    """The campaign saw a good canary's writes go 0, 10, 60, None: 30 % was saved (StepAdvanced), the daemon
    died before patching it, and the restarted daemon re-asserted 30 % and, in the same tick, passed the
    step on an analysis of the downtime (when 10 % was in force) and advanced to 60 % — and a second kill
    before those patches left 30 % never written at all. A re-asserted step now starts its clock over."""
    from canaryd.rollout.engine import decide
    from canaryd.rollout.model import Observation, SetTraffic
    from tests.unit.engine_fixtures import (
        COMP,
        GOOD,
        V2,
        at,
        effects,
        events,
        kserve_reacts,
        live,
        policy,
        progressing,
    )

    pol = policy(steps=STEPS)  # interval 1m, analyses every 10s
    saved = progressing(step=1, started=100, pol=pol)  # StepAdvanced to 30 % at t=100, saved
    assert saved.status.weight == 30
    svc = live(percent=10)  # ... and the crash came before the patch

    def tick(s: RolloutState, now: float) -> Any:
        return decide(s, Observation(desired=V2, live=svc, samples=GOOD), pol, at(now))

    # Restarted long after the step's interval: the step is re-asserted, not passed.
    d = tick(saved.evolve(step_applied=False), 400)
    assert effects(d) == [SetTraffic(COMP, 30)]
    assert ("DriftCorrected", "Warning") not in events(d)  # our own unfinished write, not someone's drift
    assert (d.state.status.step, d.state.status.weight, d.state.status.step_started_at) == (1, 30, at(400))
    # Killed again before that patch: still no advance, the clock starts over again.
    d = tick(d.state, 500)
    assert effects(d) == [SetTraffic(COMP, 30)] and d.state.status.step_started_at == at(500)
    # Applied this time: 30 % must now last its interval before 60 %.
    svc = kserve_reacts(svc, d.actions)
    d = tick(d.state, 530)
    assert effects(d) == [] and d.state.status.weight == 30
    d = tick(d.state, 560)
    assert effects(d) == [SetTraffic(COMP, 60)] and d.state.status.weight == 60


def test_regression_a_tool_resetting_the_percent_stalled_the_step_forever() -> None:
    """The fix above first restarted the step's clock on *any* live percent that differed from the step's,
    so a tool that kept resetting it (another controller, a cron job) held the step forever, with maxHold
    not applying (the phase stays Progressing). Now only a step never seen applied restarts its clock; once
    seen, a changed percent is drift: corrected and counted, and the step still ends on time."""
    from canaryd.rollout.engine import decide
    from canaryd.rollout.model import Observation, SetTraffic
    from tests.unit.engine_fixtures import COMP, GOOD, V2, at, effects, events, live, policy, progressing

    pol = policy(steps=STEPS)  # interval 1m, analyses every 10s
    s = progressing(step=0, started=100, pol=pol)
    d = decide(s, Observation(desired=V2, live=live(percent=10), samples=GOOD), pol, at(105))
    assert d.state.status.step_applied  # seen live
    s = d.state
    advanced_at = None
    for now in range(110, 300, 10):
        d = decide(s, Observation(desired=V2, live=live(percent=5), samples=GOOD), pol, at(now))
        assert SetTraffic(COMP, s.status.weight) in effects(d)  # the drift is corrected every time
        s = d.state
        if s.status.step == 1:
            advanced_at = now
            break
    assert advanced_at is not None and 160 <= advanced_at <= 170, advanced_at
    assert s.status.drift_count >= 5 and ("DriftCorrected", "Warning") in events(d)
