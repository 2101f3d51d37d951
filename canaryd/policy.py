"""The RolloutPolicy: how one InferenceService is rolled out (DESIGN §4).

Unknown fields are errors everywhere: a typo such as `failureLimt` must not silently fall back to a
default and weaken a policy. Durations stay as the user wrote them (`1m`) and are exposed in seconds
through properties, so status output shows what the user wrote.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from canaryd.durations import parse_duration
from canaryd.yamlsafe import short

API_VERSION = "canaryd.io/v1alpha1"
KIND = "RolloutPolicy"

Component = Literal["predictor", "transformer", "explainer"]
BUILTIN_METRICS = ("error-rate", "latency")
PLACEHOLDERS = ("namespace", "service", "revision", "window")


class _Strict(BaseModel):
    # strict: YAML `"5"` or `true` must not quietly become a step; no NaN/Inf thresholds (never fire).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, strict=True,
                              allow_inf_nan=False)


#: The longest duration a policy may give (365d). Far longer ones (`99999999d`) validated, then overflowed
#: the engine's date arithmetic at every tick.
MAX_DURATION_S = 365 * 86400.0
#: The shortest `interval`, `progressDeadline`, `analysis.every` and `analysis.maxHold`. Each analysis is a
#: ModelRollout write and a batch of Prometheus queries, so `every: 1ms` asked for a thousand of each per
#: second per service; and Prometheus scrapes every few seconds, so sub-second analyses see nothing new.
MIN_CADENCE_S = 1.0
#: Validation context key of a stored policy snapshot (see _check_cadence).
_SNAPSHOT = "snapshot"


def _check_cadence(value: str, field: str, info: ValidationInfo) -> str:
    """A duration that paces reconciling (see MIN_CADENCE_S): positive, at most 365d, at least 1s.

    Not the minimum for a snapshot (`spec_from_snapshot`): a rollout that an older canaryd started under
    a shorter cadence must still be able to finish (or roll back) after an upgrade, not fail every tick.
    """
    _check_duration(value)
    if isinstance(info.context, dict) and info.context.get(_SNAPSHOT):
        return value
    if parse_duration(value) < MIN_CADENCE_S:
        raise ValueError(f"{field} {short(value)} is shorter than the minimum of 1s: every analysis writes the"
                         " ModelRollout and queries Prometheus, which scrapes every few seconds anyway")
    return value


def _check_duration(value: str, *, allow_zero: bool = False) -> str:
    seconds = parse_duration(value)
    if seconds <= 0 and not allow_zero:
        raise ValueError(f"duration {short(value)} must be greater than zero")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration {short(value)} is longer than the limit of 365d")
    return value


class Target(_Strict):
    name: str = Field(min_length=1, max_length=253, description=(
        "The InferenceService this policy rolls out, in the policy's namespace."))
    components: list[Component] = Field(
        default_factory=lambda: list[Component](["predictor"]), min_length=1, description=(
        "The components canaryd rolls out with a canary, one after another (default [predictor]); other "
        "changed components move at once."))

    @field_validator("components")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("components must not repeat")
        return v


class Metric(_Strict):
    """One check. `error-rate` and `latency` are built in; any other name needs a PromQL `query`."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description=(
        "error-rate and latency are built in; any other name is a custom check and needs `query`."))
    # error-rate
    max: float | None = Field(default=None, description=(
        "error-rate: the highest error fraction allowed (0.01 = 1 %); custom: the highest value allowed."))
    max_increase: float | None = Field(default=None, alias="maxIncrease", ge=0, description=(
        "error-rate: the most the canary's error fraction may exceed the stable's over the same window."))
    # latency
    quantile: float | None = Field(default=None, gt=0, lt=1, description=(
        "latency: the quantile checked (default 0.99), from the latency histogram."))
    max_ms: float | None = Field(default=None, alias="maxMs", gt=0, description=(
        "latency: the highest quantile allowed, in milliseconds."))
    max_ratio: float | None = Field(default=None, alias="maxRatio", gt=1, description=(
        "latency: the highest canary/stable ratio of the quantile allowed."))
    # custom
    query: str | None = Field(default=None, min_length=1, description=(
        "custom: PromQL returning one series; {{namespace}}, {{service}}, {{revision}} and {{window}} are "
        "filled in, escaped."))
    min: float | None = Field(default=None, description="custom: the lowest value allowed.")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Metric:
        allowed: dict[str, set[str]] = {
            "error-rate": {"max", "max_increase"},
            "latency": {"quantile", "max_ms", "max_ratio"},
        }
        given = {k for k in ("max", "max_increase", "quantile", "max_ms", "max_ratio", "query", "min")
                 if getattr(self, k) is not None}
        if self.name in allowed:
            extra = given - allowed[self.name]
            if extra:
                names = ", ".join(sorted(_alias(e) for e in extra))
                raise ValueError(f"metric {self.name!r} does not take {names}")
            if not given & (allowed[self.name] - {"quantile"}):
                want = " or ".join(sorted(_alias(a) for a in allowed[self.name] - {"quantile"}))
                raise ValueError(f"metric {self.name!r} needs a threshold: {want}")
            if self.name == "error-rate" and self.max is not None and not 0 <= self.max <= 1:
                raise ValueError("error-rate max is a fraction between 0 and 1 (0.01 = 1 %)")
        else:
            if self.query is None:
                raise ValueError(
                    f"metric {self.name!r} is not built in ({', '.join(BUILTIN_METRICS)}): it needs a query"
                )
            extra = given - {"query", "min", "max"}
            if extra:
                names = ", ".join(sorted(_alias(e) for e in extra))
                raise ValueError(f"custom metric {self.name!r} does not take {names}")
            if self.min is None and self.max is None:
                raise ValueError(f"custom metric {self.name!r} needs min or max")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"custom metric {self.name!r}: min ({self.min}) is above max ({self.max})")
            _check_placeholders(self.query)
        return self

    @property
    def effective_quantile(self) -> float:
        return self.quantile if self.quantile is not None else 0.99


