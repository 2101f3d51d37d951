"""Leader election against the Kubernetes API emulator: real HTTP, the real `kubernetes` client, real time.

Two electors in one process race for one Lease. The emulator enforces what a real API server does
(resourceVersion preconditions: 409 on a stale replace, AlreadyExists on a second create), and its
request hooks cut one elector off the API to show the timing guarantee: the cut-off leader stops
acting at renewDeadline, and the other takes over only after leaseDuration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from kubernetes import client
from starlette.responses import JSONResponse, Response

from canaryd.adapters.kube import KubeError, NotLeader, make_api_client, user_agent
from canaryd.daemon.leader import KubeLeaseClient, LeaderElector, LeaseRecord
from canaryd.sandbox.kubeapi import KubeApiEmulator, RequestInfo, status_body
from tests.polling import wait_for

NS = "canaryd-system"
LEASE_NAME = "canaryd"
LEASE, DEADLINE, RETRY = 3, 2.0, 0.25
G, V, R = "coordination.k8s.io", "v1", "leases"


@pytest.fixture(scope="module")
def emulator() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator(namespaces=("default", NS)) as emu:
        yield emu


@pytest.fixture(scope="module")
def kubeconfig(emulator: KubeApiEmulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@dataclass
class Candidate:
    """One elector with its own client (own User-Agent, so a hook can cut it off) and a log of events."""

    elector: LeaderElector
    api: client.ApiClient
    events: list[tuple[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.elector.identity

    def at(self, what: str) -> float:
        return next(t for w, t in self.events if w == what)


@pytest.fixture
def lease_name(request: pytest.FixtureRequest) -> str:
    # One Lease per test: the module's emulator is shared.
    return f"{LEASE_NAME}-{request.node.name.removeprefix('test_').replace('_', '-')[:40].strip('-')}"


@pytest.fixture
def candidates(kubeconfig: Path, lease_name: str) -> Iterator[list[Candidate]]:
    made: list[Candidate] = []

    def make(identity: str) -> Candidate:
        api = make_api_client(str(kubeconfig), component=f"elector-{identity}")
        cand = Candidate(elector=None, api=api)  # type: ignore[arg-type]
        cand.elector = LeaderElector(
            KubeLeaseClient(api, NS, lease_name), identity, lease_duration_s=LEASE, renew_deadline_s=DEADLINE,
            retry_period_s=RETRY, call_timeout_s=1.0,
            on_started_leading=lambda: cand.events.append(("started", time.monotonic())),
            on_stopped_leading=lambda why: cand.events.append(("stopped", time.monotonic())),
        )
        made.append(cand)
        return cand

    made_pair = [make("a"), make("b")]
    yield made_pair
    for cand in made:
        cand.elector.stop(release=True, timeout=3)
        cand.api.close()


def lease_of(emulator: KubeApiEmulator, name: str) -> dict[str, object]:
    obj = emulator.get_object(G, V, R, name, NS)
    assert obj is not None
    spec = obj["spec"]
    assert isinstance(spec, dict)
    return spec


def leaders(cands: list[Candidate]) -> list[str]:
    return [c.name for c in cands if c.elector.may_act()]


def test_two_electors_exactly_one_leads(candidates: list[Candidate], emulator: KubeApiEmulator,
                                        lease_name: str) -> None:
    for c in candidates:
        c.elector.start()
    wait_for("a leader", lambda: leaders(candidates))
    # Watch for a while (several renew periods): never two, never none.
    seen: set[tuple[str, ...]] = set()
    end = time.monotonic() + 6 * RETRY
    while time.monotonic() < end:
        seen.add(tuple(leaders(candidates)))
        time.sleep(0.01)
    assert len(seen) == 1 and len(next(iter(seen))) == 1, seen
    leader = next(c for c in candidates if c.elector.is_leader)
    spec = lease_of(emulator, lease_name)
    assert spec["holderIdentity"] == leader.name
    assert spec["leaseDurationSeconds"] == LEASE
    assert spec["leaseTransitions"] == 0
    assert spec["renewTime"] != spec["acquireTime"]  # renewed since
    calls = {(c.verb, c.status) for c in emulator.calls if c.resource == R and c.name in ("", lease_name)}
    assert ("update", 200) in calls and ("get", 200) in calls


def test_a_leader_cut_off_stops_before_the_other_takes_over(candidates: list[Candidate],
                                                            emulator: KubeApiEmulator, lease_name: str) -> None:
    a, b = candidates
    a.elector.start()
    wait_for("a leads", lambda: a.elector.is_leader)
    b.elector.start()
    wait_for("b has seen a's Lease", lambda: b.elector.holder == "a")
    a_agent = user_agent("elector-a")

    async def cut_off_a(info: RequestInfo) -> Response | None:
        if info.user_agent == a_agent:
            return JSONResponse(status_body(503, "ServiceUnavailable", "partitioned"), 503)
        return None

    emulator.hooks.append(cut_off_a)
    cut = time.monotonic()
    try:
        wait_for("b takes over", lambda: b.elector.is_leader, deadline_s=LEASE + 10)
    finally:
        emulator.hooks.remove(cut_off_a)
    stopped, started = a.at("stopped"), b.at("started")
    # a gave up at renewDeadline after its last successful renew (which was at most RETRY before the cut),
    assert DEADLINE - RETRY - 0.05 <= stopped - cut <= DEADLINE + 0.5, stopped - cut
    # b waited for leaseDuration after the last renewal it saw, and so started after a stopped.
    assert stopped < started
    assert LEASE - RETRY - 0.05 <= started - cut <= LEASE + RETRY + 1.0, started - cut
    spec = lease_of(emulator, lease_name)
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    # Back on the network, a reads the Lease, sees b, and stays a standby.
    wait_for("a sees b", lambda: a.elector.holder == "b")
    assert not a.elector.may_act() and b.elector.may_act()


def test_release_lets_the_other_take_over_at_once(candidates: list[Candidate], emulator: KubeApiEmulator,
                                                  lease_name: str) -> None:
    a, b = candidates
    a.elector.start()
    wait_for("a leads", lambda: a.elector.is_leader)
    b.elector.start()
    wait_for("b has seen a's Lease", lambda: b.elector.holder == "a")
    released = time.monotonic()
    assert a.elector.stop(release=True)
    spec = lease_of(emulator, lease_name)
    assert spec["holderIdentity"] == "" or spec["holderIdentity"] == "b"
    wait_for("b takes over", lambda: b.elector.is_leader)
    assert b.at("started") - released < RETRY + 0.5  # a retry period, not a lease duration
    assert lease_of(emulator, lease_name)["leaseTransitions"] == 1


class RacingLease(KubeLeaseClient):
    """Lets another writer replace the Lease between our read and our replace: a real stale write."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, intruder: KubeLeaseClient) -> None:
        super().__init__(api, namespace, name)
        self.intruder = intruder
        self.armed = False
        self.conflicts = 0

    def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        if self.armed:
            self.armed = False
            current = self.intruder.get(timeout)
            assert current is not None
            self.intruder.update(replace(current, holder="intruder", lease_duration_s=LEASE), timeout)
        try:
            return super().update(record, timeout)
        except KubeError as exc:
            if getattr(exc, "status", None) == 409:
                self.conflicts += 1
            raise


