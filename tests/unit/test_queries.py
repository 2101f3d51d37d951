"""PromQL rendering: golden strings per profile, escaping, hostile names, windows, custom templates."""

from __future__ import annotations

import ast
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canaryd.analysis import queries
from canaryd.analysis.queries import (
    Matcher,
    Profile,
    RenderContext,
    count_in_window,
    custom,
    error_ratio,
    errors_in_window,
    escape_label_value,
    get_profile,
    latency_quantile,
    quote_meta,
    render_metric,
    render_window,
    requests_in_window,
    window_seconds,
)
from canaryd.policy import Metric

KN = get_profile("knative-opencensus")
ISTIO = get_profile("istio")
HOSTILE = 'a"}) or vector(1) or (x{a="'
# A PromQL double-quoted string: no bare quote, backslash escapes anything.
_STRING = r'"((?:[^"\\\n]|\\.)*)"'


def unquote(inner: str) -> str:
    """Go/PromQL string escapes used here (\\\\ \\" \\n \\r \\t \\xHH) mean the same in Python."""
    value = ast.literal_eval('"' + inner + '"')
    assert isinstance(value, str)
    return value


# --- golden strings ---


def test_count_in_window_golden() -> None:
    m = 'm{a="1"}'
    assert count_in_window(m, "30s") == (
        f"((sum(increase({m}[30s]) and {m} offset 30s) + sum({m} unless {m} offset 30s))"
        f" or sum(increase({m}[30s]) and {m} offset 30s) or sum({m} unless {m} offset 30s))"
    )
    assert count_in_window(m, "5s", by="by (le)").startswith(f"((sum by (le) (increase({m}[5s]) and {m} offset 5s)")


def test_knative_golden_queries() -> None:
    sel = 'namespace_name="models",revision_name="iris-predictor-00002"'
    every = f"revision_request_count{{{sel}}}"
    errors = f'revision_request_count{{{sel},response_code_class="5xx"}}'
    assert requests_in_window(KN, "models", "iris-predictor-00002", "30s") == count_in_window(every, "30s")
    assert errors_in_window(KN, "models", "iris-predictor-00002", "30s") == count_in_window(errors, "30s")
    assert error_ratio(KN, "models", "iris-predictor-00002", "30s") == (
        f"({count_in_window(errors, '30s')} or vector(0)) / {count_in_window(every, '30s')}"
    )
    assert latency_quantile(KN, "models", "iris-predictor-00002", 0.99, "30s") == (
        f"histogram_quantile(0.99, {count_in_window(f'revision_request_latencies_bucket{{{sel}}}', '30s', 'by (le)')})"
    )


def test_istio_golden_queries_match_the_revision_deployment_like_flagger() -> None:
    sel = (
        'reporter="destination",destination_workload_namespace="models",'
        'destination_workload=~"iris-predictor-00002-deployment"'
    )
    every = f"istio_requests_total{{{sel}}}"
    errors = f'istio_requests_total{{{sel},response_code=~"5.."}}'
    assert requests_in_window(ISTIO, "models", "iris-predictor-00002", "1m") == count_in_window(every, "1m")
    assert error_ratio(ISTIO, "models", "iris-predictor-00002", "45s") == (
        f"({count_in_window(errors, '45s')} or vector(0)) / {count_in_window(every, '45s')}"
    )
    bucket = f"istio_request_duration_milliseconds_bucket{{{sel}}}"
    assert latency_quantile(ISTIO, "models", "iris-predictor-00002", 0.95, "45s") == (
        f"histogram_quantile(0.95, {count_in_window(bucket, '45s', 'by (le)')})"
    )


def test_istio_regex_match_quotes_the_revision_so_only_that_deployment_matches() -> None:
    q = requests_in_window(ISTIO, "ns", "rev.1+x", "30s")
    # regex-quoted (\.), then string-escaped (\\.): matches the literal name only
    assert 'destination_workload=~"rev\\\\.1\\\\+x-deployment"' in q


def test_latency_in_seconds_profile_is_converted_to_ms() -> None:
    prof = Profile(
        name="seconds",
        requests_metric="reqs_total",
        latency_bucket_metric="dur_seconds_bucket",
        namespace_label="ns",
        revision_label="rev",
        error_matcher=Matcher("code", "=~", "5.."),
        latency_unit_ms=1000.0,
    )
    buckets = count_in_window('dur_seconds_bucket{ns="n",rev="r"}', "8s", "by (le)")
    assert latency_quantile(prof, "n", "r", 0.5, "8s") == f"histogram_quantile(0.5, {buckets}) * 1000.0"


