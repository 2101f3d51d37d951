"""The engine's inputs and outputs: what was observed, and the effects it asks for.

Observations are plain values read by adapters (the live InferenceService, the desired service from Git,
Prometheus samples). Actions are values the controller executes; the engine itself never does I/O. Every
action is *absolute* ("set traffic to 25 %", "apply this spec"), never relative ("advance a step"), so
executing one twice after a crash is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from canaryd.analysis.samples import AnalysisSamples
from canaryd.rollout.state import RolloutState

PERCENT_FIELD = "canaryTrafficPercent"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrafficTarget(_Frozen):
    revision: str | None
    percent: int
    latest: bool = False
    tag: str | None = None
    url: str | None = None


class Condition(_Frozen):
    status: str
    reason: str = ""
    message: str = ""


class ComponentStatus(_Frozen):
    latest_created: str | None = None
    latest_ready: str | None = None
    latest_rolledout: str | None = None
    previous_rolledout: str | None = None
    traffic: list[TrafficTarget] = Field(default_factory=list)

    def percent_of(self, revision: str | None) -> int:
        if revision is None:
            return 0
        return sum(t.percent for t in self.traffic if t.revision == revision)

    def url_of(self, revision: str | None) -> str | None:
        """The revision's own tag URL (KServe tag routing), to reach it before it has any traffic."""
        return next((t.url for t in self.traffic if t.revision == revision and t.url), None)


class LiveService(_Frozen):
    """An InferenceService as read from the cluster, reduced to what decisions need."""

    api_version: str
    generation: int
    observed_generation: int | None = None
    manifest: dict[str, Any]
    canary_percent: int | None = None
    deployment_mode: str | None = None
    components: dict[str, ComponentStatus] = Field(default_factory=dict)
    conditions: dict[str, Condition] = Field(default_factory=dict)

    def component(self, name: str) -> ComponentStatus:
        return self.components.get(name) or ComponentStatus()

    @property
    def reconciled(self) -> bool:
        """KServe has seen the newest spec (status.observedGeneration caught up with the generation)."""
        return self.observed_generation is not None and self.observed_generation >= self.generation

    @property
    def raw_deployment(self) -> bool:
        return (self.deployment_mode or "").lower() in {"rawdeployment", "standard"}


class Desired(_Frozen):
    """The service as Git wants it, with the policy that governs its next rollout."""

    manifest: dict[str, Any]
    spec_hash: str
    commit: str | None = None
    policy: dict[str, Any]
    policy_source: str | None = None


class GateResult(_Frozen):
    """The answer of one webhook call (after its retries): ok = a 2xx answer.

    `pending`: the call is still running (gates run beside the tick, never inside it); the engine waits
    for it rather than deciding without it. `error` is canaryd's own fixed text (timed out, refused,
    too large), never a piece of the answer's body: it goes into status and Events.
    """

    name: str
    type: str
    ok: bool
    status: int | None = None
    error: str | None = None
    pending: bool = False

    @property
    def summary(self) -> str:
        if self.pending:
            return f"{self.type} webhook {self.name}: no answer yet"
        what = f"HTTP {self.status}" if self.status is not None else (self.error or "no answer")
        if self.error and self.status is not None:
            what += f" ({self.error})"
        return f"{self.type} webhook {self.name}: {'ok' if self.ok else 'failed'}: {what}"


class Observation(_Frozen):
    desired: Desired | None
    live: LiveService | None
    samples: AnalysisSamples | None = None
    #: Statistical modes: the raw counter readings taken with `samples.counts`, kept for the next analysis.
    counters: dict[str, dict[str, float]] | None = None
    gates: list[GateResult] = Field(default_factory=list)
    #: The service is absent from a complete, error-free Git read and `prune: true` is configured.
    prune: bool = False


@dataclass(frozen=True)
class AnalysisRequest:
    """What the controller must ask Prometheus before calling `decide` (None = no analysis due)."""

    namespace: str
    service: str
    canary_revision: str
    stable_revision: str | None
    window_s: float
    #: The judge (`analysis.mode`): the statistical ones also need exact counts (`counters` below).
    mode: str = "threshold"
    #: When the window began (after the warmup), and the raw counter readings kept from the previous analysis.
    window_start: datetime | None = None
    #: When the statistical judges' request and error counts begin: the step's start, which for the first
    #: step is the canary's first traffic (the warmup excludes latency only, see `engine.analysis_request`).
    counts_start: datetime | None = None
    counters: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class GateCall:
    """One webhook the controller must call before `decide` (gates) or after it (post-rollout)."""

    name: str
    type: str
    url: str
    timeout_s: float
    retries: int
    payload: dict[str, Any]


# -- actions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplySpec:
    """Create the service, or merge-patch it from `last_applied` to `manifest` (DESIGN §8).

    `canary_percent` is written into the component with the manifest (0 for a new canary, so no traffic
    moves before the new revision is Ready); None leaves the field out (a plain create, or a change with no
    canary). Components still waiting for their turn carry their own percent (0) in `manifest` itself.
    """

    manifest: dict[str, Any]
    last_applied: dict[str, Any] | None
    component: str
    canary_percent: int | None
    create: bool = False


@dataclass(frozen=True)
class SetTraffic:
    component: str
    percent: int


@dataclass(frozen=True)
class Promote:
    component: str


@dataclass(frozen=True)
class Rollback:
    component: str


@dataclass(frozen=True)
class RecordEvent:
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass(frozen=True)
class Notify:
    """A message for humans (Slack, webhooks); kind: started, step, promoted, rolled-back, waiting, aborted,
    paused, resumed, drift, error."""

    kind: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeleteService:
    """Prune: the service left Git and `prune: true` is set."""

    api_version: str
    namespace: str
    name: str


@dataclass(frozen=True)
class CallWebhook:
    """Fire-and-forget hook (post-rollout): its answer changes nothing."""

    call: GateCall


Action = ApplySpec | SetTraffic | Promote | Rollback | RecordEvent | Notify | DeleteService | CallWebhook


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    actions: list[Action] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    #: Look again by then without moving `next_check_at`: set while a gate's answer is awaited, so the
    #: analysis stays due and the tick its answer triggers can use it (a later due time would leave that
    #: tick nothing to ask for, and the answer unused).
    recheck_at: datetime | None = None
