"""The Prometheus fault proxy (`tests.campaigns.faultproxy`) in front of a fake Prometheus that answers
every instant query at the time asked for, read through canaryd's real `PrometheusSource`: every fault
must come out as *no data* with a reason, never as a number, and the missing-data invariant of
`tests.campaigns.faults` must see through a fault the daemon took for data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from canaryd.adapters.prometheus import PrometheusSource
from canaryd.analysis.samples import MetricVerdict, Verdict
from canaryd.httpserver import ThreadedServer
from canaryd.rollout.state import AnalysisRecord
from tests.campaigns.faultproxy import FaultProxy
from tests.campaigns.faults import analysis_without_data


async def fake_prometheus(request: Request) -> Response:
    """42 for any query, as a one-series vector evaluated at the `time` asked for (like Prometheus)."""
    params = dict(request.query_params)
    if request.method == "POST":
        params.update(parse_qsl((await request.body()).decode()))
    at = float(params.get("time") or time.time())
    return JSONResponse({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"revision_name": "r1"}, "value": [at, "42"]}]}})


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadedServer(Starlette(routes=[Route("/api/v1/query", fake_prometheus, methods=["GET", "POST"])]))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream, seed=4, hang_s=5.0) as p:
        yield p


@pytest.fixture
def source(proxy: FaultProxy) -> Iterator[PrometheusSource]:
    s = PrometheusSource(proxy.url, timeout_s=2.0)  # short for the hang case, not so short for a busy CI
    try:
        yield s
    finally:
        s.close()


def test_pass_forwards_untouched(source: PrometheusSource, proxy: FaultProxy) -> None:
    at = time.time()
    assert source.query("up", at=at) == (42.0, None)
    [q] = proxy.queries()
    assert (q.query, q.fault, q.status) == ("up", "pass", 200) and q.at == pytest.approx(at, abs=1e-3)


@pytest.mark.parametrize(("mode", "why"), [
    ("down", "cannot reach Prometheus"),
    ("hang", "timed out after 2s"),
    ("empty", "empty result"),
    ("nan", "NaN"),
    ("stale", "stale answer"),
    ("error", "answered HTTP 500"),
])
def test_every_fault_is_no_data_with_a_reason(source: PrometheusSource, proxy: FaultProxy, mode: str,
                                              why: str) -> None:
    proxy.set(mode, stale_at=time.time() - 60)  # type: ignore[arg-type]
    value, error = source.query("up", at=time.time())
    assert value is None and error is not None and why in error, error
    proxy.set("pass")  # and back: the same port answers again (a hung request is let go)
    assert source.query("up", at=time.time()) == (42.0, None)


def test_down_refuses_on_the_same_port_and_comes_back(proxy: FaultProxy, source: PrometheusSource) -> None:
    port = proxy.port
    proxy.set("down")
    assert "Connection refused" in (source.query("up")[1] or "")
    proxy.set("pass")
    assert proxy.port == port and source.query("up")[0] == 42.0


def test_regression_stale_answers_were_taken_for_fresh_data(proxy: FaultProxy, source: PrometheusSource) -> None:
    """A results cache or stuck frontend answering for another instant gave real-looking numbers about an
    old window; the adapter ignored the evaluation time in the answer and judged them as current."""
    frozen = time.time() - 30
    proxy.set("stale", stale_at=frozen)
    value, error = source.query("sum(rate(x[1m]))", at=time.time())
    assert value is None and error is not None and "stale answer" in error and "+30" in error
    # the raw counter reads of the statistical judges too
    counts, _, _ = source.read_counts("ns", ["r1"], {"r1": {"@at": frozen - 10}}, frozen - 10, at=time.time())
    assert counts[0].requests is None
    # an answer for exactly the instant asked for is fine, however old that instant is
    assert source.query("up", at=frozen - 100) == (42.0, None)


def test_faults_fire_with_their_probability_from_a_seed(proxy: FaultProxy, source: PrometheusSource) -> None:
    proxy.set("empty", probability=0.3)
    outcomes = [source.query("up")[0] for _ in range(60)]
    faulted = outcomes.count(None)
    assert 8 <= faulted <= 30, faulted
    assert faulted == sum(1 for q in proxy.queries() if q.fault == "empty")


def test_post_queries_are_faulted_too(proxy: FaultProxy, upstream: str) -> None:
    import httpx

    proxy.set("stale", stale_at=1000.0)
    answer = httpx.post(f"{proxy.url}/api/v1/query", data={"query": "up", "time": "2000"}).json()
    assert answer["data"]["result"][0]["value"][0] == 1000.0
    proxy.set("nan")
    answer = httpx.post(f"{proxy.url}/api/v1/query", data={"query": "up", "time": "2000"}).json()
    assert answer["data"]["result"][0]["value"] == [2000.0, "NaN"]


def record(at: float, outcome: str = "pass", requests: float | None = 50.0, value: float | None = 0.01,
           revision: str = "r1") -> AnalysisRecord:
    verdict = Verdict(outcome=outcome, requests=requests, window_s=2.0,  # type: ignore[arg-type]
                      metrics=[MetricVerdict(name="error-rate", outcome="pass", value=value, reason="ok")])
    return AnalysisRecord(at=datetime.fromtimestamp(at, UTC), step=1, weight=50, canary_revision=revision,
                          verdict=verdict)


def test_the_missing_data_invariant(proxy: FaultProxy, source: PrometheusSource) -> None:
    at = round(time.time(), 3)
    assert analysis_without_data(record(at)) is None
    assert "inconclusive" in (analysis_without_data(record(at, outcome="inconclusive")) or "")
    assert "request count" in (analysis_without_data(record(at, requests=None)) or "")
    assert "error-rate" in (analysis_without_data(record(at, value=None)) or "")
    # A pass the daemon judged on a faulty answer about its canary is caught through the proxy's log ...
    proxy.set("stale", stale_at=at - 30)
    source.query('sum(rate(x{revision_name="r1"}[1m]))', at=at)
    assert "faulted Prometheus answer" in (analysis_without_data(record(at), proxy) or "")
    # ... and one about another revision (the stable one, in threshold mode) is not its business.
    assert analysis_without_data(record(at, revision="r2"), proxy) is None
    assert analysis_without_data(record(at + 5), proxy) is None