def test_quantile_is_rendered_exactly() -> None:
    assert latency_quantile(KN, "n", "r", 0.999, "8s").startswith("histogram_quantile(0.999, ")
    with pytest.raises(ValueError, match="between 0 and 1"):
        latency_quantile(KN, "n", "r", 1.0, "8s")


# --- escaping ---


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain-name", "plain-name"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ("tab\there", "tab\\there"),
        ("bell\x07", "bell\\x07"),
        ("ünïcødé", "ünïcødé"),
        ('\\"', '\\\\\\"'),
    ],
)
def test_escape_label_value(raw: str, escaped: str) -> None:
    assert escape_label_value(raw) == escaped
    assert unquote(escaped) == raw


def test_quote_meta_escapes_exactly_the_re2_metacharacters() -> None:
    assert quote_meta("a.b+c*d?e(f)g|h[i]j{k}l^m$n\\o-p_q") == (
        "a\\.b\\+c\\*d\\?e\\(f\\)g\\|h\\[i\\]j\\{k\\}l\\^m\\$n\\\\o-p_q"
    )


def _one_selector(pattern: str, query: str) -> re.Match[str]:
    """The query's first selector, matched whole by `pattern`. Each test then requires the query to be
    exactly the `count_in_window` template around it, so a hostile value cannot have changed its shape."""
    m = re.match(rf".*?({pattern})", query)
    assert m is not None, query
    sel = re.fullmatch(pattern, m.group(1))
    assert sel is not None
    return sel


def test_hostile_revision_cannot_change_the_query_structure() -> None:
    q = requests_in_window(KN, "models", HOSTILE, "30s")
    sel = _one_selector(rf"revision_request_count\{{namespace_name={_STRING},revision_name={_STRING}\}}", q)
    assert q == count_in_window(sel.group(0), "30s")
    assert unquote(sel.group(1)) == "models"
    assert unquote(sel.group(2)) == HOSTILE
    assert q.count("vector(1)") == q.count("revision_request_count{") == 8  # only inside the selectors' strings


def test_hostile_namespace_in_istio_profile() -> None:
    q = errors_in_window(ISTIO, HOSTILE, HOSTILE, "30s")
    sel = _one_selector(
        r"istio_requests_total\{"
        rf'reporter="destination",destination_workload_namespace={_STRING},'
        rf'destination_workload=~{_STRING},response_code=~"5\.\."'
        r"\}",
        q,
    )
    assert q == count_in_window(sel.group(0), "30s")
    assert unquote(sel.group(1)) == HOSTILE
    assert unquote(sel.group(2)) == quote_meta(HOSTILE) + "-deployment"


@given(namespace=st.text(), revision=st.text())
def test_any_label_value_round_trips_through_the_selector(namespace: str, revision: str) -> None:
    q = latency_quantile(KN, namespace, revision, 0.99, "30s")
    sel = _one_selector(
        rf"revision_request_latencies_bucket\{{namespace_name={_STRING},revision_name={_STRING}\}}", q
    )
    assert q == f"histogram_quantile(0.99, {count_in_window(sel.group(0), '30s', 'by (le)')})"
    assert unquote(sel.group(1)) == namespace
    assert unquote(sel.group(2)) == revision


# --- windows ---


@pytest.mark.parametrize(
    ("window_s", "scrape_s", "expected"),
    [
        (30, 1, "30s"),
        (30.2, 1, "31s"),  # rounded up: the window covers the whole analysis period
        (30.0000001, 1, "30s"),  # but float noise does not add a second
        (1, 1, "4s"),  # at least 4 scrape intervals
        (20, 15, "60s"),
        (90, 15, "90s"),
        (3, 0.5, "3s"),
        (0.1, 0.5, "2s"),
        (3600, 30, "3600s"),
    ],
)
def test_window_rendering(window_s: float, scrape_s: float, expected: str) -> None:
    assert render_window(window_s, scrape_s) == expected
    assert window_seconds(window_s, scrape_s) == int(expected[:-1])


