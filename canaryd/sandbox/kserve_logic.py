"""What KServe (v1beta1, Knative mode), KFServing 0.4 (v1alpha2) and Knative Serving would do with an
InferenceService: pure.

Kept free of I/O so every rollout path is a table test; each API version has its own `reconcile_*`. The
sources it follows, so that canaryd meets the same behaviour here as on a real cluster:

- KServe `reconcilers/knative/ksvc_reconciler.go` (traffic targets from `canaryTrafficPercent` and the
  component's `latestRolledoutRevision`) and `inference_service_status.go` (`PropagateStatus`: how
  `latestRolledoutRevision`/`previousRolledoutRevision` move, which conditions are copied);
- Knative Serving: a changed revision template makes a new Revision; `latestRevision: true` resolves to
  the newest *Ready* revision (the hazard canaryd must avoid); a traffic percent outside 0..100 is
  rejected by Knative's webhook, so KServe reports `ReconcileFailed` and nothing else changes;
- knative.dev/pkg condition sets: `Ready` follows its dependents (`PredictorReady`, `IngressReady`),
  other conditions carry severity `Info`, and `lastTransitionTime` moves only when a condition changes;
- KFServing v0.4 (`serving.kubeflow.org/v1alpha2`, see `reconcile_v1alpha2`): one Knative Service per
  endpoint (`default`, `canary`) and component, an Istio VirtualService splitting the service's traffic
  between the endpoints' hosts by `canaryTrafficPercent`, and `inference_service_status.go`.

Two known differences from upstream are options (see `Options`), defaulting to the sandbox contract; the
v1alpha2 status keeps the routes in force while KFServing cannot rebuild its VirtualService (see
`reconcile_v1alpha2`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from canaryd.sandbox.scenario import VersionBehaviour, storage_uri_of

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
KFS_GROUP, KFS_VERSION = "serving.kubeflow.org", "v1alpha2"
REVISION_GROUP, REVISION_VERSION, REVISION_PLURAL = "serving.knative.dev", "v1", "revisions"

ISVC_LABEL = "serving.kserve.io/inferenceservice"
KFS_ISVC_LABEL = "serving.kubeflow.org/inferenceservice"  # KFServing's InferenceServicePodLabelKey
ENDPOINT_LABEL = "endpoint"  # KFServing's KServiceEndpointLabel: default | canary
COMPONENT_LABEL = "component"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
SERVICE_LABEL = "serving.knative.dev/service"
STORAGE_URI_ANNOTATION = "sandbox.canaryd.io/storage-uri"
TEMPLATE_HASH_ANNOTATION = "sandbox.canaryd.io/template-hash"
CREATED_AT_ANNOTATION = "sandbox.canaryd.io/created-at"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"

COMPONENTS = ("predictor", "transformer", "explainer")
ENDPOINTS = ("default", "canary")
# KServe's defaults (constants.ServiceAnnotationDisallowedList / RevisionTemplateLabelDisallowedList):
# these never reach the revision template, so changing them makes no new revision.
ANNOTATION_DISALLOWED = frozenset(
    {
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/max-scale",
        "internal.serving.kserve.io/storage-initializer-sourceuri",
        "kubectl.kubernetes.io/last-applied-configuration",
        "modelFormat",
    }
)
LABEL_DISALLOWED = frozenset({"networking.knative.dev/visibility"})

_READY_COND = {"predictor": "PredictorReady", "transformer": "TransformerReady", "explainer": "ExplainerReady"}
_ROUTE_COND = {
    "predictor": "PredictorRouteReady",
    "transformer": "TransformerRouteReady",
    "explainer": "ExplainerRoutesReady",  # sic: KServe's name
}
_CONFIG_COND = {
    "predictor": "PredictorConfigurationReady",
    "transformer": "TransformerConfigurationReady",
    "explainer": "ExplainerConfigurationReady",
}
_ISVC_DEPENDENTS = ("PredictorReady", "IngressReady")
_KSVC_DEPENDENTS = ("ConfigurationsReady", "RoutesReady")
_MAX_PASSES = 6
_ADOPT = "?"  # a ChildMemo fingerprint meaning "whatever the child has now" (after a restart)

Json = dict[str, Any]
Status = Literal["True", "False", "Unknown"]
DeploymentMode = Literal["Knative", "Standard", "ModelMesh"]


@dataclass(frozen=True)
class Options:
    """Knobs where the sandbox contract and upstream KServe (<= 0.20) differ.

    `tag_latest_in_split`: the contract tags the canary entry `latest` whenever traffic is split; KServe
    itself tags it only with the annotation `serving.kserve.io/enable-tag-routing: "true"` (False here).
    `observed_generation`: "own" writes the InferenceService's `metadata.generation`; "knative" copies the
    child Knative Service's (or Deployment's) counter as KServe does (kserve/kserve#6081), which drifts
    from the InferenceService's generation.
    """

    domain: str = "example.com"
    tag_latest_in_split: bool = True
    observed_generation: Literal["own", "knative"] = "own"


@dataclass(frozen=True)
class Readiness:
    status: Status = "Unknown"
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class RevisionRecord:
    """One Knative Revision of one component, as the emulator keeps it in the API.

    `endpoint` is KFServing's (`default` or `canary`) for a v1alpha2 service, empty for v1beta1.
    """

    name: str
    component: str
    number: int
    template_hash: str
    storage_uri: str | None
    created_at: datetime
    readiness: Readiness = Readiness()
    spec: Json = field(default_factory=dict)
    endpoint: str = ""


@dataclass(frozen=True)
class ChildMemo:
    """What a real cluster keeps in the Knative Service (or Deployment) the emulator does not create.

    `fingerprint`/`generation`: the child's spec and its `metadata.generation` (bumped on each change);
    `first_seen`/`ready`: when a RawDeployment component was first deployed and whether it is available.
    """

    fingerprint: str = ""
    generation: int = 0
    first_seen: datetime | None = None
    ready: bool = False


@dataclass(frozen=True)
class Outcome:
    status: Json
    create: tuple[RevisionRecord, ...] = ()
    readiness: tuple[RevisionRecord, ...] = ()  # existing revisions whose Ready condition changed
    memos: Mapping[str, ChildMemo] = field(default_factory=dict)
    requeue_after: float | None = None  # seconds until a timer (readiness) may change the outcome
    # revisions whose Knative Service is gone (a v1alpha2 canary dropped): deleted after the status write
    delete: tuple[RevisionRecord, ...] = ()


Behaviour = Callable[[str | None], VersionBehaviour]


# ---------------------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------------------


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def precise_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def stable_hash(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def merge_patch(old: object, new: object) -> object:
    """The RFC 7386 merge patch that turns `old` into `new` (lists and scalars are replaced whole)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: Json = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def deployment_mode(isvc: Mapping[str, Any]) -> DeploymentMode:
    """KServe's `GetDeploymentMode`: the mode in the status is sticky, then the annotation, then the default.

    The emulated install's default is Knative (Serverless), the only mode with canary traffic splitting.
    """
    recorded = str((isvc.get("status") or {}).get("deploymentMode") or "")
    annotation = str(((isvc.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION, ""))
    for value in (recorded, annotation):
        normal = {"RawDeployment": "Standard", "Serverless": "Knative"}.get(value, value)
        if normal == "Standard":
            return "Standard"
        if normal == "Knative":
            return "Knative"
        if normal == "ModelMesh":
            return "ModelMesh"
    return "Knative"


def template_identity(isvc: Mapping[str, Any], component: str) -> Json:
    """What goes into the component's Knative revision template: its spec (but not the traffic percent)
    and the InferenceService's labels and annotations, minus KServe's disallowed lists."""
    meta = isvc.get("metadata") or {}
    spec = dict((isvc.get("spec") or {}).get(component) or {})
    spec.pop("canaryTrafficPercent", None)
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in LABEL_DISALLOWED}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in ANNOTATION_DISALLOWED}
    return {"spec": spec, "labels": labels, "annotations": annotations}


