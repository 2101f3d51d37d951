"""The sequential judge against the threshold judge, end to end, on one deterministic scenario.

Two services run the same stable model (5 % errors) and get the same x3 error regression (15 %), under
the same steps, cadence and failureLimit; only `analysis.mode` differs. The threshold judge is set up as
Flagger's would be for such a service (success rate >= 90 %, rollback after 5 failed checks); the
sequential judge compares canary with stable and rolls back as soon as its SPRT crosses the boundary
or its planned look finds too many errors.
The data plane's error schedule is a hash of (seed, revision, request number), so each revision fails
the same requests on every run: only how many requests fall in each analysis window varies with timing,
and the margin below (5 analyses at the very least for the threshold judge) does not depend on it.
"""

from __future__ import annotations

import pytest

from canaryd.rollout.state import Phase, RolloutState
from tests.e2e.helpers import Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMMON = {
    "steps": [50],
    "interval": "10m",  # one step for the whole test: every analysis judges the same split
    "progressDeadline": "30s",
    "analysis": {"every": "3s", "warmup": "0s", "minRequests": 50, "failureLimit": 5, "inconclusiveLimit": 10,
                 "maxHold": "5m"},
}
THRESHOLD = {**COMMON, "analysis": {**COMMON["analysis"], "mode": "threshold",
                                    "metrics": [{"name": "error-rate", "max": 0.10}]}}
SEQUENTIAL = {**COMMON, "analysis": {**COMMON["analysis"], "mode": "sequential",
                                     "statistics": {"alpha": 0.01, "beta": 0.05, "errorRatio": 2.0}}}


def analyses_until_rollback(st: RolloutState) -> int:
    return len([a for a in st.status.analyses if a.canary_revision == st.status.canary_revision])


def test_sequential_judge_rolls_a_x3_error_regression_back_in_fewer_analyses(env: Env) -> None:
    names = {"seq": SEQUENTIAL, "thr": THRESHOLD}
    c1 = env.repo.commit({
        **{f"services/{n}.yaml": isvc_yaml(n, env.ns, "gs://e2e/base5pct") for n in names},
        **{f"policies/{n}.yaml": policy_yaml(n, env.ns, spec) for n, spec in names.items()},
    }, "v1 of both")
    env.start_daemon()
    for n in names:
        env.wait_phase(n, {Phase.SUCCEEDED}, c1, timeout=30)
        wait_until(lambda n=n: (s := env.state(n)) and s.status.stable_revision, 20, f"{n} v1 recorded")
    env.load(list(names), rate=60)

    c2 = env.repo.commit({f"services/{n}.yaml": isvc_yaml(n, env.ns, "gs://e2e/errors3x") for n in names},
                         "x3 errors for both")
    done = {n: env.wait_phase(n, {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=120) for n in names}
    seq, thr = done["seq"], done["thr"]
    assert seq.status.phase == Phase.FAILED, seq.status.message
    assert thr.status.phase == Phase.FAILED, thr.status.message

    print(f"analyses until rollback: sequential {analyses_until_rollback(seq)}, threshold"
          f" {analyses_until_rollback(thr)}; last sequential verdict: {seq.status.last_verdict}")
    # The threshold judge needed its 5 failed checks; the sequential one fewer analyses in all.
    assert thr.status.failed_analyses == 5
    assert analyses_until_rollback(seq) < analyses_until_rollback(thr), (
        [a.verdict.outcome for a in seq.status.analyses], [a.verdict.outcome for a in thr.status.analyses])

    # The sequential verdict explains itself with numbers, in the status, the Event and the history.
    last = seq.status.analyses[-1].verdict
    err = next(m for m in last.metrics if m.name == "error-rate")
    assert last.outcome == "fail" and err.outcome == "fail"
    assert err.statistic is not None and err.threshold is not None
    if err.reason.startswith("planned look"):  # an exact test's p-value at its level
        assert err.statistic <= err.threshold and err.details["look_p"] == err.statistic
    else:  # the SPRT's llr beyond its boundary
        assert err.statistic >= err.threshold and err.details["llr"] == err.statistic
    assert err.details.get("canary_errors", 0) > 0 and err.details.get("stable_errors", 0) > 0
    assert seq.status.evidence is not None and seq.status.evidence.canary_errors == err.details["canary_errors"]
    assert all(float(x).is_integer() for x in (seq.status.evidence.canary_requests,
                                               seq.status.evidence.stable_requests))  # exact counts
    failed_events = [e for e in env.events("seq") if e.reason == "AnalysisFailed"]
    assert failed_events and "llr" in failed_events[-1].message.lower()
    assert any("sequential judge" in h.message for h in seq.status.history if h.reason == "AnalysisFailed")
