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


class AnalysisSamples(_Frozen):
    window_s: float
    canary: RevisionReading
    stable: RevisionReading | None = None


class MetricVerdict(_Frozen):
    name: str
    outcome: Outcome
    value: float | None = None
    baseline: float | None = None
    reason: str


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