def revision_readiness(rev: RevisionRecord, behaviour: VersionBehaviour, now: datetime) -> Readiness:
    """A revision becomes Ready `readyAfterSeconds` after its creation; a `neverReady` one fails then.

    Ready is final (Knative never un-readies a revision that served); a failed one may still recover if
    the scenario changes, like a crash-looping container that starts to work.
    """
    if rev.readiness.status == "True":
        return rev.readiness
    due = rev.created_at + timedelta(seconds=behaviour.ready_after_s)
    if now < due:
        return Readiness("Unknown", "Deploying", "")
    if behaviour.never_ready:
        return Readiness(
            "False",
            "ExitCode1",
            "Container failed with: the model server could not load the model (sandbox scenario: neverReady)",
        )
    return Readiness("True")


def _seconds_until_due(rev: RevisionRecord, behaviour: VersionBehaviour, now: datetime) -> float | None:
    if rev.readiness.status != "Unknown":
        return None
    due = rev.created_at + timedelta(seconds=behaviour.ready_after_s)
    return max(0.0, (due - now).total_seconds())


def _percent(spec: Mapping[str, Any]) -> int | None:
    value = spec.get("canaryTrafficPercent")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _host(isvc: str, component: str, namespace: str, domain: str, tag: str | None = None) -> str:
    prefix = f"{tag}-" if tag else ""
    return f"http://{prefix}{isvc}-{component}.{namespace}.{domain}"


# ---------------------------------------------------------------------------------------------------------
# knative.dev/pkg living condition sets
# ---------------------------------------------------------------------------------------------------------


