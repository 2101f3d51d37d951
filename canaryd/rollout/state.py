"""Rollout state: what canaryd is rolling out and how far it got (the ModelRollout's spec and status).

State is immutable: every change makes a new copy (`evolve`), and phase changes go through `transition`,
which checks a table of allowed moves (an illegal one raises), records the move in the history and
resets the per-phase clock. The whole object round-trips through the ModelRollout custom resource
(`for_storage` / `from_storage`), so a restart or a new leader resumes from exactly what was persisted.

Storage layout (state version 2, issue 13): everything canaryd computes and remembers lives in the
ModelRollout's `status`, behind the status subresource that only canaryd's ServiceAccount may write; the
object's `spec` holds only what a person may ask for (`spec.control`). The target is the object's own
namespace and name, never a field a person could point elsewhere. In memory the split stays as it was
(`RolloutSpec` = what is being rolled out, `RolloutStatus` = how far it got): only the mapping to storage
changed. Objects written by canaryd 0.1 (everything in `spec`, no status subresource) are recognised
and migrated by the state store (`legacy_state`).
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from canaryd.analysis.samples import Verdict
from canaryd.analysis.statjudge import Evidence

GROUP = "canaryd.io"
VERSION = "v1alpha1"
KIND = "ModelRollout"
PLURAL = "modelrollouts"

MAX_ANALYSES = 10
MAX_HISTORY = 50

#: `status.stateVersion` of the storage layout above; canaryd 0.1 wrote none.
STATE_VERSION = 2
#: The kinds canaryd rolls out (a stored target of any other kind is refused).
TARGET_API_VERSIONS = frozenset({"serving.kserve.io/v1beta1", "serving.kubeflow.org/v1alpha2"})


class Phase(StrEnum):
    IDLE = "Idle"
    INITIALIZING = "Initializing"
    PROGRESSING = "Progressing"
    HOLDING = "Holding"
    WAITING_PROMOTION = "WaitingPromotion"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"
    ABORTED = "Aborted"
    PAUSED = "Paused"


#: Phases in which a canary revision exists and may receive traffic.
ACTIVE = frozenset(
    {Phase.INITIALIZING, Phase.PROGRESSING, Phase.HOLDING, Phase.WAITING_PROMOTION, Phase.PROMOTING,
     Phase.ROLLING_BACK, Phase.PAUSED}
)
#: Phases that end a rollout; a new desired spec starts the next one.
TERMINAL = frozenset({Phase.IDLE, Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED})

_ANALYSING = {Phase.PROGRESSING, Phase.HOLDING, Phase.WAITING_PROMOTION}
_START = {Phase.INITIALIZING, Phase.SUCCEEDED, Phase.FAILED}

ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset(_START),
    Phase.INITIALIZING: frozenset({Phase.INITIALIZING, Phase.PROGRESSING, Phase.ROLLING_BACK, Phase.FAILED,
                                   Phase.ABORTED, Phase.PAUSED}),
    Phase.PROGRESSING: frozenset({Phase.PROGRESSING, Phase.HOLDING, Phase.WAITING_PROMOTION, Phase.PROMOTING,
                                  Phase.ROLLING_BACK, Phase.INITIALIZING, Phase.ABORTED, Phase.PAUSED}),
    Phase.HOLDING: frozenset({Phase.PROGRESSING, Phase.WAITING_PROMOTION, Phase.PROMOTING, Phase.ROLLING_BACK,
                              Phase.INITIALIZING, Phase.ABORTED, Phase.PAUSED}),
    Phase.WAITING_PROMOTION: frozenset({Phase.PROMOTING, Phase.ROLLING_BACK, Phase.INITIALIZING, Phase.ABORTED,
                                        Phase.PAUSED}),
    Phase.PROMOTING: frozenset({Phase.SUCCEEDED, Phase.INITIALIZING}),
    Phase.ROLLING_BACK: frozenset({Phase.FAILED, Phase.ABORTED, Phase.INITIALIZING}),
    Phase.SUCCEEDED: frozenset(_START),
    Phase.FAILED: frozenset(_START),
    Phase.ABORTED: frozenset(_START),
    Phase.PAUSED: frozenset({Phase.INITIALIZING, Phase.PROGRESSING, Phase.HOLDING, Phase.WAITING_PROMOTION,
                             Phase.ROLLING_BACK, Phase.ABORTED}),
}


class IllegalTransition(RuntimeError):
    """A phase change the table does not allow: a bug in the engine, never a user error."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TargetRef(_Frozen):
    api_version: str = Field(default="serving.kserve.io/v1beta1", alias="apiVersion")
    kind: str = "InferenceService"
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Condition(_Frozen):
    """A Kubernetes-style condition (status.conditions), so `kubectl wait --for=condition=Healthy` and an
    Argo CD health check can gate on a rollout without knowing canaryd's phases."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime = Field(alias="lastTransitionTime")


#: The condition types canaryd keeps, and what each says.
#: Healthy: Git's spec serves all traffic (True: promoted or adopted; False: rolled back, aborted or failed;
#:   Unknown: a canary is in flight).
#: Progressing: a rollout is in flight (True), or ended (False, reason = how).
#: Paused: an operator paused the rollouts of this service.
CONDITION_TYPES = ("Healthy", "Progressing", "Paused")


def conditions_for(phase: Phase, reason: str, message: str, previous: list[Condition],
                   now: datetime) -> list[Condition]:
    """The conditions after entering `phase`; a condition's lastTransitionTime moves only when its status
    changes (the Kubernetes convention), reason and message follow every transition."""
    in_flight = phase in ACTIVE
    healthy: Literal["True", "False", "Unknown"] = (
        "Unknown" if in_flight else "True" if phase in (Phase.SUCCEEDED, Phase.IDLE) else "False")
    wanted: dict[str, Literal["True", "False", "Unknown"]] = {
        "Healthy": healthy, "Progressing": "True" if in_flight else "False",
        "Paused": "True" if phase == Phase.PAUSED else "False"}
    before = {c.type: c for c in previous}
    out: list[Condition] = []
    for kind in CONDITION_TYPES:
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == wanted[kind] else now
        out.append(Condition(type=kind, status=wanted[kind], reason=reason or str(phase), message=message,
                             last_transition_time=since))
    return out


class AnalysisRecord(_Frozen):
    """One analysis with its numbers, kept so `status` and `history` can explain every decision."""

    at: datetime
    step: int
    weight: int
    canary_revision: str | None = Field(default=None, alias="canaryRevision")
    verdict: Verdict


class HistoryRecord(_Frozen):
    at: datetime
    phase: Phase
    from_phase: Phase | None = Field(default=None, alias="fromPhase")
    reason: str
    message: str = ""
    step: int = -1
    weight: int = 0
    commit: str | None = None
    #: The component the move was about (several roll out one after another).
    component: str | None = None


class Control(_Frozen):
    """Operator requests (`canaryd pause|resume|promote|abort`), kept in the ModelRollout's spec so they
    survive restarts and a Git sync cannot undo them. `promote`/`abort` name the rollout attempt they were
    given for (`RolloutState.attempt_id`): every rollout attempt has a new id, so a request is spent when
    its attempt ends and never applies to a later one, even one of the same spec."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    paused: bool = False
    promote: str | None = None
    abort: str | None = None


