"""Webhook gates end to end: a pre-rollout smoke test on the canary's tag URL, rollout and post-rollout hooks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from canaryd.rollout.state import Phase
from canaryd.sandbox.receiver import WebhookReceiver
from canaryd.sandbox.smoke import SmokeTester
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def smoke(env: Env) -> Iterator[SmokeTester]:
    assert env.sb.dataplane is not None
    with SmokeTester(env.sb.dataplane.url) as s:
        yield s


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def test_failing_pre_rollout_smoke_test_blocks_the_version(env: Env, smoke: SmokeTester,
                                                             receiver: WebhookReceiver) -> None:
    hooks = [{"name": "smoke", "type": "pre-rollout", "url": smoke.url, "timeout": "10s", "retries": 1},
             {"name": "tell", "type": "post-rollout", "url": receiver.url("/post"), "retries": 0}]
    policy = policy_yaml("smoky", env.ns, FAST_POLICY, webhooks=hooks)
    c1 = env.repo.commit({"services/smoky.yaml": isvc_yaml("smoky", env.ns, "gs://e2e/v1"),
                          "policies/smoky.yaml": policy}, "v1")
    env.start_daemon()
    env.wait_phase("smoky", {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state("smoky")) and s.status.stable_revision, 20, "v1 Ready")
    rec = env.record("smoky")
    c2 = env.repo.commit({"services/smoky.yaml": isvc_yaml("smoky", env.ns, "gs://e2e/broken")}, "broken model")
    st = env.wait_phase("smoky", {Phase.FAILED, Phase.SUCCEEDED}, c2, timeout=60)
    assert st.status.phase == Phase.FAILED
    reasons = [h.reason for h in st.status.history if h.commit == c2]
    assert "PreRolloutFailed" in reasons and "CanaryReady" not in reasons
    failed = next(h for h in st.status.history if h.reason == "PreRolloutFailed")
    assert "pre-rollout webhook smoke: failed: HTTP 500" in failed.message
    assert "predictions failed" not in failed.message  # the answer's body never reaches status (issue 13)
    assert [v for v in rec.values if v not in (None, 0)] == []  # the broken model never got user traffic
    # The smoke test reached the canary through its own tag URL, before any traffic.
    assert smoke.calls and smoke.calls[0]["canaryUrl"].startswith("http://latest-smoky-predictor.")
    assert smoke.calls[0]["weight"] == 0 and smoke.calls[0]["type"] == "pre-rollout"
    # post-rollout hook told about the end of the rollout.
    posts = receiver.wait_for(1, timeout=10)
    assert posts[0].body["type"] == "post-rollout" and posts[0].body["phase"] == "Failed"

    # A good version passes the same smoke test and rolls out.
    env.load(["smoky"], rate=25)
    c3 = env.repo.commit({"services/smoky.yaml": isvc_yaml("smoky", env.ns, "gs://e2e/v2")}, "good model")
    st = env.wait_phase("smoky", {Phase.FAILED, Phase.SUCCEEDED}, c3, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    assert any(h.reason == "Promoted" for h in st.status.history if h.commit == c3)


def test_confirm_promotion_webhook_and_failing_rollout_hook(env: Env, receiver: WebhookReceiver) -> None:
    hooks = [{"name": "approve", "type": "confirm-promotion", "url": receiver.url("/approve"), "retries": 0},
             {"name": "check", "type": "rollout", "url": receiver.url("/check"), "retries": 0}]
    policy = policy_yaml("hooked", env.ns, FAST_POLICY, webhooks=hooks)
    c1 = env.repo.commit({"services/hooked.yaml": isvc_yaml("hooked", env.ns, "gs://e2e/v1"),
                          "policies/hooked.yaml": policy}, "v1")
    env.start_daemon()
    env.wait_phase("hooked", {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state("hooked")) and s.status.stable_revision, 20, "v1 Ready")
    env.load(["hooked"], rate=25)
    c2 = env.repo.commit({"services/hooked.yaml": isvc_yaml("hooked", env.ns, "gs://e2e/v2")}, "v2")
    st = env.wait_phase("hooked", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    reasons = [h.reason for h in st.status.history if h.commit == c2]
    assert "WaitingPromotion" in reasons and reasons[-2:] == ["Promoting", "Promoted"]
    paths = {r.path for r in receiver.delivered}
    assert {"/approve", "/check"} <= paths