class Conditions:
    """A knative.dev/pkg `ConditionSet` manager over a plain list of condition dicts.

    Marks are applied in the order the real controllers apply them (the outcome depends on it).
    `finish` restores the old `lastTransitionTime` of every condition that ended up unchanged, so that a
    reconcile that changes nothing writes nothing even when a condition flipped and back within it.
    """

    def __init__(self, items: Iterable[Mapping[str, Any]], happy: str, dependents: Sequence[str], now: datetime):
        self._old = {str(c.get("type")): dict(c) for c in items if isinstance(c, Mapping)}
        self._items = {t: dict(c) for t, c in self._old.items()}
        self._happy = happy
        self._dependents = tuple(dependents)
        self._now = rfc3339(now)

    def get(self, kind: str) -> Json | None:
        return self._items.get(kind)

    def status(self, kind: str) -> Status:
        cond = self._items.get(kind)
        value = str(cond.get("status")) if cond else "Unknown"
        return "True" if value == "True" else "False" if value == "False" else "Unknown"

    def _severity(self, kind: str) -> str:
        return "" if kind == self._happy or kind in self._dependents else "Info"

    def _set(self, kind: str, status: Status, reason: str = "", message: str = "") -> None:
        cond: Json = {"type": kind, "status": status}
        if severity := self._severity(kind):
            cond["severity"] = severity
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        cond["lastTransitionTime"] = self._now
        self._items[kind] = cond

    def mark_true(self, kind: str, reason: str = "", message: str = "") -> None:
        self._set(kind, "True", reason, message)
        if all(self.status(d) == "True" for d in self._dependents):
            self._set(self._happy, "True", reason, message)

    def mark_unknown(self, kind: str, reason: str = "", message: str = "") -> None:
        self._set(kind, "Unknown", reason, message)
        for dep in self._dependents:
            if self.status(dep) == "False":
                if self.status(self._happy) != "False":
                    self._set(self._happy, "False", reason, message)
                return
        if kind in self._dependents:
            self._set(self._happy, "Unknown", reason, message)

    def mark_false(self, kind: str, reason: str = "", message: str = "") -> None:
        self._set(kind, "False", reason, message)
        if kind in self._dependents:
            self._set(self._happy, "False", reason, message)

    def clear(self, kind: str) -> None:
        """knative.dev/pkg `ClearCondition`: the condition is gone (e.g. no canary any more)."""
        self._items.pop(kind, None)

    def apply(self, kind: str, cond: Readiness | None) -> None:
        """KServe's `SetCondition`: copy another object's condition (nil means leave it alone)."""
        if cond is None:
            return
        {"True": self.mark_true, "False": self.mark_false, "Unknown": self.mark_unknown}[cond.status](
            kind, cond.reason, cond.message
        )

    def readiness(self, kind: str) -> Readiness:
        cond = self._items.get(kind) or {}
        return Readiness(self.status(kind), str(cond.get("reason", "")), str(cond.get("message", "")))

    def finish(self) -> list[Json]:
        out = []
        for kind in sorted(self._items):
            cond, old = self._items[kind], self._old.get(kind)
            if old is not None and {k: v for k, v in old.items() if k != "lastTransitionTime"} == {
                k: v for k, v in cond.items() if k != "lastTransitionTime"
            }:
                cond = old
            out.append(cond)
        return out


# ---------------------------------------------------------------------------------------------------------
# One component in Knative mode: the Knative Service KServe would write, and its status as KServe reads it
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KsvcView:
    """The parts of a Knative Service's status that KServe's `PropagateStatus` reads."""

    latest_created: str
    latest_ready: str
    traffic: list[Json] | None
    ready: Readiness
    routes: Readiness
    configurations: Readiness


@dataclass(frozen=True)
class _ComponentResult:
    status: Json  # the component's entry in status.components
    view: _KsvcView | None
    memo: ChildMemo
    create: tuple[RevisionRecord, ...] = ()
    error: str | None = None  # KServe's reconcile failed (Knative rejected the service)


def traffic_targets(percent: int | None, rolled: str, *, tag_routing: bool, tag_in_split: bool) -> list[Json]:
    """KServe's `createKnativeService` traffic block, before Knative resolves `latestRevision: true`.

    The split needs a `latestRolledoutRevision`: a first revision takes 100 % whatever the percent says.
    """
    latest: Json = {"latestRevision": True, "percent": 100}
    if tag_routing:
        latest["tag"] = "latest"
    if percent is None or not rolled:
        return [latest]
    latest["percent"] = percent
    if percent >= 100:
        return [latest]
    if tag_in_split:
        latest["tag"] = "latest"
    return [latest, {"tag": "prev", "revisionName": rolled, "latestRevision": False, "percent": 100 - percent}]


def knative_rejection(targets: Sequence[Mapping[str, Any]]) -> str | None:
    """Knative's webhook validation of a Service's traffic block (what a percent of 150 runs into)."""
    errors = [
        f"expected 0 <= {t['percent']} <= 100: spec.traffic[{i}].percent"
        for i, t in enumerate(targets)
        if not 0 <= int(t["percent"]) <= 100
    ]
    total = sum(int(t["percent"]) for t in targets)
    if total != 100:
        errors.append(f"Traffic targets sum to {total}, want 100: spec.traffic")
    if not errors:
        return None
    return (
        'fails to reconcile knative service: admission webhook "validation.webhook.serving.knative.dev" '
        "denied the request: validation failed: " + "\n".join(errors)
    )


def resolve_traffic(targets: Sequence[Mapping[str, Any]], latest_ready: str, url: Callable[[str], str]) -> list[Json]:
    """Knative's Route status: `latestRevision: true` names the newest Ready revision (the hazard)."""
    resolved = []
    for target in targets:
        entry: Json = {}
        if target.get("tag"):
            entry["tag"] = target["tag"]
        entry["revisionName"] = latest_ready if target.get("latestRevision") else target["revisionName"]
        entry["latestRevision"] = bool(target.get("latestRevision"))
        entry["percent"] = int(target["percent"])
        if target.get("tag"):
            entry["url"] = url(str(target["tag"]))
        resolved.append(entry)
    return resolved


