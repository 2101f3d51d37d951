"""Operating canaryd end to end: the CLI's pause/resume/promote/abort/plan/history, drift, Events, /metrics."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from canaryd.rollout.state import Phase
from tests.e2e.helpers import FAST_POLICY, Env, G, P, V, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

THREE_STEPS = {**FAST_POLICY, "steps": [10, 30, 60]}


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canaryd", *args, "--kubeconfig", str(env.sb.kubeconfig)],
                          capture_output=True, text=True, timeout=60)


def deploy(env: Env, name: str, policy: str) -> str:
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy}, "v1")
    if env.daemon is None:
        env.start_daemon()
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state(name)) and s.status.stable_revision, 20, f"{name} v1 Ready")
    return c1


def test_confirm_promotion_waits_until_canaryd_promote(env: Env) -> None:
    deploy(env, "gated", policy_yaml("gated", env.ns, FAST_POLICY, gates={"confirmPromotion": True}))
    env.load(["gated"], rate=25)
    c2 = env.repo.commit({"services/gated.yaml": isvc_yaml("gated", env.ns, "gs://e2e/v2")}, "v2")
    st = env.wait_phase("gated", {Phase.WAITING_PROMOTION}, c2, timeout=60)
    assert st.status.weight == 50
    out = cli(env, "promote", f"{env.ns}/gated")
    assert out.returncode == 0, out.stderr
    assert "promote recorded" in out.stdout
    st = env.wait_phase("gated", {Phase.SUCCEEDED}, c2, timeout=30)
    assert [h.reason for h in st.status.history if h.commit == c2][-2:] == ["Promoting", "Promoted"]


def test_pause_survives_a_restart_and_resume_continues(env: Env) -> None:
    deploy(env, "paused", policy_yaml("paused", env.ns, THREE_STEPS))
    rec = env.record("paused")
    env.load(["paused"], rate=25)
    c2 = env.repo.commit({"services/paused.yaml": isvc_yaml("paused", env.ns, "gs://e2e/v2")}, "v2")
    env.wait_phase("paused", {Phase.PROGRESSING}, c2, timeout=30)
    out = cli(env, "pause", f"{env.ns}/paused")
    assert out.returncode == 0, out.stderr
    st = env.wait_phase("paused", {Phase.PAUSED}, c2, timeout=15)
    held = st.status.weight
    # as Kubernetes tools see it: the request's generation observed, and the Paused condition set
    wait_until(lambda: (s := env.state("paused")) is not None and not s.generation_unobserved, 10,
               "observedGeneration catches up with the pause request")
    paused = {c.type: c.status for c in (env.state("paused") or st).status.conditions}
    assert paused == {"Healthy": "Unknown", "Progressing": "True", "Paused": "True"}
    assert env.daemon is not None
    env.daemon.kill()
    env.start_daemon()
    # Longer than a step interval (5 s) and a few ticks: the paused rollout must not move.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        st2 = env.state("paused")
        assert st2 is not None and st2.status.phase == Phase.PAUSED and st2.status.weight == held
        time.sleep(0.5)
    out = cli(env, "resume", f"{env.ns}/paused")
    assert out.returncode == 0, out.stderr
    st = env.wait_phase("paused", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    wait_until(lambda: rec.values[-1:] == [None], 10, "promotion visible")
    assert rec.values == [None, 0, 10, 30, 60, None]
    hist = cli(env, "history", f"{env.ns}/paused")
    assert hist.returncode == 0 and "Paused" in hist.stdout and "Resumed" in hist.stdout


def test_abort_rolls_back_and_the_spec_is_not_retried(env: Env) -> None:
    deploy(env, "aborted", policy_yaml("aborted", env.ns, THREE_STEPS))
    stable = (env.state("aborted") or pytest.fail("no state")).status.stable_revision
    env.load(["aborted"], rate=25)
    c2 = env.repo.commit({"services/aborted.yaml": isvc_yaml("aborted", env.ns, "gs://e2e/v2")}, "v2")
    env.wait_phase("aborted", {Phase.PROGRESSING}, c2, timeout=30)
    out = cli(env, "abort", f"{env.ns}/aborted")
    assert out.returncode == 0, out.stderr
    st = env.wait_phase("aborted", {Phase.ABORTED, Phase.FAILED}, c2, timeout=30)
    assert st.status.phase == Phase.ABORTED
    obj = env.isvc("aborted") or {}
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 0
    traffic = {t["revisionName"]: t["percent"] for t in obj["status"]["components"]["predictor"]["traffic"]
               if t["percent"]}
    assert traffic == {stable: 100}
    assert cli(env, "abort", f"{env.ns}/aborted").returncode == 1  # nothing in flight any more


def test_kubectl_edit_drift_is_reported_and_corrected(env: Env) -> None:
    deploy(env, "drifty", policy_yaml("drifty", env.ns, FAST_POLICY))
    env.load(["drifty"], rate=25)
    # kubectl edit: someone changes the model behind Git's back.
    env.co.patch_namespaced_custom_object(G, V, env.ns, P, "drifty", {
        "spec": {"predictor": {"model": {"storageUri": "gs://e2e/v3"}}}})
    st = wait_until(lambda: (s := env.state("drifty")) and s.status.drift_count >= 1 and s, 20, "drift detected")
    assert st.status.last_drift and "storageUri" in st.status.last_drift
    # Corrected: Git's spec is back on the service (through a canary) and serves 100 %.
    wait_until(lambda: (s := env.state("drifty")) and s.status.phase == Phase.SUCCEEDED
               and any(h.reason == "Promoted" for h in s.status.history), 60, "Git's spec promoted again")
    obj = env.isvc("drifty") or {}
    assert obj["spec"]["predictor"]["model"]["storageUri"] == "gs://e2e/v1"
    assert any(e.reason == "DriftCorrected" for e in env.events("drifty"))
    assert env.daemon is not None
    metrics = httpx.get(f"{env.daemon.url}/metrics", timeout=5).text
    assert 'canaryd_rollouts{phase="Succeeded"} 1.0' in metrics
    assert f'canaryd_drift_total{{namespace="{env.ns}",service="drifty"}}' in metrics
    assert 'canaryd_analyses_total{' in metrics and 'outcome="pass"' in metrics
    ready = httpx.get(f"{env.daemon.url}/readyz", timeout=5)
    assert ready.status_code == 200


def test_plan_shows_what_the_newest_commit_would_change(env: Env) -> None:
    deploy(env, "planned", policy_yaml("planned", env.ns, FAST_POLICY))
    assert env.daemon is not None
    env.daemon.terminate()  # nothing acts: plan must not change anything either
    env.repo.commit({"services/planned.yaml": isvc_yaml("planned", env.ns, "gs://e2e/v2"),
                     "services/newsvc.yaml": isvc_yaml("newsvc", env.ns, "gs://e2e/v1")}, "v2 and a new one")
    before = env.isvc("planned") or {}
    out = cli(env, "plan", "--path", str(env.repo.work))
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "rollout" in lines[f"{env.ns}/planned"] and "10% -> 50% -> 100 %" in lines[f"{env.ns}/planned"]
    assert "create" in lines[f"{env.ns}/newsvc"]
    assert env.isvc("newsvc") is None
    assert (env.isvc("planned") or {})["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
