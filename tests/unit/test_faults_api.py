"""`ApiFaults`, the emulator's fault-injection hook, over raw HTTP: each kind answers the way the real API
server (or the load balancer in front of it) does, only for the requests it matches, as often as asked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from canaryd.sandbox.kubeapi import KubeApiEmulator
from tests.campaigns.faults import ApiFault, ApiFaults, Match

DAEMON = {"User-Agent": "canaryd/0.1.0 (linux/amd64) daemon"}
CLI = {"User-Agent": "canaryd/0.1.0 (linux/amd64) cli"}
CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def emulator() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator(namespaces=["default", "other"]) as em:
        yield em


@pytest.fixture
def faults(emulator: KubeApiEmulator) -> Iterator[ApiFaults]:
    with ApiFaults(emulator, seed=2) as f:
        yield f


@pytest.fixture
def http(emulator: KubeApiEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=10) as c:
        yield c


def cm(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


def test_conflict_error_and_throttle_answer_like_the_apiserver(http: httpx.Client, faults: ApiFaults) -> None:
    faults.add(ApiFault("conflict", Match(verbs=frozenset({"create"})), limit=1))
    r = http.post(CM, json=cm("a"), headers=DAEMON)
    assert r.status_code == 409 and r.json()["reason"] == "Conflict" and "modified" in r.json()["message"]
    faults.add(ApiFault("error", Match(verbs=frozenset({"create"})), limit=1, status=503))
    r = http.post(CM, json=cm("a"), headers=DAEMON)
    assert r.status_code == 503 and r.json()["reason"] == "ServiceUnavailable"
    faults.add(ApiFault("throttle", Match(verbs=frozenset({"create"})), limit=1, retry_after_s=3))
    r = http.post(CM, json=cm("a"), headers=DAEMON)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    assert r.json()["details"]["retryAfterSeconds"] == 3
    assert http.get(f"{CM}/a", headers=DAEMON).status_code == 404  # none of them was applied
    assert http.post(CM, json=cm("a"), headers=DAEMON).status_code == 201  # limits used up
    assert [f.status for f in faults.fired()] == [409, 503, 429]


def test_matching_by_client_namespace_and_verb(http: httpx.Client, faults: ApiFaults) -> None:
    faults.add(ApiFault("error", Match(namespace="default", verbs=frozenset({"get"}))))
    assert http.get(f"{CM}/x", headers=CLI).status_code == 404  # not the daemon: left alone
    assert http.get("/api/v1/namespaces/other/configmaps/x", headers=DAEMON).status_code == 404
    assert http.post(CM, json=cm("x"), headers=DAEMON).status_code == 201
    assert http.get(f"{CM}/x", headers=DAEMON).status_code == 500
    faults.clear()
    assert http.get(f"{CM}/x", headers=DAEMON).status_code == 200


def test_probability_is_seeded(emulator: KubeApiEmulator, http: httpx.Client) -> None:
    def run(seed: int) -> list[int]:
        with ApiFaults(emulator, seed=seed) as f:
            f.add(ApiFault("error", Match(user_agent=None), probability=0.3))
            return [http.get(f"{CM}/p").status_code for _ in range(40)]

    first = run(9)
    assert first == run(9) and 4 <= first.count(500) <= 22


def test_slow_holds_then_serves(http: httpx.Client, faults: ApiFaults) -> None:
    faults.add(ApiFault("slow", Match(), delay_s=0.4, limit=1))
    started = time.monotonic()
    assert http.post(CM, json=cm("slow"), headers=DAEMON).status_code == 201
    assert time.monotonic() - started >= 0.4


def test_lost_answer_applies_first(http: httpx.Client, faults: ApiFaults) -> None:
    faults.add(ApiFault("lost-answer", Match(), delay_s=1.0, limit=1))
    with pytest.raises(httpx.ReadTimeout):
        http.post(CM, json=cm("lost"), headers=DAEMON, timeout=0.3)
    assert http.get(f"{CM}/lost", headers=DAEMON).status_code == 200  # it landed all the same
    assert http.post(CM, json=cm("lost"), headers=DAEMON).status_code == 409  # a retried create: AlreadyExists


def watch_lines(http: httpx.Client, rv: str, timeout_s: int = 5) -> tuple[list[dict[str, object]], float]:
    started = time.monotonic()
    lines: list[dict[str, object]] = []
    with http.stream("GET", CM, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": str(timeout_s)},
                     headers=DAEMON) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                lines.append(json.loads(line))
    return lines, time.monotonic() - started


def test_drop_watch_ends_the_stream_early_after_real_events(http: httpx.Client, faults: ApiFaults) -> None:
    rv = http.post(CM, json=cm("w1"), headers=DAEMON).json()["metadata"]["resourceVersion"]
    http.post(CM, json=cm("w2"), headers=DAEMON)
    faults.add(ApiFault("drop-watch", Match(), delay_s=0.5))
    events, took = watch_lines(http, rv, timeout_s=30)
    assert [e["type"] for e in events] == ["ADDED"]  # w2, served by the emulator's own watch
    assert took < 5  # cut at 0.5 s, not at timeoutSeconds
    assert [f.kind for f in faults.fired()] == ["drop-watch"]


def test_expire_watch_sends_410(http: httpx.Client, faults: ApiFaults) -> None:
    faults.add(ApiFault("expire-watch", Match(), limit=1))
    events, _ = watch_lines(http, "1")
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert isinstance(status, dict) and status["code"] == 410 and status["reason"] == "Expired"


def test_watch_faults_leave_other_verbs_alone(http: httpx.Client, faults: ApiFaults) -> None:
    faults.add(ApiFault("expire-watch", Match()))
    assert http.get(CM, headers=DAEMON).status_code == 200


def test_bad_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown API fault"):
        ApiFault("boom")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answers one of"):
        ApiFault("error", status=418)
    with pytest.raises(ValueError, match="probability"):
        ApiFault("slow", probability=2)


def test_regression_a_cut_watch_could_hang_instead_of_ending(emulator: KubeApiEmulator) -> None:
    """The cut used to wait for the cancelled watch to finish, but the emulator's watch loop can swallow
    a cancellation that races with an arriving event (`asyncio.wait_for` on Python 3.11) and stream on
    until its timeout: the client waited for an end that never came, and canaryd's InferenceService
    cache, fed by that watch, served a stale object (rollouts stuck in Promoting and RollingBack in
    bench/faults.py). With events arriving all the time, every cut stream must still end at once."""
    import threading

    with ApiFaults(emulator) as faults:
        faults.add(ApiFault("drop-watch", Match(user_agent=None), delay_s=0.2))
        stop = threading.Event()

        def writer() -> None:
            with httpx.Client(base_url=emulator.url) as w:
                w.post(CM, json=cm("busy"))
                i = 0
                while not stop.is_set():
                    i += 1
                    w.patch(f"{CM}/busy", content=json.dumps({"data": {"i": str(i)}}),
                            headers={"content-type": "application/merge-patch+json"})

        hung: list[float] = []
        ended: list[int] = []

        def watcher() -> None:
            with httpx.Client(base_url=emulator.url, timeout=httpx.Timeout(3.0)) as c:
                rv, deadline = "0", time.monotonic() + 4
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    try:
                        with c.stream("GET", CM, params={"watch": "1", "resourceVersion": rv,
                                                         "timeoutSeconds": "300"}) as r:
                            for line in r.iter_lines():
                                event = json.loads(line) if line else None
                                if event is not None and event["type"] == "ERROR":
                                    rv = "0"
                                    break
                                if event is not None:
                                    rv = event["object"]["metadata"]["resourceVersion"]
                        ended.append(1)
                    except httpx.ReadTimeout:
                        hung.append(time.monotonic() - started)

        threads = [threading.Thread(target=writer, daemon=True)] + [threading.Thread(target=watcher) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join(20)
        stop.set()
        threads[0].join(5)
    assert not hung, f"{len(hung)} cut watches never ended ({len(ended)} did)"
    assert len(ended) >= 10


def test_stall_watch_goes_silent_with_the_connection_open(http: httpx.Client, faults: ApiFaults) -> None:
    rv = http.post(CM, json=cm("s1"), headers=DAEMON).json()["metadata"]["resourceVersion"]
    http.post(CM, json=cm("s2"), headers=DAEMON)
    faults.add(ApiFault("stall-watch", Match(), delay_s=0.3, hold_s=30))
    seen: list[str] = []
    started = time.monotonic()
    params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "60"}
    with pytest.raises(httpx.ReadTimeout), http.stream(  # no end, no error: only silence
            "GET", CM, params=params, headers=DAEMON, timeout=httpx.Timeout(10.0, read=1.5)) as r:
        for line in r.iter_lines():
            if line:
                seen.append(json.loads(line)["object"]["metadata"]["name"])
                if len(seen) == 1:
                    http.post(CM, json=cm("later"), headers=DAEMON)  # never delivered once stalled
    assert seen[0] == "s2" and 1.5 <= time.monotonic() - started < 5
