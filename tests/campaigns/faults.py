"""Fault injection for the sandbox: the Kubernetes API emulator, Git, and any TCP dependency.

Tests and `bench/faults.py` use these to make canaryd's dependencies misbehave the way real ones do, and
check that rollouts still end right (good versions promoted, bad ones rolled back, nothing promoted on
missing data). Prometheus has its own HTTP proxy, `tests.campaigns.faultproxy`.

- `ApiFaults` is a request hook for `KubeApiEmulator.hooks`: chosen requests (by client User-Agent,
  namespace, verb, resource) get a 409 Conflict, a 5xx, a 429 with Retry-After, a slow answer, an
  answer lost after the write was applied, or, for watches, a stream cut short, gone silent or expired
  (410). A fault fires with a probability, from a seeded RNG, and at most `limit` times; every firing is
  logged, so a test can assert what the client saw.
- `promoted_on_missing_data` is the invariant the tests and the bench check on every promotion.
- `TcpFaultProxy` forwards TCP to an upstream and can make it unreachable: refuse connections (nothing
  listens), reset them, or accept and never answer (a black hole).
- `force_push` rewrites the history of a sandbox config repo; `corrupt_checkout` damages a clone the
  way crashes, full disks and bad sectors do.

Everything binds to 127.0.0.1 on OS-picked ports. Nothing here sleeps to synchronise: a slow answer is
the fault itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from canaryd.rollout.state import AnalysisRecord, Phase, RolloutState
from canaryd.sandbox.gitrepo import ConfigRepo
from canaryd.sandbox.kubeapi.app import KubeApp, error_response, json_response
from canaryd.sandbox.kubeapi.emulator import KubeApiEmulator
from canaryd.sandbox.kubeapi.errors import ApiError, status_body
from canaryd.sandbox.kubeapi.requestinfo import RequestInfo
from tests.campaigns.faultproxy import FaultProxy

FaultKind = Literal["conflict", "error", "throttle", "slow", "lost-answer", "drop-watch", "stall-watch",
                    "expire-watch"]
FAULT_KINDS: tuple[FaultKind, ...] = ("conflict", "error", "throttle", "slow", "lost-answer", "drop-watch",
                                      "stall-watch", "expire-watch")
_WATCH_KINDS = frozenset({"drop-watch", "stall-watch", "expire-watch"})
_REASONS = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "Timeout"}
_WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


# -- the invariant: never promote on missing data ---------------------------------------------------------


def analysis_without_data(record: AnalysisRecord, proxy: FaultProxy | None = None) -> str | None:
    """Why one analysis cannot vouch for a pass (None: it can).

    A passing analysis must have judged real numbers: a request count and a value for every metric it
    checked. With `proxy` (the Prometheus fault proxy the daemon queried through), it must also not have
    used any faulted answer about its canary revision: the check holds even if the daemon misread a
    fault as data (a stale answer would pass every number-based check).
    """
    v = record.verdict
    if v.outcome != "pass":
        return f"the analysis at {record.at:%H:%M:%S} was {v.outcome}, not a pass"
    if v.requests is None:
        return f"the analysis at {record.at:%H:%M:%S} passed without a request count"
    missing = [m.name for m in v.metrics if m.value is None]
    if missing:
        return f"the analysis at {record.at:%H:%M:%S} passed without values for {', '.join(missing)}"
    if proxy is not None:
        faulted = [q for q in proxy.faulted_at(record.at.timestamp())
                   if record.canary_revision is None or record.canary_revision in q.query]
        if faulted:
            kinds = sorted({q.fault for q in faulted})
            return (f"the analysis at {record.at:%H:%M:%S} passed on {len(faulted)} faulted Prometheus answer(s)"
                    f" ({', '.join(kinds)})")
    return None


def promoted_on_missing_data(state: RolloutState, proxy: FaultProxy | None = None) -> str | None:
    """Why a promoted rollout's promotion was decided on missing data (None: it was not, or there was no
    promotion by analysis). The deciding analysis is the last one recorded before the promotion (the engine
    promotes in the tick of the last step's passing analysis). Services created or adopted without a
    canary, and promotions by an operator, are not analysis decisions and are skipped."""
    st = state.status
    if st.phase not in (Phase.PROMOTING, Phase.SUCCEEDED):
        return None
    promoting = [h for h in st.history if h.commit == state.spec.commit and h.reason == "Promoting"]
    if not promoting or "operator" in promoting[-1].message:
        return None
    if not st.analyses:
        return "promoted without any analysis on record"
    return analysis_without_data(st.analyses[-1], proxy)


# -- the Kubernetes API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """Which requests a fault applies to; None matches anything.

    `user_agent` is a substring of the client's User-Agent. The default, `") daemon"`, is canaryd's
    daemon (`canaryd/<version> (<os>/<arch>) daemon`), so the test harness and the sandbox's own
    emulators, which share the API server, are left alone.
    """

    user_agent: str | None = ") daemon"
    namespace: str | None = None
    verbs: frozenset[str] | None = None
    group: str | None = None
    resource: str | None = None
    name: str | None = None

    def __call__(self, info: RequestInfo) -> bool:
        return ((self.user_agent is None or self.user_agent in info.user_agent)
                and (self.namespace is None or info.namespace == self.namespace)
                and (self.verbs is None or info.verb in self.verbs)
                and (self.group is None or info.group == self.group)
                and (self.resource is None or info.resource == self.resource)
                and (self.name is None or info.name == self.name))

    @staticmethod
    def writes(**kw: Any) -> Match:
        return Match(verbs=_WRITES, **kw)


@dataclass
class ApiFault:
    """One kind of fault for the requests `match` selects.

    - `conflict`: 409 Conflict (stale resourceVersion), as when another writer got there first;
    - `error`: `status` (500, 502, 503 or 504) with a Status body, as from an overloaded API server or
      the load balancer in front of it; the request is not applied;
    - `throttle`: 429 TooManyRequests with `Retry-After: retry_after_s` (header and Status details), as
      API Priority and Fairness answers;
    - `slow`: the request is held `delay_s` seconds, then served normally (a client that gave up by
      then is gone: its write is not applied);
    - `lost-answer`: the request is applied at once, and its answer held `delay_s` seconds: a client
      that times out first never learns that its write landed (the ambiguous failure retries must
      survive);
    - `drop-watch`: a watch is served normally for `delay_s` seconds, then its stream just ends (a
      restarted API server, an idle-timeout in a load balancer);
    - `stall-watch`: a watch is served normally for `delay_s` seconds, then nothing more arrives while
      the connection stays open (a half-open connection whose peer or NAT state is gone), until the
      client gives up or `hold_s` passes;
    - `expire-watch`: a watch gets one ERROR event, 410 Expired, at once (its resourceVersion fell out
      of the watch cache), so the client must list again.

    It fires with `probability` and at most `limit` times (None: no limit); `fired` counts the firings.
    """

    kind: FaultKind
    match: Match = field(default_factory=Match)
    probability: float = 1.0
    limit: int | None = None
    status: int = 500
    retry_after_s: int = 1
    delay_s: float = 1.0
    hold_s: float = 600.0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown API fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.kind == "error" and self.status not in _REASONS:
            raise ValueError(f"an error fault answers one of {sorted(_REASONS)}, not {self.status}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")


@dataclass(frozen=True)
class Fired:
    """One injected fault, as the client met it."""

    at: float  # time.monotonic()
    kind: FaultKind
    verb: str
    resource: str
    namespace: str
    name: str
    status: int  # what the client got (200 for slow answers and cut watches)


class ApiFaults:
    """A `KubeApiEmulator` request hook that injects `ApiFault`s; `install()` adds it, `uninstall()`
    removes it (also as a context manager). Faults are checked in the order they were added; the first
    that matches and wins its draw fires. Thread-safe: tests add and clear faults while the emulator's
    event loop serves requests."""

    def __init__(self, emulator: KubeApiEmulator, *, seed: int = 0) -> None:
        self.emulator = emulator
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: list[ApiFault] = []
        self.log: list[Fired] = []
        # Our own router over the emulator's objects, to serve a watch we then cut short. It holds no
        # state but what it is given; discovery (which needs the server address) never goes through it.
        self._app = KubeApp(emulator.api, [], [], lambda: "")

    # -- control -------------------------------------------------------------------------------------
    def add(self, fault: ApiFault) -> ApiFault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def fired(self, kind: FaultKind | None = None) -> list[Fired]:
        with self._lock:
            return [f for f in self.log if kind is None or f.kind == kind]

    def install(self) -> ApiFaults:
        if self not in self.emulator.hooks:
            self.emulator.hooks.append(self)
        return self

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            self.emulator.hooks.remove(self)

    def __enter__(self) -> ApiFaults:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- the hook ------------------------------------------------------------------------------------
    def _pick(self, info: RequestInfo) -> ApiFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.limit is not None and fault.fired >= fault.limit:
                    continue
                if fault.kind in _WATCH_KINDS and info.verb != "watch":
                    continue
                if not fault.match(info):
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                return fault
        return None

    def _record(self, fault: ApiFault, info: RequestInfo, status: int) -> None:
        with self._lock:
            self.log.append(Fired(time.monotonic(), fault.kind, info.verb, info.resource, info.namespace,
                                  info.name, status))

    async def __call__(self, info: RequestInfo) -> Response | None:
        fault = self._pick(info)
        if fault is None:
            return None
        what = f'{info.resource}{"." + info.group if info.group else ""} "{info.name}"'
        if fault.kind == "slow":
            self._record(fault, info, 200)
            await asyncio.sleep(fault.delay_s)
            return None  # then served as usual
        if fault.kind == "conflict":
            self._record(fault, info, 409)
            return json_response(status_body(
                409, "Conflict", f"Operation cannot be fulfilled on {what}: the object has been modified; please "
                "apply your changes to the latest version and try again",
                {"name": info.name, "group": info.group, "kind": info.resource}), 409)
        if fault.kind == "error":
            self._record(fault, info, fault.status)
            return json_response(status_body(fault.status, _REASONS[fault.status],
                                             f"injected fault: {_REASONS[fault.status]} on {info.verb} {what}"),
                                 fault.status)
        if fault.kind == "throttle":
            self._record(fault, info, 429)
            resp = json_response(status_body(
                429, "TooManyRequests", "the server has received too many requests and has asked us to try "
                "again later", {"retryAfterSeconds": fault.retry_after_s}), 429)
            resp.headers["Retry-After"] = str(fault.retry_after_s)
            return resp
        if fault.kind == "expire-watch":
            self._record(fault, info, 200)
            event = {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version: injected")}
            return Response(json.dumps(event).encode() + b"\n", media_type="application/json")
        self._record(fault, info, 200)
        if fault.kind == "lost-answer":
            return _LateAnswer(self._app, info, fault.delay_s)
        return _CutWatch(self._app, info, fault.delay_s, stall_s=fault.hold_s if fault.kind == "stall-watch" else None)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _LateAnswer(Response):
    """Serves the request with the emulator's own code at once, then sends the answer `delay_s` later
    (to nobody, if the client timed out meanwhile). The call log records status 200 for it: the real
    status is only known once the hook has returned."""

    def __init__(self, app: KubeApp, info: RequestInfo, delay_s: float) -> None:
        super().__init__(status_code=200, media_type="application/json")
        self._app, self._info, self._delay = app, info, delay_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            inner = await self._app._dispatch(self._info, Request(scope, receive))
        except ApiError as exc:
            inner = error_response(exc)
        await asyncio.sleep(self._delay)
        with contextlib.suppress(OSError, RuntimeError):
            await inner(scope, receive, send)


class _CutWatch(Response):
    """Serves a watch with the emulator's own code, then ends its stream after `after_s` seconds (or
    when the watch ends by itself first), with no BOOKMARK and no ERROR: a dropped connection.

    The end is sent by this response itself, not left to the cancelled watch: the emulator's watch loop
    waits with `asyncio.wait_for`, which on Python 3.11 can swallow a cancellation that races with an
    event arriving, and would then stream on (into the void) until its own timeout while the client
    waited for an end that never came. The watch is cancelled until it stops, within a bound.
    """

    def __init__(self, app: KubeApp, info: RequestInfo, after_s: float, stall_s: float | None = None) -> None:
        super().__init__(status_code=200, media_type="application/json")
        self._app, self._info, self._after, self._stall = app, info, after_s, stall_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            inner = await self._app._dispatch(self._info, Request(scope, receive))
        except ApiError as exc:
            inner = error_response(exc)
        state = {"started": False, "ended": False, "cut": False}

        async def guarded(message: Message) -> None:
            if state["cut"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        task = asyncio.ensure_future(inner(scope, receive, guarded))
        done, _ = await asyncio.wait({task}, timeout=self._after)
        if task in done:
            task.result()
            return
        state["cut"] = True  # from now on nothing the watch sends reaches the client
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)  # a send it was in the middle of ends first
        if not state["started"]:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
        if self._stall is not None and not state["ended"]:  # stalled: silence, the connection still open
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_disconnected(receive), self._stall)
            state["ended"] = True  # abandoned, not completed: uvicorn closes the connection
        if not state["ended"]:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        for _ in range(100):  # bounded: about 10 s
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception never retrieved" noise


# -- any TCP dependency --------------------------------------------------------------------------------

TcpMode = Literal["pass", "refuse", "reset", "blackhole"]


class TcpFaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` ("host:port" or a URL), in one of four modes:

    - `pass`: forwards both ways;
    - `refuse`: nothing listens on the port any more, so connections are refused (the host is up, the
      service is down); the same port listens again when the mode changes;
    - `reset`: connections are accepted and closed at once (a crashing server, a proxy with no backend);
    - `blackhole`: connections are accepted and never answered (a dropped route, a hung server).

    Changing the mode also closes the connections already open, as the outage would.
    """

    def __init__(self, upstream: str) -> None:
        target = upstream.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = target.rpartition(":")
        self._upstream = (host or "127.0.0.1", int(port))
        self.mode: TcpMode = "pass"
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpFaultProxy:
        self._thread = threading.Thread(target=self._run, name="tcp-fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TCP fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._close_all(listen=False), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> TcpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: TcpMode) -> None:
        """Switch modes; returns once the port listens again (or stopped listening, for `refuse`)."""
        if mode not in ("pass", "refuse", "reset", "blackhole"):
            raise ValueError(f"unknown mode {mode!r}")
        assert self._loop is not None, "start the proxy first"
        asyncio.run_coroutine_threadsafe(self._switch(mode), self._loop).result(10)

    # -- the event loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._listen())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))  # 0 the first time: the OS picks; then the same port again
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._client, sock=sock)

    async def _close_all(self, *, listen: bool) -> None:
        for writer in list(self._open):
            writer.close()
        self._open.clear()
        if not listen and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _switch(self, mode: TcpMode) -> None:
        self.mode = mode
        await self._close_all(listen=mode != "refuse")
        if mode != "refuse" and self._server is None:
            await self._listen()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        mode = self.mode
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close with an RST, not a FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()
            return
        self._open.add(writer)
        try:
            if mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            except OSError:
                return
            self._open.add(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
        finally:
            self._open.discard(writer)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


# -- Git ---------------------------------------------------------------------------------------------


def force_push(repo: ConfigRepo, files: dict[str, str | None], message: str, *, base: str | None = None) -> str:
    """Rewrite the branch: reset the author's clone to `base` (default: the parent of the head, i.e. the
    last commit disappears; a root commit is amended instead), commit `files` there and force-push.
    Returns the new head, which is not a descendant of the old one: a client that merged or
    fast-forwarded would be stuck."""
    g = repo.repo.git
    old = repo.head()
    root = not repo.repo.head.commit.parents
    if base is not None or not root:
        g.reset("--hard", base or f"{old}~1")
    for rel, content in files.items():
        path = repo.work / rel
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    g.add("-A")
    if base is None and root:  # nothing before the only commit: rewrite that one instead
        g.commit("--amend", "--allow-empty", "-m", message)
    else:
        g.commit("--allow-empty", "-m", message)
    g.push("--force", "origin", f"HEAD:{repo.branch}")
    new = repo.head()
    if g.merge_base("--is-ancestor", old, new, with_exceptions=False, with_extended_output=True)[0] == 0:
        raise AssertionError("force_push made a descendant of the old head, not a rewrite")
    return new


CorruptionKind = Literal["objects-deleted", "pack-garbage", "index-garbage", "config-garbage", "head-garbage",
                         "ref-garbage", "stale-locks", "git-dir-emptied"]
CORRUPTIONS: tuple[CorruptionKind, ...] = ("objects-deleted", "pack-garbage", "index-garbage", "config-garbage",
                                           "head-garbage", "ref-garbage", "stale-locks", "git-dir-emptied")


def corrupt_checkout(workdir: Path, kind: CorruptionKind) -> None:
    """Damage the clone in `workdir` (its `.git` directory) as real failures do:

    - `objects-deleted`: every object gone (a cleanup script, a bad restore);
    - `pack-garbage`: pack files overwritten with junk (bad sectors, a torn write);
    - `index-garbage`: the index truncated to junk (a crash while git wrote it);
    - `config-garbage`: `.git/config` unparsable;
    - `head-garbage`: HEAD pointing at nothing;
    - `ref-garbage`: the branch refs pointing at objects that do not exist;
    - `stale-locks`: lock files a SIGKILLed `git fetch` leaves behind (shallow, ref, index);
    - `git-dir-emptied`: `.git` left as an empty directory (a volume remounted half-way).
    """
    g = workdir / ".git"
    if not g.is_dir():
        raise FileNotFoundError(f"{workdir} is not a git checkout")
    if kind == "objects-deleted":
        shutil.rmtree(g / "objects")
        (g / "objects").mkdir()
    elif kind == "pack-garbage":
        for p in (g / "objects").rglob("*"):
            if p.is_file() and "info" not in p.parts:
                p.chmod(0o644)
                p.write_bytes(b"\x00garbage" * 16)
    elif kind == "index-garbage":
        (g / "index").write_bytes(b"DIRC\x00garbage")
    elif kind == "config-garbage":
        (g / "config").write_text("[[[ this is not a git config\n")
    elif kind == "head-garbage":
        (g / "HEAD").write_text("ref: refs/heads/\x00nowhere\n")
    elif kind == "ref-garbage":
        for p in (g / "refs").rglob("*"):
            if p.is_file():
                p.write_text("0123456789abcdef0123456789abcdef01234567\n")
        (g / "packed-refs").unlink(missing_ok=True)
    elif kind == "stale-locks":
        (g / "shallow.lock").write_text("")
        (g / "index.lock").write_text("")
        ref = g / "refs" / "remotes" / "origin"
        ref.mkdir(parents=True, exist_ok=True)
        for head in list(ref.iterdir()) or [ref / "main"]:
            head.with_name(head.name + ".lock").write_text("")
    elif kind == "git-dir-emptied":
        shutil.rmtree(g)
        g.mkdir()
    else:
        raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")


@contextlib.contextmanager
def moved_away(path: Path) -> Iterator[Path]:
    """`path` (e.g. a bare repo served over file://) is renamed away for the duration: unreachable."""
    hidden = path.with_name(path.name + ".unreachable")
    path.rename(hidden)
    try:
        yield hidden
    finally:
        hidden.rename(path)


def cycle(switch: Callable[[bool], None], *, on_s: float, off_s: float, stop: threading.Event,
          rng: random.Random | None = None) -> threading.Thread:
    """Start a thread that turns a fault on for `on_s` and off for `off_s` seconds (each stretched by up to
    half at random with `rng`) until `stop` is set, leaving it off. Outages come in bursts, not in
    coin flips per request; this is how the bench makes them."""

    def run() -> None:
        r = rng or random.Random(0)
        try:
            while not stop.is_set():
                switch(True)
                if stop.wait(on_s * (1 + r.random() / 2)):
                    break
                switch(False)
                stop.wait(off_s * (1 + r.random() / 2))
        finally:
            switch(False)

    thread = threading.Thread(target=run, name="fault-cycle", daemon=True)
    thread.start()
    return thread