def propagate_rollout(
    rolled: str, previous: str, latest_created: str, latest_ready: str, traffic: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    """KServe's `PropagateStatus` bookkeeping of `latestRolledoutRevision`/`previousRolledoutRevision`."""
    per_revision: dict[str, int] = {}
    for t in traffic:
        per_revision[str(t["revisionName"])] = per_revision.get(str(t["revisionName"]), 0) + int(t["percent"])
    for t in traffic:
        if t["revisionName"] != latest_ready or not t.get("latestRevision"):
            continue
        if rolled != latest_ready:
            if int(t["percent"]) == 100:
                previous, rolled = rolled, latest_ready
        elif (
            latest_ready == latest_created
            and int(t["percent"]) < 100
            and per_revision.get(str(t["revisionName"])) == 100
            and previous
        ):
            # "rolled out with 100 % and then rolled back": back to the revision rolled out before it
            rolled = previous
    return rolled, previous


def _knative_component(
    isvc: Mapping[str, Any],
    component: str,
    revisions: Sequence[RevisionRecord],
    old: Mapping[str, Any],
    memo: ChildMemo,
    behaviour: Behaviour,
    now: datetime,
    options: Options,
) -> _ComponentResult:
    meta = isvc.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    annotations = meta.get("annotations") or {}
    spec = (isvc.get("spec") or {}).get(component) or {}
    percent = _percent(spec)
    rolled = str(old.get("latestRolledoutRevision") or "")
    previous = str(old.get("previousRolledoutRevision") or "")
    tags = {
        "tag_routing": str(annotations.get(TAG_ROUTING_ANNOTATION, "")) == "true",
        "tag_in_split": options.tag_latest_in_split,
    }
    revs = sorted(revisions, key=lambda r: r.number)

    if (rejection := knative_rejection(traffic_targets(percent, rolled, **tags))) is not None:
        return _ComponentResult(dict(old), None, memo, error=rejection)

    identity = template_identity(isvc, component)
    digest = stable_hash(identity)
    created = _next_revision(revs, f"{name}-{component}", component, digest, identity["spec"], behaviour, now)

    latest = revs[-1]
    ready_revs = [r for r in revs if r.readiness.status == "True"]
    latest_ready = ready_revs[-1].name if ready_revs else ""
    config_name = f"{name}-{component}"

    def tag_url(tag: str) -> str:
        return _host(name, component, namespace, options.domain, tag)

    # One KServe reconcile: write the Knative Service, read back how Knative resolved its traffic.
    targets = traffic_targets(percent, rolled, **tags)
    memo = _bump(memo, stable_hash([digest, targets]))
    traffic = resolve_traffic(targets, latest_ready, tag_url) if latest_ready else None
    if traffic is not None:
        rolled, previous = propagate_rollout(rolled, previous, latest.name, latest_ready, traffic)

    ready, routes, configurations = ksvc_readiness(latest, latest_ready, config_name, now)
    view = _KsvcView(latest.name, latest_ready, traffic, ready, routes, configurations)

    status = dict(old)
    status["latestCreatedRevision"] = latest.name
    for key, value in (
        ("latestReadyRevision", latest_ready),
        ("latestRolledoutRevision", rolled),
        ("previousRolledoutRevision", previous),
    ):
        if value:
            status[key] = value
        else:
            status.pop(key, None)
    if traffic is not None:
        status["traffic"] = traffic
    else:
        status.pop("traffic", None)
    if view.ready.status == "True":
        status["url"] = _host(name, component, namespace, options.domain)
        status["address"] = {"url": f"http://{name}-{component}.{namespace}.svc.cluster.local"}
    return _ComponentResult(status, view, memo, created)


def _next_revision(revs: list[RevisionRecord], config: str, component: str, digest: str, spec: Json,
                   behaviour: Behaviour, now: datetime, endpoint: str = "") -> tuple[RevisionRecord, ...]:
    """A new revision (appended to `revs`) when the template changed, as Knative's Configuration makes one."""
    if revs and revs[-1].template_hash == digest:
        return ()
    number = revs[-1].number + 1 if revs else 1
    fresh = RevisionRecord(name=f"{config}-{number:05d}", component=component, number=number, template_hash=digest,
                           storage_uri=storage_uri_of(spec), created_at=now, spec=spec, endpoint=endpoint)
    fresh = replace(fresh, readiness=revision_readiness(fresh, behaviour(fresh.storage_uri), now))
    revs.append(fresh)
    return (fresh,)


def ksvc_readiness(
    latest: RevisionRecord, latest_ready: str, config_name: str, now: datetime
) -> tuple[Readiness, Readiness, Readiness]:
    """A Knative Service's `Ready`, `RoutesReady` and `ConfigurationsReady` from its newest revisions."""
    if latest_ready == latest.name:
        configurations = Readiness("True")
    elif latest.readiness.status == "False":
        configurations = Readiness(
            "False", "RevisionFailed", f'Revision "{latest.name}" failed with message: {latest.readiness.message}.'
        )
    else:
        configurations = Readiness("Unknown")
    if latest_ready:
        routes = Readiness("True")
    elif latest.readiness.status == "False":
        routes = Readiness(
            "False", "RevisionMissing", f'Configuration "{config_name}" does not have any ready Revision.'
        )
    else:
        routes = Readiness(
            "Unknown", "RevisionMissing", f'Configuration "{config_name}" is waiting for a Revision to become ready.'
        )
    ksvc = Conditions([], "Ready", _KSVC_DEPENDENTS, now)
    ksvc.apply("ConfigurationsReady", configurations)
    ksvc.apply("RoutesReady", routes)
    return ksvc.readiness("Ready"), routes, configurations


def _bump(memo: ChildMemo, fingerprint: str) -> ChildMemo:
    """The child's generation after writing a spec with this fingerprint (unchanged spec: no bump)."""
    if memo.fingerprint == fingerprint:
        return memo
    if memo.fingerprint == _ADOPT:
        return replace(memo, fingerprint=fingerprint)
    return replace(memo, fingerprint=fingerprint, generation=memo.generation + 1)


def _next_due(revs: Iterable[RevisionRecord], behaviour: Behaviour, now: datetime) -> float | None:
    dues = [d for r in revs if (d := _seconds_until_due(r, behaviour(r.storage_uri), now)) is not None]
    return min(dues) if dues else None


# ---------------------------------------------------------------------------------------------------------
# The InferenceService as a whole
# ---------------------------------------------------------------------------------------------------------


def reconcile_v1beta1(
    isvc: Mapping[str, Any],
    revisions: Iterable[RevisionRecord],
    behaviour: Behaviour,
    now: datetime,
    memos: Mapping[str, ChildMemo] | None = None,
    options: Options = Options(),
) -> Outcome:
    """One KServe reconcile of a `serving.kserve.io/v1beta1` InferenceService, run to its fixed point.

    `revisions` are the component revisions in the API, `memos` what the previous call returned (or
    nothing after a restart: it is then rebuilt from the status). The outcome says which revisions to
    create, whose readiness to write, the status to write, and when to look again.
    """
    mode = deployment_mode(isvc)
    old_status: Json = copy.deepcopy(isvc.get("status") or {})
    spec = isvc.get("spec") or {}
    present = [c for c in COMPONENTS if isinstance(spec.get(c), dict)]
    memos = {c: (memos or {}).get(c) or _restored_memo(old_status, c) for c in present}
    if mode == "ModelMesh":  # not emulated: KServe leaves such services to the ModelMesh controller
        return Outcome({**old_status, "deploymentMode": "ModelMesh"}, memos=memos)
    if mode == "Standard":
        return _reconcile_standard(isvc, present, old_status, memos, behaviour, now, options)
    # Knative moves its revisions along whatever KServe manages to write.
    advanced, changed = [], []
    for rev in revisions:
        ready = revision_readiness(rev, behaviour(rev.storage_uri), now)
        advanced.append(replace(rev, readiness=ready))
        if ready != rev.readiness:
            changed.append(advanced[-1])
    # KServe gets there over several reconciles (each status change triggers one): jump to the fixed point.
    created: list[RevisionRecord] = []
    status = old_status
    for _ in range(_MAX_PASSES):
        current = {**isvc, "status": status}
        outcome = _reconcile_knative(current, present, [*advanced, *created], status, memos, behaviour, now, options)
        created.extend(outcome.create)
        memos = dict(outcome.memos)
        if outcome.status == status:
            break
        status = outcome.status
    requeue = _next_due([*advanced, *created], behaviour, now)
    return Outcome(status, tuple(created), tuple(changed), memos, requeue)


def _restored_memo(old_status: Mapping[str, Any], component: str) -> ChildMemo:
    """After a restart: adopt the child as the status describes it, without counting a change."""
    entry = (old_status.get("components") or {}).get(component)
    if not isinstance(entry, dict):
        return ChildMemo()
    return ChildMemo(
        fingerprint=_ADOPT, generation=int(old_status.get("observedGeneration") or 1), ready=bool(entry.get("url"))
    )


def _reconcile_knative(
    isvc: Mapping[str, Any],
    present: Sequence[str],
    revisions: Sequence[RevisionRecord],
    old_status: Json,
    memos: dict[str, ChildMemo],
    behaviour: Behaviour,
    now: datetime,
    options: Options,
) -> Outcome:
    status = copy.deepcopy(old_status)
    status["deploymentMode"] = "Knative"
    components: Json = status.setdefault("components", {})
    conds = Conditions(status.get("conditions") or [], "Ready", _ISVC_DEPENDENTS, now)
    created: list[RevisionRecord] = []
    failed = False
    for component in present:
        result = _knative_component(
            isvc,
            component,
            [r for r in revisions if r.component == component],
            components.get(component) or {},
            memos[component],
            behaviour,
            now,
            options,
        )
        if result.error is not None:  # KServe: PropagateRawStatusWithMessages, then stop reconciling
            conds.mark_false(_READY_COND[component], "ReconcileFailed", result.error)
            failed = True
            break
        assert result.view is not None
        created.extend(result.create)
        memos[component] = result.memo
        components[component] = result.status
        conds.apply(_READY_COND[component], result.view.ready)
        conds.apply(_ROUTE_COND[component], result.view.routes)
        conds.apply(_CONFIG_COND[component], result.view.configurations)
        if options.observed_generation == "knative":
            status["observedGeneration"] = result.memo.generation
    if not failed:
        if not conds.get("Stopped"):
            conds.mark_false("Stopped")
        for aggregate, per_component in (("RoutesReady", _ROUTE_COND), ("LatestDeploymentReady", _CONFIG_COND)):
            _cross_component(conds, aggregate, [per_component[c] for c in present])
        _ingress(isvc, present, status, conds, options)
        predictor_revs = [r for r in [*revisions, *created] if r.component == "predictor"]
        status["modelStatus"] = _model_status(status, conds, predictor_revs)
    if options.observed_generation == "own":
        status["observedGeneration"] = int((isvc.get("metadata") or {}).get("generation") or 1)
    status["conditions"] = conds.finish()
    if not components:
        status.pop("components")
    return Outcome(status, tuple(created), memos=memos)


def _cross_component(conds: Conditions, aggregate: str, kinds: Sequence[str]) -> None:
    """KServe's `PropagateCrossComponentStatus` (RoutesReady, LatestDeploymentReady)."""
    result = Readiness("True")
    for kind in kinds:
        if conds.status(kind) != "True" or conds.get(kind) is None:
            unknown = conds.get(kind) is None or conds.status(kind) == "Unknown"
            result = Readiness("Unknown" if unknown else "False", f"{kind} not ready")
    conds.apply(aggregate, result)


def _ingress(
    isvc: Mapping[str, Any], present: Sequence[str], status: Json, conds: Conditions, options: Options
) -> None:
    """KServe's ingress reconciler: the service URL exists once the entry component has had a URL."""
    meta = isvc.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    entry = "transformer" if "transformer" in present else "predictor"
    components = status.get("components") or {}
    if (components.get(entry) or {}).get("url"):
        status["url"] = f"http://{name}.{namespace}.{options.domain}"
        status["address"] = {"url": f"http://{name}.{namespace}.svc.cluster.local"}
        conds.mark_true("IngressReady")
        return
    for component in ("predictor", "transformer", "explainer"):
        kind = _READY_COND[component]
        if component in present and conds.status(kind) != "True":
            state: Status = "Unknown" if conds.status(kind) == "Unknown" else "False"
            conds.apply("IngressReady", Readiness(state, f"{component.capitalize()} ingress not created"))
            return


def _model_status(status: Json, conds: Conditions, predictor_revs: Sequence[RevisionRecord]) -> Json:
    """A coarse `status.modelStatus` (KServe derives it from the predictor's pods)."""
    old = status.get("modelStatus") or {}
    active = str((old.get("states") or {}).get("activeModelState") or "Pending")
    pred = (status.get("components") or {}).get("predictor") or {}
    newest = max(predictor_revs, key=lambda r: r.number, default=None)
    result: Json = {}
    if conds.status("Ready") == "True" and pred.get("latestCreatedRevision") == pred.get("latestReadyRevision"):
        target, transition, active = "Loaded", "UpToDate", "Loaded"
    elif conds.status(_CONFIG_COND["predictor"]) == "False":
        target, transition = "FailedToLoad", "BlockedByFailedLoad"
        reason = conds.readiness(_CONFIG_COND["predictor"]).message
        result["lastFailureInfo"] = {
            "reason": "ModelLoadFailed",
            "message": reason,
            "modelRevisionName": newest.name if newest else "",
        }
    else:
        target, transition = "Pending", "InProgress"
    result["transitionStatus"] = transition
    result["states"] = {"activeModelState": active, "targetModelState": target}
    return result


def _reconcile_standard(
    isvc: Mapping[str, Any],
    present: Sequence[str],
    old_status: Json,
    memos: dict[str, ChildMemo],
    behaviour: Behaviour,
    now: datetime,
    options: Options,
) -> Outcome:
    """RawDeployment/Standard mode: one Deployment per component, no revisions, no traffic split.

    `canaryTrafficPercent` is ignored. A component is Ready once its first Deployment is available
    (a rolling update keeps the old pods serving, so later changes keep it Ready).
    """
    meta = isvc.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    status = copy.deepcopy(old_status)
    status["deploymentMode"] = "Standard"
    components: Json = status.setdefault("components", {})
    conds = Conditions(status.get("conditions") or [], "Ready", _ISVC_DEPENDENTS, now)
    requeue: float | None = None
    for component in present:
        spec = (isvc.get("spec") or {}).get(component) or {}
        memo = memos.get(component, ChildMemo())
        memo = _bump(memo, stable_hash(template_identity(isvc, component)))
        if memo.first_seen is None:
            memo = replace(memo, first_seen=now)
        assert memo.first_seen is not None
        conduct = behaviour(storage_uri_of(spec))
        due = memo.first_seen + timedelta(seconds=conduct.ready_after_s)
        if not memo.ready and not conduct.never_ready:
            if now >= due:
                memo = replace(memo, ready=True)
            else:
                wait = (due - now).total_seconds()
                requeue = wait if requeue is None else min(requeue, wait)
        memos[component] = memo
        entry = dict(components.get(component) or {})
        if memo.ready:
            entry["url"] = f"http://{name}-{component}-{namespace}.{options.domain}"
            conds.mark_true(_READY_COND[component], "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            conds.mark_false(
                _READY_COND[component], "MinimumReplicasUnavailable", "Deployment does not have minimum availability."
            )
        components[component] = entry
        if options.observed_generation == "knative":
            status["observedGeneration"] = memo.generation
    if not conds.get("Stopped"):
        conds.mark_false("Stopped")
    entry_component = "transformer" if "transformer" in present else "predictor"
    if (components.get(entry_component) or {}).get("url"):
        status["url"] = f"http://{name}-{namespace}.{options.domain}"
        status["address"] = {"url": f"http://{name}-{entry_component}.{namespace}.svc.cluster.local"}
        conds.mark_true("IngressReady")
    if options.observed_generation == "own":
        status["observedGeneration"] = int(meta.get("generation") or 1)
    status["conditions"] = conds.finish()
    if not components:
        status.pop("components")
    return Outcome(status, memos=memos, requeue_after=requeue)


# ---------------------------------------------------------------------------------------------------------
# KFServing v0.4: serving.kubeflow.org/v1alpha2
# ---------------------------------------------------------------------------------------------------------

#: KFServing's living condition set: Ready follows the default predictor and the routes only; the canary's
#: readiness is reported (severity Info) but never makes the service unready.
_V1ALPHA2_DEPENDENTS = ("DefaultPredictorReady", "RoutesReady")


def endpoint_condition(endpoint: str, component: str) -> str:
    """`DefaultPredictorReady`, `CanaryTransformerReady`, ... (KFServing's per-endpoint conditions)."""
    return f"{endpoint.capitalize()}{component.capitalize()}Ready"


def endpoint_config(isvc: str, component: str, endpoint: str) -> str:
    """The Knative Service (and Configuration) KFServing makes per endpoint: `iris-predictor-default`."""
    return f"{isvc}-{component}-{endpoint}"


def endpoint_identity(isvc: Mapping[str, Any], endpoint: str, component: str) -> Json:
    """What goes into the revision template of one endpoint's component (KFServing copies the service's
    labels and annotations into both endpoints' templates)."""
    meta = isvc.get("metadata") or {}
    spec = dict(((isvc.get("spec") or {}).get(endpoint) or {}).get(component) or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in LABEL_DISALLOWED}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in ANNOTATION_DISALLOWED}
    return {"spec": spec, "labels": labels, "annotations": annotations}


