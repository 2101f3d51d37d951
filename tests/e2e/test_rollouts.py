"""Rollouts end to end: real git pushes, the real daemon process, real Prometheus, the emulated cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest

from canaryd.rollout.state import Phase
from tests.e2e.helpers import Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def deploy_v1(env: Env, name: str, extra: str = "", labels: dict[str, str] | None = None) -> str:
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1", extra, labels),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns)}, f"{name} v1")
    if env.daemon is None:
        env.start_daemon()
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state(name)) and s.status.stable_revision, 20, f"{name} v1 Ready and recorded")
    return c1


def live_traffic(env: Env, name: str) -> dict[str, int]:
    obj = env.isvc(name) or {}
    traffic = obj.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    return {t["revisionName"]: t["percent"] for t in traffic if t.get("percent")}


def test_good_version_is_promoted_step_by_step(env: Env) -> None:
    deploy_v1(env, "iris")
    rec = env.record("iris")
    env.load(["iris"], rate=25)
    c2 = env.repo.commit({"services/iris.yaml": isvc_yaml("iris", env.ns, "gs://e2e/v2")}, "iris v2")
    st = env.wait_phase("iris", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    # Every write of the percent, in order: new spec at 0 %, each policy step once, then the field removed.
    wait_until(lambda: rec.values[-1:] == [None] and len(rec.values) >= 5, 10, "promotion visible")
    assert rec.values == [None, 0, 10, 50, None]
    canary = st.status.stable_revision
    assert canary is not None and canary.endswith("00002")
    assert live_traffic(env, "iris") == {canary: 100}
    reasons = [h.reason for h in st.status.history if h.commit == c2]
    assert reasons == ["RolloutStarted", "CanaryReady", "StepAdvanced", "Promoting", "Promoted"]
    passes = [a for a in st.status.analyses if a.verdict.outcome == "pass"]
    assert passes and all(a.verdict.requests and a.verdict.requests >= 8 for a in passes)
    assert any(e.reason == "Promoted" for e in env.events("iris"))
    assert env.daemon is not None and env.daemon.terminate(timeout=10) == 0  # SIGTERM: clean exit


def test_error_regression_is_rolled_back_after_failure_limit(env: Env) -> None:
    deploy_v1(env, "errsvc")
    stable = (env.state("errsvc") or pytest.fail("no state")).status.stable_revision
    rec = env.record("errsvc")
    env.load(["errsvc"], rate=25)
    c2 = env.repo.commit({"services/errsvc.yaml": isvc_yaml("errsvc", env.ns, "gs://e2e/errors")}, "errors")
    st = env.wait_phase("errsvc", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.FAILED, st.status.message
    assert st.status.failed_analyses == 2  # failureLimit
    failed = [a for a in st.status.analyses if a.verdict.outcome == "fail"]
    assert len(failed) == 2
    err = next(m for m in failed[-1].verdict.metrics if m.name == "error-rate")
    assert err.outcome == "fail" and err.value is not None and err.value > 0.05
    assert 50 not in rec.values and rec.values[-1] == 0  # never reached step 2; canary pinned at 0 %
    assert live_traffic(env, "errsvc") == {stable: 100}
    assert st.spec.spec_hash in st.status.failed_spec_hashes
    warnings = [e for e in env.events("errsvc") if e.reason == "AnalysisFailed"]
    assert len(warnings) >= 2 and "error rate" in warnings[0].message


def test_latency_only_regression_is_rolled_back(env: Env) -> None:
    deploy_v1(env, "slowsvc")
    env.load(["slowsvc"], rate=25)
    c2 = env.repo.commit({"services/slowsvc.yaml": isvc_yaml("slowsvc", env.ns, "gs://e2e/slow")}, "slow")
    st = env.wait_phase("slowsvc", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.FAILED, st.status.message
    failed = [a for a in st.status.analyses if a.verdict.outcome == "fail"]
    assert failed
    by_name = {m.name: m for m in failed[-1].verdict.metrics}
    assert by_name["latency"].outcome == "fail"
    assert by_name["error-rate"].outcome == "pass"


def test_revision_that_never_becomes_ready_is_rolled_back_at_deadline(env: Env) -> None:
    deploy_v1(env, "stuck")
    rec = env.record("stuck")
    c2 = env.repo.commit({"services/stuck.yaml": isvc_yaml("stuck", env.ns, "gs://e2e/never-ready")}, "stuck")
    st = env.wait_phase("stuck", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.FAILED
    assert any(h.reason == "ProgressDeadlineExceeded" for h in st.status.history)
    assert st.status.canary_revision is None
    assert [v for v in rec.values if v not in (None, 0)] == []  # no traffic ever moved


def test_field_removed_in_git_is_removed_from_live_service(env: Env) -> None:
    deploy_v1(env, "trim", extra="minReplicas: 1\nmaxReplicas: 3\n", labels={"team": "a", "tier": "gold"})
    env.load(["trim"], rate=25)
    obj = env.isvc("trim") or {}
    assert obj["spec"]["predictor"]["maxReplicas"] == 3 and obj["metadata"]["labels"]["tier"] == "gold"
    c2 = env.repo.commit({"services/trim.yaml": isvc_yaml("trim", env.ns, "gs://e2e/v1", "minReplicas: 1\n",
                                                          {"team": "a"})}, "drop maxReplicas and tier")
    st = env.wait_phase("trim", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    obj = env.isvc("trim") or {}
    assert "maxReplicas" not in obj["spec"]["predictor"]
    assert obj["spec"]["predictor"]["minReplicas"] == 1
    assert "tier" not in obj["metadata"].get("labels", {})
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]


def test_broken_policy_blocks_only_its_own_service(env: Env) -> None:
    broken = policy_yaml("bad", env.ns).replace("failureLimit:", "failureLimt:")
    c1 = env.repo.commit({
        "services/bad.yaml": isvc_yaml("bad", env.ns, "gs://e2e/v1"),
        "policies/bad.yaml": broken,
        "services/fine.yaml": isvc_yaml("fine", env.ns, "gs://e2e/v1"),
        "policies/fine.yaml": policy_yaml("fine", env.ns),
    }, "two services, one broken policy")
    env.start_daemon()
    env.wait_phase("fine", {Phase.SUCCEEDED}, c1, timeout=30)
    env.load(["fine"], rate=25)
    c2 = env.repo.commit({"services/fine.yaml": isvc_yaml("fine", env.ns, "gs://e2e/v2"),
                          "services/bad.yaml": isvc_yaml("bad", env.ns, "gs://e2e/v2")}, "both to v2")
    st = env.wait_phase("fine", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED
    assert env.isvc("bad") is None and env.state("bad") is None  # never rolled out with a weaker policy
    log = (env.dir / "canaryd.log").read_text()
    assert "policies/bad.yaml" in log and "failureLimt" in log
    out = subprocess.run([sys.executable, "-m", "canaryd", "validate", str(env.repo.work)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert any(line.startswith("policies/bad.yaml:") and "failureLimt" in line for line in out.stdout.splitlines())
