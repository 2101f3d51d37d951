"""Window counts against a real Prometheus when a series is born inside the window.

A new revision's 5xx series appears with its first error. `increase()` only counts growth between a
series' samples in the range, so a 5xx series born inside the window (and not growing after) counted as
no errors at all, and the threshold judge's error rate read 0: a pass on missing data. The queries now
count a series born inside the window from zero (`queries.count_in_window`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from canaryd.analysis import queries
from canaryd.httpserver import ThreadedServer
from canaryd.sandbox.prometheus import PrometheusServer, running_prometheus

NS, REV = "models", "iris-predictor-00002"
KN = queries.get_profile("knative-opencensus")
WINDOW = "10s"


class Exporter:
    """queue-proxy-like counters: 2xx grows by 10 per scrape; the 5xx series exists once `errors` is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.errors: int | None = None

    def app(self) -> Starlette:
        async def metrics(_request: Request) -> PlainTextResponse:
            with self.lock:
                self.ok += 10
                lines = ["# TYPE revision_request_count counter",
                         f'revision_request_count{{namespace_name="{NS}",revision_name="{REV}",'
                         f'response_code_class="2xx"}} {self.ok}']
                if self.errors is not None:
                    lines.append(f'revision_request_count{{namespace_name="{NS}",revision_name="{REV}",'
                                 f'response_code_class="5xx"}} {self.errors}')
            return PlainTextResponse("\n".join(lines) + "\n")

        return Starlette(routes=[Route("/metrics", metrics)])


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[PrometheusServer, Exporter]]:
    exporter = Exporter()
    with ThreadedServer(exporter.app(), name="exporter") as server, \
            running_prometheus([f"127.0.0.1:{server.port}"], scrape_interval_s=1.0) as prom:
        yield prom, exporter


def _value(prom: PrometheusServer, promql: str) -> float | None:
    result = prom.query(promql)
    return float(result[0]["value"][1]) if result else None


def test_regression_errors_of_a_series_born_inside_the_window_were_not_counted(
        world: tuple[PrometheusServer, Exporter]) -> None:
    prom, exporter = world
    ok = f'revision_request_count{{revision_name="{REV}",response_code_class="2xx"}}'
    bad = f'revision_request_count{{revision_name="{REV}",response_code_class="5xx"}}'
    # The 2xx series must be older than the window (counted by increase()); then the first 3 errors.
    prom.wait_for_series(f"count_over_time({ok}[30s]) >= 14", timeout=40)
    with exporter.lock:
        exporter.errors = 3
    prom.wait_for_series(f"count_over_time({bad}[{WINDOW}]) >= 2", timeout=15)

    errors = _value(prom, queries.errors_in_window(KN, NS, REV, WINDOW))
    requests = _value(prom, queries.requests_in_window(KN, NS, REV, WINDOW))
    ratio = _value(prom, queries.error_ratio(KN, NS, REV, WINDOW))
    old_style = _value(prom, f"sum(increase({bad}[{WINDOW}]))")
    assert old_style == 0.0  # what the window queries said before: no errors
    assert errors == 3.0
    assert requests is not None and 100 <= requests <= 125  # 10 per 1 s scrape over 10 s (+ the 3 errors)
    assert ratio == pytest.approx(errors / requests)
    assert ratio > 0.02


def test_no_series_at_all_is_still_no_data(world: tuple[PrometheusServer, Exporter]) -> None:
    prom, _ = world
    prom.wait_for_series("up == 1", timeout=30)
    assert prom.query(queries.requests_in_window(KN, NS, "iris-predictor-09999", WINDOW)) == []
    assert prom.query(queries.error_ratio(KN, NS, "iris-predictor-09999", WINDOW)) == []
