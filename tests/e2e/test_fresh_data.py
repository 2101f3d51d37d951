"""Issue 14 items 1 and 2 end to end: verdicts rest on fresh samples and exact counts, whatever
Prometheus and the scrapes do meanwhile.

Each test runs its own Prometheus (scraping the shared data plane every second) so it can stop it or
starve it of scrapes without touching the other tests' sandbox.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from canaryd.analysis.judge import REQUESTS_CHECK
from canaryd.httpserver import ThreadedServer
from canaryd.rollout.state import Phase, RolloutState
from canaryd.sandbox.prometheus import PrometheusServer
from tests.campaigns.faultproxy import FaultProxy
from tests.e2e.helpers import Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POLICY: dict[str, Any] = {
    "steps": [50],
    "interval": "20s",
    "progressDeadline": "30s",
    "analysis": {"mode": "sequential", "every": "2s", "warmup": "0s", "minRequests": 20, "failureLimit": 3,
                 "inconclusiveLimit": 30, "onInconclusive": "hold", "maxHold": "3m"},
}
STALE = "no sample of"


class ScrapeGate:
    """Between Prometheus and the data plane's /metrics: forwards scrapes, or fails them while `failing`
    (a target that stops answering: Prometheus marks its series stale)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failing = False
        self.scrapes = 0
        self._server = ThreadedServer(Starlette(routes=[Route("/metrics", self._metrics)]), host="127.0.0.1",
                                      port=0, name="scrape-gate")

    def start(self) -> ScrapeGate:
        self._server.start()
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        self._server.stop()

    async def _metrics(self, _request: Request) -> Response:
        if self.failing:
            return PlainTextResponse("scrape refused by the test", status_code=503)
        self.scrapes += 1
        async with httpx.AsyncClient(timeout=5, trust_env=False) as c:
            r = await c.get(self.upstream)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))


@pytest.fixture
def prometheus(env: Env) -> Iterator[tuple[PrometheusServer, ScrapeGate]]:
    assert env.sb.dataplane is not None
    gate = ScrapeGate(f"http://{env.sb.dataplane.metrics_target}/metrics").start()
    prom = PrometheusServer(scrape_interval_s=1.0).start()
    try:
        prom.set_targets([gate.target])
        yield prom, gate
    finally:
        if prom._proc is not None and prom._proc.poll() is None:
            os.kill(prom._proc.pid, signal.SIGCONT)
        prom.stop()
        gate.stop()


def _deploy(env: Env, name: str, prometheus_url: str, timeout: str) -> str:
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns, POLICY)}, "v1")
    env.start_daemon(env.settings(prometheus_url=prometheus_url, prometheus={"timeout": timeout}))
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state(name)) and s.status.stable_revision, 20, "v1 Ready and recorded")
    env.load([name], rate=40, duration=240)
    return env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v2")}, "v2")


def _analyses(st: RolloutState) -> list[Any]:
    return [a for a in st.status.analyses if a.canary_revision == st.status.canary_revision]


def _reasons(analysis: Any) -> str:
    return " | ".join(m.reason or "" for m in analysis.verdict.metrics)


def test_regression_promotion_on_stale_data_after_prometheus_stalled(
        env: Env, prometheus: tuple[PrometheusServer, ScrapeGate]) -> None:
    """Prometheus stopped (SIGSTOP) mid-step; a query sent during the stall was answered after SIGCONT
    with samples from before it (the lookback), and canaryd judged them as the current window. Now that
    reading is no data, and the next verdict's window spans the stall, as its counts do."""
    prom, _gate = prometheus
    assert prom._proc is not None
    proxy = FaultProxy(prom.url, upstream_timeout_s=90).start()
    try:
        c2 = _deploy(env, "stall", proxy.url, timeout="60s")
        wait_until(lambda: (s := env.state("stall")) and s.spec.commit == c2 and len(_analyses(s)) >= 2, 60,
                   "two analyses of the canary")
        # The stall: Prometheus stops; the daemon's queries meanwhile are refused at once (the proxy is
        # down), so that none of them is left waiting from the stall's first second.
        proxy.set("down")
        os.kill(prom._proc.pid, signal.SIGSTOP)
        stopped = time.time()
        wait_until(lambda: time.time() - stopped >= 6 or None, 10, "6s of stall")
        # Now one query gets through and waits in the stopped Prometheus, asking about an instant 6s or
        # more after the newest sample.
        proxy.set("pass")
        switched = time.time()
        wait_until(lambda: any(t >= switched for t in proxy.in_flight) or None, 30, "a query held by the stall")
        os.kill(prom._proc.pid, signal.SIGCONT)
        resumed = time.time()

        # (The ModelRollout keeps the last 10 analyses: look while they are there.)
        def held_analysis() -> Any:
            st = env.state("stall")
            # The first tick after the switch: its query is the one the stall held (earlier ones were refused).
            return next((a for a in _analyses(st) if a.at.timestamp() >= switched), None) if st else None

        held = wait_until(held_analysis, 30, "the analysis whose query the stall held")
        assert held.verdict.outcome == "inconclusive" and STALE in _reasons(held), held.verdict

        def counted_after() -> Any:
            st = env.state("stall")
            return next((a for a in _analyses(st) if a.at > held.at and a.verdict.requests), None) if st else None

        first = wait_until(counted_after, 30, "an analysis with counts after the resume")
        # Its counts run from the last fresh reading before the stall: the window it states spans the stall.
        assert first.verdict.window_s >= resumed - stopped - 1, first.verdict
        st = env.wait_phase("stall", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=120)
    finally:
        proxy.stop()
    assert st.status.phase == Phase.SUCCEEDED, st.status.message


def test_regression_counts_after_missed_scrapes_are_exact(
        env: Env, prometheus: tuple[PrometheusServer, ScrapeGate]) -> None:
    """Every scrape failed for a few seconds mid-step: the series vanished from one reading (stale
    markers) and came back, and canaryd counted them again from zero: thousands of phantom requests
    (and every old error) in the evidence. Now that reading is no data, and the counts stay exact."""
    prom, gate = prometheus
    c2 = _deploy(env, "gap", prom.url, timeout="5s")
    st0 = wait_until(lambda: (s := env.state("gap")) and s.spec.commit == c2 and len(_analyses(s)) >= 2 and s,
                     60, "two analyses of the canary")
    canary = st0.status.canary_revision
    assert canary is not None
    gate.failing = True
    failed_at = time.time()
    # Three failed scrapes make the series stale; an analysis 4s into the gap reads none of them.
    gap = wait_until(lambda: next((a for a in _analyses(env.state("gap") or st0) if a.at.timestamp() > failed_at + 4),
                                  None), 30, "an analysis during the scrape gap")
    gate.failing = False
    st = env.wait_phase("gap", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=120)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    # What canaryd counted for the canary in the step is at most what its counters grew by in all:
    # counting a series again from zero would count its whole total a second time.
    total = sum(float(r["value"][1]) for r in prom.query(f'revision_request_count{{revision_name="{canary}"}}'))
    mine = [a for a in st.status.analyses if a.canary_revision == canary]
    counted = max((m.details.get("canary_requests", 0.0) for a in mine for m in a.verdict.metrics
                   if m.name == REQUESTS_CHECK), default=0.0)
    assert 0 < counted <= total, (counted, total, [(a.at, a.verdict.summary) for a in mine])
    assert gap.verdict.outcome == "inconclusive" and STALE in _reasons(gap), gap.verdict