@pytest.mark.parametrize(("window_s", "scrape_s"), [(0, 1), (-5, 1), (float("nan"), 1), (30, 0), (float("inf"), 1)])
def test_window_rejects_nonsense(window_s: float, scrape_s: float) -> None:
    with pytest.raises(ValueError):
        render_window(window_s, scrape_s)


# --- custom queries ---


def test_custom_placeholders_are_substituted_and_escaped() -> None:
    template = (
        'sum(rate(my_errors_total{namespace="{{namespace}}",service="{{ service }}",'
        'revision="{{revision}}"}[{{window}}]))'
    )
    q = custom(template, namespace="models", service=HOSTILE, revision="iris-00002", window="30s")
    assert q == (
        'sum(rate(my_errors_total{namespace="models",service="a\\"}) or vector(1) or (x{a=\\"",'
        'revision="iris-00002"}[30s]))'
    )


def test_custom_substitution_is_single_pass() -> None:
    q = custom('x{a="{{service}}"}[{{window}}]', namespace="n", service="{{window}}", revision="r", window="9s")
    assert q == 'x{a="{{window}}"}[9s]'


def test_custom_window_may_stand_anywhere() -> None:
    assert custom("x[{{window}}] # last {{window}}", namespace="n", service="s", revision="r", window="12s") == (
        "x[12s] # last {{window}}"
    )


def test_custom_keeps_escapes_and_other_strings_intact() -> None:
    template = 'x{a="q\\"{{revision}}",b=~\'{\\\'}\',c=`raw\\`} # "{{namespace}} in a comment'
    q = custom(template, namespace="n", service="s", revision='r"', window="5s")
    assert q == 'x{a="q\\"r\\"",b=~\'{\\\'}\',c=`raw\\`} # "{{namespace}} in a comment'


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("sum(rate({{revision}}[1m]))", "must stand inside a double-quoted"),
        ("x{a='{{revision}}'}", "must stand inside a double-quoted"),
        ("x{a=`{{namespace}}`}", "must stand inside a double-quoted"),
        ('x{a="{{pod}}"}', "unknown placeholder"),
        ('x{a="{{revision}}}', "unterminated"),
    ],
)
def test_custom_refuses_templates_that_escaping_cannot_protect(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        custom(template, namespace="n", service="s", revision="r", window="5s")
    with pytest.raises(ValueError, match=message):
        queries.check_custom_query(template)


# --- registry ---


def test_render_metric_uses_builtin_renderers_by_name_and_custom_otherwise() -> None:
    ctx = RenderContext(profile=KN, namespace="n", service="s", revision="r", window="30s")
    assert render_metric(Metric(name="error-rate", max=0.01), ctx) == error_ratio(KN, "n", "r", "30s")
    assert render_metric(Metric(name="latency", quantile=0.9, max_ms=100), ctx) == latency_quantile(
        KN, "n", "r", 0.9, "30s"
    )
    assert render_metric(Metric(name="latency", max_ms=100), ctx).startswith("histogram_quantile(0.99, ")
    m = Metric(name="mine", query='sum(x{r="{{revision}}"}[{{window}}])', max=0)
    assert render_metric(m, ctx) == 'sum(x{r="r"}[30s])'


def test_profile_registry() -> None:
    assert queries.DEFAULT_PROFILE == "knative-opencensus"
    with pytest.raises(ValueError, match="unknown metrics profile 'nope'; known: istio, knative-opencensus"):
        get_profile("nope")
    with pytest.raises(ValueError, match="already registered"):
        queries.register_profile(KN)


@pytest.mark.parametrize(
    "bad",
    [
        {"requests_metric": "bad-name"},
        {"namespace_label": "1abc"},
        {"revision_template": "no-placeholder"},
        {"latency_unit_ms": 0.0},
    ],
)
def test_profile_validates_names(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "name": "p",
        "requests_metric": "r",
        "latency_bucket_metric": "b",
        "namespace_label": "ns",
        "revision_label": "rev",
        "error_matcher": Matcher("code", "=", "5xx"),
    }
    with pytest.raises(ValueError):
        Profile(**{**fields, **bad})  # type: ignore[arg-type]


def test_matcher_rejects_bad_label_names() -> None:
    with pytest.raises(ValueError, match="invalid Prometheus label name"):
        Matcher('a"}', "=", "x")
