"""Which judge rules on one analysis, and what the statistical ones carry over to the next (pure).

`analysis.mode: threshold` judges each window on its own against absolute limits (`judge.judge`). The
statistical modes compare the canary with the stable revision on exact counts and keep their evidence
in the ModelRollout (`status.evidence`, plus the raw counter readings in `status.counters` that the next
window is counted from), so a restart picks up the test where it was. Extra `metrics` (custom PromQL,
absolute guards) are still judged by the threshold rules in those modes, and the worst outcome wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from canaryd.analysis.judge import REQUESTS_CHECK, judge, worst
from canaryd.analysis.samples import AnalysisSamples, MetricVerdict, Verdict
from canaryd.analysis.statjudge import Evidence, judge_statistical
from canaryd.policy import Analysis


@dataclass(frozen=True)
class Judged:
    verdict: Verdict
    #: New evidence and counter readings to store (statistical modes; None = leave as they are).
    evidence: Evidence | None = None
    counters: dict[str, dict[str, float]] | None = None
    #: A statistical test crossed its boundary: alpha is already spent over the whole rollout, so the
    #: canary is rolled back at once (failureLimit only counts threshold and webhook failures).
    conclusive_fail: bool = False


def statistical(analysis: Analysis) -> bool:
    return analysis.mode != "threshold"


def judge_analysis(analysis: Analysis, samples: AnalysisSamples, evidence: Evidence | None,
                   counters: dict[str, dict[str, float]] | None) -> Judged:
    """The verdict of one analysis under the policy's judge."""
    if not statistical(analysis):
        return Judged(judge(samples, analysis))
    if samples.counts is None:
        verdict = Verdict(outcome="inconclusive", window_s=samples.window_s, metrics=[MetricVerdict(
            name=REQUESTS_CHECK, outcome="inconclusive",
            reason=f"no exact counts from Prometheus: the {analysis.mode} judge has nothing to add")])
        return Judged(verdict)
    stat, new_evidence = judge_statistical(evidence or Evidence(), samples.counts, analysis)
    conclusive = stat.outcome == "fail"
    metrics = list(stat.metrics)
    if analysis.metrics:
        extra = judge(samples, analysis)
        metrics += [m for m in extra.metrics if m.name != REQUESTS_CHECK]
    verdict = stat.model_copy(update={"outcome": worst(m.outcome for m in metrics), "metrics": metrics})
    return Judged(verdict, new_evidence, counters, conclusive)


def next_step_evidence(analysis: Analysis, evidence: Evidence | None) -> Evidence | None:
    """What a new step of the same canary starts with (see `Evidence.next_step`)."""
    if evidence is None or not statistical(analysis):
        return evidence
    return evidence.next_step(analysis.mode)