class RolloutSpec(_Frozen):
    """What canaryd is rolling out: the ModelRollout's `spec`."""

    target: TargetRef
    #: The component whose canary is in flight (or was last rolled out).
    component: str = "predictor"
    #: Changed components still to roll out after `component`, in the policy's order. Until its turn, each
    #: keeps its previous spec in `last_applied` (the applied manifest is the desired one minus these).
    pending_components: list[str] = Field(default_factory=list, alias="pendingComponents")
    commit: str | None = None
    spec_hash: str | None = Field(default=None, alias="specHash")
    last_applied: dict[str, Any] | None = Field(default=None, alias="lastApplied")
    #: What was applied before `last_applied`, kept until the new spec is seen live, so that a re-apply
    #: after a crash still sends the `null`s that remove fields dropped in Git.
    previous_applied: dict[str, Any] | None = Field(default=None, alias="previousApplied")
    policy: dict[str, Any] = Field(default_factory=dict)
    policy_source: str | None = Field(default=None, alias="policySource")
    control: Control = Field(default_factory=Control)


class RolloutStatus(_Frozen):
    """How far it got: the ModelRollout's `status`."""

    phase: Phase = Phase.IDLE
    step: int = -1
    weight: int = 0
    stable_revision: str | None = Field(default=None, alias="stableRevision")
    canary_revision: str | None = Field(default=None, alias="canaryRevision")
    baseline_created_revision: str | None = Field(default=None, alias="baselineCreatedRevision")
    failed_spec_hashes: list[str] = Field(default_factory=list, alias="failedSpecHashes")
    failed_analyses: int = Field(default=0, alias="failedAnalyses")
    inconclusive_in_row: int = Field(default=0, alias="inconclusiveInRow")
    analyses_run: int = Field(default=0, alias="analysesRun")
    phase_since: datetime | None = Field(default=None, alias="phaseSince")
    rollout_started_at: datetime | None = Field(default=None, alias="rolloutStartedAt")
    ready_at: datetime | None = Field(default=None, alias="readyAt")
    step_started_at: datetime | None = Field(default=None, alias="stepStartedAt")
    hold_since: datetime | None = Field(default=None, alias="holdSince")
    #: False from the tick that saves a new step until a tick sees its percent live. Only then is the
    #: step's clock restarted for a percent that is not in force (a crash between saving and patching);
    #: later changes by others are drift, corrected without moving the clock (it would never end). False by
    #: default: a state saved before this field existed gets at most one restarted clock, never a skipped step.
    step_applied: bool = Field(default=False, alias="stepApplied")
    #: Rollout attempts started for this service (each start, supersede or adoption is one): the attempt
    #: an operator request names.
    attempt: int = 0
    next_check_at: datetime | None = Field(default=None, alias="nextCheckAt")
    pre_rollout_passed: bool = Field(default=False, alias="preRolloutPassed")
    paused_from: Phase | None = Field(default=None, alias="pausedFrom")
    #: Components of this spec already promoted (they stay promoted if a later one fails).
    promoted_components: list[str] = Field(default_factory=list, alias="promotedComponents")
    #: latestCreatedRevision of each pending component before the first apply of this rollout made it a new
    #: revision (a labels/annotations change renews every component): its canary is the revision after it.
    component_baselines: dict[str, str] = Field(default_factory=dict, alias="componentBaselines")
    #: The statistical judge's accumulated evidence for the canary in flight (None: nothing yet).
    evidence: Evidence | None = None
    #: Raw counter readings per revision at the last analysis, to count exact differences from.
    counters: dict[str, dict[str, float]] = Field(default_factory=dict)
    drift_count: int = Field(default=0, alias="driftCount")
    last_drift: str | None = Field(default=None, alias="lastDrift")
    message: str = ""
    last_verdict: str | None = Field(default=None, alias="lastVerdict")
    analyses: list[AnalysisRecord] = Field(default_factory=list)
    history: list[HistoryRecord] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)


