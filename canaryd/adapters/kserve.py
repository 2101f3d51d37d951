"""Read and write InferenceServices: the only place that knows KServe's object shapes (DESIGN §5).

Each InferenceService API version is a small `ServiceApi` strategy (how to parse the status, which patch
sets, promotes or rolls back a canary) in the `STRATEGIES` registry; the adapter only does the HTTP.
v1beta1 is the one registered; KFServing's v1alpha2 (`spec.default`/`spec.canary`, a promotion in several
writes) is one more class and one more registry entry.

Writes are JSON merge patches (`application/merge-patch+json`, set explicitly rather than trusting the
client's default), built by the pure `canaryd.apply`. Services in RawDeployment mode are refused before
anything is written: KServe ignores `canaryTrafficPercent` there, so a "canary" would silently be a full
rollout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes import client

from canaryd.adapters.kube import REQUEST_TIMEOUT, KubeError, NotFound, api_call
from canaryd.apply import V1BETA1, canary_percent, check_percent, merge_patch, with_canary_percent
from canaryd.rollout.model import (
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
    """What differs between InferenceService API versions."""

    group: str
    version: str
    plural: str

    def parse(self, obj: Mapping[str, Any], component: str) -> LiveService: ...

    def traffic_patch(self, component: str, percent: int) -> dict[str, Any]: ...

    def promote_patch(self, component: str) -> dict[str, Any]: ...

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

    def traffic_patch(self, component: str, percent: int) -> dict[str, Any]:
        return with_canary_percent({}, component, check_percent(percent), self.api_version)

    def promote_patch(self, component: str) -> dict[str, Any]:
        # The documented promotion: drop the field (100 would route the same, but pins the service).
        return with_canary_percent({}, component, None, self.api_version)

    def rollback_patch(self, component: str) -> dict[str, Any]:
        # 0 % keeps the new spec in place and sends everything to the `prev` revision.
        return with_canary_percent({}, component, 0, self.api_version)


#: apiVersion -> strategy.
STRATEGIES: dict[str, ServiceApi] = {V1BETA1: V1Beta1()}


def strategy_for(api_version: str) -> ServiceApi:
    try:
        return STRATEGIES[api_version]
    except KeyError:
        raise UnsupportedService(
            f"InferenceService apiVersion {api_version!r} is not supported "
            f"(supported: {', '.join(sorted(STRATEGIES))})"
        ) from None


class KServeAdapter:
    def __init__(self, api_client: client.ApiClient,
                 timeout: tuple[float, float] | float = REQUEST_TIMEOUT) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._timeout = timeout

    # -- reads ---------------------------------------------------------------------------------------
    def read(self, namespace: str, name: str, api_version: str = V1BETA1,
             component: str = "predictor") -> LiveService | None:
        """The live service, or None if it does not exist; `canary_percent` is that of `component`."""
        api = strategy_for(api_version)
        obj = self._get(api, namespace, name)
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
            body = _manifest(manifest, with_uid=False)
            body["apiVersion"] = api_version
            if action.canary_percent is not None:
                body = with_canary_percent(body, action.component, action.canary_percent, api_version)
            with api_call(f"create InferenceService {namespace}/{name}"):
                created = self._api.create_namespaced_custom_object(
                    api.group, api.version, namespace, api.plural, body, _request_timeout=self._timeout
                )
            return _generation(_as_object(created))

        patch = merge_patch(action.last_applied, manifest)
        if action.canary_percent is not None:
            patch = with_canary_percent(patch, action.component, action.canary_percent, api_version)
        self._guard(api, namespace, name)
        return self._patch(api, namespace, name, patch, "apply spec to")

    def set_traffic(self, namespace: str, name: str, component: str, percent: int,
                    api_version: str = V1BETA1) -> int:
        """Give the canary revision of `component` `percent` % of the traffic."""
        api = strategy_for(api_version)
        patch = api.traffic_patch(component, percent)  # validates before any I/O
        self._guard(api, namespace, name)
        return self._patch(api, namespace, name, patch, f"set {component} traffic to {percent}% on")

    def promote(self, namespace: str, name: str, component: str, api_version: str = V1BETA1) -> int:
        """All traffic to the new revision. Not guarded: dropping the field is harmless in any mode."""
        api = strategy_for(api_version)
        return self._patch(api, namespace, name, api.promote_patch(component), f"promote {component} of")

    def rollback(self, namespace: str, name: str, component: str, api_version: str = V1BETA1) -> int:
        """All traffic back to the previous revision. Not guarded: it must always be possible."""
        api = strategy_for(api_version)
        return self._patch(api, namespace, name, api.rollback_patch(component), f"roll back {component} of")

    # -- HTTP ----------------------------------------------------------------------------------------
    def _get(self, api: ServiceApi, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with api_call(f"read InferenceService {namespace}/{name}"):
                obj = self._api.get_namespaced_custom_object(
                    api.group, api.version, namespace, api.plural, name, _request_timeout=self._timeout
                )
        except NotFound:
            return None
        return _as_object(obj)

    def _guard(self, api: ServiceApi, namespace: str, name: str) -> None:
        """Refuse before writing when the live service is in RawDeployment mode (or gone)."""
        obj = self._get(api, namespace, name)
        if obj is None:
            raise NotFound(f"InferenceService {namespace}/{name} does not exist", status=404,
                           reason="NotFound")
        _refuse_raw(namespace, name, _deployment_mode(obj))

    def _patch(self, api: ServiceApi, namespace: str, name: str, patch: dict[str, Any], what: str) -> int:
        log.debug("merge patch %s/%s: %s", namespace, name, patch)
        with api_call(f"{what} InferenceService {namespace}/{name}"):
            patched = self._api.patch_namespaced_custom_object(
                api.group, api.version, namespace, api.plural, name, patch,
                _content_type=MERGE_PATCH, _request_timeout=self._timeout,
            )
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


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _as_object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeError(f"the API server answered with {type(value).__name__}, not a JSON object")
    return value


def _generation(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)
