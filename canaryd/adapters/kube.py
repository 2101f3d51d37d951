"""Kubernetes client construction and the error vocabulary every cluster adapter shares.

The adapters talk to the API server through the ordinary `kubernetes` client, so the same code runs
against a real cluster and the sandbox's API emulator. Every call carries `REQUEST_TIMEOUT`: the client's
default is to wait forever, and one hung connection would stall a reconcile loop. Failures are turned into
`KubeError`s whose messages name the call and the server's reason, and never carry request headers
(they hold the bearer token).

Failed calls are retried in one place, `call` with a `RetryPolicy` (see there): throttling (429, honouring
Retry-After), 500/502/503/504 and connection failures get a few more attempts with capped, jittered
exponential backoff, bounded in attempts and in total time; a 4xx answer never does (404, 409 and 422
mean something the caller must decide about). The client's own hidden urllib3 retries are narrowed to
connection failures before a request was sent, so attempts are countable and a hung server costs one
read timeout per attempt, not four.

Every client says who it is in its User-Agent (`canaryd/<version> (<os>/<arch>) <component>`), the way
kubectl does, so API server audit logs (and the sandbox's RBAC test) can tell the daemon's calls from a
person's `canaryd status` or anything else that shares the kubeconfig.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import tenacity
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from canaryd import __version__

log = logging.getLogger(__name__)
T = TypeVar("T")

#: (connect, read) seconds for every API call.
REQUEST_TIMEOUT: tuple[float, float] = (5.0, 30.0)

#: Answers worth another attempt: throttling (429) and the server or a proxy in front of it failing or
#: overloaded (500, 502, 503, 504). Every other status is the server's considered answer about this
#: request (404, 409, 422...): repeating it would get the same answer.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: urllib3's own retries under the kubernetes client: only failures to *connect* (the request was never
#: sent, so repeating it is always safe and cannot double a write). Its default, 3 retries of everything,
#: repeated a read timeout on GETs and PUTs 3 more times (a hung API server cost 4 timeouts per call) and
#: hid how many attempts a call made; read errors and statuses are left to `call`.
_TRANSPORT_RETRY = urllib3.util.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0,
                                      raise_on_status=False)


class KubeError(RuntimeError):
    """An API call failed; `status` is the HTTP status when the server answered.

    `retryable` says whether another attempt may succeed (a transient status or a transport failure);
    `retry_after` is the server's Retry-After in seconds, when it sent one.
    """

    def __init__(self, message: str, status: int | None = None, reason: str | None = None, *,
                 retryable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


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
    # Before any pool exists (pools are made on the first request, from these keyword arguments); and in
    # the configuration, for a REST client rebuilt from it later (a bigger pool for watches, say).
    api.configuration.retries = _TRANSPORT_RETRY
    cast(Any, api.rest_client).pool_manager.connection_pool_kw["retries"] = _TRANSPORT_RETRY
    if write_guard is not None:
        cast(Any, api).rest_client = _WriteFence(api.rest_client, write_guard)
    return api


def kubeconfig_search(kubeconfig: str | None, env: Mapping[str, str], home: str) -> str | None:
    """Where a person's kubeconfig is, as kubectl finds it: `--kubeconfig`, else `$KUBECONFIG` (a list,
    merged), else `~/.kube/config` when it exists; None means the pod's service account (in-cluster).

    Returns the path list (os.pathsep-separated, as the client's loader merges it). Raises KubeError when
    what was named exists nowhere: a typo must not silently fall through to another cluster.
    """
    for given, what in ((kubeconfig, "--kubeconfig"), (env.get("KUBECONFIG"), "$KUBECONFIG")):
        if given:
            paths = [p for p in given.split(os.pathsep) if p]
            if not any(os.path.isfile(os.path.expanduser(p)) for p in paths):
                raise KubeError(f"no kubeconfig file at {given} ({what})")
            return os.pathsep.join(paths)
    default = os.path.join(home, ".kube", "config")
    return default if os.path.isfile(default) else None


def discover_api_client(kubeconfig: str | None = None, context: str | None = None, *,
                        component: str = "cli") -> client.ApiClient:
    """`make_api_client` for a person or a pipeline: the kubeconfig found as kubectl finds it (see
    `kubeconfig_search`), or the pod's service account when there is none. `context` picks a context
    of that kubeconfig (kubectl's `--context`)."""
    found = kubeconfig_search(kubeconfig, os.environ, os.path.expanduser("~"))
    if found is None:
        if context:
            raise KubeError(f"--context {context} needs a kubeconfig; none given, $KUBECONFIG is unset and "
                            "~/.kube/config does not exist")
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise KubeError("no kubeconfig: give --kubeconfig, set $KUBECONFIG, or create ~/.kube/config "
                            "(and not inside a pod, so no service account either)")
    return make_api_client(found, context, component=component)


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
        return cls(text, status=status, reason=reason or None,
                   retryable=status in RETRY_STATUSES,
                   retry_after=_retry_after(exc.headers, body) if status in RETRY_STATUSES else None)
    # No answer at all: refused, reset, timed out. The request may or may not have reached the server.
    return KubeError(f"{what}: {type(exc).__name__}: {exc}",
                     retryable=isinstance(exc, urllib3.exceptions.HTTPError | OSError))


def _retry_after(headers: Mapping[str, str] | None, body: object) -> float | None:
    """Seconds the server asked us to wait: the Retry-After header (seconds or an HTTP date), else the
    Status's `details.retryAfterSeconds` (kube-apiserver sends both on 429)."""
    value = None
    for key, val in (headers or {}).items():
        if key.lower() == "retry-after":
            value = str(val).strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - time.time())
    details = body.get("details") if isinstance(body, dict) else None
    seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return max(0.0, float(seconds))
    return None


@contextmanager
def api_call(what: str) -> Iterator[None]:
    """Turn whatever the client raises (HTTP error status, connection failure, timeout) into KubeError."""
    try:
        yield
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise error_from(exc, what) from exc


@dataclass(frozen=True)
class RetryPolicy:
    """How `call` retries: at most `attempts` attempts in all, and no new attempt once its wait would end
    more than `total_s` after the first one started (so a call gives up within about `total_s` plus one
    request timeout). Waits grow exponentially from `base_s` up to `max_wait_s`, with "equal" jitter (half
    the ceiling plus a random part of the other half): they still grow, and many clients that failed
    together (an API server restart) do not come back together. A Retry-After from the server replaces the
    backoff, capped at `max_retry_after_s`: a server may ask for minutes, and a reconcile tick should
    rather fail and come back (the scheduler retries it) than sleep that long. The defaults give up after
    5 attempts over about 4-8 s of waiting (0.25-0.5, 0.5-1, 1-2, 2-4 s), or 15 s in all.
    """

    attempts: int = 5
    total_s: float = 15.0
    base_s: float = 0.5
    max_wait_s: float = 5.0
    max_retry_after_s: float = 10.0

    def wait_s(self, attempt: int, error: BaseException | None, rng: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        after = error.retry_after if isinstance(error, KubeError) else None
        if after is not None:
            return min(after, self.max_retry_after_s)
        ceiling = min(self.max_wait_s, self.base_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + ceiling / 2 * rng()


#: The daemon's reads and writes of ModelRollouts and InferenceServices.
DEFAULT_RETRY = RetryPolicy()
#: Events are best effort: one quick retry, never a long stall of the tick that records them.
EVENT_RETRY = RetryPolicy(attempts=2, total_s=3.0)
#: A single attempt (tests, and callers with a retry loop of their own).
NO_RETRY = RetryPolicy(attempts=1)


def retryable(exc: BaseException) -> bool:
    """Whether `call` may try again after `exc`: only KubeErrors marked transient (never NotLeader)."""
    return isinstance(exc, KubeError) and exc.retryable and not isinstance(exc, NotLeader)


def call(what: str, fn: Callable[[], T], retry: RetryPolicy = DEFAULT_RETRY) -> T:
    """`fn()` (one API request) inside `api_call(what)`, retried per `retry` while the failure is transient.

    Only safe for requests that may be repeated: reads, and writes whose repetition converges (canaryd's
    merge patches set absolute values; a replace carries the resourceVersion it read, so a repeat of one
    that did land answers 409; a repeated create answers 409 AlreadyExists). Callers say so where they
    call it. The last error is raised, with the number of attempts in its message when there were several.
    """
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        with api_call(what):
            return fn()

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return retry.wait_s(state.attempt_number, error)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("Kubernetes API call failed; retrying", extra={
            "call": what, "attempt": state.attempt_number, "of": retry.attempts,
            "retry_in_s": round(state.upcoming_sleep, 2), "error": str(error)})

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, retry.attempts)) | tenacity.stop_before_delay(retry.total_s),
        wait=wait,
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except KubeError as exc:
        if attempts > 1:
            exc.args = (f"{exc} (gave up after {attempts} attempts)", *exc.args[1:])
        raise
