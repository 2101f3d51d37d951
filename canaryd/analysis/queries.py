"""PromQL for one analysis, rendered from named metric profiles with every label value escaped.

Metric names and labels differ by Knative version and mesh (DESIGN §6), so they live in a registry of
*profiles* rather than in the query code: a user can add a profile without touching the renderers.
Values that come from the cluster or the config repo (namespace, service, revision) are never pasted
into a query: they are escaped for PromQL double-quoted strings (and regex-quoted where a profile
matches with `=~`), so a hostile name cannot change the structure of the query.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from canaryd.policy import Metric

MatchOp = Literal["=", "!=", "=~", "!~"]

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
# Go's regexp.QuoteMeta set: RE2 treats a backslash before any of these as the literal character.
_REGEX_META = frozenset("\\.+*?()|[]{}^$")
MIN_SCRAPES_PER_WINDOW = 4


def escape_label_value(value: str) -> str:
    """`value` as the inside of a PromQL double-quoted string (Go escape syntax).

    Backslash, double quote and control characters are escaped, so the text can neither end the
    string nor break the line; everything else (UTF-8 included) is valid inside the quotes as it is.
    """
    out: list[str] = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def quote_meta(value: str) -> str:
    """`value` as an RE2 regex that matches exactly that text (like Go's regexp.QuoteMeta)."""
    return "".join("\\" + ch if ch in _REGEX_META else ch for ch in value)


@dataclass(frozen=True)
class Matcher:
    """One label matcher; `value` is the raw text (escaped only when rendered)."""

    label: str
    op: MatchOp
    value: str

    def __post_init__(self) -> None:
        if not _LABEL_NAME.match(self.label):
            raise ValueError(f"invalid Prometheus label name {self.label!r}")

    def render(self) -> str:
        return f'{self.label}{self.op}"{escape_label_value(self.value)}"'


@dataclass(frozen=True)
class Profile:
    """Where one kind of installation keeps per-revision request counts and latencies.

    `revision_template` maps a Knative revision name to the label value that identifies it; with
    `revision_op` `=~` the revision is regex-quoted before it is put into the template, so only the
    template's own text acts as a pattern.
    """

    name: str
    requests_metric: str
    latency_bucket_metric: str
    namespace_label: str
    revision_label: str
    error_matcher: Matcher
    revision_op: Literal["=", "=~"] = "="
    revision_template: str = "{revision}"
    fixed_matchers: tuple[Matcher, ...] = ()
    latency_unit_ms: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        for metric in (self.requests_metric, self.latency_bucket_metric):
            if not _METRIC_NAME.match(metric):
                raise ValueError(f"profile {self.name!r}: invalid metric name {metric!r}")
        for label in (self.namespace_label, self.revision_label):
            if not _LABEL_NAME.match(label):
                raise ValueError(f"profile {self.name!r}: invalid label name {label!r}")
        if "{revision}" not in self.revision_template:
            raise ValueError(f"profile {self.name!r}: revision_template must contain {{revision}}")
        if not (self.latency_unit_ms > 0 and math.isfinite(self.latency_unit_ms)):
            raise ValueError(f"profile {self.name!r}: latency_unit_ms must be a positive number")

    def revision_matcher(self, revision: str) -> Matcher:
        text = quote_meta(revision) if self.revision_op == "=~" else revision
        value = self.revision_template.replace("{revision}", text)
        return Matcher(self.revision_label, self.revision_op, value)

    def namespace_selector(self, namespace: str) -> str:
        """Every series of one namespace (the profile's fixed matchers kept): the batched counter reads ask
        once per namespace and keep each revision's series client-side (`counters.select`)."""
        matchers = [*self.fixed_matchers, Matcher(self.namespace_label, "=", namespace)]
        return "{" + ",".join(m.render() for m in matchers) + "}"

    def selector(self, namespace: str, revision: str, *, errors_only: bool = False) -> str:
        matchers = [
            *self.fixed_matchers,
            Matcher(self.namespace_label, "=", namespace),
            self.revision_matcher(revision),
        ]
        if errors_only:
            matchers.append(self.error_matcher)
        return "{" + ",".join(m.render() for m in matchers) + "}"


PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile, *, replace: bool = False) -> Profile:
    """Add a profile to the registry (a user-defined one from the daemon config, say)."""
    if profile.name in PROFILES and not replace:
        raise ValueError(f"metrics profile {profile.name!r} is already registered")
    PROFILES[profile.name] = profile
    return profile


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown metrics profile {name!r}; known: {known}") from None