def _unique(names: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique, repeated: {', '.join(dup)}")


def _alias(field: str) -> str:
    return {"max_increase": "maxIncrease", "max_ms": "maxMs", "max_ratio": "maxRatio"}.get(field, field)


def _check_placeholders(query: str) -> None:
    import re

    for name in re.findall(r"\{\{\s*([^}]*?)\s*\}\}", query):
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{{{name}}}}} in query; allowed: "
                + ", ".join("{{" + p + "}}" for p in PLACEHOLDERS)
            )


JudgeMode = Literal["threshold", "compare", "sequential"]


class Statistics(_Strict):
    """Knobs of the statistical judges (`analysis.mode: compare | sequential`).

    Both compare the canary with the stable revision over the same windows, so a bad model is caught by
    how much worse it is than what it replaces, not by an absolute ceiling that a noisy baseline either
    sits under or brushes against. `alpha` is spent over the whole rollout, not per analysis, so checking
    more often does not make false rollbacks more likely.
    """

    alpha: float = Field(default=0.01, gt=0, lt=0.5, description=(
        "Rollout-wide probability of rolling back a good canary that the statistical tests may spend."))
    beta: float = Field(default=0.05, gt=0, lt=0.5, description=(
        "Probability that the error test misses a regression of errorRatio."))
    error_ratio: float = Field(default=2.0, alias="errorRatio", gt=1, le=1000, description=(
        "The error regression to detect: canary error rate / stable error rate."))
    tolerated_error_ratio: float = Field(default=1.0, alias="toleratedErrorRatio", ge=1, description=(
        "What still counts as good: canary error rate / stable error rate (below errorRatio)."))
    latency_quantile: float = Field(default=0.99, alias="latencyQuantile", gt=0, lt=1, description=(
        "The latency quantile compared with the stable revision's, from histogram buckets."))
    min_latency_ratio: float = Field(default=1.15, alias="minLatencyRatio", gt=1, le=100, description=(
        "Minimum effect: latency rolls back only when the canary's quantile is at least this many times the "
        "stable's."))

    @model_validator(mode="after")
    def _ratios(self) -> Statistics:
        if self.tolerated_error_ratio >= self.error_ratio:
            raise ValueError(
                f"toleratedErrorRatio ({self.tolerated_error_ratio}) must be below errorRatio ({self.error_ratio}):"
                " the test tells a tolerated canary from a regression"
            )
        return self


def _default_metrics(mode: object = "sequential") -> list[dict[str, Any]]:
    """Threshold mode checks absolute ceilings by default; the statistical modes compare with the stable
    revision themselves, so their `metrics` hold only extra checks (custom PromQL, absolute guards)."""
    if mode in ("compare", "sequential"):
        return []
    return [{"name": "error-rate", "max": 0.01}, {"name": "latency", "quantile": 0.99, "maxMs": 500}]


