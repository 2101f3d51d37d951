"""Kubernetes client construction and the error vocabulary every cluster adapter shares.

The adapters talk to the API server through the ordinary `kubernetes` client, so the same code runs
against a real cluster and the sandbox's API emulator. Every call carries `REQUEST_TIMEOUT`: the client's
default is to wait forever, and one hung connection would stall a reconcile loop. Failures are turned into
`KubeError`s whose messages name the call and the server's reason, and never carry request headers
(they hold the bearer token).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

#: (connect, read) seconds for every API call.
REQUEST_TIMEOUT: tuple[float, float] = (5.0, 30.0)


class KubeError(RuntimeError):
    """An API call failed; `status` is the HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(KubeError):
    """404: the object (or its namespace) does not exist."""


class Conflict(KubeError):
    """409: stale resourceVersion or the object already exists; re-read and decide again."""


class Invalid(KubeError):
    """422: the server's schema or a webhook rejected the object."""


_BY_STATUS: dict[int, type[KubeError]] = {404: NotFound, 409: Conflict, 422: Invalid}


def make_api_client(kubeconfig: str | None, context: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig file, or from the pod's service account when none is given."""
    try:
        if kubeconfig:
            loaded: Any = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, persist_config=False
            )
            return cast(client.ApiClient, loaded)
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration=configuration)
    except (ConfigException, OSError) as exc:
        where = f"kubeconfig {kubeconfig!r}" if kubeconfig else "in-cluster service account"
        raise KubeError(f"cannot configure the Kubernetes client from the {where}: {exc}") from exc


def error_from(exc: BaseException, what: str) -> KubeError:
    """A KubeError for a failed call, with the server's reason and message when it sent a Status."""
    if isinstance(exc, ApiException):
        status = int(exc.status) if exc.status is not None else None
        reason, message = exc.reason or "", ""
        try:
            body = json.loads(exc.body or "{}")
        except (TypeError, ValueError):
            body = {}
        if isinstance(body, dict):
            reason = str(body.get("reason") or reason)
            message = str(body.get("message") or "")
        cls = _BY_STATUS.get(status or 0, KubeError)
        text = f"{what}: HTTP {status} {reason}" + (f": {message}" if message else "")
        return cls(text, status=status, reason=reason or None)
    return KubeError(f"{what}: {type(exc).__name__}: {exc}")


@contextmanager
def api_call(what: str) -> Iterator[None]:
    """Turn whatever the client raises (HTTP error status, connection failure, timeout) into KubeError."""
    try:
        yield
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise error_from(exc, what) from exc
