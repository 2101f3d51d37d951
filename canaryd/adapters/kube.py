"""Kubernetes client construction and the error vocabulary every cluster adapter shares.

The adapters talk to the API server through the ordinary `kubernetes` client, so the same code runs
against a real cluster and the sandbox's API emulator. Every call carries `REQUEST_TIMEOUT`: the client's
default is to wait forever, and one hung connection would stall a reconcile loop. Failures are turned into
`KubeError`s whose messages name the call and the server's reason, and never carry request headers
(they hold the bearer token).

Every client says who it is in its User-Agent (`canaryd/<version> (<os>/<arch>) <component>`), the way
kubectl does, so API server audit logs (and the sandbox's RBAC test) can tell the daemon's calls from a
person's `canaryd status` or anything else that shares the kubeconfig.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from canaryd import __version__

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


class NotLeader(KubeError):
    """A write refused before it was sent: this replica does not (or no longer) hold the leader Lease."""


_BY_STATUS: dict[int, type[KubeError]] = {404: NotFound, 409: Conflict, 422: Invalid}

#: HTTP methods that only read; everything else is a write a write guard may refuse.
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def user_agent(component: str = "cli") -> str:
    """`canaryd/0.1.0 (linux/amd64) daemon`: product/version, platform, and which part of canaryd calls."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
    return f"canaryd/{__version__} ({platform.system().lower()}/{arch}) {component}"


class _WriteFence:
    """Wraps the client's REST layer: every non-read request first asks `guard`, which raises to refuse.

    The daemon's leader election passes a guard that raises `NotLeader` once this replica may no longer
    act, so a reconcile tick still running when leadership is lost cannot write anything afterwards,
    whatever adapter it goes through (ModelRollouts, InferenceServices, Events).
    """

    def __init__(self, inner: Any, guard: Callable[[str, str], None]) -> None:
        self._inner = inner
        self._guard = guard

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() not in _READS:
            self._guard(method.upper(), url)
        return self._inner.request(method, url, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def make_api_client(kubeconfig: str | None, context: str | None = None, *, component: str = "cli",
                    write_guard: Callable[[str, str], None] | None = None) -> client.ApiClient:
    """An API client from a kubeconfig file, or from the pod's service account when none is given.

    `component` goes into the User-Agent (see `user_agent`). `write_guard(method, url)` is called before
    every write and may raise (e.g. `NotLeader`) to refuse it; reads always go through.
    """
    try:
        if kubeconfig:
            loaded: Any = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, persist_config=False
            )
            api = cast(client.ApiClient, loaded)
        else:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            api = client.ApiClient(configuration=configuration)
    except (ConfigException, OSError) as exc:
        where = f"kubeconfig {kubeconfig!r}" if kubeconfig else "in-cluster service account"
        raise KubeError(f"cannot configure the Kubernetes client from the {where}: {exc}") from exc
    api.user_agent = user_agent(component)
    if write_guard is not None:
        cast(Any, api).rest_client = _WriteFence(api.rest_client, write_guard)
    return api


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
