"""The threshold judge as tables: every rule, boundaries, no-data cases and the minRequests gate."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from canaryd.analysis.judge import REQUESTS_CHECK, fmt, is_decisive, judge, worst
from canaryd.analysis.samples import AnalysisSamples, MetricReading, Outcome, RevisionReading, Verdict
from canaryd.policy import Analysis, Metric

NAN = float("nan")
INF = float("inf")
NO_STABLE = object()


def revision(name: str, requests: float | None, values: dict[str, float | None]) -> RevisionReading:
    return RevisionReading(
        revision=name,
        requests=requests,
        metrics={
            k: MetricReading(name=k, value=v, error=None if v is not None else "boom: empty result")
            for k, v in values.items()
        },
    )


@dataclass
class Case:
    id: str
    metric: Metric
    canary: dict[str, float | None]
    outcome: Outcome
    reason: str
    stable: dict[str, float | None] | None = field(default_factory=dict)
    stable_requests: float | None = 1000
    canary_requests: float | None = 1000

    def samples(self) -> AnalysisSamples:
        stable = None if self.stable is None else revision("stable", self.stable_requests, self.stable)
        return AnalysisSamples(window_s=30, canary=revision("canary", self.canary_requests, self.canary), stable=stable)


ER = "error-rate"
LAT = "latency"

CASES = [
    # error rate, absolute ceiling
    Case("er-over-max", Metric(name=ER, max=0.01), {ER: 0.0523}, "fail", "error rate 0.0523 > max 0.01"),
    Case("er-at-max", Metric(name=ER, max=0.01), {ER: 0.01}, "pass", "error rate 0.01 <= max 0.01"),
    Case("er-zero", Metric(name=ER, max=0.0), {ER: 0.0}, "pass", "error rate 0 <= max 0"),
    Case("er-just-over", Metric(name=ER, max=0.01), {ER: 0.0101}, "fail", "error rate 0.0101 > max 0.01"),
    Case("er-no-data", Metric(name=ER, max=0.01), {ER: None}, "inconclusive", "no data for error rate (boom"),
    Case("er-nan", Metric(name=ER, max=0.01), {ER: NAN}, "inconclusive", "no data for error rate"),
    Case("er-not-read", Metric(name=ER, max=0.01), {}, "inconclusive", "no data for error rate (not read)"),
    # error rate vs stable
    Case(
        "inc-over",
        Metric(name=ER, max_increase=0.005),
        {ER: 0.02},
        "fail",
        "error rate increase 0.01 > maxIncrease 0.005 (canary 0.02 vs stable 0.01)",
        stable={ER: 0.01},
    ),
    Case(
        "inc-at-boundary-float-noise",  # 0.035 - 0.005 == 0.030000000000000002 in floats
        Metric(name=ER, max_increase=0.03),
        {ER: 0.035},
        "pass",
        "error rate increase 0.03 <= maxIncrease 0.03",
        stable={ER: 0.005},
    ),
    Case(
        "inc-canary-better",
        Metric(name=ER, max_increase=0.0),
        {ER: 0.001},
        "pass",
        "error rate increase -0.009 <= maxIncrease 0",
        stable={ER: 0.01},
    ),
    Case(
        "inc-no-stable",
        Metric(name=ER, max_increase=0.005),
        {ER: 0.0},
        "inconclusive",
        "no stable revision to compare error rate with",
        stable=None,
    ),
    Case(
        "inc-stable-no-data",
        Metric(name=ER, max_increase=0.005),
        {ER: 0.0},
        "inconclusive",
        "no data for stable error rate (boom",
        stable={ER: None},
    ),
    Case(
        "inc-stable-too-few",
        Metric(name=ER, max_increase=0.005),
        {ER: 0.0},
        "inconclusive",
        "stable n=50 < minRequests 200, cannot compare error rate",
        stable={ER: 0.0},
        stable_requests=50,
    ),
    Case(
        "inc-stable-requests-unknown",
        Metric(name=ER, max_increase=0.005),
        {ER: 0.0},
        "inconclusive",
        "stable request count unknown",
        stable={ER: 0.0},
        stable_requests=None,
    ),
    Case(
        "max-fails-even-if-increase-inconclusive",
        Metric(name=ER, max=0.01, max_increase=0.005),
        {ER: 0.5},
        "fail",
        "error rate 0.5 > max 0.01; no stable revision",
        stable=None,
    ),
    Case(
        "max-passes-increase-inconclusive",
        Metric(name=ER, max=0.01, max_increase=0.005),
        {ER: 0.001},
        "inconclusive",
        "error rate 0.001 <= max 0.01; no data for stable error rate",
        stable={ER: None},
    ),
    Case(
        "both-pass",
        Metric(name=ER, max=0.01, max_increase=0.005),
        {ER: 0.002},
        "pass",
        "error rate 0.002 <= max 0.01; error rate increase 0.001 <= maxIncrease 0.005",
        stable={ER: 0.001},
    ),
    # latency
    Case("lat-over", Metric(name=LAT, max_ms=500), {LAT: 612.345}, "fail", "p99 latency 612.3ms > maxMs 500"),
    Case("lat-at", Metric(name=LAT, max_ms=500), {LAT: 500.0}, "pass", "p99 latency 500ms <= maxMs 500"),
    Case("lat-p95", Metric(name=LAT, quantile=0.95, max_ms=50), {LAT: 12.0}, "pass", "p95 latency 12ms"),
    Case("lat-p99.9", Metric(name=LAT, quantile=0.999, max_ms=50), {LAT: 51.0}, "fail", "p99.9 latency 51ms"),
    Case("lat-big", Metric(name=LAT, max_ms=5000), {LAT: 12345.6}, "fail", "p99 latency 12346ms > maxMs 5000"),
    Case("lat-inf", Metric(name=LAT, max_ms=500), {LAT: INF}, "inconclusive", "no data for p99 latency"),
    Case("lat-no-data", Metric(name=LAT, max_ms=500), {LAT: None}, "inconclusive", "no data for p99 latency"),
    Case(
        "ratio-at",
        Metric(name=LAT, max_ratio=1.2),
        {LAT: 600.0},
        "pass",
        "p99 latency ratio 1.2 <= maxRatio 1.2 (canary 600ms vs stable 500ms)",
        stable={LAT: 500.0},
    ),
    Case(
        "ratio-over",
        Metric(name=LAT, max_ratio=1.2),
        {LAT: 601.0},
        "fail",
        "p99 latency ratio 1.202 > maxRatio 1.2 (canary 601ms vs stable 500ms)",
        stable={LAT: 500.0},
    ),
    Case(
        "ratio-stable-zero",
        Metric(name=LAT, max_ratio=1.2),
        {LAT: 5.0},
        "inconclusive",
        "stable p99 latency is 0ms, ratio undefined",
        stable={LAT: 0.0},
    ),
    Case(
        "ratio-no-stable",
        Metric(name=LAT, max_ratio=1.2),
        {LAT: 5.0},
        "inconclusive",
        "no stable revision to compare p99 latency with",
        stable=None,
    ),
    Case(
        "ms-fail-ratio-pass",
        Metric(name=LAT, max_ms=100, max_ratio=1.5),
        {LAT: 150.0},
        "fail",
        "p99 latency 150ms > maxMs 100; p99 latency ratio 1 <= maxRatio 1.5",
        stable={LAT: 150.0},
    ),
    # custom
    Case("custom-max0-zero", Metric(name="c", query="x", max=0), {"c": 0.0}, "pass", "value 0 <= max 0"),
    Case("custom-max0-over", Metric(name="c", query="x", max=0), {"c": 0.2}, "fail", "value 0.2 > max 0"),
    Case("custom-min-at", Metric(name="c", query="x", min=5), {"c": 5.0}, "pass", "value 5 >= min 5"),
    Case("custom-min-under", Metric(name="c", query="x", min=5), {"c": 4.9}, "fail", "value 4.9 < min 5"),
    Case(
        "custom-band",
        Metric(name="c", query="x", min=1, max=2),
        {"c": 2.5},
        "fail",
        "value 2.5 >= min 1; value 2.5 > max 2",
    ),
    Case(
        "custom-no-data",
        Metric(name="c", query="x", max=1),
        {"c": None},
        "inconclusive",
        "no data for c (boom",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_metric_rules(case: Case) -> None:
    verdict = judge(case.samples(), Analysis(min_requests=200, metrics=[case.metric]))
    gate, mv = verdict.metrics
    assert gate.name == REQUESTS_CHECK and gate.outcome == "pass"
    assert mv.name == case.metric.name
    assert mv.outcome == case.outcome, mv.reason
    assert case.reason in mv.reason
    assert verdict.outcome == case.outcome


def test_values_and_baselines_are_reported() -> None:
    case = CASES[[c.id for c in CASES].index("ratio-over")]
    mv = judge(case.samples(), Analysis(metrics=[case.metric])).metrics[1]
    assert (mv.value, mv.baseline) == (601.0, 500.0)


@pytest.mark.parametrize(
    ("requests", "outcome", "reason"),
    [
        (None, "inconclusive", "no data for request count: n unknown, minRequests 200"),
        (0, "inconclusive", "n=0 < minRequests 200"),
        (199, "inconclusive", "n=199 < minRequests 200"),
        (199.9, "inconclusive", "n=199.9 < minRequests 200"),
        (200, "pass", "n=200 >= minRequests 200"),
        (NAN, "inconclusive", "no data for request count: n unknown, minRequests 200"),
    ],
)
def test_min_requests_gate(requests: float | None, outcome: Outcome, reason: str) -> None:
    samples = AnalysisSamples(window_s=30, canary=revision("c", requests, {ER: 0.0}))
    verdict = judge(samples, Analysis(min_requests=200, metrics=[Metric(name=ER, max=0.01)]))
    gate = verdict.metrics[0]
    assert gate.name == REQUESTS_CHECK
    assert (gate.outcome, gate.reason) == (outcome, reason)
    assert verdict.outcome == outcome


def test_too_few_requests_never_fails_nor_passes_but_shows_the_numbers() -> None:
    samples = AnalysisSamples(window_s=30, canary=revision("c", 3, {ER: 0.6667, LAT: 10.0}))
    analysis = Analysis(min_requests=200, metrics=[Metric(name=ER, max=0.01), Metric(name=LAT, max_ms=500)])
    verdict = judge(samples, analysis)
    assert verdict.outcome == "inconclusive"
    assert [m.outcome for m in verdict.metrics] == ["inconclusive"] * 3
    assert verdict.metrics[1].reason == "not judged (n=3 < minRequests 200): error rate 0.6667 > max 0.01"
    assert verdict.metrics[1].value == 0.6667
    assert verdict.metrics[2].reason.startswith("not judged (n=3 < minRequests 200): p99 latency 10ms <= maxMs")


@pytest.mark.parametrize(
    ("er", "lat", "outcome"),
    [
        (0.0, 100.0, "pass"),
        (0.5, 100.0, "fail"),
        (0.0, None, "inconclusive"),
        (0.5, None, "fail"),  # any fail wins over inconclusive
        (None, 900.0, "fail"),
        (None, None, "inconclusive"),
    ],
)
def test_overall_outcome_combines_metrics(er: float | None, lat: float | None, outcome: Outcome) -> None:
    samples = AnalysisSamples(window_s=42, canary=revision("c", 1000, {ER: er, LAT: lat}))
    analysis = Analysis(min_requests=10, metrics=[Metric(name=ER, max=0.01), Metric(name=LAT, max_ms=500)])
    verdict = judge(samples, analysis)
    assert verdict.outcome == outcome
    assert verdict.requests == 1000 and verdict.window_s == 42
    assert [m.name for m in verdict.metrics] == [REQUESTS_CHECK, ER, LAT]
    assert verdict.summary.startswith(f"{outcome} (1000 requests in 42s); minRequests: n=1000 >= minRequests 10")


def test_default_analysis_judges_error_rate_and_p99() -> None:
    samples = AnalysisSamples(window_s=30, canary=revision("c", 500, {ER: 0.0523, LAT: 120.0}))
    verdict = judge(samples, Analysis(mode="threshold"))
    assert verdict.outcome == "fail"
    assert "error-rate: error rate 0.0523 > max 0.01" in verdict.summary
    assert "latency: p99 latency 120ms <= maxMs 500" in verdict.summary


def test_judge_is_pure_and_repeatable() -> None:
    case = CASES[0]
    analysis = Analysis(metrics=[case.metric])
    assert judge(case.samples(), analysis) == judge(case.samples(), analysis)


def test_helpers() -> None:
    assert worst([]) == "pass"
    assert worst(["pass", "inconclusive"]) == "inconclusive"
    assert worst(["inconclusive", "fail", "pass"]) == "fail"
    assert is_decisive(Verdict(outcome="fail"))
    assert is_decisive(Verdict(outcome="pass"))
    assert not is_decisive(Verdict(outcome="inconclusive"))
    assert [fmt(v) for v in (0.0523, 0.01, 612.345, 1234.5, 98765.4, 0.0, 1e-5, -0.009)] == [
        "0.0523",
        "0.01",
        "612.3",
        "1234",
        "98765",
        "0",
        "1e-05",
        "-0.009",
    ]