class UntrustedState(ValueError):
    """A stored ModelRollout that canaryd must not act on (it names another object, or cannot be read)."""


_SPEC_KEYS = frozenset(f.alias or n for n, f in RolloutSpec.model_fields.items()) - {"target", "control"}


class RolloutState(_Frozen):
    spec: RolloutSpec
    status: RolloutStatus = Field(default_factory=RolloutStatus)
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    #: metadata.generation of the ModelRollout this state was read from (its spec: operator requests);
    #: saved as status.observedGeneration, so a person sees whether canaryd has seen their request.
    generation: int | None = None
    #: The generation the stored status says canaryd had seen (status.observedGeneration when read).
    observed_generation: int | None = None

    @property
    def attempt_id(self) -> str:
        """The id of the rollout attempt in flight, which operator requests name."""
        return f"attempt-{self.status.attempt}"

    @classmethod
    def new(cls, target: TargetRef, component: str = "predictor") -> RolloutState:
        return cls(spec=RolloutSpec(target=target, component=component))

    # -- copies ------------------------------------------------------------------------------------
    def evolve(self, *, spec: dict[str, Any] | None = None, **status: Any) -> RolloutState:
        """A copy with some status fields (and optionally spec fields) replaced."""
        new_status = self.status.model_copy(update=status) if status else self.status
        new_spec = self.spec.model_copy(update=spec) if spec else self.spec
        return self.model_copy(update={"status": new_status, "spec": new_spec})

    def transition(self, phase: Phase, *, now: datetime, reason: str, message: str = "",
                   **status: Any) -> RolloutState:
        """Move to `phase` if the table allows it, recording why; other status fields may change too."""
        current = self.status.phase
        if phase not in ALLOWED[current]:
            raise IllegalTransition(f"{current} -> {phase} ({reason})")
        updated = self.evolve(**status)
        record = HistoryRecord(
            at=now, phase=phase, from_phase=current, reason=reason, message=message,
            step=updated.status.step, weight=updated.status.weight, commit=updated.spec.commit,
            component=updated.spec.component,
        )
        history = [*self.status.history, record][-MAX_HISTORY:]
        since = now if phase != current else self.status.phase_since
        conditions = conditions_for(phase, reason, message or reason, self.status.conditions, now)
        return updated.evolve(phase=phase, phase_since=since, message=message or reason, history=history,
                              conditions=conditions)

    def reset(self, *, now: datetime, reason: str, message: str) -> RolloutState:
        """Back to Idle from any phase: the one escape from the table, for when the service itself vanished."""
        record = HistoryRecord(at=now, phase=Phase.IDLE, from_phase=self.status.phase, reason=reason,
                               message=message, commit=self.spec.commit, component=self.spec.component)
        return self.evolve(phase=Phase.IDLE, phase_since=now, message=message, step=-1, weight=0,
                           canary_revision=None, history=[*self.status.history, record][-MAX_HISTORY:],
                           conditions=conditions_for(Phase.IDLE, reason, message, self.status.conditions, now))

    def with_analysis(self, record: AnalysisRecord) -> RolloutState:
        analyses = [*self.status.analyses, record][-MAX_ANALYSES:]
        return self.evolve(analyses=analyses, last_verdict=record.verdict.summary,
                           analyses_run=self.status.analyses_run + 1)

    # -- storage -----------------------------------------------------------------------------------
    def for_storage(self) -> dict[str, Any]:
        """The ModelRollout object (without resourceVersion unless known): JSON-safe.

        `spec` carries only `control` (what a person asked for, as last read); the status subresource
        write that saves a state ignores it. What canaryd rolls out goes into `status` beside its progress.
        """
        t = self.spec.target
        spec = json.loads(self.spec.model_dump_json(by_alias=True, exclude_none=True))
        status = json.loads(self.status.model_dump_json(by_alias=True, exclude_none=True))
        control = spec.pop("control", {})
        spec.pop("target", None)
        if self.generation is not None:
            status["observedGeneration"] = self.generation
            for c in status.get("conditions", []):
                c["observedGeneration"] = self.generation
        status.update(_display(self))
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {
                "name": t.name,
                "namespace": t.namespace,
                "labels": {"app.kubernetes.io/managed-by": "canaryd"},
            },
            "spec": {"control": control},
            "status": {"stateVersion": STATE_VERSION, "target": {"apiVersion": t.api_version, "kind": t.kind},
                       **spec, **status},
        }
        if self.resource_version:
            body["metadata"]["resourceVersion"] = self.resource_version
        return body

    @classmethod
    def from_storage(cls, obj: dict[str, Any]) -> RolloutState:
        """Read a ModelRollout written in the current layout; raises `UntrustedState` when it must not be
        acted on. An object without status (created, status not written yet) is a new state."""
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
            raise UntrustedState("the ModelRollout has no metadata.namespace/name")
        raw_status = dict(obj.get("status") or {})
        control = Control.model_validate(((obj.get("spec") or {}).get("control")) or {})
        rv = meta.get("resourceVersion")
        if not raw_status:
            return cls(spec=RolloutSpec(target=TargetRef(namespace=namespace, name=name), control=control),
                       resource_version=rv)
        version = raw_status.pop("stateVersion", None)
        if version != STATE_VERSION:
            raise UntrustedState(f"status.stateVersion is {version!r}, this canaryd reads {STATE_VERSION}"
                                 " (a newer canaryd wrote it, or it predates the status subresource)")
        observed = raw_status.pop("observedGeneration", None)
        for key in _DISPLAY_KEYS:
            raw_status.pop(key, None)
        raw_status["conditions"] = [{k: v for k, v in c.items() if k != "observedGeneration"}
                                    for c in raw_status.get("conditions") or [] if isinstance(c, dict)]
        target_kind = raw_status.pop("target", None) or {}
        spec_fields = {k: raw_status.pop(k) for k in list(raw_status) if k in _SPEC_KEYS}
        try:
            target = TargetRef(namespace=namespace, name=name, **target_kind)
            spec = RolloutSpec(target=target, control=control, **spec_fields)
            status = RolloutStatus.model_validate(raw_status)
        except ValueError as exc:
            raise UntrustedState(f"the ModelRollout's status cannot be read: {_first_line(exc)}") from None
        generation = meta.get("generation")
        state = cls(spec=spec, status=status, resource_version=rv,
                    generation=generation if isinstance(generation, int) else None,
                    observed_generation=observed if isinstance(observed, int) else None)
        state.check_identity()
        return state

    @property
    def generation_unobserved(self) -> bool:
        """The object's spec (an operator request) changed since the stored status was written: the status
        must be saved again, even if nothing else changed, so observedGeneration says it was seen."""
        return self.generation is not None and self.observed_generation != self.generation

    def check_identity(self) -> None:
        """What canaryd will write names its own target: the manifests it re-applies (drift correction,
        crash repair) carry the ModelRollout's namespace/name, and the target is a kind it rolls out."""
        t = self.spec.target
        if t.kind != "InferenceService" or t.api_version not in TARGET_API_VERSIONS:
            raise UntrustedState(f"status.target is {t.api_version} {t.kind}, not an InferenceService")
        for field_name, manifest in (("lastApplied", self.spec.last_applied),
                                     ("previousApplied", self.spec.previous_applied)):
            if manifest is None:
                continue
            meta = manifest.get("metadata") or {}
            if meta.get("namespace", t.namespace) != t.namespace or meta.get("name") != t.name:
                raise UntrustedState(
                    f"status.{field_name} names {meta.get('namespace')}/{meta.get('name')}, not this"
                    f" ModelRollout's own service {t.key}")
            if manifest.get("apiVersion") != t.api_version or manifest.get("kind") != t.kind:
                raise UntrustedState(f"status.{field_name} is a {manifest.get('apiVersion')} {manifest.get('kind')},"
                                     f" not the target's {t.api_version} {t.kind}")


