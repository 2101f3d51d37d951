"""Threshold judge: one analysis's readings and the policy's limits -> pass, fail or inconclusive.

Pure (no I/O, no clock), so every rule is a row in a table test. Missing evidence is never a pass:
no data, too few requests or a missing baseline make a check inconclusive, and the engine decides
what inconclusive means (hold or roll back). Reasons show the comparison with its numbers, in the
manner of Argo Rollouts' assessMetricStatus, so a log line or `canaryd status` explains the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from canaryd.analysis.samples import AnalysisSamples, MetricVerdict, Outcome, RevisionReading, Verdict
from canaryd.policy import Analysis, Metric

REQUESTS_CHECK = "minRequests"
"""Name of the request-count gate in `Verdict.metrics`; metric names are lower-case, so it cannot clash."""

_RANK: dict[Outcome, int] = {"pass": 0, "inconclusive": 1, "fail": 2}


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """fail beats inconclusive beats pass; nothing to judge is a pass of nothing (callers add the gate)."""
    result: Outcome = "pass"
    for o in outcomes:
        if _RANK[o] > _RANK[result]:
            result = o
    return result


def is_decisive(verdict: Verdict) -> bool:
    """True when the verdict can move a rollout (pass or fail), False when it only counts as inconclusive."""
    return verdict.outcome != "inconclusive"


def fmt(value: float) -> str:
    """Numbers in reasons: four significant digits, no exponent for large values (`612.3`, `1234`)."""
    text = f"{value:.4g}"
    if "e" in text and abs(value) >= 1:
        text = f"{value:.0f}"
    return text


def _exceeds(value: float, limit: float) -> bool:
    """value > limit, where a value equal to the limit up to float noise is not over it."""
    return value > limit and not math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True)
class _Check:
    outcome: Outcome
    text: str


@dataclass(frozen=True)
class _Context:
    canary: RevisionReading
    stable: RevisionReading | None
    min_requests: int


def _no_data(what: str, reading_error: str | None) -> _Check:
    why = reading_error or "empty result"
    return _Check("inconclusive", f"no data for {what} ({why})")


def _baseline(metric: Metric, ctx: _Context, what: str) -> tuple[float | None, _Check | None]:
    """The stable revision's value for a comparison, or the inconclusive check that explains its absence."""
    stable = ctx.stable
    if stable is None:
        return None, _Check("inconclusive", f"no stable revision to compare {what} with")
    if stable.requests is None or not math.isfinite(stable.requests):
        return None, _Check("inconclusive", f"stable request count unknown, cannot compare {what}")
    if stable.requests < ctx.min_requests:
        return None, _Check(
            "inconclusive",
            f"stable n={fmt(stable.requests)} < minRequests {ctx.min_requests}, cannot compare {what}",
        )
    reading = stable.metrics.get(metric.name)
    if reading is None or not _usable(reading.value):
        return None, _no_data(f"stable {what}", reading.error if reading else "not read")
    assert reading.value is not None
    return reading.value, None


def _upper(label: str, value: float, limit: float, limit_name: str, unit: str = "") -> _Check:
    if _exceeds(value, limit):
        return _Check("fail", f"{label} {fmt(value)}{unit} > {limit_name} {fmt(limit)}")
    return _Check("pass", f"{label} {fmt(value)}{unit} <= {limit_name} {fmt(limit)}")


def _lower(label: str, value: float, limit: float, limit_name: str) -> _Check:
    if _exceeds(limit, value):
        return _Check("fail", f"{label} {fmt(value)} < {limit_name} {fmt(limit)}")
    return _Check("pass", f"{label} {fmt(value)} >= {limit_name} {fmt(limit)}")


def _canary_value(metric: Metric, ctx: _Context, what: str) -> tuple[float | None, _Check | None]:
    reading = ctx.canary.metrics.get(metric.name)
    if reading is None:
        return None, _no_data(what, "not read")
    if not _usable(reading.value):
        return None, _no_data(what, reading.error)
    return reading.value, None


def _error_rate(metric: Metric, ctx: _Context) -> tuple[list[_Check], float | None, float | None]:
    value, missing = _canary_value(metric, ctx, "error rate")
    if value is None:
        return [missing] if missing else [], None, None
    checks: list[_Check] = []
    baseline: float | None = None
    if metric.max is not None:
        checks.append(_upper("error rate", value, metric.max, "max"))
    if metric.max_increase is not None:
        baseline, absent = _baseline(metric, ctx, "error rate")
        if absent is not None:
            checks.append(absent)
        else:
            assert baseline is not None
            check = _upper("error rate increase", value - baseline, metric.max_increase, "maxIncrease")
            checks.append(_Check(check.outcome, f"{check.text} (canary {fmt(value)} vs stable {fmt(baseline)})"))
    return checks, value, baseline


