"""Misbehaving HTTP endpoints for tests: blackholed, trickling, huge, or answering with a secret in the body.

Raw sockets on 127.0.0.1, port 0, each connection in its own thread: the point is to send what a
well-behaved HTTP framework would not (one byte every half second, 400 MB). `stop()` ends every
connection (the handlers wait on one event, never sleep unbounded).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

Handler = Callable[[socket.socket, threading.Event], None]


def _read_request(conn: socket.socket) -> bytes:
    """The request head and as much body as Content-Length says (enough for the JSON POSTs we get)."""
    data = b""
    conn.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class BadServer:
    def __init__(self, handler: Handler) -> None:
        self.stopping = threading.Event()
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        outer = self

        class _H(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                try:
                    req = _read_request(conn)
                    with outer._lock:
                        outer.requests.append(req)
                    handler(conn, outer.stopping)
                except OSError:
                    pass  # the client gave up: what these servers are for

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _H, bind_and_activate=True)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="bad-server")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/gate") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> BadServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> BadServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def blackhole(conn: socket.socket, stopping: threading.Event) -> None:
    """Reads the request and never answers."""
    stopping.wait(600)


def trickle_body(conn: socket.socket, stopping: threading.Event) -> None:
    """A 200 whose body comes one byte every 0.5 s (a per-read timeout of 1 s never fires)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n")
    while not stopping.wait(0.5):
        conn.sendall(b"x")


def trickle_headers(conn: socket.socket, stopping: threading.Event) -> None:
    """Headers that never end, one byte every 0.5 s."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stopping.wait(0.5):
        conn.sendall(b"X")


def huge(total: int, status: int = 200) -> Handler:
    """An answer of `total` bytes, sent as fast as the client reads."""

    def handle(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
                     .encode())
        chunk = b"0" * 65536
        sent = 0
        while sent < total and not stopping.is_set():
            conn.sendall(chunk[: total - sent])
            sent += len(chunk)

    return handle


def answer(status: int, body: bytes, content_type: str = "text/plain") -> Handler:
    def handle(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)

    return handle
