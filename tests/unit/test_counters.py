"""Exact counts from raw counter readings: per-series differences, resets, new series, buckets."""

from __future__ import annotations

import math

import pytest

from canaryd.analysis.counters import count, matches, raw_buckets_query, raw_requests_query, series_id
from canaryd.analysis.queries import Matcher, get_profile

P = get_profile("knative-opencensus")
ISTIO = get_profile("istio")


def req(pod: str, code: str, value: float) -> tuple[dict[str, str], float]:
    return {"pod_name": pod, "response_code_class": code, "revision_name": "r"}, value


def bucket(pod: str, le: str, value: float) -> tuple[dict[str, str], float]:
    return {"pod_name": pod, "le": le, "revision_name": "r"}, value


def test_differences_per_series_with_errors_classified_by_the_profile() -> None:
    first, kept = count("r", P, [req("a", "2xx", 100), req("a", "5xx", 3)], [], None)
    assert (first.requests, first.errors) == (103, 3)  # no previous readings: everything since zero
    later, _ = count("r", P, [req("a", "2xx", 150), req("a", "5xx", 5)], [], kept)
    assert (later.requests, later.errors, later.resets) == (52, 2, 0)


def test_a_reset_counts_the_new_value_and_a_new_series_counts_in_full() -> None:
    _, kept = count("r", P, [req("a", "2xx", 1000), req("a", "5xx", 10)], [], None)
    got, _ = count("r", P, [req("a", "2xx", 40), req("a", "5xx", 12), req("b", "2xx", 7)], [], kept)
    assert got.requests == 40 + 2 + 7 and got.errors == 2 and got.resets == 1


def test_summing_first_would_hide_a_reset_per_series_does_not() -> None:
    # pod a restarts (1000 -> 0 then 30) while pod b grows by 1000: the sum is flat, the traffic was not
    _, kept = count("r", P, [req("a", "2xx", 1000), req("b", "2xx", 0)], [], None)
    got, _ = count("r", P, [req("a", "2xx", 30), req("b", "2xx", 1000)], [], kept)
    assert got.requests == 1030 and got.resets == 1


def test_buckets_become_per_bucket_counts_in_ms() -> None:
    _, kept = count("r", P, [], [bucket("a", "100", 0), bucket("a", "500", 0), bucket("a", "+Inf", 0)], None)
    got, _ = count("r", P, [], [bucket("a", "100", 80), bucket("a", "500", 95), bucket("a", "+Inf", 100),
                                bucket("b", "100", 10), bucket("b", "500", 10), bucket("b", "+Inf", 10)], kept)
    assert got.latency_bounds_ms == [100.0, 500.0]
    assert got.latency_counts == [90.0, 15.0, 5.0]


def test_a_failed_query_is_no_data_and_keeps_the_older_readings() -> None:
    _, kept = count("r", P, [req("a", "2xx", 100)], [bucket("a", "+Inf", 100)], None)
    got, kept2 = count("r", P, None, None, kept)
    assert got.requests is None and got.errors is None and got.latency_counts == []
    assert kept2 == kept


def test_regression_a_series_missing_from_one_reading_was_counted_again_from_zero() -> None:
    """Issue 14 item 2: 10,000/100 -> absent (a failed scrape) -> 10,049/101 counted 10,150 requests and
    101 errors; only 49 and 1 were served."""
    _, kept = count("r", P, [req("a", "2xx", 9900), req("a", "5xx", 100)],
                    [bucket("a", "100", 9000), bucket("a", "+Inf", 10000)], None)
    gap, kept = count("r", P, [], [], kept)
    assert (gap.requests, gap.errors, gap.latency_counts) == (0, 0, [])
    back, _ = count("r", P, [req("a", "2xx", 9948), req("a", "5xx", 101)],
                    [bucket("a", "100", 9040), bucket("a", "+Inf", 10049)], kept)
    assert (back.requests, back.errors, back.resets) == (49, 1, 0)
    assert back.latency_counts == [40.0, 9.0]


def test_a_series_missing_while_another_grows_keeps_its_reading() -> None:
    _, kept = count("r", P, [req("a", "2xx", 500), req("b", "2xx", 500)], [], None)
    one, kept = count("r", P, [req("b", "2xx", 520)], [], kept)
    assert one.requests == 20
    both, _ = count("r", P, [req("a", "2xx", 510), req("b", "2xx", 530)], [], kept)
    assert both.requests == 20  # a: 10, b: 10; not a's 510 again


def test_nan_and_negative_readings_are_ignored() -> None:
    got, kept = count("r", P, [req("a", "2xx", math.nan), req("b", "2xx", -1), req("c", "2xx", 4)], [], None)
    assert got.requests == 4 and len(kept) == 1


@pytest.mark.parametrize(("matcher", "labels", "hit"), [
    (Matcher("response_code_class", "=", "5xx"), {"response_code_class": "5xx"}, True),
    (Matcher("response_code", "=~", "5.."), {"response_code": "503"}, True),
    (Matcher("response_code", "=~", "5.."), {"response_code": "5030"}, False),  # anchored like PromQL
    (Matcher("response_code", "!~", "5.."), {"response_code": "200"}, True),
    (Matcher("x", "!=", ""), {}, False),  # a missing label is the empty string
])
def test_matchers_follow_promql(matcher: Matcher, labels: dict[str, str], hit: bool) -> None:
    assert matches(matcher, labels) is hit


def test_raw_queries_are_unaggregated_and_escaped() -> None:
    q = raw_requests_query(P, "ns", 'we"ird')
    assert q == 'revision_request_count{namespace_name="ns",revision_name="we\\"ird"}'
    assert "increase(" not in q and "sum(" not in q
    assert raw_buckets_query(ISTIO, "ns", "r-1").startswith("istio_request_duration_milliseconds_bucket{")


def test_series_ids_are_stable_and_label_order_free() -> None:
    assert series_id("r", {"a": "1", "b": "2"}) == series_id("r", {"b": "2", "a": "1"})
    assert series_id("r", {"a": "1"}) != series_id("b", {"a": "1"})
