"""A fault-injecting HTTP reverse proxy for Prometheus's query API.

canaryd's daemon is pointed at the proxy instead of Prometheus; a test or `bench/faults.py` then picks
how the proxy misbehaves (`FaultProxy.set`), the ways a real Prometheus, or what sits in front of it,
fails:

- `pass`: forwards every request untouched;
- `down`: nothing listens on the port (connection refused); it listens again on the same port when
  the mode changes;
- `hang`: the request is held without an answer (for `hang_s`, then 504), so the client times out;
- `empty`: a successful answer with no series (a scrape gap, a relabelling accident);
- `nan`: the real answer with every value replaced by NaN (0/0 from an idle revision, a broken rule);
- `stale`: queries evaluated at a frozen instant instead of the one asked for, as a results cache or a
  stuck query frontend answers: the numbers are real but describe an old window;
- `error`: HTTP 500 with Prometheus's error body (an overloaded or restarting server).

Faults other than `down` fire per request with a probability (seeded RNG). Every query is logged with
the evaluation time the client asked for and the fault it got, so a check can tell whether a decision
was made on an analysis whose answers were faulty.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from canaryd.httpserver import ThreadedServer

Mode = Literal["pass", "down", "hang", "empty", "nan", "stale", "error"]
MODES: tuple[Mode, ...] = ("pass", "down", "hang", "empty", "nan", "stale", "error")
_QUERY_PATHS = ("/api/v1/query", "/api/v1/query_range")
#: A `stale` answer less than this much older than the instant asked for is logged as a clean one: it
#: is not stale in any way that matters (canaryd's adapter accepts answers within this of the instant).
STALE_AFTER_S = 1.0


@dataclass(frozen=True)
class QueryRecord:
    """One query the proxy saw: the evaluation time asked for (None when the client sent none), the
    fault it got ("pass" when none) and the status answered (0: no answer, the client gave up)."""

    received: float  # time.time() on arrival
    at: float | None
    query: str
    fault: Mode
    status: int


class FaultProxy:
    """Reverse proxy from 127.0.0.1:<OS-picked port> to `upstream` (Prometheus's base URL)."""

    def __init__(self, upstream: str, *, seed: int = 0, hang_s: float = 30.0,
                 upstream_timeout_s: float = 30.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.hang_s = hang_s
        self._timeout = upstream_timeout_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.mode: Mode = "pass"
        self.probability = 1.0
        self.stale_at: float | None = None
        self.log: list[QueryRecord] = []
        self._app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        self._server: ThreadedServer | None = None
        self.port = 0
        self._changed = 0  # bumped at every mode change: ends hangs of a mode no longer in force
        #: Queries received and not answered yet (e.g. waiting on a stopped upstream), by arrival time.
        self.in_flight: list[float] = []

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            self._changed += 1
        if server is not None:
            server.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        server = ThreadedServer(self._app, host="127.0.0.1", port=self.port, name="prometheus-fault-proxy")
        server.start()
        self.port = server.port  # the OS picks it the first time; the same one after `down`
        self._server = server

    # -- control -------------------------------------------------------------------------------------
    def set(self, mode: Mode, probability: float = 1.0, *, stale_at: float | None = None) -> None:
        """Switch to `mode`, firing on each request with `probability` (`down` is all or nothing).
        `stale` answers as of `stale_at` (default: now), whatever time a query asks for."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            previous = self.mode
            self.mode, self.probability = mode, probability
            if mode == "stale":
                self.stale_at = time.time() if stale_at is None else stale_at
            self._changed += 1
            server = self._server
        if mode == "down" and server is not None:
            with self._lock:
                self._server = None
            server.stop()
        elif mode != "down" and previous == "down" and server is None:
            self._listen()

    def queries(self) -> list[QueryRecord]:
        with self._lock:
            return list(self.log)

    def faulted_at(self, at: float, tolerance_s: float = 0.01) -> list[QueryRecord]:
        """The faulted queries that asked for evaluation time `at`: one analysis's bad answers."""
        return [q for q in self.queries() if q.fault != "pass" and q.at is not None and abs(q.at - at) <= tolerance_s]

    # -- serving -------------------------------------------------------------------------------------
    def _draw(self) -> tuple[Mode, int]:
        with self._lock:
            mode, generation = self.mode, self._changed
            if mode not in ("pass", "down") and self.probability < 1.0 and self._rng.random() >= self.probability:
                mode = "pass"
            return mode, generation

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        body = await request.body()
        params = list(request.query_params.multi_items())
        form: list[tuple[str, str]] = []
        if request.method == "POST" and "form" in request.headers.get("content-type", ""):
            form = parse_qsl(body.decode(errors="replace"), keep_blank_values=True)
        is_query = path in _QUERY_PATHS
        fault, generation = self._draw() if is_query else ("pass", 0)
        if fault == "down":  # a request that raced the listener's closing
            fault = "error"
        at = _float(_param(params + form, "time"))
        if fault == "stale" and not self._moves_back(at):
            fault = "pass"
        record = QueryRecord(time.time(), at, _param(params + form, "query") or "", fault, 0)
        with self._lock:
            self.in_flight.append(record.received)
        try:
            response = await self._answer(request, path, params, form, body, fault, generation)
        except BaseException:
            self._log(record)
            raise
        finally:
            with self._lock:
                self.in_flight.remove(record.received)
        self._log(QueryRecord(record.received, record.at, record.query, record.fault, response.status_code))
        return response

    def _moves_back(self, at: float | None) -> bool:
        with self._lock:
            frozen = self.stale_at
        asked = time.time() if at is None else at
        return frozen is not None and asked - frozen > STALE_AFTER_S

    def _log(self, record: QueryRecord) -> None:
        if record.query:
            with self._lock:
                self.log.append(record)

    async def _answer(self, request: Request, path: str, params: list[tuple[str, str]],
                      form: list[tuple[str, str]], body: bytes, fault: Mode, generation: int) -> Response:
        if fault == "hang":
            deadline = time.monotonic() + self.hang_s
            while time.monotonic() < deadline and self._changed == generation:
                await asyncio.sleep(0.05)
            return _error(504, "timeout", "injected fault: query hung")
        if fault == "error":
            return _error(500, "internal", "injected fault: internal server error")
        if fault == "empty":
            return _json({"status": "success", "data": {"resultType": "vector", "result": []}})
        if fault == "stale":
            with self._lock:
                frozen = self.stale_at
            if frozen is not None:
                params = _with_time(params, frozen)
                form = _with_time(form, frozen) if form else form
                if form:
                    body = urlencode(form).encode()
        status, headers, content = await self._forward(request, path, params, body)
        if fault == "nan" and status == 200:
            content = _nan_answer(content, _float(_param(params + form, "time")))
        return Response(content, status_code=status, headers=headers)

    async def _forward(self, request: Request, path: str, params: list[tuple[str, str]],
                       body: bytes) -> tuple[int, dict[str, str], bytes]:
        keep = {"content-type", "accept", "authorization", "user-agent"}
        headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                resp = await client.request(request.method, self.upstream + path, params=urlencode(params),
                                            content=body, headers=headers)
        except httpx.HTTPError as exc:
            return 502, {}, json.dumps({"status": "error", "errorType": "unavailable",
                                        "error": f"proxy: upstream failed: {type(exc).__name__}"}).encode()
        out = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type",)}
        return resp.status_code, out, resp.content


def _param(items: list[tuple[str, str]], name: str) -> str | None:
    for key, value in items:
        if key == name:
            return value
    return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _with_time(items: list[tuple[str, str]], at: float) -> list[tuple[str, str]]:
    """The parameters with `time` set to `at` (only ever moved back: a stale answer is an old one)."""
    asked = _float(_param(items, "time"))
    when = at if asked is None else min(asked, at)
    return [(k, v) for k, v in items if k != "time"] + [("time", f"{when:.3f}")]


def _nan_answer(content: bytes, at: float | None) -> bytes:
    """The same answer with every sample NaN; an empty vector gets one NaN series (0/0 has a value)."""
    try:
        doc: Any = json.loads(content)
        data = doc["data"]
        kind, result = data["resultType"], data["result"]
    except (ValueError, KeyError, TypeError):
        return content
    stamp = at if at is not None else time.time()
    if kind == "scalar":
        data["result"] = [result[0] if result else stamp, "NaN"]
    elif kind == "vector":
        data["result"] = [{**item, "value": [item["value"][0], "NaN"]} for item in result] or [
            {"metric": {}, "value": [stamp, "NaN"]}]
    elif kind == "matrix":
        data["result"] = [{**item, "values": [[v[0], "NaN"] for v in item["values"]]} for item in result]
    return json.dumps(doc).encode()


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type="application/json")


def _error(status: int, kind: str, message: str) -> Response:
    return _json({"status": "error", "errorType": kind, "error": message}, status)