class Analysis(_Strict):
    #: sequential is the default because bench/decisions.py supports it: the fewest missed regressions
    #: at <= 1 % false rollbacks over every traffic level and baseline simulated (README "Judges").
    mode: JudgeMode = Field(default="sequential", description=(
        "The judge: sequential (default), compare, or threshold (absolute limits in metrics, as Flagger)."))
    statistics: Statistics = Field(default_factory=Statistics, description=(
        "Knobs of the statistical judges (sequential, compare)."))
    every: str = Field(default="10s", description="How often the canary is analysed (at least 1s, at most interval).")
    warmup: str = Field(default="30s", description=(
        "The first analysis comes this long after the canary is Ready; latency and threshold windows leave it"
        " out, statistical error counts include it."))
    min_requests: int = Field(default=200, alias="minRequests", ge=1, description=(
        "Requests needed before a pass (canary and stable; over the rollout for sequential, the step for "
        "compare, the analysis for threshold)."))
    failure_limit: int = Field(default=2, alias="failureLimit", ge=1, description=(
        "Failed analyses (over the rollout) before rollback; a statistical fail rolls back at once."))
    inconclusive_limit: int = Field(default=5, alias="inconclusiveLimit", ge=1, description=(
        "Inconclusive analyses in a row before onInconclusive applies."))
    on_inconclusive: Literal["hold", "rollback"] = Field(default="hold", alias="onInconclusive", description=(
        "What happens after inconclusiveLimit inconclusive analyses: hold the step, or roll back."))
    max_hold: str = Field(default="30m", alias="maxHold", description="A step held longer than this rolls back.")
    metrics: list[Metric] = Field(default_factory=list, description=(
        "threshold mode: the checks; statistical modes: extra checks judged with absolute limits."))

    @model_validator(mode="before")
    @classmethod
    def _metrics_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "metrics" not in data:
            return {**data, "metrics": _default_metrics(data.get("mode", "sequential"))}
        return data

    @model_validator(mode="after")
    def _something_to_judge(self) -> Analysis:
        if self.mode == "threshold" and not self.metrics:
            raise ValueError("metrics: threshold mode needs at least one metric")
        return self

    @field_validator("every")
    @classmethod
    def _every(cls, v: str, info: ValidationInfo) -> str:
        return _check_cadence(v, "analysis.every", info)

    @field_validator("max_hold")
    @classmethod
    def _max_hold(cls, v: str, info: ValidationInfo) -> str:
        return _check_cadence(v, "analysis.maxHold", info)

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, v: str) -> str:
        return _check_duration(v, allow_zero=True)

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, v: list[Metric]) -> list[Metric]:
        _unique([m.name for m in v], "metric")
        return v

    @property
    def every_s(self) -> float:
        return parse_duration(self.every)

    @property
    def warmup_s(self) -> float:
        return parse_duration(self.warmup)

    @property
    def max_hold_s(self) -> float:
        return parse_duration(self.max_hold)


class Gates(_Strict):
    confirm_promotion: bool = Field(default=False, alias="confirmPromotion", description=(
        "Stop in WaitingPromotion after the last step until `canaryd promote` or a confirm-promotion webhook "
        "says yes."))


#: Longest one webhook attempt may take, and all its attempts together (issue 13: `timeout: 365d` was
#: accepted). Every call runs beside the tick and ends by this deadline.
MAX_WEBHOOK_TIMEOUT_S = 60.0
MAX_WEBHOOK_TOTAL_S = 300.0

WebhookType = Literal["pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback"]


class Webhook(_Strict):
    """An HTTP gate or hook, as in Flagger. canaryd POSTs a JSON payload; 2xx = yes/ok.

    pre-rollout: before the canary gets any traffic (e.g. a smoke test on its tag URL); a failure rolls
    back. rollout: at every analysis; a failure counts as a failed analysis. confirm-promotion: after
    the last step, polled at every analysis; promotion waits for a yes (or `canaryd promote`).
    rollback: polled at every analysis; a yes rolls back. post-rollout: once the rollout ended.
    """

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description=(
        "The webhook's name (lowercase letters, digits, '-')."))
    type: WebhookType = Field(description=(
        "When it is called: pre-rollout, rollout, confirm-promotion, post-rollout or rollback."))
    url: str = Field(pattern=r"^https?://[^\s]+$", description=(
        "http(s) URL canaryd POSTs the payload to; 2xx means yes/ok."))
    timeout: str = Field(default="10s", description="How long one attempt may take (at most 60s).")
    retries: int = Field(default=2, ge=0, le=10, description=(
        "Attempts after the first (0-10); (retries + 1) x timeout at most 300s."))
    metadata: dict[str, str] = Field(default_factory=dict, description="String pairs sent in the payload.")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        v = _check_duration(v)
        if parse_duration(v) > MAX_WEBHOOK_TIMEOUT_S:
            raise ValueError(f"webhook timeout {v} is longer than the maximum {MAX_WEBHOOK_TIMEOUT_S:g}s"
                             " (a gate answers within a minute or not at all)")
        return v

    @model_validator(mode="after")
    def _bounded(self) -> Webhook:
        total = (self.retries + 1) * self.timeout_s
        if total > MAX_WEBHOOK_TOTAL_S:
            raise ValueError(f"webhook {self.name}: (retries + 1) x timeout = {self.retries + 1} x {self.timeout}"
                             f" = {total:g}s, more than the maximum {MAX_WEBHOOK_TOTAL_S:g}s a gate may hold a"
                             " rollout; lower retries or timeout")
        return self

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)


