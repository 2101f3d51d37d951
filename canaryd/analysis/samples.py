"""What one analysis observed, as plain values: the boundary between Prometheus and the judge.

The Prometheus adapter fills these; the pure judge reads them. `None` always means *no data* (empty
result, NaN, error, timeout): the judge turns it into an inconclusive verdict, never a pass.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["pass", "fail", "inconclusive"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricReading(_Frozen):
    """One metric of one revision over the analysis window."""

    name: str
    value: float | None = Field(description="None = no data (empty, NaN, error or timeout)")
    query: str = ""
    error: str | None = Field(default=None, description="why value is None when Prometheus failed")


class RevisionReading(_Frozen):
    revision: str
    requests: float | None = Field(description="requests served in the window; None = no data")
    metrics: dict[str, MetricReading] = Field(default_factory=dict)


class RevisionCounts(_Frozen):
    """Exact counts of one revision over one window, for the statistical judges.

    Differences of raw counter readings per series, with counter resets handled (DESIGN §6): never
    `increase()`, which extrapolates to fractional counts. `None` = no data.
    """

    revision: str
    requests: float | None
    errors: float | None
    #: Latency histogram upper bounds in ms, ascending and finite (Prometheus `le`, +Inf left out).
    latency_bounds_ms: list[float] = Field(default_factory=list)
    #: Observations per bucket, NOT cumulative: `latency_counts[i]` fell in (bounds[i-1], bounds[i]];
    #: one more entry than bounds, the last one above the highest bound. Empty = no latency data.
    latency_counts: list[float] = Field(default_factory=list)
    #: Counter resets seen while differencing (a restarted pod): reported in the evidence.
    resets: int = 0
    #: Why the counts are None when it is not a failed query (e.g. every sample too old).
    error: str | None = None
    #: The span the counts cover (Unix seconds): the newest samples of the two readings differenced.
    since: float | None = None
    until: float | None = None


class WindowCounts(_Frozen):
    """The canary's and the stable revision's exact counts over the same window."""

    window_s: float
    canary: RevisionCounts
    stable: RevisionCounts | None = None
    #: The PromQL that read the raw counters, for the evidence.
    queries: list[str] = Field(default_factory=list)


class AnalysisSamples(_Frozen):
    window_s: float
    canary: RevisionReading
    stable: RevisionReading | None = None
    #: Exact counts for the statistical judges (None in threshold mode, or when they could not be read).
    counts: WindowCounts | None = None


class MetricVerdict(_Frozen):
    name: str
    outcome: Outcome
    value: float | None = None
    baseline: float | None = None
    reason: str
    #: Statistical judges: the test statistic and the boundary it was compared with.
    statistic: float | None = None
    threshold: float | None = None
    #: Statistical judges: the counts and estimates behind the verdict (e.g. canary_requests, stable_p99_ms).
    details: dict[str, float] = Field(default_factory=dict)


class Verdict(_Frozen):
    """The judge's answer, with the numbers that explain it (logged, stored, shown by `status`)."""

    outcome: Outcome
    requests: float | None = None
    window_s: float = 0.0
    metrics: list[MetricVerdict] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        parts = [f"{m.name}: {m.reason}" for m in self.metrics]
        head = f"{self.outcome}"
        if self.requests is not None:
            head += f" ({self.requests:.0f} requests in {self.window_s:.0f}s)"
        return head + ("; " + "; ".join(parts) if parts else "")
