"""The load generator against a tiny real HTTP server that counts what it receives."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from canaryd.httpserver import ThreadedServer
from canaryd.sandbox.loadgen import LoadGenerator, Target


class Recorder:
    """Counts requests per path and Host, and the most requests it ever held at once."""

    def __init__(self) -> None:
        self.paths: Counter[str] = Counter()
        self.hosts: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0

    async def handle(self, request: Request) -> Response:
        await request.body()
        self.paths[request.url.path] += 1
        self.hosts[request.headers.get("host", "")] += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if request.url.path == "/slow":
                await asyncio.sleep(0.3)
            status = 500 if request.url.path == "/fail" else 200
            return JSONResponse({"ok": status == 200}, status_code=status)
        finally:
            self.active -= 1


@pytest.fixture
def server() -> Iterator[tuple[ThreadedServer, Recorder]]:
    recorder = Recorder()
    app = Starlette(routes=[Route("/{path:path}", recorder.handle, methods=["POST"])])
    with ThreadedServer(app, name="loadgen-target") as srv:
        yield srv, recorder


def poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


def test_rate_is_kept_and_it_stops_by_itself_at_the_duration(server: tuple[ThreadedServer, Recorder]) -> None:
    srv, rec = server
    started = time.monotonic()
    gen = LoadGenerator([Target(f"{srv.url}/fast", None, 200.0)], duration_s=1.0, max_requests=None).start()
    assert gen.wait(timeout=5.0), "generator did not stop by itself"
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5
    stats = gen.stats()
    assert 180 <= stats.sent <= 202  # 200/s for 1 s, open loop: no more than the schedule allows
    assert stats.ok == stats.sent == rec.paths["/fast"]
    assert stats.by_status == {200: stats.sent} and stats.errors == 0 and stats.in_flight == 0


def test_open_loop_keeps_the_schedule_while_responses_are_slow(
    server: tuple[ThreadedServer, Recorder],
) -> None:
    srv, rec = server
    gen = LoadGenerator([Target(f"{srv.url}/slow", None, 100.0)], duration_s=0.5, max_requests=None).start()
    assert gen.wait(timeout=5.0)
    stats = gen.stats()
    # a closed loop with one client would manage ~2 requests in 0.5 s against a 0.3 s server
    assert 45 <= stats.sent <= 51 and stats.ok == stats.sent
    assert rec.max_active >= 20  # requests overlapped


def test_in_flight_requests_are_bounded(server: tuple[ThreadedServer, Recorder]) -> None:
    srv, rec = server
    gen = LoadGenerator([Target(f"{srv.url}/slow", None, 200.0)], duration_s=0.6, max_requests=None, concurrency=5)
    gen.start()
    assert gen.wait(timeout=5.0)
    stats = gen.stats()
    assert stats.max_in_flight == 5 and rec.max_active <= 5
    assert stats.skipped > 50  # due while the cap was reached: skipped, not queued into a later burst
    assert stats.sent + stats.skipped >= 110 and stats.ok == stats.sent == rec.paths["/slow"]


def test_max_requests_statuses_and_host_header(server: tuple[ThreadedServer, Recorder]) -> None:
    srv, rec = server
    targets = [
        Target(f"{srv.url}/fast", "iris.models.example.com", 300.0),
        Target(f"{srv.url}/fail", "prev-iris.models.example.com", 300.0),
    ]
    gen = LoadGenerator(targets, duration_s=None, max_requests=60).start()
    assert gen.wait(timeout=5.0)
    stats = gen.stats()
    assert stats.sent == 60 and stats.ok + stats.errors == 60
    assert stats.by_status == {200: stats.ok, 500: stats.errors} and 20 <= stats.ok <= 40  # ~half each
    assert rec.hosts == {"iris.models.example.com": stats.ok, "prev-iris.models.example.com": stats.errors}


def test_targets_can_change_while_running(server: tuple[ThreadedServer, Recorder]) -> None:
    srv, rec = server
    with LoadGenerator([Target(f"{srv.url}/a", None, 100.0)], duration_s=20.0, max_requests=None) as gen:
        poll(lambda: rec.paths["/a"] >= 5)
        gen.set_targets([Target(f"{srv.url}/b", None, 100.0)])
        sent_before = gen.stats().sent  # all to /a, except at most one already fired on the old schedule
        poll(lambda: rec.paths["/b"] >= 10)
        assert rec.paths["/a"] <= sent_before + 1  # /a is no longer sent to
        assert gen.running
    assert not gen.running  # stop() ended it long before its 20 s


def test_unreachable_target_counts_transport_errors() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gen = LoadGenerator([Target(f"http://127.0.0.1:{port}/x", None, 100.0)], duration_s=None, max_requests=10)
    assert gen.start().wait(timeout=10.0)
    stats = gen.stats()
    assert stats.sent == 10 and stats.transport_errors == 10 and stats.errors == 10 and stats.ok == 0


def test_it_refuses_to_run_unbounded() -> None:
    with pytest.raises(ValueError, match="stops by itself"):
        LoadGenerator([Target("http://127.0.0.1:1/", None, 1.0)], duration_s=None, max_requests=None)
    with pytest.raises(ValueError, match="rate_per_s"):
        LoadGenerator([Target("http://127.0.0.1:1/", None, 0.0)], duration_s=1.0, max_requests=None)
