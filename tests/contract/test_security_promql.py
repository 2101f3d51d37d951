"""PromQL injection: a hostile namespace, service or revision name goes through every query builder in
canaryd.analysis.queries and canaryd.analysis.counters and can change nothing but the contents of the
label values it belongs to.

Two ways of checking, one fast and one real:

- structurally, for arbitrary text (hypothesis): the rendered query is tokenised (PromQL's lexical rules:
  strings with Go escapes, identifiers, numbers, operators). Its tokens must equal those of the same query
  rendered for harmless names, except for string literals, and each string literal must decode to exactly
  the intended value (the name itself, or the name regex-quoted where a profile matches with `=~`);
- against a real Prometheus that scrapes series labelled with hostile values: each raw selector is
  accepted by `/api/v1/series` (which takes nothing but a selector) and matches exactly the series of that
  name; every aggregate query parses and returns nothing for a name that has no series, while the same name
  pasted unescaped would have injected `vector(1)`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from canaryd.analysis import counters, queries
from canaryd.analysis.queries import PROFILES, Profile, RenderContext, quote_meta
from canaryd.httpserver import ThreadedServer
from canaryd.policy import Metric

KN = PROFILES["knative-opencensus"]
ISTIO = PROFILES["istio"]
SENTINELS = {"namespace": "NSVALUE", "service": "SVCVALUE", "revision": "REVVALUE"}
CUSTOM = Metric(name="queue", max=5, query=(
    'sum(rate(q_total{ns="{{namespace}}",svc=\'{{window}}\',svc2="{{service}}",rev="{{revision}}"}[{{window}}]))'
    ' / sum(x{a="{{namespace}}-{{revision}}"}) # {{namespace}} in a comment'))

HOSTILE = [
    'a"}) or vector(1) or (x{a="',
    '"} or vector(1) #',
    "\\",
    '\\"',
    "x\ny",
    "}[5m]) or on() vector(1) or sum(x{a=\"",
    ".*",
    "a|b",
    "$(echo)",
    "revision_name=~\".*\"",
    "ü-🐍",
    "\t\r\x01\x7f",
    "{{namespace}}",
    "`",
    "'",
]


# -- a PromQL lexer, enough to see structure --------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<dq>"(?:[^"\\\n]|\\.)*")
  | (?P<sq>'(?:[^'\\\n]|\\.)*')
  | (?P<bq>`[^`]*`)
  | (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],@])
""", re.X | re.S)
_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
           "'": "'"}