def test_a_stale_write_gets_409_and_is_handled(kubeconfig: Path, emulator: KubeApiEmulator, lease_name: str) -> None:
    api = make_api_client(str(kubeconfig), component="elector-racer")
    other = make_api_client(str(kubeconfig), component="intruder")
    try:
        lease = RacingLease(api, NS, lease_name, KubeLeaseClient(other, NS, lease_name))
        e = LeaderElector(lease, "racer", lease_duration_s=LEASE, renew_deadline_s=DEADLINE, retry_period_s=RETRY)
        e.step()  # creates it
        assert e.is_leader
        lease.armed = True
        e.step()  # renew with the resourceVersion it read: the intruder wrote in between -> 409
        assert lease.conflicts == 1
        # It reads the Lease again at once, sees the intruder and stops acting without waiting.
        assert not e.is_leader and not e.may_act()
        assert e.holder == "intruder"
        stale = [c for c in emulator.calls if c.resource == R and c.name == lease_name and c.status == 409]
        assert stale and stale[-1].verb == "update" and stale[-1].user_agent == user_agent("elector-racer")
        e.step()  # the intruder's Lease is valid: a standby now
        assert not e.is_leader and lease_of(emulator, lease_name)["holderIdentity"] == "intruder"
    finally:
        api.close()
        other.close()


def test_the_write_fence_blocks_a_former_leader(kubeconfig: Path, emulator: KubeApiEmulator,
                                                lease_name: str) -> None:
    lease_api = make_api_client(str(kubeconfig), component="daemon")
    e = LeaderElector(KubeLeaseClient(lease_api, NS, lease_name), "fenced", lease_duration_s=LEASE,
                      renew_deadline_s=DEADLINE, retry_period_s=RETRY)
    work = make_api_client(str(kubeconfig), component="daemon", write_guard=e.guard)
    core = client.CoreV1Api(work)
    try:
        with pytest.raises(NotLeader):
            core.create_namespaced_config_map(NS, {"metadata": {"name": f"{lease_name}-before"}})
        e.step()
        core.create_namespaced_config_map(NS, {"metadata": {"name": f"{lease_name}-leading"}})
        e.stop(release=True)
        before = len(emulator.calls)
        with pytest.raises(NotLeader):
            core.create_namespaced_config_map(NS, {"metadata": {"name": f"{lease_name}-after"}})
        assert core.read_namespaced_config_map(f"{lease_name}-leading", NS).metadata.name  # reads still work
        assert not any(c.verb == "create" for c in emulator.calls[before:])  # refused before it was sent
    finally:
        lease_api.close()
        work.close()


def test_threads_race_for_a_fresh_lease(kubeconfig: Path, emulator: KubeApiEmulator, lease_name: str) -> None:
    """Several electors started at once: creates collide (409 AlreadyExists), one wins, none crashes."""
    apis = [make_api_client(str(kubeconfig), component=f"elector-r{i}") for i in range(4)]
    electors = [LeaderElector(KubeLeaseClient(api, NS, lease_name), f"r{i}", lease_duration_s=LEASE,
                              renew_deadline_s=DEADLINE, retry_period_s=RETRY) for i, api in enumerate(apis)]
    barrier = threading.Barrier(len(electors))

    def first_step(e: LeaderElector) -> None:
        barrier.wait(5)
        e.step()

    threads = [threading.Thread(target=first_step, args=(e,)) for e in electors]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sum(e.is_leader for e in electors) == 1
        holder = lease_of(emulator, lease_name)["holderIdentity"]
        assert holder == next(e.identity for e in electors if e.is_leader)
    finally:
        for e in electors:
            e.stop(release=True, timeout=2)
        for api in apis:
            api.close()
