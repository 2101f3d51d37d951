"""Persist RolloutState as ModelRollout custom resources (DESIGN §8), with optimistic concurrency.

A save is one write of spec and status together, carrying the resourceVersion that was read (the CRD
has no status subresource, so the write cannot be torn in two). Any 409 (another writer got there
first, or the object already exists) surfaces as `Conflict`;
the controller then re-reads and decides again instead of overwriting what it has not seen.

Every request is retried on transient failures (`kube.call`). That is safe for writes too: a replace
carries the resourceVersion it read, so repeating one that did land (its answer lost to a 5xx or a
timeout) answers 409 and the controller re-reads the state it wrote; a repeated create answers 409
AlreadyExists, with the same outcome.
"""

from __future__ import annotations

import builtins
import functools
from typing import Any

from kubernetes import client

from canaryd.adapters.kube import DEFAULT_RETRY, REQUEST_TIMEOUT, Conflict, KubeError, NotFound, RetryPolicy, call
from canaryd.rollout.state import GROUP, PLURAL, VERSION, RolloutState

__all__ = ["Conflict", "StateStore"]

_PAGE = 250


class StateStore:
    #: How requests are retried (a class default; tests set a faster one on an instance).
    retry: RetryPolicy = DEFAULT_RETRY

    def __init__(self, api_client: client.ApiClient,
                 timeout: tuple[float, float] | float = REQUEST_TIMEOUT) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._timeout = timeout

    def load(self, namespace: str, name: str) -> RolloutState | None:
        try:
            obj = call(f"read ModelRollout {namespace}/{name}", lambda: self._api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout), self.retry)
        except NotFound:
            return None
        return RolloutState.from_storage(_as_object(obj))

    def save(self, state: RolloutState) -> RolloutState:
        """Create or replace the ModelRollout in ONE write; the state with its new resourceVersion.

        Spec and status go together (the CRD has no status subresource on purpose): two writes could be
        torn by a crash or a conflict in between, leaving a new spec with an old status that a restart
        or `canaryd status` would read as one state.
        """
        target = state.spec.target
        namespace, name = target.namespace, target.name
        body = state.for_storage()
        if state.resource_version is None:
            written = call(f"create ModelRollout {namespace}/{name}",
                           lambda: self._api.create_namespaced_custom_object(
                               GROUP, VERSION, namespace, PLURAL, body, _request_timeout=self._timeout),
                           self.retry)
        else:
            written = call(f"replace ModelRollout {namespace}/{name}",
                           lambda: self._api.replace_namespaced_custom_object(
                               GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=self._timeout),
                           self.retry)
        return state.model_copy(update={"resource_version": _resource_version(_as_object(written))})

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
            states.extend(RolloutState.from_storage(item) for item in obj.get("items") or [])
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