DEFAULT_PROFILE = "knative-opencensus"

register_profile(
    Profile(
        name="knative-opencensus",
        requests_metric="revision_request_count",
        latency_bucket_metric="revision_request_latencies_bucket",
        namespace_label="namespace_name",
        revision_label="revision_name",
        error_matcher=Matcher("response_code_class", "=", "5xx"),
        description="Knative <= 1.18 queue-proxy (OpenCensus), latencies in milliseconds",
    )
)
# Istio sidecar metrics, as Flagger queries them. The destination workload of a Knative revision is its
# Deployment, `<revision>-deployment`; like Flagger it is matched with `=~` (Prometheus anchors the
# regex), with the revision regex-quoted so the match is exact.
register_profile(
    Profile(
        name="istio",
        requests_metric="istio_requests_total",
        latency_bucket_metric="istio_request_duration_milliseconds_bucket",
        namespace_label="destination_workload_namespace",
        revision_label="destination_workload",
        revision_op="=~",
        revision_template="{revision}-deployment",
        fixed_matchers=(Matcher("reporter", "=", "destination"),),
        error_matcher=Matcher("response_code", "=~", "5.."),
        description="Istio mesh (KFServing-era installs); latencies in milliseconds",
    )
)


def window_seconds(window_s: float, scrape_interval_s: float) -> int:
    """The analysis window in whole seconds (rounded up), never shorter than 4 scrape intervals.

    Fewer than ~4 samples in a range make `rate()`/`increase()` unreliable or empty.
    """
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window must be a positive number of seconds, got {window_s!r}")
    if not (math.isfinite(scrape_interval_s) and scrape_interval_s > 0):
        raise ValueError(f"scrape interval must be a positive number of seconds, got {scrape_interval_s!r}")
    floor = math.ceil(round(MIN_SCRAPES_PER_WINDOW * scrape_interval_s, 6))
    return max(math.ceil(round(window_s, 6)), floor)


def render_window(window_s: float, scrape_interval_s: float) -> str:
    """A PromQL range duration such as `30s` (see `window_seconds`)."""
    return f"{window_seconds(window_s, scrape_interval_s)}s"


def _quantile(q: float) -> str:
    if not 0 < q < 1:
        raise ValueError(f"quantile must be between 0 and 1, got {q!r}")
    return repr(float(q))


def count_in_window(series: str, window: str, by: str = "") -> str:
    """How much the counters `series` (a selector) grew in the window, new series counted from zero.

    `increase()` alone only counts growth between a series' samples inside the range: a series born inside
    the window (a new revision's first 5xx, a new pod) loses everything up to its first sample, so the
    first errors of a canary would be missed, and a 5xx series with a single sample would count as no
    errors at all. Series that existed at the window's start (`offset`) are counted with `increase()`;
    the others, which started from zero inside the window, with their current value. When neither part
    has a series the result is empty (no data), never 0. `by` groups both parts (`by (le)` for buckets);
    `or` keeps a group present on one side only.
    """
    grouping = f" {by} " if by else ""
    existing = f"sum{grouping}(increase({series}[{window}]) and {series} offset {window})"
    born = f"sum{grouping}({series} unless {series} offset {window})"
    return f"(({existing} + {born}) or {existing} or {born})"


def requests_in_window(profile: Profile, namespace: str, revision: str, window: str) -> str:
    sel = profile.selector(namespace, revision)
    return count_in_window(f"{profile.requests_metric}{sel}", window)


def errors_in_window(profile: Profile, namespace: str, revision: str, window: str) -> str:
    sel = profile.selector(namespace, revision, errors_only=True)
    return count_in_window(f"{profile.requests_metric}{sel}", window)


