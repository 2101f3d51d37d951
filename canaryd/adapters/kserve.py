"""Read and write InferenceServices: the only place that knows KServe's object shapes (DESIGN §5).

Each InferenceService API version is a small `ServiceApi` strategy (how to parse the status, which patch
sets, promotes or rolls back a canary) in the `STRATEGIES` registry; the adapter only does the HTTP.
KServe's v1beta1 splits traffic per component with `canaryTrafficPercent`; KFServing's v1alpha2 keeps the
new version in `spec.canary` beside the stable `spec.default`, and its promotion takes several writes,
each decided from the live object (see `V1Alpha2`).

Writes are JSON merge patches (`application/merge-patch+json`, set explicitly rather than trusting the
client's default), built by the pure `canaryd.apply`. They are absolute (a whole spec, a percent, a removed
field) and therefore idempotent: a write whose answer was lost (a 5xx, a timeout) is simply sent again by
`kube.call`'s retries, and a repeat converges to the same object. Services in RawDeployment mode are
refused before anything is written: KServe ignores `canaryTrafficPercent` there, so a "canary" would
silently be a full rollout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client

from canaryd.adapters.isvc_cache import InferenceServiceCache
from canaryd.adapters.kube import DEFAULT_RETRY, REQUEST_TIMEOUT, KubeError, NotFound, RetryPolicy, call
from canaryd.apply import (
    V1ALPHA2,
    V1BETA1,
    canary_percent,
    check_percent,
    merge_patch,
    replacing_patch,
    subset_matches,
    with_canary_percent,
)
from canaryd.rollout.model import (
    PERCENT_FIELD,
    ApplySpec,
    ComponentStatus,
    Condition,
    LiveService,
    TrafficTarget,
)

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_RAW_MODES = frozenset({"rawdeployment", "standard"})


class UnsupportedService(KubeError):
    """The service cannot be rolled out by canaryd (RawDeployment mode, unknown API version)."""


class ServiceApi(Protocol):
    """What differs between InferenceService API versions.

    Patches are JSON merge patches; `live` is the object as just read. `apply_patch` and `promote_patch`
    may answer None: nothing to write now (the live object must move first); the caller asks again on its
    next tick.
    """

    group: str
    version: str
    plural: str
    api_version: str

    def parse(self, obj: Mapping[str, Any], component: str) -> LiveService: ...

    def create_body(self, manifest: Mapping[str, Any], component: str, percent: int | None) -> dict[str, Any]: ...

    def apply_patch(self, last_applied: Mapping[str, Any] | None, manifest: Mapping[str, Any], component: str,
                    percent: int | None, live: Mapping[str, Any]) -> dict[str, Any] | None: ...

    def traffic_patch(self, component: str, percent: int) -> dict[str, Any]: ...

    def promote_patch(self, component: str, live: Mapping[str, Any]) -> dict[str, Any] | None: ...

    def rollback_patch(self, component: str) -> dict[str, Any]: ...


class V1Beta1:
    """`serving.kserve.io/v1beta1`: `spec.<component>.canaryTrafficPercent`, per-component status."""

    group = "serving.kserve.io"
    version = "v1beta1"
    plural = "inferenceservices"
    api_version = V1BETA1

    def parse(self, obj: Mapping[str, Any], component: str) -> LiveService:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        manifest = _manifest(obj)
        return LiveService(
            api_version=str(obj.get("apiVersion") or self.api_version),
            generation=int(meta.get("generation") or 0),
            observed_generation=_int_or_none(status.get("observedGeneration")),
            manifest=manifest,
            canary_percent=canary_percent(manifest, component, self.api_version),
            deployment_mode=_deployment_mode(obj),
            components={
                str(name): _component_status(comp)
                for name, comp in (status.get("components") or {}).items()
                if isinstance(comp, Mapping)
            },
            conditions=_conditions(status.get("conditions") or []),
        )

    def create_body(self, manifest: Mapping[str, Any], component: str, percent: int | None) -> dict[str, Any]:
        body = _manifest(manifest, with_uid=False)
        body["apiVersion"] = self.api_version
        if percent is not None:
            body = with_canary_percent(body, component, percent, self.api_version)
        return body

    def apply_patch(self, last_applied: Mapping[str, Any] | None, manifest: Mapping[str, Any], component: str,
                    percent: int | None, live: Mapping[str, Any]) -> dict[str, Any]:
        patch = merge_patch(last_applied, manifest)
        if percent is not None:
            patch = with_canary_percent(patch, component, percent, self.api_version)
        return patch

    def traffic_patch(self, component: str, percent: int) -> dict[str, Any]:
        return with_canary_percent({}, component, check_percent(percent), self.api_version)

    def promote_patch(self, component: str, live: Mapping[str, Any]) -> dict[str, Any]:
        # The documented promotion: drop the field (100 would route the same, but pins the service).
        return with_canary_percent({}, component, None, self.api_version)

    def rollback_patch(self, component: str) -> dict[str, Any]:
        # 0 % keeps the new spec in place and sends everything to the `prev` revision.
        return with_canary_percent({}, component, 0, self.api_version)


class V1Alpha2:
    """KFServing's `serving.kubeflow.org/v1alpha2`: `spec.default` serves, `spec.canary` is the new version
    and `spec.canaryTrafficPercent` its share of the whole service (all components move together).

    To the engine it looks like v1beta1 (`parse`): the manifest shows the new version as `spec.default`
    (what Git says), the component's newest revision is the canary's once it exists, the rolled-out one
    the default's. Writes keep KServe's hazard in mind (DESIGN §5): a canary spec is swapped only once its
    old version has no traffic left, and the promotion moves traffic before it moves specs:

    1. percent 100, and wait until the routes give the canary 100 % (`status.canaryTraffic`);
    2. copy the canary into the default (the default's Knative Service makes a new revision, which gets
       no traffic: the default's share is 0);
    3. wait until `DefaultPredictorReady` is True for the revision made by step 2;
    4. drop `spec.canary` and the percent: the default now serves the new version at 100 %.

    Step 3 needs to know the default revision before the copy: this object remembers it per service (a
    promotion runs in one daemon). After a restart in between, it accepts the default's readiness once it
    turned True after the canary's did, or once it stayed unchanged for `settle_s` (KFServing 0.4 writes
    no `observedGeneration`, so a stale status cannot be told apart otherwise).
    """

    group = "serving.kubeflow.org"
    version = "v1alpha2"
    plural = "inferenceservices"
    api_version = V1ALPHA2

    def __init__(self, clock: Callable[[], float] = time.monotonic, settle_s: float = 10.0) -> None:
        self._clock = clock
        self._settle_s = settle_s
        self._lock = threading.Lock()
        self._promotions: dict[str, _Promotion] = {}  # uid -> what step 2 saw

    # -- reading -------------------------------------------------------------------------------------
    def parse(self, obj: Mapping[str, Any], component: str) -> LiveService:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        manifest = _manifest(obj)
        spec = dict(manifest["spec"])
        canary = spec.pop("canary", None)
        if isinstance(canary, Mapping):
            spec["default"] = canary  # the version being rolled out is what Git's spec.default says
        manifest["spec"] = spec
        conditions = _conditions(status.get("conditions") or [])
        names = {
            str(name)
            for endpoint in ("default", "canary")
            for name in (status.get(endpoint) or {})
            if isinstance(status.get(endpoint), Mapping)
        }
        components = {
            name: _v1alpha2_component(status, conditions, name, isinstance(canary, Mapping)) for name in sorted(names)
        }
        # The engine's deadline message reads the newest deployment's condition: the canary's, if any.
        newest = _v1alpha2_condition("canary" if isinstance(canary, Mapping) else "default", component)
        if newest in conditions:
            conditions["LatestDeploymentReady"] = conditions[newest]
        return LiveService(
            api_version=str(obj.get("apiVersion") or self.api_version),
            generation=int(meta.get("generation") or 0),
            observed_generation=_int_or_none(status.get("observedGeneration")),
            manifest=manifest,
            canary_percent=_v1alpha2_percent(obj.get("spec") or {}),
            deployment_mode=None,
            components=components,
            conditions=conditions,
        )

    # -- writing -------------------------------------------------------------------------------------
    def create_body(self, manifest: Mapping[str, Any], component: str, percent: int | None) -> dict[str, Any]:
        if percent:
            raise ValueError("a new v1alpha2 InferenceService has no canary: it cannot be created with a percent")
        body = _manifest(manifest, with_uid=False)
        body["apiVersion"] = self.api_version
        return body

    def apply_patch(self, last_applied: Mapping[str, Any] | None, manifest: Mapping[str, Any], component: str,
                    percent: int | None, live: Mapping[str, Any]) -> dict[str, Any] | None:
        """The new version becomes `spec.canary` (at `percent`); `spec.default` keeps serving as it is.

        A canary of another version that still has traffic first gets 0 %: while its Knative Service
        deploys the new revision, KFServing keeps its old routes, so the old canary would keep its share.
        """
        if percent is not None:
            check_percent(percent)
        want = (manifest.get("spec") or {}).get("default")
        if not isinstance(want, Mapping):
            raise ValueError("a v1alpha2 manifest needs spec.default")
        spec = live.get("spec") or {}
        status = live.get("status") or {}
        current = spec.get("canary")
        other = isinstance(current, Mapping) and not subset_matches({"spec": want}, {"spec": current})
        if other and ((_v1alpha2_percent(spec) or 0) > 0 or _int(status.get("canaryTraffic")) > 0):
            if (_v1alpha2_percent(spec) or 0) > 0:
                return {"spec": {PERCENT_FIELD: 0}}
            return None  # 0 % is written; wait until the routes show it
        patch = merge_patch(last_applied, manifest)
        patch.pop("spec", None)  # only metadata from the manifest itself: the spec goes into the canary
        canary = replacing_patch(current if isinstance(current, Mapping) else None, want)
        patch["spec"] = {"canary": canary, PERCENT_FIELD: percent}
        if percent is None:
            del patch["spec"][PERCENT_FIELD]
        return patch

    def traffic_patch(self, component: str, percent: int) -> dict[str, Any]:
        return {"spec": {PERCENT_FIELD: check_percent(percent)}}

    def promote_patch(self, component: str, live: Mapping[str, Any]) -> dict[str, Any] | None:
        spec = live.get("spec") or {}
        status = live.get("status") or {}
        uid = str((live.get("metadata") or {}).get("uid") or "")
        canary = spec.get("canary")
        if not isinstance(canary, Mapping):
            self._forget(uid)
            # Nothing to promote; a stray percent (someone's edit) is all that can be left over.
            return {"spec": {PERCENT_FIELD: None}} if PERCENT_FIELD in spec else None
        if _v1alpha2_percent(spec) != 100:
            return {"spec": {PERCENT_FIELD: 100}}
        if _int(status.get("canaryTraffic")) != 100:
            return None  # step 1 not in force yet
        default = spec.get("default")
        if default != canary:
            before = _entry(status, "default", _entry_component(spec, "default")).get("name")
            with self._lock:
                self._promotions[uid] = _Promotion(str(before) if before else None, self._clock())
            return {"spec": {"default": replacing_patch(default if isinstance(default, Mapping) else None, canary)}}
        if not self._default_serves_copy(uid, spec, status):
            return None
        self._forget(uid)
        return {"spec": {"canary": None, PERCENT_FIELD: None}}

    def rollback_patch(self, component: str) -> dict[str, Any]:
        # Everything back to spec.default; KFServing deletes the canary's Knative Service.
        return {"spec": {"canary": None, PERCENT_FIELD: None}}

    def _default_serves_copy(self, uid: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        """Step 3: the default's newest revision, the one step 2 made, is Ready."""
        component = _entry_component(spec, "default")
        entry = _entry(status, "default", component)
        conditions = _conditions(status.get("conditions") or [])
        ready = conditions.get(_v1alpha2_condition("default", component))
        if ready is None or ready.status != "True" or not entry.get("host") or not entry.get("name"):
            return False
        with self._lock:
            seen = self._promotions.get(uid)
            if seen is None:  # a restart since step 2: watch from here
                seen = self._promotions[uid] = _Promotion(None, self._clock(), str(entry["name"]))
        name = str(entry["name"])
        if seen.before is not None:
            return name != seen.before
        # The default was Ready before the canary existed: Ready again after the canary means the copy.
        if _later(_transition_time(status, "default", component), _transition_time(status, "canary", component)):
            return True
        if seen.first_name != name:  # the name moved while we watched: that is the copy
            return True
        return self._clock() - seen.at >= self._settle_s

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._promotions.pop(uid, None)


