"""The engine under the statistical judges (`analysis.mode: compare | sequential`).

Each analysis brings exact window counts (what the Prometheus adapter counts from raw counter readings);
the engine keeps the judge's evidence and the readings in the state, carries them across steps and
restarts, rolls back at once when a test crosses its boundary, and never moves traffic up without a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from canaryd.analysis.samples import AnalysisSamples, RevisionCounts, RevisionReading, WindowCounts
from canaryd.policy import PolicySpec
from canaryd.rollout.engine import analysis_request, decide
from canaryd.rollout.model import LiveService, Observation, Promote, SetTraffic
from canaryd.rollout.state import Phase, RolloutState
from tests.unit.engine_fixtures import (
    V2,
    at,
    effects,
    initializing,
    kserve_reacts,
    live,
    policy,
    rev,
    roundtrip,
)

BOUNDS = [50.0, 100.0, 200.0, 500.0]


def stat_policy(mode: str, **analysis: object) -> PolicySpec:
    return policy(analysis={"mode": mode, "metrics": [], "minRequests": 200, **analysis})


def window(canary_n: float | None, canary_err: float, stable_n: float = 4500, stable_err: float = 45,
           canary_latency: list[float] | None = None) -> WindowCounts:
    """One analysis window's exact counts; latency buckets follow the request counts unless given."""
    def counts(name: str, n: float | None, e: float, lat: list[float] | None) -> RevisionCounts:
        buckets = lat if lat is not None else ([0.0, n * 0.9, n * 0.1, 0.0, 0.0] if n is not None else [])
        return RevisionCounts(revision=name, requests=n, errors=e if n is not None else None,
                              latency_bounds_ms=BOUNDS if buckets else [], latency_counts=buckets)
    return WindowCounts(window_s=10.0, canary=counts(rev(2), canary_n, canary_err, canary_latency),
                        stable=counts(rev(1), stable_n, stable_err, None), queries=["revision_request_count{…}"])


def obs_for(w: WindowCounts | None, svc: LiveService, readings: dict[str, dict[str, float]]) -> Observation:
    samples = None
    if w is not None:
        empty = RevisionReading(revision=rev(2), requests=w.canary.requests, metrics={})
        samples = AnalysisSamples(window_s=w.window_s, canary=empty, counts=w)
    return Observation(desired=V2, live=svc, samples=samples, counters=readings if w is not None else None)


@dataclass
class Run:
    state: RolloutState
    live: LiveService
    now: datetime
    analyses: int = 0
    weights: list[int] = field(default_factory=list)
    promoted: bool = False


def run(pol: PolicySpec, windows: list[WindowCounts | None], *, restart_every: int = 0) -> Run:
    """Drive the engine from CanaryReady through `windows` (one per due analysis), as the controller would.

    `restart_every` > 0 reloads the state from storage every that many analyses (a restarted daemon)."""
    svc = live(created=2, ready=2, rolledout=1, percent=0)
    first = decide(initializing(pol=pol), Observation(desired=V2, live=svc), pol, at(30))
    r = Run(first.state, kserve_reacts(svc, first.actions), at(30), weights=[pol.steps[0]])
    todo = iter(windows)
    for _ in range(20 * len(windows) + 50):
        if r.state.status.phase in (Phase.SUCCEEDED, Phase.FAILED):
            break
        r.now = max(r.now + timedelta(seconds=1), r.state.status.next_check_at or r.now)
        request = analysis_request(r.state, pol, r.now)
        w = None
        if request is not None:
            assert request.mode == pol.analysis.mode and request.window_start is not None
            try:
                w = next(todo)
            except StopIteration:
                break
            r.analyses += 1
        readings = {rev(2): {"r:x": float(r.analyses)}}
        before = r.state
        d = decide(before, obs_for(w, r.live, readings), pol, r.now)
        if restart_every and r.analyses % restart_every == 0:
            again = decide(roundtrip(before), obs_for(w, r.live, readings), pol, r.now)
            assert again.state.for_storage() == d.state.for_storage() and again.actions == d.actions
        for action in effects(d):
            if isinstance(action, Promote):
                r.promoted = True
            if isinstance(action, SetTraffic) and action.percent > before.status.weight:
                assert d.state.status.last_verdict and d.state.status.last_verdict.startswith("pass")
                r.weights.append(action.percent)
        r.state, r.live = d.state, kserve_reacts(r.live, d.actions)
    return r


GOOD = window(500, 5)           # canary 1 % like the stable
BAD = window(500, 15)           # x3 errors
FEW = window(20, 0)             # a trickle: never enough for minRequests alone


@pytest.mark.parametrize("mode", ["sequential", "compare"])
def test_a_good_canary_is_promoted_with_its_evidence_kept(mode: str) -> None:
    pol = stat_policy(mode)
    r = run(pol, [GOOD] * 40, restart_every=3)
    assert r.state.status.phase == Phase.SUCCEEDED and r.promoted
    assert r.weights == [10, 50]
    passed = [a for a in r.state.status.analyses if a.verdict.outcome == "pass"]
    assert passed and all(m.name for m in passed[-1].verdict.metrics)