def error_ratio(profile: Profile, namespace: str, revision: str, window: str) -> str:
    """5xx / all requests in the window (see `count_in_window`). No 5xx series at all means 0 errors
    (`or vector(0)`), while no requests at all still gives an empty result (no data)."""
    errors = errors_in_window(profile, namespace, revision, window)
    every = requests_in_window(profile, namespace, revision, window)
    return f"({errors} or vector(0)) / {every}"


def latency_quantile(profile: Profile, namespace: str, revision: str, quantile: float, window: str) -> str:
    """The quantile in milliseconds, whatever unit the profile's histogram uses."""
    sel = profile.selector(namespace, revision)
    buckets = count_in_window(f"{profile.latency_bucket_metric}{sel}", window, by="by (le)")
    query = f"histogram_quantile({_quantile(quantile)}, {buckets})"
    if profile.latency_unit_ms != 1.0:
        query = f"{query} * {profile.latency_unit_ms!r}"
    return query


def custom(query: str, *, namespace: str, service: str, revision: str, window: str) -> str:
    """Fill `{{namespace}} {{service}} {{revision}} {{window}}` in a user's query, in one pass.

    Names are escaped for a double-quoted PromQL string, so they must stand inside one (a label
    value); anywhere else escaping cannot protect the query and the template is refused. `{{window}}`
    is a duration such as `30s` and may stand anywhere. Substituted text is never scanned again.
    """
    values = {"namespace": namespace, "service": service, "revision": revision}
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(query):
        m = _PLACEHOLDER.match(query, i)
        if m:
            name = m.group(1)
            if name == "window":
                out.append(window)
            elif name in values:
                if quote != '"':
                    raise ValueError(
                        f"placeholder {{{{{name}}}}} must stand inside a double-quoted label value "
                        f'(e.g. revision_name="{{{{{name}}}}}"), where it is escaped'
                    )
                out.append(escape_label_value(values[name]))
            else:
                allowed = ", ".join("{{" + p + "}}" for p in (*values, "window"))
                raise ValueError(f"unknown placeholder {{{{{name}}}}} in query; allowed: {allowed}")
            i = m.end()
            continue
        ch = query[i]
        if quote is None:
            if ch == "#":  # a comment runs to the end of the line; quotes in it mean nothing
                end = query.find("\n", i)
                end = len(query) if end < 0 else end
                out.append(query[i:end])
                i = end
                continue
            if ch in "\"'`":
                quote = ch
        elif ch == "\\" and quote != "`" and i + 1 < len(query):
            out.append(query[i : i + 2])
            i += 2
            continue
        elif ch == quote:
            quote = None
        out.append(ch)
        i += 1
    if quote is not None:
        raise ValueError(f"unterminated {quote} string in query")
    return "".join(out)


def check_custom_query(query: str) -> None:
    """Raise ValueError if `query` cannot be rendered safely (for policy validation and `validate`)."""
    custom(query, namespace="ns", service="svc", revision="rev", window="30s")


@dataclass(frozen=True)
class RenderContext:
    """What a metric's query is about: grouped so renderers take one argument, not five."""

    profile: Profile
    namespace: str
    service: str
    revision: str
    window: str


MetricRenderer = Callable[[Metric, RenderContext], str]

BUILTIN_RENDERERS: dict[str, MetricRenderer] = {
    "error-rate": lambda m, c: error_ratio(c.profile, c.namespace, c.revision, c.window),
    "latency": lambda m, c: latency_quantile(c.profile, c.namespace, c.revision, m.effective_quantile, c.window),
}


def _render_custom(metric: Metric, ctx: RenderContext) -> str:
    if metric.query is None:
        raise ValueError(f"metric {metric.name!r} is not built in and has no query")
    return custom(metric.query, namespace=ctx.namespace, service=ctx.service, revision=ctx.revision, window=ctx.window)


def render_metric(metric: Metric, ctx: RenderContext) -> str:
    """The query whose single value is `metric` for one revision (built-in by name, else custom)."""
    return BUILTIN_RENDERERS.get(metric.name, _render_custom)(metric, ctx)
