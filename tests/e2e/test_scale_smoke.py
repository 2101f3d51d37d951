"""The daemon reads InferenceServices from its watch-fed cache, not with a GET per service per tick.

The real `canaryd run` in the sandbox, cache on (the default). The API emulator records every request with
its User-Agent, and the daemon's /metrics counts its ticks, so the test can put the two side by side:

* services at rest: many ticks (the 1 s poll caps every service's next tick), not one InferenceService GET,
  and the cache's list and watch in the test's namespace only;
* a rollout to its end: GETs only to guard writes (at most one per patch), far fewer than ticks, and the
  rollout still succeeds (the cache follows KServe's status and our own patches).

`bench/scale.py` measures the same at 1,000 services; this is its smoke test.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from canaryd.adapters.kube import user_agent
from canaryd.rollout.state import Phase
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAEMON = user_agent("daemon")
NAMES = ("s1", "s2", "s3", "s4")
QUICK = {**FAST_POLICY, "steps": [50], "interval": "3s"}


def ticks(env: Env) -> float:
    assert env.daemon is not None
    text = httpx.get(f"{env.daemon.url}/metrics", timeout=5).text
    m = re.search(r"^canaryd_tick_duration_seconds_count (\S+)$", text, re.M)
    assert m, "no tick count in /metrics"
    return float(m.group(1))


def daemon_calls(env: Env, start: int, verb: str) -> list[Any]:
    return [c for c in env.sb.api.calls[start:]
            if c.user_agent == DAEMON and c.verb == verb and c.resource == "inferenceservices"]


def test_ticks_read_inferenceservices_from_the_cache(env: Env) -> None:
    c1 = env.repo.commit({
        **{f"services/{n}.yaml": isvc_yaml(n, env.ns, "gs://e2e/v1") for n in NAMES},
        **{f"policies/{n}.yaml": policy_yaml(n, env.ns, QUICK) for n in NAMES},
    }, "v1")
    start = len(env.sb.api.calls)
    env.start_daemon()
    for n in NAMES:
        env.wait_phase(n, {Phase.SUCCEEDED}, c1, timeout=30)

    # At rest: every service ticks at least once a second; none of those ticks GETs its service.
    calls0, ticks0 = len(env.sb.api.calls), ticks(env)
    wait_until(lambda: ticks(env) - ticks0 >= 3 * len(NAMES), 30, "a dozen ticks")
    calls1, ticks1 = len(env.sb.api.calls), ticks(env)
    at_rest = [c for c in env.sb.api.calls[calls0:calls1]
               if c.user_agent == DAEMON and c.verb == "get" and c.resource == "inferenceservices"]
    assert not at_rest, f"{len(at_rest)} InferenceService GETs in {ticks1 - ticks0:.0f} ticks at rest"
    lists = daemon_calls(env, start, "list") + daemon_calls(env, start, "watch")
    assert lists, "the daemon's cache never listed or watched InferenceServices"
    assert {c.namespace for c in lists} == {env.ns}, "the cache must stay in the daemon's namespaces"

    # A rollout to its end: reads from the cache, GETs only to guard the writes.
    env.load(["s1"], rate=20)
    calls2, ticks2 = len(env.sb.api.calls), ticks(env)
    c2 = env.repo.commit({"services/s1.yaml": isvc_yaml("s1", env.ns, "gs://e2e/v2")}, "v2 of s1")
    done = env.wait_phase("s1", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=45)
    assert done.status.phase == Phase.SUCCEEDED, done.status.message
    window = env.sb.api.calls[calls2:]
    isvc_gets = [c for c in window if c.user_agent == DAEMON and c.verb == "get" and c.resource == "inferenceservices"]
    patches = [c for c in window if c.user_agent == DAEMON and c.verb == "patch" and c.resource == "inferenceservices"]
    rollout_ticks = ticks(env) - ticks2
    assert patches, "the rollout wrote nothing?"
    assert len(isvc_gets) <= len(patches), (len(isvc_gets), len(patches))
    assert len(isvc_gets) < rollout_ticks / 4, (len(isvc_gets), rollout_ticks)
