"""A short crash campaign in CI: at least 20 SIGKILLs of the real daemon at chosen points of real rollouts
(random times, the hold point between saving the ModelRollout and patching the InferenceService, state
reads and writes, promotion and rollback requests), with every invariant checked after each kill and
restart. `python bench/crashes.py` runs the long one. The campaign brings its own sandbox and scenario,
so it shares nothing with the other end-to-end tests.

`CANARYD_CRASH_SEED=N` replays another seed (the seed is in the failure message).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from canaryd.sandbox.crashes import Campaign, CampaignConfig

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