@dataclass(frozen=True)
class _EndpointKsvc:
    latest: RevisionRecord
    ready: Readiness  # the Knative Service's Ready condition
    create: tuple[RevisionRecord, ...] = ()


def _endpoint_ksvc(
    isvc: Mapping[str, Any],
    endpoint: str,
    component: str,
    revisions: Sequence[RevisionRecord],
    behaviour: Behaviour,
    now: datetime,
) -> _EndpointKsvc:
    """One endpoint's Knative Service: a new revision when its template changed, and its Ready condition."""
    name = str((isvc.get("metadata") or {}).get("name"))
    config = endpoint_config(name, component, endpoint)
    identity = endpoint_identity(isvc, endpoint, component)
    digest = stable_hash(identity)
    revs = sorted(revisions, key=lambda r: r.number)
    # Knative names a revision after its Configuration's generation: a Knative Service deleted and made
    # again (a canary dropped, then a new one) starts over at 00001.
    created = _next_revision(revs, config, component, digest, identity["spec"], behaviour, now, endpoint)
    latest = revs[-1]
    ready_revs = [r for r in revs if r.readiness.status == "True"]
    ready, _, _ = ksvc_readiness(latest, ready_revs[-1].name if ready_revs else "", config, now)
    return _EndpointKsvc(latest, ready, created)


