"""Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.

Why not a library: the official client's `kubernetes.leaderelection` (37.x) has a LeaseLock, but its
loop cannot be stopped (it sleeps forever, no cancel), never releases the Lease on shutdown (client-go's
ReleaseOnCancel), measures the renew deadline with the wall clock from the start of each renew round
rather than from the last successful renew, never maintains `leaseTransitions`, builds its API object
from the global default client (not ours, with our kubeconfig and User-Agent), rejects sub-second
periods and calls `sys.exit` on a bad setting. No other PyPI package does Lease election for this
client. The algorithm is small; this module keeps it in one place and testable with a fake clock.

The rules (as client-go's `LeaderElector`):

- A candidate reads the Lease every `retry_period`. It may take the Lease when it is absent, released
  (empty `holderIdentity`) or expired. "Expired" is judged by *this* process's monotonic clock: the
  Lease counts as held until `leaseDurationSeconds` after the moment this process last saw the record
  change, never by comparing `renewTime` with a local wall clock (clocks of two nodes may disagree).
- Every write carries the `resourceVersion` that was read, so two candidates racing for one Lease
  cannot both win: the second gets 409 Conflict and reads again.
- The leader renews every `retry_period`. It stops acting (the fence `may_act()` closes and
  `on_stopped_leading` runs) once `renew_deadline` has passed since the *start* of its last successful
  renew, measured with the monotonic clock. A standby can take the Lease only `lease_duration` after it
  saw that renew, which is later; with `renew_deadline < lease_duration` the old leader has stopped
  before anyone else can start.
- On shutdown the leader first stops acting, then releases the Lease (empty holder, duration 1 s, as
  client-go's ReleaseOnCancel), so a standby takes over at its next retry instead of after expiry.
- Seeing another holder while leading means someone else took the Lease: stop acting at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from kubernetes import client
from prometheus_client import CollectorRegistry, Counter, Gauge

from canaryd.adapters.kube import Conflict, KubeError, NotFound, NotLeader, api_call

log = logging.getLogger("canaryd.leader")


@dataclass(frozen=True)
class LeaseRecord:
    """The election fields of a Lease's spec, plus the resourceVersion it was read (or written) at."""

    holder: str
    lease_duration_s: int | None = None
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    resource_version: str | None = None
    #: The object's metadata as read (labels, annotations), kept on replace; not part of the comparison.
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)


class LeaseClient(Protocol):
    """Where the Lease lives. Errors are `KubeError`s; a stale or lost create/replace is `Conflict`."""

    def get(self, timeout: float) -> LeaseRecord | None: ...

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord: ...

    def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord: ...


def _micro_time(value: datetime | None) -> str | None:
    """metav1.MicroTime on the wire: RFC 3339 in UTC with microseconds."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def record_from_object(obj: Mapping[str, Any]) -> LeaseRecord:
    """A LeaseRecord from a Lease in its JSON shape (camelCase keys)."""
    spec = obj.get("spec") or {}
    meta = dict(obj.get("metadata") or {})
    duration = spec.get("leaseDurationSeconds")
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration_s=int(duration) if duration else None,
        acquire_time=_parse_time(spec.get("acquireTime")),
        renew_time=_parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(meta["resourceVersion"]) if meta.get("resourceVersion") else None,
        metadata=meta,
    )


def object_from_record(record: LeaseRecord, namespace: str, name: str) -> dict[str, Any]:
    """The Lease to write: the record's spec, with the metadata it was read with (and its resourceVersion)."""
    meta: dict[str, Any] = {k: v for k, v in record.metadata.items()
                            if k in ("labels", "annotations", "ownerReferences")}
    meta.update(name=name, namespace=namespace)
    if record.resource_version:
        meta["resourceVersion"] = record.resource_version
    spec: dict[str, Any] = {"holderIdentity": record.holder, "leaseTransitions": record.transitions}
    if record.lease_duration_s is not None:
        spec["leaseDurationSeconds"] = record.lease_duration_s
    if record.acquire_time is not None:
        spec["acquireTime"] = _micro_time(record.acquire_time)
    if record.renew_time is not None:
        spec["renewTime"] = _micro_time(record.renew_time)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


class KubeLeaseClient:
    """One Lease through the official client: get, create, replace (RBAC: get, create, update on leases)."""

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str) -> None:
        self._api = client.CoordinationV1Api(api_client)
        self._client = api_client
        self.namespace = namespace
        self.name = name

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def _record(self, obj: Any) -> LeaseRecord:
        data = self._client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        if not isinstance(data, dict):
            raise KubeError(f"{self.where}: the API server answered with {type(data).__name__}, not a Lease")
        return record_from_object(data)

    def get(self, timeout: float) -> LeaseRecord | None:
        try:
            with api_call(f"read {self.where}"):
                obj = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except NotFound:
            return None
        return self._record(obj)

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        body = object_from_record(replace(record, resource_version=None), self.namespace, self.name)
        with api_call(f"create {self.where}"):
            obj = self._api.create_namespaced_lease(self.namespace, cast(Any, body), _request_timeout=timeout)
        return self._record(obj)

    def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        body = object_from_record(record, self.namespace, self.name)
        with api_call(f"replace {self.where}"):
            obj = self._api.replace_namespaced_lease(self.name, self.namespace, cast(Any, body),
                                                     _request_timeout=timeout)
        return self._record(obj)


