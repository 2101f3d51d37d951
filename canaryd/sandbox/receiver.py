"""A local webhook receiver: stands in for Slack, Teams or any JSON webhook in tests and the sandbox.

It answers like Slack's incoming webhooks (200 `ok`; 400 `invalid_payload` for a body that is not JSON)
and records every request, including the ones it failed on purpose, so a test can tell "delivered once"
from "retried" and "not retried". Failures are scripted (`respond_with(500, 200)`), and `hold()` keeps
requests waiting until `release()`, which lets a test fill the sender's queue deterministically.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from canaryd.httpserver import ThreadedServer

_HOLD_LIMIT_S = 30.0  # a held request gives up after this, so a forgotten release() cannot hang a test


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any  # the parsed JSON, or None when the body was not JSON
    status: int  # what the receiver answered

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class WebhookReceiver:
    """Records posted JSON on any path; `url(path)` is what a notifier's URL file would hold."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._cond = threading.Condition()
        self._requests: list[Received] = []
        self._script: deque[int] = deque()
        self._in_flight = 0
        self._gate = threading.Event()
        self._gate.set()
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST", "PUT"])])
        self._server = ThreadedServer(app, host=host, port=port, name="webhook-receiver")

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> WebhookReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._gate.set()
        self._server.stop()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests drive --------------------------------------------------------------------------

    def url(self, path: str = "/hook") -> str:
        return f"{self._server.url}/{path.lstrip('/')}"

    def respond_with(self, *statuses: int) -> None:
        """The next requests are answered with these statuses, in order; then 200 again."""
        with self._cond:
            self._script.extend(statuses)

    def hold(self) -> None:
        """Keep new requests waiting (unanswered) until `release()`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def requests(self) -> list[Received]:
        """Every request answered so far, failed ones included, in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.ok]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until `count` requests were answered 2xx; the delivered requests, or TimeoutError."""
        return self._wait(lambda: len([r for r in self._requests if r.ok]) >= count, timeout,
                          f"{count} delivered notifications")

    def wait_in_flight(self, count: int, timeout: float = 10.0) -> None:
        """Block until `count` requests are being held (see `hold()`)."""
        self._wait(lambda: self._in_flight >= count, timeout, f"{count} held requests")

    def _wait(self, predicate: Any, timeout: float, what: str) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"webhook receiver: no {what} within {timeout}s "
                                       f"(got {len(self._requests)} requests)")
                self._cond.wait(remaining)
            return [r for r in self._requests if r.ok]

    # -- the app -----------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        if not self._gate.is_set():
            with self._cond:
                self._in_flight += 1
                self._cond.notify_all()
            try:
                await asyncio.to_thread(self._gate.wait, _HOLD_LIMIT_S)
            finally:
                with self._cond:
                    self._in_flight -= 1
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        with self._cond:
            status = self._script.popleft() if self._script else 200
            if body is None and 200 <= status < 300:
                status = 400
            self._requests.append(Received(
                path=request.url.path, headers=dict(request.headers), raw=raw, body=body, status=status,
            ))
            self._cond.notify_all()
        text = "ok" if 200 <= status < 300 else ("invalid_payload" if body is None else "error")
        return PlainTextResponse(text, status_code=status)
