"""Crashes end to end.

`test_crash_campaign_keeps_every_invariant` is a short crash campaign in CI: at least 20 SIGKILLs of the
real daemon at chosen points of real rollouts (random times, the hold point between saving the
ModelRollout and patching the InferenceService, state reads and writes, promotion and rollback requests),
with every invariant checked after each kill and restart. `python bench/crashes.py` runs the long one.
The campaign brings its own sandbox and scenario, so it shares nothing with the other end-to-end tests;
`CANARYD_CRASH_SEED=N` replays another seed (the seed is in the failure message).

The other tests replay, deterministically, the defects the campaign found.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from canaryd.daemon.controller import HOLD_ENV, HOLD_ON_ENV
from canaryd.rollout.state import Phase
from tests.campaigns.crashes import Campaign, CampaignConfig, TrafficRecorder, check_step_dwell, collapse
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = int(os.environ.get("CANARYD_CRASH_SEED", "20250107"))


def test_crash_campaign_keeps_every_invariant(tmp_path: Path) -> None:
    cfg = CampaignConfig(seed=SEED, kills=22, services=4, max_duration_s=150)
    report = Campaign(cfg, workdir=tmp_path / "sandbox").run()
    summary = report.summary()
    print(summary)
    assert report.violations == [], summary
    assert report.kills >= 20, summary
    assert report.restarts == report.kills + 1, summary
    assert report.unfinished == 0, summary
    assert report.promoted > 0 and report.rolled_back > 0, summary
    assert report.recorder_gaps == [], summary


def test_crash_between_saving_a_step_and_patching_it_does_not_skip_the_step(env: Env) -> None:
    """The campaign's first find: StepAdvanced to 30 % saved, the daemon killed before the patch, and down
    for longer than the step's interval. The restarted daemon re-asserted 30 % and, in the same tick,
    passed the step (its clock had run all along) and moved to 60 %: 30 % was served for milliseconds."""
    steps = [10, 30, 60]
    interval = 5.0  # FAST_POLICY's
    hold = env.dir / "hold"
    c1 = env.repo.commit({"services/skip.yaml": isvc_yaml("skip", env.ns, "gs://e2e/v1"),
                          "policies/skip.yaml": policy_yaml("skip", env.ns, {**FAST_POLICY, "steps": steps})}, "v1")
    env.start_daemon(env={HOLD_ENV: str(hold), HOLD_ON_ENV: "traffic=30"})
    env.wait_phase("skip", {Phase.SUCCEEDED}, c1, timeout=30)
    rec = TrafficRecorder(env.api, env.ns).start()
    try:
        env.load(["skip"], rate=25)
        c2 = env.repo.commit({"services/skip.yaml": isvc_yaml("skip", env.ns, "gs://e2e/v2")}, "v2")
        wait_until(lambda: (hold / "held").exists(), 40, "the daemon to save 30 % and stop before patching it")
        assert env.daemon is not None
        env.daemon.kill()
        saved = env.state("skip")
        assert saved is not None and saved.status.weight == 30 and saved.status.step_started_at is not None
        # Down for longer than the step's interval: its clock runs, its traffic is not in force.
        started = saved.status.step_started_at
        wait_until(lambda: datetime.now(UTC) > started + timedelta(seconds=interval + 2), 30,
                   "the step's interval to pass while the daemon is down")
        env.start_daemon()  # without the hold switch
        st = env.wait_phase("skip", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
        assert st.status.phase == Phase.SUCCEEDED, st.status.message
        wait_until(lambda: rec.of("skip", "gs://e2e/v2")[-1:] == [None], 10, "promotion visible")
        timed = rec.timed("skip", "gs://e2e/v2")
    finally:
        rec.stop()
    assert collapse([p for _, p in timed]) == [0, 10, 30, 60, None]
    assert check_step_dwell(timed, steps, min_dwell_s=interval - 1.0) == []