def test_a_regression_is_rolled_back_at_the_first_conclusive_fail_not_at_failure_limit() -> None:
    pol = stat_policy("sequential", failureLimit=5)
    r = run(pol, [BAD] * 40, restart_every=1)
    st = r.state.status
    assert st.phase == Phase.FAILED and not r.promoted
    assert st.failed_analyses == 1  # one conclusive fail, not failureLimit (5) of them
    assert r.weights == [10]  # never stepped up on a canary with evidence against it
    failed = [a for a in st.analyses if a.verdict.outcome == "fail"]
    err = next(m for m in failed[-1].verdict.metrics if m.name == "error-rate")
    assert err.statistic is not None and err.threshold is not None
    if err.reason.startswith("planned look"):  # the exact test's p-value at its level
        assert err.statistic <= err.threshold
    else:  # the SPRT's llr beyond its boundary
        assert err.statistic >= err.threshold and "sprt" in err.reason.lower()
    rolled = [h for h in st.history if h.reason == "AnalysisFailed"]
    assert rolled and "sequential judge" in rolled[-1].message


def test_sequential_evidence_accumulates_across_steps_and_compare_restarts_each_step() -> None:
    seq = run(stat_policy("sequential"), [GOOD] * 40)
    cmp_ = run(stat_policy("compare"), [GOOD] * 40)
    for r in (seq, cmp_):
        assert r.state.status.phase == Phase.SUCCEEDED
    # At the end, sequential evidence counts every window of the rollout; compare only the last step's.
    seq_ev, cmp_ev = seq.state.status.evidence, cmp_.state.status.evidence
    assert seq_ev is not None and cmp_ev is not None
    assert seq_ev.canary_requests == 500 * seq.analyses
    assert cmp_ev.canary_requests < 500 * cmp_.analyses
    assert cmp_ev.looks == cmp_.analyses  # alpha spending counts every look of the rollout


def test_low_traffic_is_inconclusive_never_a_pass_and_never_promotes() -> None:
    pol = stat_policy("sequential", minRequests=1000, maxHold="2m", inconclusiveLimit=2)
    r = run(pol, [FEW] * 60)
    st = r.state.status
    assert not r.promoted and r.weights == [10]
    assert all(a.verdict.outcome == "inconclusive" for a in st.analyses)
    assert st.phase == Phase.FAILED and st.history[-2].reason == "MaxHoldExceeded"


def test_minrequests_is_met_by_accumulating_over_analyses() -> None:
    pol = stat_policy("sequential", minRequests=100)
    r = run(pol, [window(30, 0, 270, 3)] * 60)  # 30 canary requests per window: 4 windows make 120
    outcomes = [a.verdict.outcome for a in r.state.status.analyses]
    assert r.state.status.phase == Phase.SUCCEEDED
    assert outcomes[:3] == ["inconclusive"] * 3 and "pass" in outcomes


def test_missing_counts_never_pass_and_add_no_evidence() -> None:
    pol = stat_policy("sequential")
    r = run(pol, [window(None, 0)] * 3)
    st = r.state.status
    assert [a.verdict.outcome for a in st.analyses] == ["inconclusive"] * 3
    assert r.weights == [10] and not r.promoted
    assert st.evidence is None or st.evidence.canary_requests == 0


def test_readings_and_window_start_go_into_the_analysis_request() -> None:
    pol = stat_policy("sequential")
    r = run(pol, [GOOD, GOOD])
    request = analysis_request(r.state, pol, r.state.status.next_check_at or r.now)
    assert request is not None and request.counters == r.state.status.counters
    assert r.state.status.counters == {rev(2): {"r:x": 2.0}}


def test_warmup_keeps_latency_out_but_errors_count_from_the_canarys_first_traffic() -> None:
    """Issue 14: the warmup threw away the error evidence of a canary's first 30 s. The first analysis is
    still due only after the warmup, and its latency window starts there; its request and error counts
    start at the canary's first traffic. Later steps count everything from their own start."""
    pol = stat_policy("sequential", warmup="30s")
    svc = live(created=2, ready=2, rolledout=1, percent=0)
    d = decide(initializing(pol=pol), Observation(desired=V2, live=svc), pol, at(30))
    ready = d.state.status.ready_at
    assert ready is not None and d.state.status.step_started_at == ready
    assert analysis_request(d.state, pol, ready + timedelta(seconds=29)) is None, "no analysis before the warmup"
    first = analysis_request(d.state, pol, ready + timedelta(seconds=40))
    assert first is not None and first.window_start == ready + timedelta(seconds=30)
    assert first.counts_start == ready and first.window_s == 10.0
    later = d.state.evolve(step=1, weight=50, step_started_at=ready + timedelta(seconds=70), next_check_at=None)
    second = analysis_request(later, pol, ready + timedelta(seconds=80))
    assert second is not None and second.window_start == second.counts_start == ready + timedelta(seconds=70)


def test_threshold_mode_keeps_no_evidence() -> None:
    pol = policy()
    assert pol.analysis.mode == "threshold"
    svc = live(created=2, ready=2, rolledout=1, percent=0)
    d = decide(initializing(pol=pol), Observation(desired=V2, live=svc), pol, at(30))
    assert d.state.status.evidence is None and d.state.status.counters == {}