def reconcile_v1alpha2(
    isvc: Mapping[str, Any],
    revisions: Iterable[RevisionRecord],
    behaviour: Behaviour,
    now: datetime,
    memos: Mapping[str, ChildMemo] | None = None,
    options: Options = Options(),
) -> Outcome:
    """One KFServing 0.4 reconcile of a `serving.kubeflow.org/v1alpha2` InferenceService.

    Per endpoint and component a Knative Service whose `status.{default,canary}.<component>` entry is
    `{name: latestCreatedRevision, host}` (the host only while that Knative Service is Ready), a Knative
    Service of an endpoint or component no longer in the spec is deleted with its revisions, and an Istio
    VirtualService sends `100 - canaryTrafficPercent` to the default host and the percent to the canary
    host (`status.traffic`, `status.canaryTraffic`). Each host serves its Knative Service's newest Ready
    revision. The VirtualService needs every endpoint in the spec to have a host; until then KFServing
    keeps the VirtualService it had and marks `RoutesReady` False.

    One deliberate difference: KFServing 0.4 then also blanks `status.traffic`, `canaryTraffic` and `url`
    (its `PropagateRouteStatus` copies the failed build's zero weights), while the routes really in force
    stay as they were. The emulator keeps showing the routes in force, because the sandbox data plane
    routes by this status. KFServing 0.4 does not write `status.observedGeneration`, and neither does this.
    """
    del memos  # nothing beyond the API objects: the routes in force are in the status (see above)
    meta = isvc.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    spec = isvc.get("spec") or {}
    old_status: Json = copy.deepcopy(isvc.get("status") or {})
    advanced, changed = [], []
    for rev in revisions:
        ready = revision_readiness(rev, behaviour(rev.storage_uri), now)
        advanced.append(replace(rev, readiness=ready))
        if ready != rev.readiness:
            changed.append(advanced[-1])

    status = copy.deepcopy(old_status)
    conds = Conditions(status.get("conditions") or [], "Ready", _V1ALPHA2_DEPENDENTS, now)
    created: list[RevisionRecord] = []
    gone: list[RevisionRecord] = []
    for endpoint in ENDPOINTS:
        endpoint_spec = spec.get(endpoint)
        entries: Json = dict(status.get(endpoint) or {})
        for component in COMPONENTS:
            revs = [r for r in advanced if r.endpoint == endpoint and r.component == component]
            part = endpoint_spec.get(component) if isinstance(endpoint_spec, Mapping) else None
            if not isinstance(part, Mapping):  # finalizeService + Propagate{Default,Canary}Status(nil)
                gone.extend(revs)
                entries.pop(component, None)
                conds.clear(endpoint_condition(endpoint, component))
                continue
            ksvc = _endpoint_ksvc(isvc, endpoint, component, revs, behaviour, now)
            created.extend(ksvc.create)
            entry: Json = {"name": ksvc.latest.name}
            conds.apply(endpoint_condition(endpoint, component), ksvc.ready)
            if ksvc.ready.status == "True":
                entry["host"] = f"{endpoint_config(name, component, endpoint)}.{namespace}.{options.domain}"
            entries[component] = entry
        status[endpoint] = entries
    _virtual_service(name, namespace, spec, status, conds, options)
    status["conditions"] = conds.finish()
    gone_names = {r.name for r in gone}
    requeue = _next_due([r for r in [*advanced, *created] if r.name not in gone_names], behaviour, now)
    return Outcome(
        status,
        tuple(created),
        tuple(r for r in changed if r.name not in gone_names),
        requeue_after=requeue,
        delete=tuple(gone),
    )