@dataclass(frozen=True)
class _Promotion:
    before: str | None  # the default's revision when step 2 copied the canary (None: not seen)
    at: float
    first_name: str | None = None  # without `before`: the default's revision when first seen ready


#: apiVersion -> strategy.
STRATEGIES: dict[str, ServiceApi] = {V1BETA1: V1Beta1(), V1ALPHA2: V1Alpha2()}


def strategy_for(api_version: str) -> ServiceApi:
    try:
        return STRATEGIES[api_version]
    except KeyError:
        raise UnsupportedService(
            f"InferenceService apiVersion {api_version!r} is not supported "
            f"(supported: {', '.join(sorted(STRATEGIES))})"
        ) from None


class KServeAdapter:
    """Reads and writes InferenceServices. Every request goes through `kube.call` with `retry`: reads
    are safe to repeat, and so are the writes (see `_patch` and `apply`)."""

    #: How requests are retried (a class default; tests set a faster one on an instance).
    retry: RetryPolicy = DEFAULT_RETRY

    def __init__(self, api_client: client.ApiClient,
                 timeout: tuple[float, float] | float = REQUEST_TIMEOUT,
                 cache: InferenceServiceCache | None = None) -> None:
        """`cache`: a watch-fed InferenceServiceCache that `read` answers from when it can; our own writes
        go through to it, so it is never older than what this adapter wrote."""
        self._cache = cache
        self._api = client.CustomObjectsApi(api_client)
        if cache is not None:
            self._api = cache.write_through(self._api)
        self._timeout = timeout

    # -- reads ---------------------------------------------------------------------------------------
    def read(self, namespace: str, name: str, api_version: str = V1BETA1,
             component: str = "predictor") -> LiveService | None:
        """The live service, or None if it does not exist; `canary_percent` is that of `component`.

        From the watch-fed cache when it is synced (no API call), else with a GET."""
        api = strategy_for(api_version)
        cached = self._cache.lookup(api.api_version, namespace, name) if self._cache is not None else None
        obj = cached.obj if cached is not None else self._get(api, namespace, name)
        return None if obj is None else api.parse(obj, component)

    # -- writes --------------------------------------------------------------------------------------
    def apply(self, action: ApplySpec) -> int:
        """Create the service or merge-patch it from `last_applied` to `manifest`; the new generation."""
        manifest = action.manifest
        meta = manifest.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if not namespace or not name:
            raise ValueError("the manifest to apply needs metadata.name and metadata.namespace")
        api_version = str(manifest.get("apiVersion") or V1BETA1)
        api = strategy_for(api_version)
        mode = (meta.get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
        _refuse_raw(namespace, name, mode)

        if action.create:
            body = api.create_body(manifest, action.component, action.canary_percent)
            # Retried: a repeat of a create that did land answers 409 AlreadyExists (a Conflict), and the
            # controller then re-reads and decides again, with the service there.
            created = call(f"create InferenceService {namespace}/{name}",
                           lambda: self._api.create_namespaced_custom_object(
                               api.group, api.version, namespace, api.plural, body, _request_timeout=self._timeout),
                           self.retry)
            return _generation(_as_object(created))

        if action.canary_percent is not None:
            check_percent(action.canary_percent)  # before any I/O
        live = self._guard(api, namespace, name)
        patch = api.apply_patch(action.last_applied, manifest, action.component, action.canary_percent, live)
        if patch is None:
            return _generation(live)
        return self._patch(api, namespace, name, patch, "apply spec to")

    def set_traffic(self, namespace: str, name: str, component: str, percent: int,
                    api_version: str = V1BETA1) -> int:
        """Give the canary revision of `component` `percent` % of the traffic."""
        api = strategy_for(api_version)
        patch = api.traffic_patch(component, percent)  # validates before any I/O
        self._guard(api, namespace, name)
        return self._patch(api, namespace, name, patch, f"set {component} traffic to {percent}% on")

    def promote(self, namespace: str, name: str, component: str, api_version: str = V1BETA1) -> int:
        """All traffic to the new revision, or the next write towards it (v1alpha2 takes several: call
        again while the live service still has a canary percent). Not guarded: harmless in any mode."""
        api = strategy_for(api_version)
        live = self._get(api, namespace, name)
        if live is None:
            raise NotFound(f"InferenceService {namespace}/{name} does not exist", status=404, reason="NotFound")
        patch = api.promote_patch(component, live)
        if patch is None:
            return _generation(live)
        return self._patch(api, namespace, name, patch, f"promote {component} of")

    def rollback(self, namespace: str, name: str, component: str, api_version: str = V1BETA1) -> int:
        """All traffic back to the previous revision. Not guarded: it must always be possible."""
        api = strategy_for(api_version)
        return self._patch(api, namespace, name, api.rollback_patch(component), f"roll back {component} of")

    def delete(self, namespace: str, name: str, api_version: str = V1BETA1) -> bool:
        """Prune: delete the service (False when it was already gone)."""
        api = strategy_for(api_version)
        try:
            # Retried: a repeat of a delete that did land answers 404, i.e. already gone.
            call(f"delete InferenceService {namespace}/{name}",
                 lambda: self._api.delete_namespaced_custom_object(
                     api.group, api.version, namespace, api.plural, name, _request_timeout=self._timeout),
                 self.retry)
        except NotFound:
            return False
        return True

    # -- HTTP ----------------------------------------------------------------------------------------
    def _get(self, api: ServiceApi, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = call(f"read InferenceService {namespace}/{name}",
                       lambda: self._api.get_namespaced_custom_object(
                           api.group, api.version, namespace, api.plural, name, _request_timeout=self._timeout),
                       self.retry)
        except NotFound:
            return None
        return _as_object(obj)

    def _guard(self, api: ServiceApi, namespace: str, name: str) -> dict[str, Any]:
        """The live service; refuses before writing when it is in RawDeployment mode (or gone)."""
        obj = self._get(api, namespace, name)
        if obj is None:
            raise NotFound(f"InferenceService {namespace}/{name} does not exist", status=404,
                           reason="NotFound")
        _refuse_raw(namespace, name, _deployment_mode(obj))
        return obj

    def _patch(self, api: ServiceApi, namespace: str, name: str, patch: dict[str, Any], what: str) -> int:
        log.debug("merge patch %s/%s: %s", namespace, name, patch)
        # Retried: every patch canaryd sends sets absolute values (a spec, a percent, a removed field), so
        # sending it again, after an attempt whose answer was lost, converges to the same object.
        patched = call(f"{what} InferenceService {namespace}/{name}",
                       lambda: self._api.patch_namespaced_custom_object(
                           api.group, api.version, namespace, api.plural, name, patch,
                           _content_type=MERGE_PATCH, _request_timeout=self._timeout),
                       self.retry)
        return _generation(_as_object(patched))


# -- parsing ----------------------------------------------------------------------------------------


def _deployment_mode(obj: Mapping[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION) or (obj.get("status") or {}).get("deploymentMode")
    return str(mode) if mode else None


def _refuse_raw(namespace: str, name: str, mode: object) -> None:
    if isinstance(mode, str) and mode.lower() in _RAW_MODES:
        raise UnsupportedService(
            f"InferenceService {namespace}/{name} runs in {mode} mode, where KServe ignores "
            "canaryTrafficPercent: canaryd rolls out Serverless (Knative) services only"
        )


def _manifest(obj: Mapping[str, Any], with_uid: bool = True) -> dict[str, Any]:
    """The user-facing part of an object: what a Git manifest has (plus the live uid, for Events)."""
    meta = obj.get("metadata") or {}
    keys = ("name", "namespace", "uid") if with_uid else ("name", "namespace")
    out_meta: dict[str, Any] = {key: meta[key] for key in keys if meta.get(key)}
    for key in ("labels", "annotations"):
        if meta.get(key):
            out_meta[key] = dict(meta[key])
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind") or "InferenceService",
        "metadata": out_meta,
        "spec": obj.get("spec") or {},
    }


def _component_status(comp: Mapping[str, Any]) -> ComponentStatus:
    return ComponentStatus(
        latest_created=comp.get("latestCreatedRevision"),
        latest_ready=comp.get("latestReadyRevision"),
        latest_rolledout=comp.get("latestRolledoutRevision"),
        previous_rolledout=comp.get("previousRolledoutRevision"),
        traffic=[
            TrafficTarget(
                revision=t.get("revisionName"),
                percent=int(t.get("percent") or 0),
                latest=bool(t.get("latestRevision")),
                tag=t.get("tag"),
                url=t.get("url"),
            )
            for t in comp.get("traffic") or []
            if isinstance(t, Mapping)
        ],
    )


def _conditions(items: list[Any]) -> dict[str, Condition]:
    return {
        str(c["type"]): Condition(
            status=str(c.get("status") or "Unknown"),
            reason=str(c.get("reason") or ""),
            message=str(c.get("message") or ""),
        )
        for c in items
        if isinstance(c, Mapping) and c.get("type")
    }


def _v1alpha2_percent(spec: Mapping[str, Any]) -> int | None:
    """The canary's share as the engine sees it: the field, or 0 for a canary without one."""
    value = spec.get(PERCENT_FIELD)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0 if isinstance(spec.get("canary"), Mapping) else None


def _v1alpha2_condition(endpoint: str, component: str) -> str:
    return f"{endpoint.capitalize()}{component.capitalize()}Ready"


def _entry(status: Mapping[str, Any], endpoint: str, component: str) -> Mapping[str, Any]:
    entries = status.get(endpoint)
    entry = entries.get(component) if isinstance(entries, Mapping) else None
    return entry if isinstance(entry, Mapping) else {}


def _entry_component(spec: Mapping[str, Any], endpoint: str) -> str:
    """The component that receives an endpoint's traffic: its transformer, if it has one."""
    part = spec.get(endpoint)
    return "transformer" if isinstance(part, Mapping) and isinstance(part.get("transformer"), Mapping) else "predictor"


def _v1alpha2_component(
    status: Mapping[str, Any], conditions: Mapping[str, Condition], component: str, has_canary: bool
) -> ComponentStatus:
    """One component in v1beta1 terms: the canary's revision is the newest, the default's the rolled-out."""
    default, canary = _entry(status, "default", component), _entry(status, "canary", component)

    def ready(endpoint: str, entry: Mapping[str, Any]) -> str | None:
        cond = conditions.get(_v1alpha2_condition(endpoint, component))
        name = entry.get("name")
        ok = cond is not None and cond.status == "True" and bool(entry.get("host")) and bool(name)
        return str(name) if ok else None

    default_name = str(default["name"]) if default.get("name") else None
    canary_name = str(canary["name"]) if canary.get("name") else None
    latest_created: str | None = default_name
    latest_ready = ready("default", default)
    if has_canary and canary_name:
        latest_created, latest_ready = canary_name, ready("canary", canary) or latest_ready
    traffic = []
    if default_name:
        traffic.append(TrafficTarget(revision=default_name, percent=_int(status.get("traffic")),
                                     latest=canary_name is None, tag=None, url=_url(default)))
    if canary_name:  # until KFServing has caught up, even when spec.canary is already gone
        traffic.append(TrafficTarget(revision=canary_name, percent=_int(status.get("canaryTraffic")),
                                     latest=True, tag="canary", url=_url(canary)))
    return ComponentStatus(latest_created=latest_created, latest_ready=latest_ready,
                           latest_rolledout=default_name, previous_rolledout=None, traffic=traffic)


def _url(entry: Mapping[str, Any]) -> str | None:
    """An endpoint's own host, to reach its revision whatever its share (a smoke test of the canary)."""
    return f"http://{entry['host']}" if entry.get("host") else None


def _transition_time(status: Mapping[str, Any], endpoint: str, component: str) -> str:
    kind = _v1alpha2_condition(endpoint, component)
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return str(c.get("lastTransitionTime") or "")
    return ""


def _later(a: str, b: str) -> bool:
    """RFC 3339 UTC times compare as strings; an unknown time is never later."""
    return bool(a and b and a > b)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _as_object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeError(f"the API server answered with {type(value).__name__}, not a JSON object")
    return value


def _generation(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)
