"""A new commit during a canary supersedes it; a `git revert` of a failed version rolls out normally."""

from __future__ import annotations

import pytest

from canaryd.rollout.state import Phase
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

THREE_STEPS = {**FAST_POLICY, "steps": [10, 30, 60]}


def test_new_commit_supersedes_the_running_canary(env: Env) -> None:
    c1 = env.repo.commit({"services/sup.yaml": isvc_yaml("sup", env.ns, "gs://e2e/v1"),
                          "policies/sup.yaml": policy_yaml("sup", env.ns, THREE_STEPS)}, "v1")
    env.start_daemon()
    env.wait_phase("sup", {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state("sup")) and s.status.stable_revision, 20, "v1 Ready")
    rec = env.record("sup")
    env.load(["sup"], rate=25)
    c2 = env.repo.commit({"services/sup.yaml": isvc_yaml("sup", env.ns, "gs://e2e/v2")}, "v2")
    env.wait_phase("sup", {Phase.PROGRESSING}, c2, timeout=30)
    c3 = env.repo.commit({"services/sup.yaml": isvc_yaml("sup", env.ns, "gs://e2e/v3")}, "v3 supersedes v2")
    st = env.wait_phase("sup", {Phase.SUCCEEDED}, c3, timeout=90)
    superseded = next(h for h in st.status.history if h.commit == c3)
    assert superseded.reason == "Superseded" and superseded.from_phase == Phase.PROGRESSING
    assert any(h.commit == c2 and h.reason == "CanaryReady" for h in st.status.history)
    assert "Promoted" not in [h.reason for h in st.status.history if h.commit == c2]  # v2 never went to 100 %
    # Started over from the stable revision: v3's canary went 0 -> every step again, then was promoted.
    wait_until(lambda: rec.values[-1:] == [None], 10, "promotion visible")
    i = len(rec.values) - 1 - rec.values[::-1].index(0)  # the last time the percent went back to 0
    assert rec.values[i:] == [0, 10, 30, 60, None]


def test_revert_of_a_failed_version_rolls_out_normally(env: Env) -> None:
    c1 = env.repo.commit({"services/rev.yaml": isvc_yaml("rev", env.ns, "gs://e2e/v1"),
                          "policies/rev.yaml": policy_yaml("rev", env.ns, FAST_POLICY)}, "v1")
    env.start_daemon()
    env.wait_phase("rev", {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state("rev")) and s.status.stable_revision, 20, "v1 Ready")
    env.load(["rev"], rate=25)
    c2 = env.repo.commit({"services/rev.yaml": isvc_yaml("rev", env.ns, "gs://e2e/v2")}, "v2")
    env.wait_phase("rev", {Phase.SUCCEEDED}, c2, timeout=60)
    c3 = env.repo.commit({"services/rev.yaml": isvc_yaml("rev", env.ns, "gs://e2e/errors")}, "bad v3")
    env.wait_phase("rev", {Phase.FAILED}, c3, timeout=60)
    env.repo.repo.git.revert("HEAD", no_edit=True)
    env.repo.repo.remote("origin").push("main:main").raise_if_error()
    c4 = env.repo.head()
    st = env.wait_phase("rev", {Phase.SUCCEEDED, Phase.FAILED}, c4, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    reasons = [h.reason for h in st.status.history if h.commit == c4]
    assert reasons[0] == "RolloutStarted" and reasons[-1] == "Promoted"
    obj = env.isvc("rev") or {}
    assert obj["spec"]["predictor"]["model"]["storageUri"] == "gs://e2e/v2"