def legacy_state(obj: dict[str, Any]) -> RolloutState | None:
    """The state in a ModelRollout written by canaryd 0.1 (all in `spec`, status beside it without a
    stateVersion), or None when `obj` is not in that layout. Raises `UntrustedState` when it names an
    object other than its own (the 0.1 layout let an editor point `spec.target` or `lastApplied` at
    another namespace): such a state is refused, never migrated.

    Only canaryd could have written a 0.1 status: editors may patch a ModelRollout's spec but never its
    status, and an object canaryd created but had not written a status for yet has none.
    """
    spec = dict(obj.get("spec") or {})
    status = dict(obj.get("status") or {})
    if "stateVersion" in status or "target" not in spec or "phase" not in status:
        return None
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    target = spec.get("target") or {}
    if (target.get("namespace"), target.get("name")) != (namespace, name):
        raise UntrustedState(f"canaryd 0.1 state: spec.target is {target.get('namespace')}/{target.get('name')},"
                             f" not this ModelRollout's own {namespace}/{name}; refused, not migrated")
    # spec.control stays where it is (same place in both layouts); a 0.1 promote/abort names a spec hash,
    # which no attempt id equals: spent with the upgrade. A pause stays in force.
    try:
        state = RolloutState(spec=RolloutSpec.model_validate(spec), status=RolloutStatus.model_validate(status),
                             resource_version=meta.get("resourceVersion"))
    except ValueError as exc:
        raise UntrustedState(f"canaryd 0.1 state cannot be read: {_first_line(exc)}") from None
    state.check_identity()
    return state


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(text[:3])[:300] if text else type(exc).__name__


#: Status fields written for people and `kubectl get` (printer columns), derived at save time, not read back.
_DISPLAY_KEYS = ("shortCommit", "stepLabel")


def step_label(step: int, steps: int) -> str:
    """A person's step number: "2/5" for the second of five steps (the stored index counts from 0), "-"
    when no step is in force (-1: before the first step, or after the rollout ended)."""
    if step < 0:
        return "-"
    return f"{step + 1}/{steps}" if steps else str(step + 1)


def steps_of(state: RolloutState) -> int:
    """How many steps the rollout's policy has (0 if it does not say)."""
    steps = state.spec.policy.get("steps")
    return len(steps) if isinstance(steps, list) else 0


def _display(state: RolloutState) -> dict[str, str]:
    """`kubectl get modelrollouts` columns that JSONPath cannot compute: the commit's first 8 characters
    and the step as a person counts it (`step_label`)."""
    out = {"stepLabel": step_label(state.status.step, steps_of(state))}
    if state.spec.commit:
        out["shortCommit"] = state.spec.commit[:8]
    return out