class PolicySpec(_Strict):
    target: Target | None = Field(default=None, description=(
        "The InferenceService this policy rolls out; required in a config repo, absent in the daemon's "
        "default policy."))
    #: Flagger's stepWeight 10 / maxWeight 50: five steps, because the default judge needs about five
    #: minutes of a 10 req/s canary for the regressions it promises to catch (policies/default.yaml).
    steps: list[int] = Field(default_factory=lambda: [10, 20, 30, 40, 50], min_length=1, max_length=50, description=(
        "canaryTrafficPercent of each step (1-99, strictly increasing); after the last step the canary is "
        "promoted to 100 %."))
    interval: str = Field(default="1m", description=(
        "Each step lasts at least this long; traffic moves up at the first passing analysis after it."))
    progress_deadline: str = Field(default="10m", alias="progressDeadline", description=(
        "The new revision must be Ready within this, else rollback."))
    analysis: Analysis = Field(default_factory=Analysis, description="How the canary is judged.")
    gates: Gates = Field(default_factory=Gates, description="Manual gates.")
    webhooks: list[Webhook] = Field(default_factory=list, max_length=20, description=(
        "HTTP gates and hooks, as in Flagger (at most 20)."))

    @field_validator("webhooks")
    @classmethod
    def _unique_hooks(cls, v: list[Webhook]) -> list[Webhook]:
        _unique([w.name for w in v], "webhook")
        return v

    def hooks(self, kind: str) -> list[Webhook]:
        return [w for w in self.webhooks if w.type == kind]

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 1 <= s <= 99:
                raise ValueError(f"step {s} is out of range: each step is a canary percent from 1 to 99")
        if any(b <= a for a, b in pairwise(v)):
            raise ValueError(f"steps must increase strictly, got {v}")
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str, info: ValidationInfo) -> str:
        return _check_cadence(v, "interval", info)

    @field_validator("progress_deadline")
    @classmethod
    def _progress_deadline(cls, v: str, info: ValidationInfo) -> str:
        return _check_cadence(v, "progressDeadline", info)

    @model_validator(mode="after")
    def _cadence(self) -> PolicySpec:
        if self.analysis.every_s > self.interval_s:
            raise ValueError(
                f"analysis.every ({self.analysis.every}) must not be longer than interval ({self.interval}):"
                " a step must see at least one analysis"
            )
        return self

    @property
    def interval_s(self) -> float:
        return parse_duration(self.interval)

    @property
    def progress_deadline_s(self) -> float:
        return parse_duration(self.progress_deadline)


class PolicyMetadata(_Strict):
    name: str = Field(min_length=1, description="The policy's name.")
    namespace: str | None = Field(default=None, description=(
        "The namespace of the policy and of its target (default: the daemon's default namespace)."))
    labels: dict[str, str] = Field(default_factory=dict, description="Labels (kept, not used).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations (kept, not used).")


class RolloutPolicy(_Strict):
    api_version: Literal["canaryd.io/v1alpha1"] = Field(alias="apiVersion", description="canaryd.io/v1alpha1")
    kind: Literal["RolloutPolicy"] = Field(description="RolloutPolicy")
    metadata: PolicyMetadata = Field(description="Name and namespace.")
    spec: PolicySpec = Field(default_factory=PolicySpec, description="The rollout rules.")

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe form stored in the ModelRollout, so a restart rolls on with the same rules."""
        return policy_snapshot(self.spec)


def spec_from_snapshot(data: dict[str, Any]) -> PolicySpec:
    return PolicySpec.model_validate(data, context={_SNAPSHOT: True})


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a RolloutPolicy document (for editors and CI linting)."""
    return RolloutPolicy.model_json_schema(by_alias=True)


def policy_snapshot(spec: PolicySpec) -> dict[str, Any]:
    """JSON-safe form of a policy spec, as stored in a ModelRollout."""
    data: dict[str, Any] = json.loads(spec.model_dump_json(by_alias=True, exclude_none=True))
    return data
