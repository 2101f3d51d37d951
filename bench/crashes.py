"""Crash campaign: SIGKILL the real daemon at chosen points of real rollouts, restart it, check invariants.

Runs `canaryd run` (a child process) against its own sandbox (API emulator, KServe emulator, data plane,
real Prometheus, local Git repo). Several services roll out good and bad versions one after another
while the daemon is killed — at random times, at its hold point between saving a ModelRollout and
patching the InferenceService, and when given API requests arrive (state reads and writes, the patches of
promotion and rollback) — and restarted, `--kills` times. After every kill and restart, and at the end,
it checks that every ModelRollout is valid, that the traffic written follows the policy (no step skipped
or applied twice), that every good version ends promoted and every bad one rolled back, and that no
rollout is stuck. See `tests.campaigns.crashes` for the kill points and the exact invariants.

The seed (printed; `--seed` to replay) fixes the sequence of kill points and of good/bad versions.

    python bench/crashes.py [--kills 200] [--services 6] [--seed N]

Exit status 1 when an invariant was violated.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import time
from pathlib import Path

# Runnable from a plain checkout (`python bench/crashes.py`), whether or not canaryd is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.campaigns.crashes import Campaign, CampaignConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200, help="SIGKILLs in the campaign (default 200)")
    ap.add_argument("--services", type=int, default=6, help="services rolling out in parallel (default 6)")
    ap.add_argument("--seed", type=int, default=None, help="RNG seed (default: a random one, printed)")
    ap.add_argument("--max-minutes", type=float, default=12.0,
                    help="stop killing after this long, whatever the count (default 12)")
    ap.add_argument("--keep-dir", type=Path, default=None,
                    help="keep the sandbox's files here (daemon log, Git repo, kubeconfigs, and proxy-trace.log: every"
                         " request the daemon made and what it was told) for a look afterwards")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the sandbox, Prometheus, the daemon and the load process are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"crash campaign: seed {seed}, {args.kills} kills, {args.services} services", flush=True)
    cfg = CampaignConfig(seed=seed, kills=args.kills, services=args.services,
                         max_duration_s=args.max_minutes * 60)
    started = time.monotonic()
    report = Campaign(cfg, workdir=args.keep_dir, trace=args.keep_dir is not None,
                      progress=lambda msg: print(f"  {msg}", flush=True)).run()
    print(report.summary())
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