def _quantile_label(q: float) -> str:
    return f"p{q * 100:g}"


def _latency(metric: Metric, ctx: _Context) -> tuple[list[_Check], float | None, float | None]:
    what = f"{_quantile_label(metric.effective_quantile)} latency"
    value, missing = _canary_value(metric, ctx, what)
    if value is None:
        return [missing] if missing else [], None, None
    checks: list[_Check] = []
    baseline: float | None = None
    if metric.max_ms is not None:
        checks.append(_upper(what, value, metric.max_ms, "maxMs", unit="ms"))
    if metric.max_ratio is not None:
        baseline, absent = _baseline(metric, ctx, what)
        if absent is not None:
            checks.append(absent)
        elif baseline is not None and baseline <= 0:
            checks.append(_Check("inconclusive", f"stable {what} is {fmt(baseline)}ms, ratio undefined"))
        else:
            assert baseline is not None
            check = _upper(f"{what} ratio", value / baseline, metric.max_ratio, "maxRatio")
            detail = f"(canary {fmt(value)}ms vs stable {fmt(baseline)}ms)"
            checks.append(_Check(check.outcome, f"{check.text} {detail}"))
    return checks, value, baseline


def _custom(metric: Metric, ctx: _Context) -> tuple[list[_Check], float | None, float | None]:
    value, missing = _canary_value(metric, ctx, metric.name)
    if value is None:
        return [missing] if missing else [], None, None
    checks: list[_Check] = []
    if metric.min is not None:
        checks.append(_lower("value", value, metric.min, "min"))
    if metric.max is not None:
        checks.append(_upper("value", value, metric.max, "max"))
    return checks, value, None


_Rule = Callable[[Metric, _Context], tuple[list[_Check], float | None, float | None]]
_RULES: dict[str, _Rule] = {"error-rate": _error_rate, "latency": _latency}


def _judge_metric(metric: Metric, ctx: _Context) -> MetricVerdict:
    checks, value, baseline = _RULES.get(metric.name, _custom)(metric, ctx)
    if not checks:  # a metric with no threshold cannot pass (the policy model forbids it anyway)
        checks = [_Check("inconclusive", "no threshold to check")]
    return MetricVerdict(
        name=metric.name,
        outcome=worst(c.outcome for c in checks),
        value=value,
        baseline=baseline,
        reason="; ".join(c.text for c in checks),
    )


def _requests_gate(requests: float | None, min_requests: int) -> MetricVerdict:
    if requests is None or not math.isfinite(requests):
        return MetricVerdict(
            name=REQUESTS_CHECK,
            outcome="inconclusive",
            reason=f"no data for request count: n unknown, minRequests {min_requests}",
        )
    if requests < min_requests:
        return MetricVerdict(
            name=REQUESTS_CHECK,
            outcome="inconclusive",
            value=requests,
            reason=f"n={fmt(requests)} < minRequests {min_requests}",
        )
    return MetricVerdict(
        name=REQUESTS_CHECK,
        outcome="pass",
        value=requests,
        reason=f"n={fmt(requests)} >= minRequests {min_requests}",
    )


def judge(samples: AnalysisSamples, analysis: Analysis) -> Verdict:
    """The verdict of one analysis: any fail -> fail, else any inconclusive -> inconclusive, else pass.

    With fewer than `minRequests` canary requests nothing is judged: each metric is reported as
    inconclusive with the comparison it would have made, so a few unlucky requests cannot fail a good
    canary and too little traffic can never pass a bad one. Comparisons with the stable revision need
    `minRequests` stable requests too.
    """
    gate = _requests_gate(samples.canary.requests, analysis.min_requests)
    ctx = _Context(canary=samples.canary, stable=samples.stable, min_requests=analysis.min_requests)
    verdicts = [_judge_metric(m, ctx) for m in analysis.metrics]
    if gate.outcome != "pass":
        verdicts = [
            v.model_copy(update={"outcome": "inconclusive", "reason": f"not judged ({gate.reason}): {v.reason}"})
            for v in verdicts
        ]
    every = [gate, *verdicts]
    return Verdict(
        outcome=worst(v.outcome for v in every),
        requests=samples.canary.requests,
        window_s=samples.window_s,
        metrics=every,
    )
