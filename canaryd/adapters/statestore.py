"""Persist RolloutState as ModelRollout custom resources (DESIGN §8), with optimistic concurrency.

Everything canaryd remembers is in `status`, written only through the status subresource (which the
chart lets no one but canaryd's ServiceAccount write): a save is one status write carrying the
resourceVersion that was read. The API server takes nothing else from it, so the spec (the operator's
requests) and the metadata others own (labels, annotations, finalizers, ownerReferences added by kubectl,
Argo CD, ...) are never overwritten. A new object is created first (spec and metadata only: a create
ignores status on a real API server) and its status written right after; a crash in between leaves an
object without status, which reads as a new state. Any 409 (another writer got there first, or the
object already exists) surfaces as `Conflict`; the controller then re-reads and decides again instead of
overwriting what it has not seen.

A ModelRollout written by canaryd 0.1 (its state in `spec`) is migrated when first read: its status is
rewritten in the current layout and the old spec fields are removed (`migrate`). One that names another
object is refused (`UntrustedState`), never migrated.

Every request is retried on transient failures (`kube.call`). That is safe for writes too: a replace
carries the resourceVersion it read, so repeating one that did land (its answer lost to a 5xx or a
timeout) answers 409 and the controller re-reads the state it wrote; a repeated create answers 409
AlreadyExists, with the same outcome.
"""

from __future__ import annotations

import builtins
import functools
import logging
from typing import Any

from kubernetes import client

from canaryd.adapters.kube import DEFAULT_RETRY, REQUEST_TIMEOUT, Conflict, KubeError, NotFound, RetryPolicy, call
from canaryd.rollout.state import GROUP, PLURAL, VERSION, RolloutState, UntrustedState, legacy_state

__all__ = ["Conflict", "StateStore", "UntrustedState"]

_PAGE = 250

log = logging.getLogger("canaryd.statestore")


class StateStore:
    #: How requests are retried (a class default; tests set a faster one on an instance).
    retry: RetryPolicy = DEFAULT_RETRY

    def __init__(self, api_client: client.ApiClient,
                 timeout: tuple[float, float] | float = REQUEST_TIMEOUT) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._timeout = timeout

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored ModelRollout object as is (None: there is none)."""
        try:
            obj = call(f"read ModelRollout {namespace}/{name}", lambda: self._api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout), self.retry)
        except NotFound:
            return None
        return _as_object(obj)

    def load(self, namespace: str, name: str) -> RolloutState | None:
        """The state of `namespace/name` (None: no ModelRollout). A canaryd 0.1 object is migrated first.
        Raises `UntrustedState` for a stored state canaryd must not act on."""
        obj = self.read(namespace, name)
        if obj is None:
            return None
        old = legacy_state(obj)
        if old is not None:
            return self.migrate(obj, old)
        return RolloutState.from_storage(obj)

    def migrate(self, obj: dict[str, Any], state: RolloutState) -> RolloutState:
        """Rewrite a canaryd 0.1 object in the current layout: status first (the state, now behind the status
        subresource), then the main resource without the old spec fields (metadata and control kept)."""
        t = state.spec.target
        saved = self._write_status(state)
        main = {k: v for k, v in obj.items() if k != "status"}
        main["metadata"] = {**(obj.get("metadata") or {}), "resourceVersion": saved.resource_version}
        main["spec"] = {"control": (obj.get("spec") or {}).get("control") or {}}
        written = call(f"migrate ModelRollout {t.key}", lambda: self._api.replace_namespaced_custom_object(
            GROUP, VERSION, t.namespace, PLURAL, t.name, main, _request_timeout=self._timeout), self.retry)
        log.info("migrated ModelRollout %s from the canaryd 0.1 layout (state in spec) to status", t.key)
        return saved.model_copy(update={"resource_version": _resource_version(_as_object(written))})

    def save(self, state: RolloutState) -> RolloutState:
        """Write the state into the ModelRollout's status (creating the object first if there is none);
        the state with its new resourceVersion. Only `status` changes: see the module docstring."""
        target = state.spec.target
        namespace, name = target.namespace, target.name
        if state.resource_version is None:
            body = state.for_storage()
            body.pop("status")
            body["spec"] = {"control": {}}
            created = call(f"create ModelRollout {namespace}/{name}",
                           lambda: self._api.create_namespaced_custom_object(
                               GROUP, VERSION, namespace, PLURAL, body, _request_timeout=self._timeout),
                           self.retry)
            obj = _as_object(created)
            state = state.model_copy(update={"resource_version": _resource_version(obj),
                                            "generation": _generation(obj)})
        return self._write_status(state)

    def _write_status(self, state: RolloutState) -> RolloutState:
        t = state.spec.target
        body = state.for_storage()
        written = call(f"write ModelRollout {t.key} status",
                       lambda: self._api.replace_namespaced_custom_object_status(
                           GROUP, VERSION, t.namespace, PLURAL, t.name, body, _request_timeout=self._timeout),
                       self.retry)
        obj = _as_object(written)
        return state.model_copy(update={"resource_version": _resource_version(obj),
                                        "generation": _generation(obj) or state.generation,
                                        "observed_generation": state.generation})

    def report_refusal(self, namespace: str, name: str, message: str) -> None:
        """Put why a stored state is refused into its status message (nothing else of it is touched)."""
        body = {"status": {"message": message[:1000]}}
        call(f"report refusal on ModelRollout {namespace}/{name}",
             lambda: self._api.patch_namespaced_custom_object_status(
                 GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=self._timeout), self.retry)

    def list(self, namespace: str | None = None) -> builtins.list[RolloutState]:
        """Every ModelRollout in `namespace`, or in all namespaces when None (paged)."""
        states: builtins.list[RolloutState] = []
        token: str | None = None
        where = f"in {namespace}" if namespace else "in all namespaces"
        while True:
            kwargs: dict[str, Any] = {"limit": _PAGE, "_request_timeout": self._timeout}
            if token:
                kwargs["_continue"] = token
            page = call(f"list ModelRollouts {where}", functools.partial(self._list_page, namespace, kwargs),
                        self.retry)
            obj = _as_object(page)
            for item in obj.get("items") or []:
                try:
                    states.append(legacy_state(item) or RolloutState.from_storage(item))
                except UntrustedState as exc:
                    meta = item.get("metadata") or {}
                    log.warning("ModelRollout %s/%s skipped: %s", meta.get("namespace"), meta.get("name"), exc)
            token = (obj.get("metadata") or {}).get("continue") or None
            if not token:
                return states

    def _list_page(self, namespace: str | None, kwargs: dict[str, Any]) -> object:
        if namespace:
            return self._api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)
        return self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)

    def delete(self, namespace: str, name: str) -> bool:
        """Delete the ModelRollout; False if it was already gone."""
        try:
            call(f"delete ModelRollout {namespace}/{name}", lambda: self._api.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout), self.retry)
        except NotFound:
            return False
        return True


def _as_object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeError(f"the API server answered with {type(value).__name__}, not a JSON object")
    return value


def _resource_version(obj: dict[str, Any]) -> str:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if not rv:
        raise KubeError("the API server answered without metadata.resourceVersion")
    return str(rv)


def _generation(obj: dict[str, Any]) -> int | None:
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) else None
