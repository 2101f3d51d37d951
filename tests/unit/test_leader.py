"""The leader elector's decisions, with a fake clock and an in-memory Lease (no threads, no sleeps).

What matters: a replica acquires a free, released or expired Lease and nothing else; it renews; it
stops acting at renewDeadline after its last successful renew (measured with the monotonic clock, from
the start of that write), before any standby may take over at leaseDuration; it never acts after losing;
and on shutdown it hands the Lease back so that a standby takes over at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from canaryd.adapters.kube import Conflict, KubeError, NotLeader, _WriteFence, user_agent
from canaryd.config import Settings
from canaryd.daemon.leader import LeaderElector, LeaderMetrics, LeaseRecord, object_from_record, record_from_object
from canaryd.daemon.scheduler import TickScheduler

LEASE, DEADLINE, RETRY = 4, 3.0, 0.5


class Clock:
    """Monotonic and wall time that only move when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.epoch = datetime(2030, 1, 1, tzinfo=UTC)

    def mono(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return self.epoch + timedelta(seconds=self.t)

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeLease:
    """One Lease with resourceVersion preconditions, like the API server (409 on a stale write)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.record: LeaseRecord | None = None
        self.rv = 0
        self.fail: KubeError | None = None  # every call raises this while set
        self.write_takes = 0.0  # seconds a write takes (the clock moves during it)
        self.before_write: Callable[[], None] | None = None  # another writer sneaking in
        self.writes: list[LeaseRecord] = []

    def _bump(self, record: LeaseRecord) -> LeaseRecord:
        self.rv += 1
        self.record = replace(record, resource_version=str(self.rv))
        self.writes.append(self.record)
        return self.record

    def get(self, timeout: float) -> LeaseRecord | None:
        if self.fail is not None:
            raise self.fail
        return self.record

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        self._writing()
        if self.record is not None:
            raise Conflict("leases already exists", status=409)
        return self._bump(record)

    def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        self._writing()
        assert self.record is not None
        if record.resource_version != self.record.resource_version:
            raise Conflict("the object has been modified", status=409)
        return self._bump(record)

    def _writing(self) -> None:
        if self.fail is not None:
            raise self.fail
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        self.clock.advance(self.write_takes)

    def put(self, holder: str, duration: int = LEASE, transitions: int = 0) -> None:
        """Another process writes the Lease directly."""
        now = self.clock.wall()
        base = self.record or LeaseRecord(holder="")
        self._bump(replace(base, holder=holder, lease_duration_s=duration, acquire_time=now, renew_time=now,
                           transitions=transitions))


class Events:
    def __init__(self) -> None:
        self.log: list[str] = []

    def started(self) -> None:
        self.log.append("started")

    def stopped(self, why: str) -> None:
        self.log.append(f"stopped: {why}")


def elector(lease: FakeLease, clock: Clock, identity: str = "me", events: Events | None = None,
            registry: CollectorRegistry | None = None) -> LeaderElector:
    ev = events or Events()
    return LeaderElector(lease, identity, lease_duration_s=LEASE, renew_deadline_s=DEADLINE, retry_period_s=RETRY,
                         on_started_leading=ev.started, on_stopped_leading=ev.stopped,
                         metrics=LeaderMetrics(registry) if registry is not None else None,
                         monotonic=clock.mono, wall=clock.wall)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lease(clock: Clock) -> FakeLease:
    return FakeLease(clock)


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


# ---------------------------------------------------------------------------------------------- acquire


def test_acquires_a_lease_that_does_not_exist(lease: FakeLease, clock: Clock) -> None:
    ev, reg = Events(), CollectorRegistry()
    e = elector(lease, clock, events=ev, registry=reg)
    assert not e.is_leader and not e.may_act()
    assert sample(reg, "canaryd_leader") == 0
    assert e.step() == RETRY
    assert e.is_leader and e.may_act()
    assert ev.log == ["started"]
    assert lease.record is not None
    assert lease.record.holder == "me" and lease.record.lease_duration_s == LEASE
    assert lease.record.transitions == 0
    assert lease.record.acquire_time == lease.record.renew_time == clock.wall()
    assert sample(reg, "canaryd_leader") == 1
    assert sample(reg, "canaryd_leader_transitions_total", {"to": "leader"}) == 1


def test_renewal_keeps_acquire_time_and_transitions(lease: FakeLease, clock: Clock) -> None:
    e = elector(lease, clock)
    e.step()
    assert lease.record is not None
    acquired = lease.record.acquire_time
    clock.advance(RETRY)
    e.step()
    assert lease.record.holder == "me" and lease.record.acquire_time == acquired
    assert lease.record.renew_time == clock.wall() and lease.record.transitions == 0
    assert len(lease.writes) == 2


def test_a_held_lease_is_taken_only_after_lease_duration_since_its_last_change(lease: FakeLease,
                                                                              clock: Clock) -> None:
    lease.put("other", transitions=3)
    e = elector(lease, clock)
    assert e.step() == RETRY and not e.is_leader  # held, just seen
    assert e.holder == "other"
    clock.advance(LEASE - 1)
    lease.put("other", transitions=3)  # the holder renews: expiry counts from this change
    clock.advance(RETRY)
    e.step()  # sees the renewal: the Lease is held until LEASE from now
    clock.advance(LEASE - 1)
    assert e.step() == pytest.approx(RETRY) and not e.is_leader
    clock.advance(1 - 0.1)
    # Close to expiry the standby wakes exactly at expiry rather than a whole retry period later.
    assert e.step() == pytest.approx(0.1)
    assert not e.is_leader
    clock.advance(0.1)
    e.step()
    assert e.is_leader
    assert lease.record is not None
    assert lease.record.holder == "me" and lease.record.transitions == 4
    assert lease.record.acquire_time == clock.wall()


def test_expiry_is_judged_by_our_clock_not_by_renew_time(lease: FakeLease, clock: Clock) -> None:
    """A renewTime far in the past (skewed clock on the holder's node) does not make the Lease free."""
    lease.put("other")
    assert lease.record is not None
    lease.record = replace(lease.record, renew_time=clock.wall() - timedelta(hours=1))
    e = elector(lease, clock)
    e.step()
    assert not e.is_leader
    clock.advance(LEASE)
    e.step()
    assert e.is_leader


def test_a_released_lease_is_taken_at_once(lease: FakeLease, clock: Clock) -> None:
    lease.put("", duration=1, transitions=2)
    e = elector(lease, clock)
    e.step()
    assert e.is_leader
    assert lease.record is not None and lease.record.transitions == 3


def test_own_identity_in_the_lease_is_taken_back_at_once(lease: FakeLease, clock: Clock) -> None:
    """client-go: the same identity (a restarted container of the same pod) continues the Lease."""
    lease.put("me", transitions=5)
    e = elector(lease, clock)
    e.step()
    assert e.is_leader
    assert lease.record is not None and lease.record.transitions == 5


def test_a_conflicting_write_loses_the_race(lease: FakeLease, clock: Clock) -> None:
    lease.put("", duration=1)
    e = elector(lease, clock)
    lease.before_write = lambda: lease.put("other")  # the other candidate wins between our get and replace
    e.step()
    assert not e.is_leader and not e.may_act()
    assert lease.record is not None and lease.record.holder == "other"
    e.step()  # reads again, sees the new holder, waits for its expiry
    assert not e.is_leader and e.holder == "other"


def test_creating_races_too(lease: FakeLease, clock: Clock) -> None:
    e = elector(lease, clock)
    lease.before_write = lambda: lease.put("other")
    e.step()
    assert not e.is_leader
    e.step()
    assert not e.is_leader and e.holder == "other"


# ---------------------------------------------------------------------------------------------- losing


def test_gives_up_at_renew_deadline_before_anyone_can_take_over(lease: FakeLease, clock: Clock) -> None:
    ev, reg = Events(), CollectorRegistry()
    e = elector(lease, clock, events=ev, registry=reg)
    standby = elector(lease, clock, identity="standby")
    e.step()
    standby.step()  # sees our renewal now
    lease.fail = KubeError("connection refused")
    clock.advance(RETRY)
    e.step()
    assert e.is_leader and e.may_act()  # one failed renewal is not the end
    clock.advance(DEADLINE - RETRY - 0.01)
    assert e.may_act()
    clock.advance(0.01)
    # Exactly at the deadline the fence is closed, whether or not the elector thread has run yet.
    assert not e.may_act()
    with pytest.raises(NotLeader):
        e.guard("PATCH", "/apis/serving.kserve.io/v1beta1/namespaces/a/inferenceservices/x")
    e.step()
    assert not e.is_leader
    assert ev.log == ["started", "stopped: could not renew the Lease within renewDeadline (3s)"]
    assert sample(reg, "canaryd_leader") == 0
    assert sample(reg, "canaryd_leader_transitions_total", {"to": "standby"}) == 1
    # The standby may take the Lease only at leaseDuration after the renewal it saw: later.
    lease.fail = None
    standby.step()
    assert not standby.is_leader
    clock.advance(LEASE - DEADLINE)
    standby.step()
    assert standby.is_leader
    # The old leader, back in contact, sees the new holder and stays a standby.
    e.step()
    assert not e.is_leader and not e.may_act()


def test_deadline_counts_from_the_start_of_the_last_successful_write(lease: FakeLease, clock: Clock) -> None:
    e = elector(lease, clock)
    lease.write_takes = 1.0  # a slow API server: the write is accepted somewhere in this second
    e.step()
    assert e.is_leader
    lease.fail = KubeError("timeout")
    clock.advance(DEADLINE - 1.0 - 0.01)
    assert e.may_act()
    clock.advance(0.01)
    assert not e.may_act()  # DEADLINE after the write *started*, not after it returned


def test_a_failing_leader_wakes_at_its_deadline(lease: FakeLease, clock: Clock) -> None:
    e = elector(lease, clock)
    e.step()
    lease.fail = KubeError("boom")
    clock.advance(DEADLINE - 0.2)
    assert e.step() == pytest.approx(0.2)
    assert e.is_leader
    clock.advance(0.2)
    e.step()
    assert not e.is_leader


def test_seeing_another_holder_while_leading_stops_at_once(lease: FakeLease, clock: Clock) -> None:
    ev = Events()
    e = elector(lease, clock, events=ev)
    e.step()
    lease.put("intruder")  # e.g. this process was frozen past its Lease and someone took it
    clock.advance(RETRY)
    e.step()
    assert not e.is_leader and not e.may_act()
    assert ev.log == ["started", "stopped: the Lease is held by intruder"]


def test_a_conflict_while_leading_is_read_again_at_once(lease: FakeLease, clock: Clock) -> None:
    e = elector(lease, clock)
    e.step()
    # A harmless write in between (someone labelled the Lease): re-read, renew, still the leader.
    lease.before_write = lambda: lease._bump(replace(lease.record or LeaseRecord(holder=""),
                                                     metadata={"labels": {"x": "y"}}))
    clock.advance(RETRY)
    e.step()
    assert e.is_leader and lease.record is not None and lease.record.holder == "me"
    # Another holder in between: stop at once, not at the renew deadline.
    lease.before_write = lambda: lease.put("other")
    clock.advance(RETRY)
    e.step()
    assert not e.is_leader and not e.may_act()


def test_never_acts_after_losing_even_while_the_lease_still_names_it(lease: FakeLease, clock: Clock) -> None:
    e = elector(lease, clock)
    e.step()
    lease.fail = KubeError("partition")
    for _ in range(10):
        clock.advance(RETRY)
        e.step()
    assert not e.is_leader and not e.may_act()
    assert lease.record is not None and lease.record.holder == "me"  # the server never heard of it


def test_transitions_are_counted_both_ways(lease: FakeLease, clock: Clock) -> None:
    reg = CollectorRegistry()
    e = elector(lease, clock, registry=reg)
    for _ in range(2):
        e.step()
        lease.put("other")
        e.step()
        clock.advance(LEASE)
    assert sample(reg, "canaryd_leader_transitions_total", {"to": "leader"}) == 2
    assert sample(reg, "canaryd_leader_transitions_total", {"to": "standby"}) == 2


# ---------------------------------------------------------------------------------------------- release


def test_release_hands_the_lease_to_a_standby_at_once(lease: FakeLease, clock: Clock) -> None:
    ev = Events()
    e = elector(lease, clock, events=ev)
    standby = elector(lease, clock, identity="standby")
    e.step()
    standby.step()
    assert e.stop(release=True) is True
    assert not e.is_leader and not e.may_act()
    assert ev.log == ["started", "stopped: shutting down"]
    assert lease.record is not None
    assert lease.record.holder == "" and lease.record.lease_duration_s == 1 and lease.record.transitions == 0
    clock.advance(RETRY)  # no waiting for expiry
    standby.step()
    assert standby.is_leader
    assert lease.record.holder == "standby" and lease.record.transitions == 1


def test_release_by_a_standby_writes_nothing(lease: FakeLease, clock: Clock) -> None:
    lease.put("other")
    e = elector(lease, clock)
    e.step()
    writes = len(lease.writes)
    assert e.stop(release=True) is False
    assert len(lease.writes) == writes


def test_a_failed_release_still_stops_acting(lease: FakeLease, clock: Clock) -> None:
    e = elector(lease, clock)
    e.step()
    lease.fail = KubeError("gone")
    assert e.release() is False
    assert not e.may_act()


def test_the_thread_runs_steps_and_stops(lease: FakeLease) -> None:
    """The real loop (real clocks), briefly: acquires, then releases on stop."""
    started = threading.Event()
    e = LeaderElector(lease, "me", lease_duration_s=2, renew_deadline_s=1.0, retry_period_s=0.05,
                      on_started_leading=started.set)
    e.start()
    assert started.wait(5)
    assert e.stop(release=True, timeout=5)
    assert lease.record is not None and lease.record.holder == ""


# ---------------------------------------------------------------------------------------------- wiring


def test_lease_object_round_trip() -> None:
    t = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    rec = LeaseRecord("pod-a", 15, t, t, 7, "42", {"labels": {"a": "b"}, "uid": "u"})
    obj = object_from_record(rec, "ns", "canaryd")
    assert obj["metadata"] == {"labels": {"a": "b"}, "name": "canaryd", "namespace": "ns", "resourceVersion": "42"}
    assert obj["spec"] == {"holderIdentity": "pod-a", "leaseTransitions": 7, "leaseDurationSeconds": 15,
                           "acquireTime": "2030-01-02T03:04:05.678901Z", "renewTime": "2030-01-02T03:04:05.678901Z"}
    assert record_from_object(obj) == rec


def test_bad_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="retryPeriod < renewDeadline < leaseDuration"):
        LeaderElector(FakeLease(Clock()), "me", lease_duration_s=3, renew_deadline_s=3, retry_period_s=1)


@pytest.mark.parametrize(("leader", "field"), [
    ({"leaseDurationS": 10, "renewDeadlineS": 10}, "leader.renewDeadlineS"),
    ({"renewDeadlineS": 2, "retryPeriodS": 2}, "leader.retryPeriodS"),
])
def test_settings_name_the_field_in_error(leader: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(repo={"url": "x"}, leader=leader)


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(repo={"url": "x"})
    le = s.leader
    assert (le.enabled, le.lease_duration_s, le.renew_deadline_s, le.retry_period_s) == (False, 15, 10, 2)
    assert (le.namespace, le.identity, le.lease_name) == (None, None, "canaryd")
    assert s.shutdown_timeout_s == 20
    monkeypatch.setenv("CANARYD_LEADER__ENABLED", "true")
    monkeypatch.setenv("CANARYD_LEADER__LEASE_DURATION_S", "4")
    monkeypatch.setenv("CANARYD_LEADER__RENEW_DEADLINE_S", "3")
    monkeypatch.setenv("CANARYD_LEADER__RETRY_PERIOD_S", "0.5")
    monkeypatch.setenv("CANARYD_LEADER__IDENTITY", "pod-a")
    monkeypatch.setenv("CANARYD_SHUTDOWN_TIMEOUT_S", "7")
    s = Settings(repo={"url": "x"})
    assert (s.leader.enabled, s.leader.lease_duration_s, s.leader.renew_deadline_s, s.leader.retry_period_s,
            s.leader.identity, s.shutdown_timeout_s) == (True, 4, 3.0, 0.5, "pod-a", 7.0)


class _Rest:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.pool = "inner attribute"

    def request(self, method: str, url: str, **_: Any) -> str:
        self.sent.append(method)
        return "ok"


def test_write_fence_refuses_writes_only() -> None:
    allowed = [True]

    def guard(method: str, url: str) -> None:
        if not allowed[0]:
            raise NotLeader(f"{method} {url}")

    rest = _Rest()
    fence = _WriteFence(rest, guard)
    assert fence.request("GET", "/x") == "ok" and fence.request("PATCH", "/x") == "ok"
    allowed[0] = False
    assert fence.request("GET", "/x") == "ok"
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(NotLeader):
            fence.request(method, "/x")
    assert rest.sent == ["GET", "PATCH", "GET"]
    assert fence.pool == "inner attribute"


def test_user_agent_names_canaryd_and_the_component() -> None:
    ua = user_agent("daemon")
    assert ua.startswith("canaryd/") and ua.endswith(" daemon")


def test_drain_waits_for_the_running_tick_then_nothing_more_runs() -> None:
    entered, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def tick(key: str) -> datetime | None:
        ran.append(key)
        entered.set()
        release.wait(5)
        return None

    s = TickScheduler(tick, workers=2)
    s.start()
    try:
        s.trigger("a/b")
        assert entered.wait(5)
        assert s.drain(0.05) is False  # bounded: the tick is still running
        s.trigger("a/c")  # refused while paused
        release.set()
        assert s.drain(5) is True
        assert ran == ["a/b"]
        assert s.running  # paused is not stopped: /healthz stays green on a standby
    finally:
        s.shutdown(wait=False)