def _virtual_service(
    name: str, namespace: str, spec: Mapping[str, Any], status: Json, conds: Conditions, options: Options
) -> None:
    """KFServing's `CreateVirtualService` + `PropagateRouteStatus` for the predict route."""
    percent = _percent(spec) or 0
    for endpoint in ENDPOINTS:
        if endpoint == "canary" and not isinstance(spec.get("canary"), Mapping):
            continue
        # the entry component serves the endpoint's route: the transformer if there is one
        endpoint_spec = spec.get(endpoint) or {}
        component = "transformer" if isinstance(endpoint_spec.get("transformer"), Mapping) else "predictor"
        entry = (status.get(endpoint) or {}).get(component)
        if not isinstance(endpoint_spec.get(component), Mapping):
            reason = f"{component}SpecMissing"
        elif not isinstance(entry, Mapping):
            reason = f"{component}StatusUnknown"
        elif not entry.get("host"):
            reason = f"{component}HostnameUnknown"
        else:
            continue
        conds.mark_false("RoutesReady", reason, f"Failed to reconcile {component}")
        return  # the VirtualService in force stays; so does the status that describes it (see above)
    status["url"] = f"http://{name}.{namespace}.{options.domain}/v1/models/{name}"
    for key, weight in (("traffic", 100 - percent), ("canaryTraffic", percent)):
        if weight:
            status[key] = weight
        else:
            status.pop(key, None)  # `json:",omitempty"`
    conds.mark_true("RoutesReady")