class LeaderMetrics:
    """`canaryd_leader` (1 while this replica leads) and `canaryd_leader_transitions_total{to}`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge("canaryd_leader", "1 while this replica holds the leader Lease and reconciles, else 0",
                            registry=registry)
        self.transitions = Counter("canaryd_leader_transitions", "Changes of this replica's role",
                                   ["to"], registry=registry)
        for to in ("leader", "standby"):
            self.transitions.labels(to)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    """Acquires and renews one Lease; says whether this replica may act right now (`may_act`).

    `step()` is one attempt and returns how long to wait before the next; `start()` runs it on a thread.
    Clocks are injected so that the decision logic is tested without sleeping.
    """

    def __init__(self, lease: LeaseClient, identity: str, *, lease_duration_s: int, renew_deadline_s: float,
                 retry_period_s: float,
                 on_started_leading: Callable[[], None] | None = None,
                 on_stopped_leading: Callable[[str], None] | None = None,
                 on_new_leader: Callable[[str], None] | None = None,
                 metrics: LeaderMetrics | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = _utc_now,
                 call_timeout_s: float = 5.0) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not 0 < retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("leader election needs 0 < retryPeriod < renewDeadline < leaseDuration, got "
                             f"{retry_period_s:g} / {renew_deadline_s:g} / {lease_duration_s}")
        self.lease = lease
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._metrics = metrics
        self._mono = monotonic
        self._wall = wall
        self._call_timeout = call_timeout_s
        self._mutex = threading.RLock()
        self._leading = False
        self._renewed_at = 0.0  # monotonic start of the last successful create/replace by us
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic time we last saw the record change
        self._contact_at: float | None = None  # monotonic time of the last answer from the API server
        self._last_error: str | None = None
        self._conflicted = False  # the last write attempt got 409
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.leader.set(0)

    # -- state ------------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True from acquiring the Lease until losing or releasing it (see `may_act` for the fence)."""
        return self._leading

    def may_act(self) -> bool:
        """Leading, and the last successful renew started less than renew_deadline ago (monotonic).

        Checked before every write the daemon makes, so even a tick that was running when the renewals
        started failing cannot write once the deadline has passed, before the elector thread notices.
        """
        return self._leading and self._mono() - self._renewed_at < self.renew_deadline_s

    def guard(self, method: str, url: str) -> None:
        """A write guard for `make_api_client`: raises `NotLeader` unless `may_act()`."""
        if not self.may_act():
            raise NotLeader(f"{method} {url.split('?', 1)[0]} refused: this replica ({self.identity}) "
                            "is not the leader")

    @property
    def holder(self) -> str | None:
        """The holder of the Lease as last seen ("" = released, None = never read)."""
        return self._observed.holder if self._observed is not None else None

    @property
    def last_contact(self) -> float | None:
        """Monotonic time the API server last answered the elector (a standby's readiness uses it)."""
        return self._contact_at

    @property
    def last_error(self) -> str | None:
        return self._last_error

    # -- one attempt ------------------------------------------------------------------------------
    def step(self) -> float:
        """Try to acquire or renew once; returns the seconds to wait before the next attempt."""
        with self._mutex:
            if self._leading and self._mono() - self._renewed_at >= self.renew_deadline_s:
                self._lose(f"could not renew the Lease within renewDeadline ({self.renew_deadline_s:g}s)")
            ok, wait = self._try_acquire_or_renew()
            if not ok and self._leading and self._conflicted:
                # Someone else wrote the Lease since we read it: read it again now rather than keep acting
                # for up to renewDeadline on a stale picture (another holder -> stop at once, below).
                ok, wait = self._try_acquire_or_renew()
            if ok:
                if not self._leading:
                    self._gain()
                return self.retry_period_s
            if self._leading:
                holder = self._observed.holder if self._observed is not None else ""
                left = self._renewed_at + self.renew_deadline_s - self._mono()
                if holder not in ("", self.identity):
                    self._lose(f"the Lease is held by {holder}")
                elif left <= 0:
                    self._lose(f"could not renew the Lease within renewDeadline ({self.renew_deadline_s:g}s)")
                else:
                    return min(self.retry_period_s, left)  # wake at the deadline at the latest
            return wait

    def _timeout(self) -> float:
        """Per-call timeout: never past the renew deadline while leading (client-go's renew context)."""
        if not self._leading:
            return self._call_timeout
        left = self._renewed_at + self.renew_deadline_s - self._mono()
        return max(0.05, min(self._call_timeout, left))

    def _try_acquire_or_renew(self) -> tuple[bool, float]:
        retry = self.retry_period_s
        self._conflicted = False
        try:
            current = self.lease.get(self._timeout())
        except KubeError as exc:
            self._failed(f"reading the Lease failed: {exc}")
            return False, retry
        self._contact_at = self._mono()
        now = self._wall()
        if current is None:
            fresh = LeaseRecord(holder=self.identity, lease_duration_s=self.lease_duration_s, acquire_time=now,
                                renew_time=now, transitions=0)
            return self._write(self.lease.create, fresh), retry
        if self._observed is None or current.resource_version != self._observed.resource_version:
            self._observe(current)
        if current.holder not in ("", self.identity):
            expires = self._observed_at + (current.lease_duration_s or self.lease_duration_s)
            left = expires - self._mono()
            if left > 0:
                return False, min(retry, left)  # held and not expired: wake at expiry at the latest
        if current.holder == self.identity:
            # A renewal keeps acquireTime and the transition count.
            wanted = replace(current, lease_duration_s=self.lease_duration_s, renew_time=now,
                             acquire_time=current.acquire_time or now)
        else:
            wanted = replace(current, holder=self.identity, lease_duration_s=self.lease_duration_s,
                             acquire_time=now, renew_time=now, transitions=current.transitions + 1)
        return self._write(self.lease.update, wanted), retry

    def _write(self, write: Callable[[LeaseRecord, float], LeaseRecord], record: LeaseRecord) -> bool:
        started = self._mono()  # the deadline counts from before the write: the conservative end
        try:
            written = write(record, self._timeout())
        except Conflict:
            # Another writer got there first (or created it first): read again before deciding.
            log.debug("lease write conflict", extra={"identity": self.identity})
            self._conflicted = True
            return False
        except KubeError as exc:
            self._failed(f"writing the Lease failed: {exc}")
            return False
        self._contact_at = self._mono()
        self._last_error = None
        self._observe(written)
        self._renewed_at = started
        return True

    def _observe(self, record: LeaseRecord) -> None:
        before = self._observed.holder if self._observed is not None else None
        self._observed = record
        self._observed_at = self._mono()
        if record.holder != before and record.holder != self.identity:
            if record.holder:
                log.info("leader observed", extra={"holder": record.holder, "identity": self.identity,
                                                   "lease_transitions": record.transitions})
            if self._on_new_leader is not None:
                self._on_new_leader(record.holder)

    def _failed(self, why: str) -> None:
        if why != self._last_error:
            (log.warning if self._leading else log.info)(why, extra={"identity": self.identity})
        self._last_error = why

    def _gain(self) -> None:
        self._leading = True
        rec = self._observed
        log.info("became leader", extra={"identity": self.identity,
                                         "lease_transitions": rec.transitions if rec else None})
        if self._metrics is not None:
            self._metrics.leader.set(1)
            self._metrics.transitions.labels("leader").inc()
        if self._on_started is not None:
            self._on_started()

    def _lose(self, why: str) -> None:
        if not self._leading:
            return
        self._leading = False
        log.warning("stopped leading", extra={"identity": self.identity, "reason": why})
        if self._metrics is not None:
            self._metrics.leader.set(0)
            self._metrics.transitions.labels("standby").inc()
        if self._on_stopped is not None:
            self._on_stopped(why)

    # -- release ----------------------------------------------------------------------------------
    def release(self, timeout: float | None = None) -> bool:
        """Stop acting, then hand the Lease back (empty holder, 1 s) so a standby takes it at once."""
        with self._mutex:
            if not self._leading:
                return False
            self._lose("shutting down")
            current = self._observed
            if current is None or current.holder != self.identity:
                return False
            now = self._wall()
            released = replace(current, holder="", lease_duration_s=1, acquire_time=now, renew_time=now)
            try:
                written = self.lease.update(released, min(timeout or self._call_timeout, self._call_timeout))
            except KubeError as exc:
                log.warning("could not release the Lease; a standby takes over when it expires",
                            extra={"identity": self.identity, "error": str(exc)})
                return False
            self._observed = written
            self._observed_at = self._mono()
            log.info("lease released", extra={"identity": self.identity})
            return True

    # -- thread -----------------------------------------------------------------------------------
    def start(self) -> LeaderElector:
        """Run `step()` every retry period on a daemon thread until `stop()`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="canaryd-leader", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
            except Exception:  # never let the elector die: a dead elector would lead forever (or never)
                log.exception("leader election step failed")
                with self._mutex:
                    self._lose("leader election failed")
                wait = self.retry_period_s
            self._stop.wait(wait)

    def stop(self, *, release: bool = True, timeout: float = 5.0) -> bool:
        """Stop the loop; with `release`, hand the Lease back if held. True if it was released."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if release:
            return self.release(timeout)
        with self._mutex:
            self._lose("shutting down")
        return False
