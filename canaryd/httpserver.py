"""Serve an ASGI app (Starlette) with uvicorn in a background thread.

canaryd's own endpoints and every sandbox part (API emulator, data plane) share this, so that they all
bind the same way: to a socket we open ourselves, which lets the OS pick the port (port 0) and lets the
caller read the port before the first request, with no race against a log line.

Every connection is bounded in time, so half-open or trickling clients (slowloris) cannot pile up:

- `header_timeout_s`: from the moment a connection opens (or the first byte of the next request on a
  kept-alive one) until the request's headers are complete. uvicorn has no such bound: a client that
  sends half a request line and then nothing was kept forever. A total deadline, not an idle one, so
  one byte at a time does not extend it. (h11 already caps the size of incomplete headers at 16 KiB.)
- `body_timeout_s`: the longest pause between two pieces of a request body while the server waits for
  it (not while it has paused reading because the app is busy).
- `keep_alive_s`: how long an idle connection stays open after a response (uvicorn's own timer).

A connection over a bound is closed without an answer: nobody is waiting for one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Defaults of the bounds above (the daemon takes them from `server:` in its settings).
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
KEEP_ALIVE_S = 30


def bounded_h11(header_timeout_s: float, body_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a header deadline and a body idle timeout (see the module docstring).

    Pinned to h11 rather than uvicorn's "auto" choice, so the bounds do not depend on whether httptools
    happens to be installed.
    """

    class BoundedH11Protocol(H11Protocol):
        _read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout_s)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and self._read_timer is None:
                self._arm(header_timeout_s)  # the next request on a kept-alive connection begins
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                self._arm(body_timeout_s)  # idle timeout: restarts with every piece of the body
            elif state is not h11.IDLE:
                self._disarm()  # the request is in (or the connection is done): the app's turn
            # IDLE: the headers are still incomplete and their deadline keeps running

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(seconds, self._timed_out, seconds)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _timed_out(self, seconds: float) -> None:
            self._read_timer = None
            if self.flow is not None and self.flow.read_paused:
                self._arm(seconds)  # we stopped reading (the app is busy): not the client's fault
            elif not self.transport.is_closing():
                self.transport.close()

    return BoundedH11Protocol


class ThreadedServer:
    """A uvicorn server on its own thread and event loop; `stop()` drains and joins it."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, name: str = "http", *,
                 header_timeout_s: float = HEADER_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S,
                 keep_alive_s: int = KEEP_ALIVE_S) -> None:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on such sockets; without it every
        # response waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(512)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=keep_alive_s,
            http=bounded_h11(header_timeout_s, body_timeout_s),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        finally:
            loop.close()

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"HTTP server {self._thread.name} failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"HTTP server {self._thread.name} did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
