"""The shared HTTP server's time bounds, over real sockets: half-open, trickling and idle connections are
closed within their bound, and ordinary requests (kept-alive ones included) are served as before."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from canaryd.config import ServerSettings
from canaryd.httpserver import HEADER_TIMEOUT_S, ThreadedServer


async def echo(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(f"got {len(body)}")


APP = Starlette(routes=[Route("/", echo, methods=["GET", "POST"])])


def closed_within(sock: socket.socket, deadline_s: float) -> float | None:
    """Seconds until the server closed `sock` (read EOF or reset), or None if it is still open at the
    deadline. Answers are read and dropped (a closed connection is what matters)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < deadline_s:
        try:
            if not sock.recv(4096):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


@pytest.fixture
def fast() -> Iterator[ThreadedServer]:
    with ThreadedServer(APP, header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_s=1) as srv:
        yield srv


def test_regression_half_open_connections_kept_forever() -> None:
    """Issue 13 item 6: a client that connected and sent nothing, or half a request line and then nothing,
    was kept open forever (uvicorn's keep-alive timer only starts after a first response). With the
    default bounds (a server built the way every canaryd server is) both are closed at the header
    deadline."""
    with ThreadedServer(APP) as srv:
        silent = socket.create_connection((srv.host, srv.port))
        half = socket.create_connection((srv.host, srv.port))
        half.sendall(b"GET /hea")
        results: dict[str, float | None] = {}

        def watch(name: str, sock: socket.socket) -> None:
            results[name] = closed_within(sock, HEADER_TIMEOUT_S + 10)

        threads = [threading.Thread(target=watch, args=item) for item in (("silent", silent), ("half", half))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        silent.close()
        half.close()
        # closed, and by the header deadline (not by something sooner that would cut real clients off)
        assert all(t is not None and t >= HEADER_TIMEOUT_S - 1 for t in results.values()), results
        assert httpx.get(srv.url + "/", timeout=5).text == "got 0"  # and the server still serves


def test_trickled_headers_do_not_extend_the_deadline(fast: ThreadedServer) -> None:
    """One byte every 0.1s: the header deadline is a total, not an idle timeout."""
    with socket.create_connection((fast.host, fast.port)) as sock:
        sock.settimeout(0.1)  # the trickle's pace: each wait for an answer is one byte's pause
        started = time.monotonic()
        took = None
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
                if not sock.recv(4096):
                    took = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                took = time.monotonic() - started
                break
        assert took is not None and took < 4, took  # 0.5s bound; 20s of trickle if it were extended


def test_a_stalled_body_is_closed(fast: ThreadedServer) -> None:
    with socket.create_connection((fast.host, fast.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        assert closed_within(sock, 5) is not None


def test_an_idle_kept_alive_connection_is_closed(fast: ThreadedServer) -> None:
    with socket.create_connection((fast.host, fast.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        took = closed_within(sock, 6)
        assert took is not None and took >= 0.5  # keep-alive 1s, not the header deadline of 0.5s


def test_requests_within_the_bounds_are_served(fast: ThreadedServer) -> None:
    """Kept-alive requests, a body in pieces with short pauses, and a slow app (longer than every bound:
    the bounds apply to the client's sending, not to the app's work)."""
    with httpx.Client(base_url=fast.url, timeout=5) as c:
        for _ in range(3):
            assert c.post("/", content=b"x" * 100_000).text == "got 100000"
        time.sleep(0.3)  # idle for less than keep-alive: the same connection is reused

        def pieces() -> Iterator[bytes]:
            for _ in range(3):
                yield b"y" * 10
                time.sleep(0.2)  # a sender's pauses below the body bound, not synchronisation

        assert c.post("/", content=pieces()).text == "got 30"

    async def slow(request: Request) -> Response:
        import asyncio

        await asyncio.sleep(1.5)  # the app's own pace, beyond the 0.5s bounds
        return PlainTextResponse(f"got {len(await request.body())}")

    app = Starlette(routes=[Route("/", slow, methods=["POST"])])
    with ThreadedServer(app, header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_s=1) as srv:
        assert httpx.post(srv.url + "/", content=b"z" * 10, timeout=10).text == "got 10"


def test_server_settings_bounds() -> None:
    s = ServerSettings()
    assert (s.header_timeout_s, s.body_timeout_s, s.keep_alive_s) == (10.0, 30.0, 30)
    assert ServerSettings(keepAliveTimeout="1500ms").keep_alive_s == 2
    for bad in ("0s", "2h", "soon"):
        with pytest.raises(ValueError, match="headerTimeout"):
            ServerSettings(headerTimeout=bad)
