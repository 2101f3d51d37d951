"""PrometheusSource against a real Prometheus scraping an emulated queue-proxy /metrics.

The emulated traffic is clocked by the scrapes: every scrape of /metrics adds one fixed batch of
requests, so error ratios and histogram quantiles are exact whatever the timing, and request counts
are batch size x window (within the extrapolation of `increase()`). One Prometheus serves the module.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from canaryd.adapters.prometheus import PrometheusSource
from canaryd.analysis.judge import judge
from canaryd.analysis.samples import RevisionReading
from canaryd.httpserver import ThreadedServer
from canaryd.policy import Analysis, Metric
from canaryd.sandbox.prometheus import (
    PrometheusNotInstalled,
    PrometheusServer,
    PrometheusStartError,
    running_prometheus,
)

pytestmark = pytest.mark.slow

NS = "models"
SERVICE = "iris"
CANARY = "iris-predictor-00002"
STABLE = "iris-predictor-00001"
QUIET = "iris-predictor-00003"  # never served a 5xx: it has no 5xx series at all
WEIRD = 'we"ird\\rev'  # needs escaping both in the exposition and in PromQL
HOSTILE = 'a"}) or vector(1) or (x{a="'
WINDOW_S = 5
BUCKETS_MS = (5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900, 1000,
              2000, 5000, 10000, 20000, 50000, 100000)  # fmt: skip
METRICS = [
    Metric(name="error-rate", max=0.01, max_increase=0.005),
    Metric(name="latency", quantile=0.99, max_ms=500, max_ratio=1.2),
]


@dataclass
class Batch:
    """What one revision serves between two scrapes."""

    ok: int
    errors: int
    latencies_ms: list[tuple[float, int]]  # (latency, how many requests)


BATCHES = {
    # 5 % errors; p99 falls in (400, 450] at rank 99 of 100 -> 400 + 50 * 9/10 = 445 ms
    CANARY: Batch(ok=95, errors=5, latencies_ms=[(50, 90), (420, 10)]),
    # 1 % errors; p99 in (200, 250] at rank 198 of 200 -> 200 + 50 * 18/20 = 245 ms
    STABLE: Batch(ok=198, errors=2, latencies_ms=[(30, 180), (230, 20)]),
    # no errors; p99 in (10, 20] -> 10 + 10 * 0.99 = 19.9 ms
    QUIET: Batch(ok=50, errors=0, latencies_ms=[(15, 50)]),
    WEIRD: Batch(ok=30, errors=10, latencies_ms=[(70, 40)]),
}


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class QueueProxy:
    """Knative queue-proxy's OpenCensus exposition for several revisions (DESIGN §6 names and buckets)."""

    batches: dict[str, Batch]
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    buckets: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def scrape(self) -> str:
        with self.lock:
            for rev, b in self.batches.items():
                for code, n in (("200", b.ok), ("500", b.errors)):
                    if n:
                        self.counts[(rev, code)] = self.counts.get((rev, code), 0) + n
                cumulative = self.buckets.setdefault(rev, [0] * (len(BUCKETS_MS) + 1))
                for latency, n in b.latencies_ms:
                    for i, le in enumerate((*BUCKETS_MS, float("inf"))):
                        if latency <= le:
                            cumulative[i] += n
                    self.sums[rev] = self.sums.get(rev, 0.0) + latency * n
            return self._render()

    def _render(self) -> str:
        lines = [
            "# HELP revision_request_count The number of requests that are routed to queue-proxy",
            "# TYPE revision_request_count counter",
        ]
        for (rev, code), n in sorted(self.counts.items()):
            labels = f'{self._labels(rev)},response_code="{code}",response_code_class="{code[0]}xx"'
            lines.append(f"revision_request_count{{{labels}}} {n}")
        lines += [
            "# HELP revision_request_latencies The response time in millisecond",
            "# TYPE revision_request_latencies histogram",
        ]
        for rev, cumulative in sorted(self.buckets.items()):
            labels = self._labels(rev) + ',response_code="200",response_code_class="2xx"'
            for le, n in zip((*map(str, BUCKETS_MS), "+Inf"), cumulative, strict=True):
                lines.append(f'revision_request_latencies_bucket{{{labels},le="{le}"}} {n}')
            lines.append(f"revision_request_latencies_sum{{{labels}}} {self.sums.get(rev, 0.0)}")
            lines.append(f"revision_request_latencies_count{{{labels}}} {cumulative[-1]}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _labels(rev: str) -> str:
        return (
            f'namespace_name="{NS}",service_name="iris-predictor",configuration_name="iris-predictor",'
            f'revision_name="{_label_value(rev)}",pod_name="{_label_value(rev)}-pod",container_name="queue-proxy",'
            'route_tag=""'
        )

    def app(self) -> Starlette:
        async def metrics(_: Request) -> Response:
            return PlainTextResponse(self.scrape(), media_type="text/plain; version=0.0.4")

        return Starlette(routes=[Route("/metrics", metrics)])


@dataclass
class AuthProxy:
    """An authenticating reverse proxy in front of Prometheus that records what it was sent.

    Its 401 answer echoes the credentials it got, as careless proxies do: the adapter must redact them.
    """

    upstream: str
    expected: str | None = None
    seen: list[str | None] = field(default_factory=list)

    def app(self) -> Starlette:
        async def forward(request: Request) -> Response:
            auth = request.headers.get("authorization")
            self.seen.append(auth)
            if self.expected is not None and auth != self.expected:
                return PlainTextResponse(f"unauthorized: got {auth}", status_code=401)
            async with httpx.AsyncClient(trust_env=False) as client:
                up = await client.get(f"{self.upstream}{request.url.path}", params=list(request.query_params.items()))
            return Response(up.content, status_code=up.status_code, media_type=up.headers.get("content-type"))

        return Starlette(routes=[Route("/{path:path}", forward)])


@dataclass
class World:
    prom: PrometheusServer
    proxy: AuthProxy
    proxy_url: str


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    dataplane = ThreadedServer(QueueProxy(dict(BATCHES)).app(), name="queue-proxy").start()
    try:
        with running_prometheus([f"127.0.0.1:{dataplane.port}"], scrape_interval_s=1.0) as prom:
            proxy = AuthProxy(upstream=prom.url)
            with ThreadedServer(proxy.app(), name="auth-proxy") as proxy_server:
                # the window must be covered by samples before counts over it are meaningful
                prom.wait_for_series(
                    f'count_over_time(revision_request_count{{revision_name="{STABLE}",response_code="500"}}'
                    f"[{WINDOW_S + 5}s]) >= {WINDOW_S + 2}",
                    timeout=30,
                )
                yield World(prom=prom, proxy=proxy, proxy_url=proxy_server.url)
    finally:
        dataplane.stop()


def _read(source: PrometheusSource, canary: str, stable: str | None = STABLE) -> tuple[RevisionReading, ...]:
    samples = source.read(NS, SERVICE, canary, stable, METRICS, WINDOW_S)
    assert samples.window_s == WINDOW_S
    return (samples.canary, samples.stable) if samples.stable else (samples.canary,)


def test_reads_error_ratio_p99_and_requests_of_canary_and_stable(world: World) -> None:
    canary, stable = _read(PrometheusSource(world.prom.url), CANARY)
    assert canary.revision == CANARY and stable.revision == STABLE
    er, lat = canary.metrics["error-rate"], canary.metrics["latency"]
    assert (er.error, lat.error) == (None, None)
    assert er.value == pytest.approx(0.05, rel=1e-9)
    assert lat.value == pytest.approx(445.0, rel=1e-9)
    assert stable.metrics["error-rate"].value == pytest.approx(0.01, rel=1e-9)
    assert stable.metrics["latency"].value == pytest.approx(245.0, rel=1e-9)
    # requests = batch per scrape (1 s) x window, within increase()'s extrapolation
    assert canary.requests == pytest.approx(100 * WINDOW_S, rel=0.2)
    assert stable.requests == pytest.approx(200 * WINDOW_S, rel=0.2)
    assert 'revision_name="iris-predictor-00002"' in er.query and "[5s]" in er.query


def test_no_5xx_at_all_is_zero_errors_not_no_data(world: World) -> None:
    (quiet,) = _read(PrometheusSource(world.prom.url), QUIET, stable=None)
    assert quiet.metrics["error-rate"].value == 0.0
    assert quiet.metrics["error-rate"].error is None
    assert quiet.requests == pytest.approx(50 * WINDOW_S, rel=0.2)
    assert quiet.metrics["latency"].value == pytest.approx(19.9, rel=1e-9)


@pytest.mark.parametrize("revision", ["iris-predictor-09999", HOSTILE])
def test_unknown_or_hostile_revision_is_no_data(world: World, revision: str) -> None:
    (reading,) = _read(PrometheusSource(world.prom.url), revision, stable=None)
    assert reading.requests is None
    for m in reading.metrics.values():
        assert m.value is None
        assert m.error is not None and m.error.startswith("empty result"), m.error  # parsed fine, matched nothing


def test_label_values_needing_escapes_select_their_own_series(world: World) -> None:
    (weird,) = _read(PrometheusSource(world.prom.url), WEIRD, stable=None)
    assert weird.metrics["error-rate"].value == pytest.approx(0.25, rel=1e-9)
    assert weird.metrics["latency"].value == pytest.approx(60 + 20 * 0.99, rel=1e-9)
    assert weird.requests == pytest.approx(40 * WINDOW_S, rel=0.2)


def test_custom_queries(world: World) -> None:
    source = PrometheusSource(world.prom.url)
    metrics = [
        Metric(
            name="errors-per-second",
            query='sum(rate(revision_request_count{namespace_name="{{namespace}}",'
            'revision_name="{{revision}}",response_code_class="5xx"}[{{window}}]))',
            max=0,
        ),
        Metric(name="many", query='rate(revision_request_count{revision_name="{{revision}}"}[{{window}}])', max=1),
        Metric(name="scalar", query="scalar(vector(42))", max=100),
        Metric(name="broken", query="sum(rate(x[{{window}}]", max=1),
        Metric(name="unsafe", query="{{revision}}", max=1),
    ]
    got = source.read(NS, SERVICE, CANARY, None, metrics, WINDOW_S).canary.metrics
    assert got["errors-per-second"].value == pytest.approx(5.0, rel=0.2)
    assert got["many"].value is None and "2 series returned, one expected" in str(got["many"].error)
    assert got["scalar"].value == 42.0
    assert got["broken"].value is None
    assert "HTTP 400: bad_data" in str(got["broken"].error)
    assert got["unsafe"].value is None and "invalid query" in str(got["unsafe"].error)


def test_is_online(world: World) -> None:
    assert PrometheusSource(world.prom.url).is_online()


def test_read_then_judge(world: World) -> None:
    source = PrometheusSource(world.prom.url)
    analysis = Analysis(min_requests=100, metrics=METRICS)
    bad = judge(source.read(NS, SERVICE, CANARY, STABLE, METRICS, WINDOW_S), analysis)
    assert bad.outcome == "fail"
    assert "error rate 0.05 > max 0.01" in bad.summary
    assert "p99 latency ratio 1.816 > maxRatio 1.2 (canary 445ms vs stable 245ms)" in bad.summary
    good = judge(source.read(NS, SERVICE, QUIET, STABLE, METRICS, WINDOW_S), analysis)
    assert good.outcome == "pass", good.summary


def test_regression_threshold_windows_of_a_stalled_prometheus_are_no_data(world: World) -> None:
    """Issue 14 item 1, threshold mode: a `rate(...[w])` window asked for an instant 26 s after the newest
    sample (what a query sent during a stall gets once Prometheus resumes) is still answered, from the
    samples the window holds, as if it were the last 10 s. The newest sample's time says it is old:
    every metric of the revision is no data, with the reason."""
    source = PrometheusSource(world.prom.url)  # scrapes every 1s: a sample older than 3s is not data
    later = time.time() + 26
    samples = source.read(NS, SERVICE, CANARY, STABLE, METRICS, 30, at=later)
    assert samples.stable is not None
    for reading in (samples.canary, samples.stable):
        _assert_all_no_data(reading, "newer than 3s")
    # what the window query alone says about that instant: numbers, as if they were current
    value, error = source.query(f'sum(rate(revision_request_count{{revision_name="{CANARY}"}}[30s]))', at=later)
    assert error is None and value is not None and value > 0
    fresh = source.read(NS, SERVICE, CANARY, STABLE, METRICS, WINDOW_S)
    assert fresh.canary.requests is not None and all(m.value is not None for m in fresh.canary.metrics.values())


def _assert_all_no_data(reading: RevisionReading, text: str) -> None:
    assert reading.requests is None
    for m in reading.metrics.values():
        assert m.value is None and m.error is not None and text in m.error, m.error


def test_stopped_prometheus_is_no_data_quickly() -> None:
    prom = PrometheusServer().start()
    url = prom.url
    prom.stop()
    source = PrometheusSource(url, timeout_s=2)
    assert not source.is_online()
    start = time.monotonic()
    (canary, stable) = _read(source, CANARY)
    assert time.monotonic() - start < 2
    first = canary.metrics["error-rate"].error
    assert first is not None and "Connection refused" in first and url in first, first
    assert canary.metrics["latency"].error == stable.metrics["latency"].error  # skipped after the first failure
    _assert_all_no_data(stable, "not queried: cannot reach Prometheus")


def test_hanging_prometheus_times_out_once_per_read() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        source = PrometheusSource(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.5)
        start = time.monotonic()
        (canary, stable) = _read(source, CANARY)
        elapsed = time.monotonic() - start
    assert elapsed < 1.5, elapsed
    _assert_all_no_data(canary, "timed out after 0.5s")
    _assert_all_no_data(stable, "timed out after 0.5s")


def test_bearer_token_is_sent_and_never_shown(world: World, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-t0ken\n")
    world.proxy.expected = "Bearer s3cr3t-t0ken"
    world.proxy.seen.clear()
    source = PrometheusSource(world.proxy_url, bearer_token_file=token_file)
    assert source.is_online()
    (canary,) = _read(source, CANARY, stable=None)
    assert canary.metrics["error-rate"].value == pytest.approx(0.05, rel=1e-9)
    assert world.proxy.seen and set(world.proxy.seen) == {"Bearer s3cr3t-t0ken"}

    token_file.write_text("rotated-but-wrong")  # re-read on every request
    (canary,) = _read(source, CANARY, stable=None)
    assert world.proxy.seen[-1] == "Bearer rotated-but-wrong"
    _assert_all_no_data(canary, "HTTP 401")
    errors = " ".join(str(m.error) for m in canary.metrics.values())
    assert "rotated-but-wrong" not in errors and "s3cr3t" not in errors
    assert "Bearer ***" in errors and "HTTP 401" in errors  # the proxy echoed it; we redacted it


def test_basic_auth_is_sent_and_never_shown(world: World, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("pa55word")
    world.proxy.expected = "Basic " + base64.b64encode(b"canaryd:pa55word").decode()
    source = PrometheusSource(world.proxy_url, basic_auth=("canaryd", password_file))
    (canary,) = _read(source, QUIET, stable=None)
    assert canary.metrics["error-rate"].value == 0.0

    world.proxy.expected = "Basic nope"
    (canary,) = _read(source, QUIET, stable=None)
    errors = " ".join(str(m.error) for m in canary.metrics.values())
    assert "HTTP 401" in errors and "pa55word" not in errors
    assert base64.b64encode(b"canaryd:pa55word").decode() not in errors


def test_unreadable_token_file_is_no_data(world: World, tmp_path: Path) -> None:
    world.proxy.expected = None
    source = PrometheusSource(world.proxy_url, bearer_token_file=tmp_path / "missing")
    (canary,) = _read(source, CANARY, stable=None)
    _assert_all_no_data(canary, "bearer token file")
    assert not source.is_online()


# --- the sandbox runner itself ---


def test_prometheus_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    prom = PrometheusServer(extra_args=["--no-such-flag"])
    with pytest.raises(PrometheusStartError, match="no-such-flag"):
        prom.start()
    assert not prom.running


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrometheusNotInstalled, match="apt-get install -y prometheus"):
        PrometheusServer().start()


def test_wait_for_series_gives_up_at_its_deadline(world: World) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no_such_metric"):
        world.prom.wait_for_series("no_such_metric", timeout=0.3)
    assert time.monotonic() - start < 2


def test_exact_counts_telescope_over_consecutive_windows(world: World) -> None:
    """Raw counter readings, differenced per series: whole numbers, nothing extrapolated, and two
    consecutive windows add up to exactly the counter growth over both (nothing counted twice)."""
    source = PrometheusSource(world.prom.url)
    t0 = time.time() - 6
    w1, kept = source.window_counts(NS, CANARY, STABLE, {}, t0, at=t0 + 3)
    w2, _ = source.window_counts(NS, CANARY, STABLE, kept, t0, at=t0 + 6)
    assert w1.window_s == pytest.approx(3) and w2.window_s == pytest.approx(3)

    def raw(rev: str, at: float, extra: str = "") -> float:
        value, error = source.query(f'sum(revision_request_count{{revision_name="{rev}"{extra}}})', at=at)
        assert error is None and value is not None
        return value

    for w in (w1, w2):
        assert w.stable is not None
        canary, stable = w.canary, w.stable
        assert canary.requests is not None and canary.errors is not None and stable.requests is not None
        assert canary.requests % 100 == 0 and canary.requests > 0  # one batch of 100 per scrape
        assert canary.errors == canary.requests * 5 / 100 and stable.requests % 200 == 0
        assert sum(canary.latency_counts) == canary.requests
        by_bound = dict(zip([*canary.latency_bounds_ms, float("inf")], canary.latency_counts, strict=True))
        assert by_bound[60.0] == canary.requests * 0.9 and by_bound[450.0] == canary.requests * 0.1
        assert canary.resets == 0 and w.queries and all("increase(" not in q for q in w.queries)
    assert w1.canary.requests + w2.canary.requests == raw(CANARY, t0 + 6) - raw(CANARY, t0)
    errors = ',response_code_class="5xx"'
    assert w1.canary.errors + w2.canary.errors == raw(CANARY, t0 + 6, errors) - raw(CANARY, t0, errors)
    assert kept[CANARY] and kept[STABLE]


def test_regression_promotion_on_stale_data_a_reading_without_fresh_samples_is_no_data(world: World) -> None:
    """Issue 14 item 1: a query sent while Prometheus stalled was answered, after it resumed, with samples
    26s old (its lookback fills in the last sample and stamps it with the query's time), and canaryd
    promoted on them. Asking the same Prometheus about an instant 26s after its newest sample is exactly
    that answer. Now such a reading is no data, says why, and keeps the last fresh readings."""
    source = PrometheusSource(world.prom.url)  # scrapes every 1s: a sample older than 3s is not data
    now = time.time()
    _, kept = source.window_counts(NS, CANARY, STABLE, {}, now - 4, at=now - 2)
    later = now + 26
    w, kept2 = source.window_counts(NS, CANARY, STABLE, kept, now - 4, at=later)
    assert w.canary.requests is None and w.canary.errors is None
    assert w.canary.error is not None and "no sample" in w.canary.error and "newer than 3s" in w.canary.error
    assert w.stable is not None and w.stable.requests is None
    assert kept2 == kept, "the last fresh readings are what the next window counts from"
    # What an instant query says about that moment: the lookback's old sample, as if it were current.
    value, error = source.query(f'sum(revision_request_count{{revision_name="{CANARY}"}})', at=later)
    assert error is None and value is not None


def test_counts_state_the_span_between_the_samples_they_difference(world: World) -> None:
    """The window of a verdict is the time between the newest samples of the two readings, not between
    the query instants: a late scrape shortens it, and the verdict says so."""
    source = PrometheusSource(world.prom.url)
    now = time.time()
    start, at = now - 5.5, now - 0.5
    w, _ = source.window_counts(NS, CANARY, STABLE, {}, start, at=at)
    c = w.canary
    assert c.since is not None and c.until is not None
    assert start - 3 <= c.since <= start and at - 3 <= c.until <= at
    assert w.window_s == pytest.approx(c.until - c.since) and w.window_s > 0


def test_latency_counts_start_after_the_warmup_and_errors_before_it(world: World) -> None:
    """The first window of a rollout counts requests and errors from the canary's first traffic and latency
    only from the end of the warmup (`latency_start`): each from the reading at its own instant."""
    source = PrometheusSource(world.prom.url)
    world.prom.wait_for_series(f'count_over_time(revision_request_count{{revision_name="{CANARY}"}}[12s]) >= 10',
                               timeout=30)
    now = time.time()
    start, warm, at = now - 7.5, now - 4.5, now - 0.5
    w, _ = source.window_counts(NS, CANARY, STABLE, {}, start, latency_start=warm, at=at)

    def raw(metric: str, when: float) -> float:
        value, error = source.query(f'sum({metric}{{revision_name="{CANARY}"}})', at=when)
        assert error is None and value is not None, (when - now, metric, error)
        return value

    c = w.canary
    assert c.requests == raw("revision_request_count", at) - raw("revision_request_count", start)
    latency = raw("revision_request_latencies_count", at) - raw("revision_request_latencies_count", warm)
    assert sum(c.latency_counts) == latency and 0 < latency < c.requests
    assert c.since is not None and start - 3 <= c.since <= start, "the window is the span of the error counts"
    assert w.window_s == pytest.approx(c.until - c.since) if c.until is not None else False


def test_exact_counts_of_an_unknown_revision_are_zero_not_made_up(world: World) -> None:
    source = PrometheusSource(world.prom.url)
    now = time.time()
    w, _ = source.window_counts(NS, "iris-predictor-09999", None, {}, now - 3, at=now)
    assert w.canary.requests == 0 and w.canary.errors == 0 and w.canary.latency_counts == []
    assert w.stable is None


def test_exact_counts_when_prometheus_is_down_are_no_data() -> None:
    with socket.socket() as s:  # a port nothing listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = PrometheusSource(f"http://127.0.0.1:{port}", timeout_s=1)
    now = time.time()
    w, kept = source.window_counts(NS, CANARY, STABLE, {CANARY: {"r:x": 5.0}}, now - 3, at=now)
    assert w.canary.requests is None and w.canary.errors is None
    assert kept[CANARY]["r:x"] == 5.0  # the older readings are kept to count from next time
