"""Crash and dependency-failure behaviour end to end: SIGKILL mid-rollout, Prometheus gone mid-rollout."""

from __future__ import annotations

import pytest

from canaryd.rollout.state import Phase
from canaryd.sandbox.prometheus import PrometheusServer
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

THREE_STEPS = {**FAST_POLICY, "steps": [10, 30, 60]}


def deploy(env: Env, name: str, policy: str, **daemon_env: str) -> str:
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy}, "v1")
    env.start_daemon(env=daemon_env or None)
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    return c1


def step_advances(env: Env, name: str, commit: str) -> list[int]:
    st = env.state(name)
    assert st is not None
    return [h.weight for h in st.status.history if h.commit == commit and h.reason == "StepAdvanced"]


def test_sigkill_mid_rollout_resumes_at_the_same_step(env: Env) -> None:
    deploy(env, "crash", policy_yaml("crash", env.ns, THREE_STEPS))
    rec = env.record("crash")
    env.load(["crash"], rate=25)
    c2 = env.repo.commit({"services/crash.yaml": isvc_yaml("crash", env.ns, "gs://e2e/v2")}, "v2")
    wait_until(lambda: (s := env.state("crash")) and s.spec.commit == c2 and s.status.weight == 30, 40,
               "step 2 (30 %)")
    assert env.daemon is not None
    env.daemon.kill()
    env.start_daemon()
    st = env.wait_phase("crash", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    wait_until(lambda: rec.values[-1:] == [None], 10, "promotion visible")
    assert rec.values == [None, 0, 10, 30, 60, None]
    assert step_advances(env, "crash", c2) == [30, 60]  # each step once, none skipped


def test_sigkill_between_state_write_and_isvc_patch_resumes(env: Env) -> None:
    hold = env.dir / "hold"
    deploy(env, "held", policy_yaml("held", env.ns, THREE_STEPS),
           CANARYD_TEST_HOLD_DIR=str(hold), CANARYD_TEST_HOLD_ON="traffic=30")
    rec = env.record("held")
    env.load(["held"], rate=25)
    c2 = env.repo.commit({"services/held.yaml": isvc_yaml("held", env.ns, "gs://e2e/v2")}, "v2")
    wait_until(lambda: (hold / "held").exists(), 40, "the daemon to reach the hold point")
    # The ModelRollout already says step 2 at 30 %, the InferenceService still serves 10 %.
    st = env.state("held")
    assert st is not None and st.status.weight == 30 and st.status.step == 1
    assert (env.isvc("held") or {})["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert env.daemon is not None
    env.daemon.kill()
    env.start_daemon()  # without the hold switch
    st = env.wait_phase("held", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    wait_until(lambda: rec.values[-1:] == [None], 10, "promotion visible")
    assert rec.values == [None, 0, 10, 30, 60, None]
    assert step_advances(env, "held", c2) == [30, 60]


def test_prometheus_stopped_mid_rollout_never_promotes(env: Env) -> None:
    assert env.sb.dataplane is not None
    prom = PrometheusServer(scrape_interval_s=1.0).start()
    try:
        prom.set_targets([env.sb.dataplane.metrics_target])
        policy = policy_yaml("blind", env.ns, FAST_POLICY, analysis={"inconclusiveLimit": 2, "maxHold": "8s"})
        c1 = env.repo.commit({"services/blind.yaml": isvc_yaml("blind", env.ns, "gs://e2e/v1"),
                              "policies/blind.yaml": policy}, "v1")
        env.start_daemon(env.settings(prometheus_url=prom.url))
        env.wait_phase("blind", {Phase.SUCCEEDED}, c1, timeout=30)
        rec = env.record("blind")
        env.load(["blind"], rate=25)
        c2 = env.repo.commit({"services/blind.yaml": isvc_yaml("blind", env.ns, "gs://e2e/v2")}, "v2")
        env.wait_phase("blind", {Phase.PROGRESSING}, c2, timeout=30)
        prom.stop()
        st = env.wait_phase("blind", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    finally:
        prom.stop()
    assert st.status.phase == Phase.FAILED
    reasons = [h.reason for h in st.status.history if h.commit == c2]
    assert "Holding" in reasons and reasons[-2:] == ["MaxHoldExceeded", "RolledBack"]
    assert "Promoting" not in reasons
    assert max(v or 0 for v in rec.values) <= 50 and rec.values[-1] == 0
    last = st.status.analyses[-1].verdict
    assert last.outcome == "inconclusive"