def tokens(query: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        assert m is not None, f"cannot lex {query[pos:pos + 20]!r} in {query!r}"
        kind = m.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            out.append((kind, m.group()))
        pos = m.end()
    return out


def unquote(literal: str) -> str:
    """A PromQL string literal's value (Go escape rules, as Prometheus' strutil.Unquote)."""
    quote, body = literal[0], literal[1:-1]
    if quote == "`":
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _SIMPLE:
            assert nxt not in "'\"" or nxt == quote, f"\\{nxt} is not a valid escape inside {quote}"
            out.append(_SIMPLE[nxt])
            i += 2
        elif nxt == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif nxt == "u":
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif nxt == "U":
            out.append(chr(int(body[i + 2:i + 10], 16)))
            i += 10
        else:
            assert nxt in "01234567", f"unknown escape \\{nxt}"
            out.append(chr(int(body[i + 1:i + 4], 8)))
            i += 4
    return "".join(out)


# -- every builder, one function each --------------------------------------------------------------------

Builder = Callable[[Profile, str, str, str], str]
BUILDERS: dict[str, Builder] = {
    "requests_in_window": lambda p, ns, svc, rev: queries.requests_in_window(p, ns, rev, "30s"),
    "errors_in_window": lambda p, ns, svc, rev: queries.errors_in_window(p, ns, rev, "30s"),
    "error_ratio": lambda p, ns, svc, rev: queries.error_ratio(p, ns, rev, "30s"),
    "latency_quantile": lambda p, ns, svc, rev: queries.latency_quantile(p, ns, rev, 0.99, "30s"),
    "render_metric error-rate": lambda p, ns, svc, rev: queries.render_metric(
        Metric(name="error-rate", max=0.01), RenderContext(p, ns, svc, rev, "30s")),
    "render_metric latency": lambda p, ns, svc, rev: queries.render_metric(
        Metric(name="latency", quantile=0.9, max_ms=100), RenderContext(p, ns, svc, rev, "30s")),
    "render_metric custom": lambda p, ns, svc, rev: queries.render_metric(CUSTOM, RenderContext(p, ns, svc, rev,
                                                                                                "30s")),
    "custom": lambda p, ns, svc, rev: queries.custom(str(CUSTOM.query), namespace=ns, service=svc, revision=rev,
                                                     window="30s"),
    "raw_requests_query": lambda p, ns, svc, rev: counters.raw_requests_query(p, ns, rev),
    "raw_buckets_query": lambda p, ns, svc, rev: counters.raw_buckets_query(p, ns, rev),
    "namespace_requests_query": lambda p, ns, svc, rev: counters.namespace_requests_query(p, ns),
    "namespace_buckets_query": lambda p, ns, svc, rev: counters.namespace_buckets_query(p, ns),
}


def expected_value(benign: str, op: str | None, ns: str, svc: str, rev: str) -> str:
    """What a string literal of the benign rendering must hold once the sentinels are the hostile names."""
    rev_text = quote_meta(rev) if op in ("=~", "!~") else rev
    return (benign.replace(SENTINELS["namespace"], ns).replace(SENTINELS["service"], svc)
            .replace(SENTINELS["revision"], rev_text))


def check_structure(name: str, profile: Profile, ns: str, svc: str, rev: str) -> int:
    """Assert the hostile rendering differs from the benign one only inside string literals, by exactly the
    names; return how many literals carried a name."""
    build = BUILDERS[name]
    benign = tokens(build(profile, SENTINELS["namespace"], SENTINELS["service"], SENTINELS["revision"]))
    hostile = tokens(build(profile, ns, svc, rev))
    assert [k for k, _ in hostile] == [k for k, _ in benign], f"{name}: token kinds changed"
    carried = 0
    for i, ((kind, text), (_, plain)) in enumerate(zip(hostile, benign, strict=True)):
        if kind not in ("dq", "sq", "bq"):
            assert text == plain, f"{name}: token {i} changed from {plain!r} to {text!r}"
            continue
        op = benign[i - 1][1] if i and benign[i - 1][0] == "op" else None
        want = expected_value(unquote(plain), op, ns, svc, rev)
        assert unquote(text) == want, f"{name}: literal {i} is {unquote(text)!r}, not {want!r}"
        if want != unquote(plain):
            carried += 1
            if op in ("=~", "!~") and SENTINELS["revision"] in unquote(plain):
                pattern = unquote(text)  # the regex must match the intended workload and nothing else
                target = unquote(plain).replace(SENTINELS["revision"], rev)
                assert re.fullmatch(pattern, target, re.S)
                assert not re.fullmatch(pattern, target + "x", re.S)
    return carried


names = st.text(min_size=1, max_size=40) | st.sampled_from(HOSTILE)


@pytest.mark.parametrize("profile", [KN, ISTIO], ids=lambda p: p.name)
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_hostile_names_only_change_label_values(builder: str, profile: Profile) -> None:
    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ns=names, svc=names, rev=names)
    def one(ns: str, svc: str, rev: str) -> None:
        assume(not any(s in v for s in SENTINELS.values() for v in (ns, svc, rev)))
        carried = check_structure(builder, profile, ns, svc, rev)
        assert carried >= 1  # the names did reach the query, inside literals

    one()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_listed_hostile_name_through_every_builder(hostile: str) -> None:
    for builder in BUILDERS:
        for profile in (KN, ISTIO):
            check_structure(builder, profile, hostile, hostile, hostile)


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(rev=names, other=names)
def test_client_side_selection_of_a_revision_is_exact(rev: str, other: str) -> None:
    """`counters.select` picks one revision's series out of a namespace's with the profile's own matcher
    (a regex for Istio): a hostile revision selects its own series and nothing else."""
    assume(rev != other)
    for profile in (KN, ISTIO):
        label = profile.revision_label
        value = profile.revision_template.replace("{revision}", rev)
        mine = ({label: value, "n": "1"}, 1.0)
        theirs = ({label: profile.revision_template.replace("{revision}", other), "n": "2"}, 2.0)
        assert counters.select(profile, rev, [mine, theirs]) == [mine]


def test_the_lexer_sees_an_injection() -> None:
    """The check is not vacuous: a name pasted without escaping changes the token stream."""
    benign = tokens('sum(x{a="NSVALUE"})')
    pasted = tokens('sum(x{a="' + HOSTILE[0] + '"})')
    assert [k for k, _ in pasted] != [k for k, _ in benign]


# -- against a real Prometheus ----------------------------------------------------------------------------

HOSTILE_NS = ['ns"} or vector(1) or x{a="', "ns\\x", "ns\nline"]
HOSTILE_REV = ['rev"}) or vector(1) #', ".*", "rev\\d+|other", "rév-🐍"]
VICTIM = ("victim-ns", "victim-rev")