# ---------------------------------------------------------------------------------------------------------
# Revision objects in the API
# ---------------------------------------------------------------------------------------------------------


def revision_object(isvc: Mapping[str, Any], rev: RevisionRecord) -> Json:
    """The `serving.knative.dev/v1` Revision the emulator creates (status is written separately)."""
    meta = isvc.get("metadata") or {}
    name = str(meta.get("name"))
    annotations = {TEMPLATE_HASH_ANNOTATION: rev.template_hash, CREATED_AT_ANNOTATION: precise_time(rev.created_at)}
    if rev.storage_uri is not None:
        annotations[STORAGE_URI_ANNOTATION] = rev.storage_uri
    if rev.endpoint:  # KFServing v1alpha2: one Knative Service per endpoint
        config = endpoint_config(name, rev.component, rev.endpoint)
        labels = {KFS_ISVC_LABEL: name, COMPONENT_LABEL: rev.component, ENDPOINT_LABEL: rev.endpoint}
        owner_api = f"{KFS_GROUP}/{KFS_VERSION}"
    else:
        config = f"{name}-{rev.component}"
        labels = {ISVC_LABEL: name, COMPONENT_LABEL: rev.component}
        owner_api = f"{ISVC_GROUP}/{ISVC_VERSION}"
    obj: Json = {
        "apiVersion": f"{REVISION_GROUP}/{REVISION_VERSION}",
        "kind": "Revision",
        "metadata": {
            "name": rev.name,
            "namespace": meta.get("namespace"),
            "labels": {**labels, CONFIGURATION_LABEL: config, SERVICE_LABEL: config},
            "annotations": annotations,
        },
        "spec": copy.deepcopy(rev.spec),
    }
    if meta.get("uid"):
        obj["metadata"]["ownerReferences"] = [
            {
                "apiVersion": owner_api,
                "kind": "InferenceService",
                "name": name,
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return obj


def revision_status(rev: RevisionRecord, now: datetime, old: Mapping[str, Any] | None = None) -> Json:
    conds = Conditions((old or {}).get("conditions") or [], "Ready", (), now)
    conds.apply("Ready", rev.readiness)
    return {"conditions": conds.finish(), "observedGeneration": 1}


def parse_revision(obj: Mapping[str, Any]) -> RevisionRecord | None:
    """A Revision object read back from the API (None if it is not one of the emulator's)."""
    meta = obj.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    name, component = meta.get("name"), labels.get(COMPONENT_LABEL)
    if not isinstance(name, str) or component not in COMPONENTS:
        return None
    try:
        number = int(name.rsplit("-", 1)[-1])
    except ValueError:
        return None
    created = parse_time(annotations.get(CREATED_AT_ANNOTATION)) or parse_time(meta.get("creationTimestamp"))
    ready: Json = next(
        (
            c
            for c in (obj.get("status") or {}).get("conditions") or []
            if isinstance(c, dict) and c.get("type") == "Ready"
        ),
        {},
    )
    state = str(ready.get("status", "Unknown"))
    uri = annotations.get(STORAGE_URI_ANNOTATION)
    endpoint = labels.get(ENDPOINT_LABEL)
    return RevisionRecord(
        name=name,
        component=str(component),
        number=number,
        template_hash=str(annotations.get(TEMPLATE_HASH_ANNOTATION, "")),
        storage_uri=uri if isinstance(uri, str) else None,
        created_at=created or datetime.now(UTC),
        readiness=Readiness(
            "True" if state == "True" else "False" if state == "False" else "Unknown",
            str(ready.get("reason", "")),
            str(ready.get("message", "")),
        ),
        spec=dict(obj.get("spec") or {}),
        endpoint=str(endpoint) if endpoint in ENDPOINTS else "",
    )
