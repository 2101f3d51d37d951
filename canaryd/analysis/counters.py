"""Exact request, error and latency counts from raw Prometheus counter readings (DESIGN §6).

The statistical judges need counts, not rates: `increase()` extrapolates to the window's edges and
gives fractional, overlapping numbers that no test statistic can take at face value. Instead every
analysis reads the raw counters of a revision (one instant vector per metric), keeps the readings in the
ModelRollout, and the next analysis counts the per-series differences. Windows then telescope: what one
analysis did not see (a late scrape) the next one counts, and nothing is counted twice.

A reading lower than the one before is a counter reset (a restarted queue-proxy): the series counts from
zero again, so the new reading is what it served since (Prometheus' own rule in `increase()`). A series
absent from the previous readings started after it (a new pod) and counts in full.

A series missing from one reading (a failed scrape's stale marker, a slow target) keeps its last known
value in the readings: when it comes back, only what it grew since counts. Forgetting it would count it
again from zero, and every request and error it ever served would enter the window a second time. The
readings are per step (the engine clears them when a step starts), so what they keep is bounded by the
series of that step.

Pure: readings in, counts out.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping

from canaryd.analysis.queries import Matcher, Profile
from canaryd.analysis.samples import RevisionCounts

#: A series as Prometheus returns it in an instant vector: its labels and its value.
Series = tuple[Mapping[str, str], float]


def raw_requests_query(profile: Profile, namespace: str, revision: str) -> str:
    """Every request-counter series of one revision, unaggregated (per pod and response class)."""
    return f"{profile.requests_metric}{profile.selector(namespace, revision)}"


def raw_buckets_query(profile: Profile, namespace: str, revision: str) -> str:
    """Every latency-bucket series of one revision, unaggregated."""
    return f"{profile.latency_bucket_metric}{profile.selector(namespace, revision)}"


def namespace_requests_query(profile: Profile, namespace: str) -> str:
    """Every request-counter series of a namespace: one query serves every revision analysed there at the
    same instant (see `select`)."""
    return f"{profile.requests_metric}{profile.namespace_selector(namespace)}"


def namespace_buckets_query(profile: Profile, namespace: str) -> str:
    """Every latency-bucket series of a namespace (see `namespace_requests_query`)."""
    return f"{profile.latency_bucket_metric}{profile.namespace_selector(namespace)}"


def select(profile: Profile, revision: str, series: Iterable[Series]) -> list[Series]:
    """The series of one revision among a namespace's: exactly those `raw_*_query(profile, ns, revision)`
    returns (same labels, so the same `series_id`s, and readings kept by either way count on with the
    other), because the namespace query already carries the namespace and fixed matchers."""
    matcher = profile.revision_matcher(revision)
    return [(labels, value) for labels, value in series if matches(matcher, labels)]


def series_id(prefix: str, labels: Mapping[str, str]) -> str:
    """A short stable key for a series, so the readings stored in the ModelRollout stay small."""
    text = prefix + "\x00" + "\x00".join(f"{k}={labels[k]}" for k in sorted(labels) if k != "__name__")
    return prefix + ":" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def matches(matcher: Matcher, labels: Mapping[str, str]) -> bool:
    """PromQL label-matcher semantics (regexes are anchored, a missing label is the empty string)."""
    value = labels.get(matcher.label, "")
    if matcher.op == "=":
        return value == matcher.value
    if matcher.op == "!=":
        return value != matcher.value
    hit = re.fullmatch(matcher.value, value) is not None
    return hit if matcher.op == "=~" else not hit


def _delta(previous: Mapping[str, float], key: str, value: float) -> tuple[float, bool]:
    """How much one series grew since the previous reading, and whether it was reset meanwhile."""
    before = previous.get(key)
    if before is None:
        return value, False
    if value < before:
        return value, True
    return value - before, False


def _finite(series: Iterable[Series]) -> list[Series]:
    return [(labels, value) for labels, value in series if math.isfinite(value) and value >= 0]


def count(
    revision: str,
    profile: Profile,
    requests: Iterable[Series] | None,
    buckets: Iterable[Series] | None,
    previous: Mapping[str, float] | None,
) -> tuple[RevisionCounts, dict[str, float]]:
    """The revision's counts since `previous` and the readings to keep for the next analysis.

    `requests`/`buckets` None means the query failed: counts are then None (no data, never zero) and the
    previous readings are kept, so the next successful analysis counts everything since. `previous`
    None means this is the first reading: everything counts from zero, so the caller takes the first
    reading at the window's start (see the adapter), not at its end.
    """
    prev = dict(previous or {})
    kept: dict[str, float] = {}
    resets = 0
    total: float | None = None
    errors: float | None = None
    if requests is not None:
        total, errors = 0.0, 0.0
        for labels, value in _finite(requests):
            key = series_id("r", labels)
            grown, reset = _delta(prev, key, value)
            resets += reset
            kept[key] = value
            total += grown
            if matches(profile.error_matcher, labels):
                errors += grown
    kept.update({k: v for k, v in prev.items() if k.startswith("r:") and k not in kept})
    bounds: list[float] = []
    per_bucket: list[float] = []
    if buckets is not None:
        cumulative: dict[float, float] = {}
        for labels, value in _finite(buckets):
            le = _bound(labels.get("le"))
            if le is None:
                continue
            key = series_id("b", labels)
            grown, reset = _delta(prev, key, value)
            resets += reset
            kept[key] = value
            cumulative[le] = cumulative.get(le, 0.0) + grown
        bounds, per_bucket = _non_cumulative(cumulative, profile.latency_unit_ms)
    kept.update({k: v for k, v in prev.items() if k.startswith("b:") and k not in kept})
    counts = RevisionCounts(revision=revision, requests=total, errors=errors, latency_bounds_ms=bounds,
                            latency_counts=per_bucket, resets=resets)
    return counts, kept


def _bound(le: str | None) -> float | None:
    if le is None:
        return None
    try:
        value = float(le)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _non_cumulative(cumulative: Mapping[float, float], unit_ms: float) -> tuple[list[float], list[float]]:
    """Prometheus' cumulative `le` buckets (summed over series) -> finite bounds in ms and per-bucket counts.

    Differences of cumulative counts can dip by a rounding hair or, after a reset in one series only,
    by more: a negative bucket is clamped to zero (the count cannot be negative; the histogram total is
    what the rank test needs right, and it stays the +Inf bucket's).
    """
    if not cumulative:
        return [], []
    finite = sorted(b for b in cumulative if math.isfinite(b))
    total = cumulative.get(math.inf, max(cumulative.values()))
    counts: list[float] = []
    below = 0.0
    for b in finite:
        c = cumulative[b]
        counts.append(max(0.0, c - below))
        below = max(below, c)
    counts.append(max(0.0, total - below))
    return [b * unit_ms for b in finite], counts