def exposition_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class Exposition:
    series: list[tuple[str, str]]
    lock: threading.Lock

    def render(self) -> str:
        lines = ["# TYPE revision_request_count counter", "# TYPE revision_request_latencies histogram",
                 "# TYPE istio_requests_total counter"]
        for ns, rev in self.series:
            kn = f'namespace_name="{exposition_value(ns)}",revision_name="{exposition_value(rev)}"'
            lines.append(f'revision_request_count{{{kn},response_code_class="2xx"}} 10')
            lines.append(f'revision_request_count{{{kn},response_code_class="5xx"}} 1')
            for le in ("100", "+Inf"):
                lines.append(f'revision_request_latencies_bucket{{{kn},le="{le}"}} 11')
            istio = (f'destination_workload_namespace="{exposition_value(ns)}",'
                     f'destination_workload="{exposition_value(rev)}-deployment",reporter="destination"')
            lines.append(f'istio_requests_total{{{istio},response_code="200"}} 10')
        return "\n".join(lines) + "\n"

    def app(self) -> Starlette:
        async def metrics(_: Request) -> Response:
            return PlainTextResponse(self.render(), media_type="text/plain; version=0.0.4")

        return Starlette(routes=[Route("/metrics", metrics)])


@pytest.fixture(scope="module")
def prom() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    from canaryd.sandbox.prometheus import running_prometheus

    series = [VICTIM, *((ns, rev) for ns in HOSTILE_NS for rev in HOSTILE_REV[:2])]
    exposition = Exposition(series, threading.Lock())
    with ThreadedServer(exposition.app(), name="hostile-exporter") as exporter, \
            running_prometheus([f"127.0.0.1:{exporter.port}"], scrape_interval_s=1.0) as p:
        p.wait_for_series(f"count(revision_request_count) >= {2 * len(series)}", timeout=30)
        yield p.url, series


def _get(url: str, path: str, **params: str) -> Any:
    r = httpx.get(f"{url}{path}", params=params, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (params, body)
    return body


def _series_of(result: object, labels: tuple[str, str]) -> set[tuple[str, str]]:
    assert isinstance(result, list)
    out = set()
    for item in result:
        metric = item.get("metric", item)
        out.add((metric[labels[0]], metric[labels[1]]))
    return out


@pytest.mark.slow
def test_real_prometheus_matches_exactly_the_hostile_series(prom: tuple[str, list[tuple[str, str]]]) -> None:
    url, series = prom
    for ns, rev in series:
        for profile, labels in ((KN, ("namespace_name", "revision_name")),
                                (ISTIO, ("destination_workload_namespace", "destination_workload"))):
            want = {(ns, rev if profile is KN else rev + "-deployment")}
            for build in (counters.raw_requests_query,):
                q = build(profile, ns, rev)
                # /api/v1/series takes a series selector and nothing else: no `or`, no function, no vector()
                assert _series_of(_get(url, "/api/v1/series", **{"match[]": q})["data"], labels) == want, q
                assert _series_of(_get(url, "/api/v1/query", query=q)["data"]["result"], labels) == want, q
        q = counters.raw_buckets_query(KN, ns, rev)
        assert _series_of(_get(url, "/api/v1/series", **{"match[]": q})["data"],
                          ("namespace_name", "revision_name")) == {(ns, rev)}
    for ns in {ns for ns, _ in series}:  # the batched per-namespace reads: that namespace, all of it
        want = {(n, r) for n, r in series if n == ns}
        for build in (counters.namespace_requests_query, counters.namespace_buckets_query):
            q = build(KN, ns)
            assert _series_of(_get(url, "/api/v1/series", **{"match[]": q})["data"],
                              ("namespace_name", "revision_name")) == want, q


@pytest.mark.slow
def test_real_prometheus_returns_nothing_for_hostile_names_without_series(
        prom: tuple[str, list[tuple[str, str]]]) -> None:
    url, _ = prom
    for ns in HOSTILE_NS:
        for rev in HOSTILE_REV[2:]:  # no series has these revisions; the victim's data must not leak in
            for name, build in BUILDERS.items():
                if name.startswith("namespace_"):
                    continue  # these ask for the whole namespace, which has series (checked above)
                for profile in (KN, ISTIO):
                    q = build(profile, ns, rev, rev)
                    result = _get(url, "/api/v1/query", query=q)["data"]["result"]
                    assert result == [], (name, profile.name, q, result)
    # Not vacuous: the first hostile namespace, pasted unescaped, injects a series that is always there.
    pasted = f'revision_request_count{{namespace_name="{HOSTILE_NS[0]}",revision_name="x"}}'
    assert _get(url, "/api/v1/query", query=pasted)["data"]["result"] != []
    escaped = counters.raw_requests_query(KN, HOSTILE_NS[0], "x")
    assert _get(url, "/api/v1/query", query=escaped)["data"]["result"] == []
