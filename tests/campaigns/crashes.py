"""The crash campaign: SIGKILL the real daemon at chosen points of real rollouts and check invariants.

Shared by `bench/crashes.py` (the long run, with figures) and `tests/e2e/test_crash_campaign.py` (a short
run in CI). One `Campaign` owns a whole sandbox (API emulator, KServe emulator, data plane, Prometheus,
config repo) with a scenario of its own: every rollout ships a version with a storageUri of its own,
listed in the scenario as good (no errors) or bad (80 % of the requests fail), so the KServe emulator's
Revisions name the version they run and each rollout's expected outcome is known.

Several services roll out at once, each one version after another (a new one is pushed as soon as the
previous rollout finished), while the daemon is killed and restarted over and over. Kill points come
from a seeded RNG (`KILL_POINTS`), so a seed always makes the same sequence of choices; when in the run
each point is reached depends on timing. The points:

- `random`: a plain SIGKILL after a random delay.
- `hold:<action>`: the daemon's test-only hold point (`CANARYD_TEST_HOLD_DIR`/`CANARYD_TEST_HOLD_ON`):
  it stops after saving the ModelRollout and before the named action; the kill lands exactly there.
- `<before|after>:<request>`: the daemon reaches the API server through `KillProxy`, which kills it
  when a given request arrives: *before* forwarding it (the write is lost) or *after* the API server
  applied it (the daemon never learns it did). `state-read` is the ModelRollout GET (after it the daemon
  has read and not yet written), `state-write` its PUT/POST (optionally only the one moving to a given
  phase: `state-write:Promoting`), `isvc-patch` an InferenceService merge patch (optionally of one kind:
  `apply`, `traffic`, `promote`, `rollback`).

A point that is not reached within `fallback_s` is killed there and then (counted apart). A kill is a
SIGKILL to the daemon's process group (its `git` children die with it, as in a container that dies), and
the next daemon starts at once: a fresh process forked from a `ForkServer` that has already imported
canaryd, so the kill -> restart loop costs about 0.25 s instead of 2 s of imports.

Invariants (each broken one is a `Violation`; the campaign expects none):

- after every kill and every restart, and at the end, every ModelRollout parses with
  `RolloutState.from_storage`, its phase and every recorded transition are in the phase table, and its
  weight agrees with its phase (`check_rollout_object`);
- the canaryTrafficPercent writes, recorded by a watch on the InferenceServices, follow the policy
  (`check_percent_writes`, which defines it exactly: allowed values only; per rollout, with repeats of
  the value in force collapsed, 0 then the steps in order each once, then promotion or rollback and
  nothing after),
  and each step's traffic stays in force for its interval before the next step or the promotion
  (`check_step_dwell`: a step written and replaced at once was skipped in all but name);
- every good version ends Succeeded with its own revision stable and serving 100 %, every bad one ends
  Failed with its revision at 0 % and the previous stable revision serving 100 % (`Campaign._verify`);
- every rollout ends within `rollout_deadline_s` of its push.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import logging
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from canaryd.adapters.kube import make_api_client
from canaryd.daemon.controller import HOLD_ENV, HOLD_ON_ENV
from canaryd.policy import spec_from_snapshot
from canaryd.rollout.state import ALLOWED, GROUP, PLURAL, VERSION, Phase, RolloutState
from canaryd.sandbox import docs
from canaryd.sandbox.cluster import Sandbox
from canaryd.sandbox.daemonproc import DaemonProcess
from canaryd.sandbox.kserve_logic import STORAGE_URI_ANNOTATION
from canaryd.sandbox.scenario import Scenario

log = logging.getLogger(__name__)

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
REV_GROUP, REV_VERSION, REV_PLURAL = "serving.knative.dev", "v1", "revisions"
PERCENT = "canaryTrafficPercent"
T = TypeVar("T")

GOOD = {"errorRate": 0.0, "latencyMs": {"base": 20, "p99": 60}, "readyAfterSeconds": 0.5}
BAD = {**GOOD, "errorRate": 0.8}

#: The kill points the RNG picks from (uniformly: `random` is listed several times so about a sixth of
#: the kills are plain random-time ones). See the module docstring for their meaning.
KILL_POINTS: tuple[str, ...] = (
    "random", "random", "random", "random", "random",
    # between reading and writing the state
    "after:state-read", "before:state-write",
    # between saving the state and acting on the InferenceService (persist-then-act), and after acting
    "after:state-write", "hold:apply(canary=0)", "hold:traffic=10", "hold:traffic=30", "hold:traffic=60",
    "before:isvc-patch", "after:isvc-patch", "before:isvc-patch:apply", "after:isvc-patch:apply",
    "before:isvc-patch:traffic", "after:isvc-patch:traffic",
    # during promotion
    "before:state-write:Promoting", "after:state-write:Promoting", "hold:promote",
    "before:isvc-patch:promote", "after:isvc-patch:promote", "before:state-write:Succeeded",
    # during rollback
    "before:state-write:RollingBack", "after:state-write:RollingBack", "hold:rollback",
    "before:isvc-patch:rollback", "after:isvc-patch:rollback", "before:state-write:Failed",
)


# -- invariants (pure) ------------------------------------------------------------------------------


def collapse(values: Sequence[int | None]) -> list[int | None]:
    """Consecutive equal values as one: writing the value already in force changes no traffic."""
    out: list[int | None] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def check_percent_writes(values: Sequence[int | None], steps: Sequence[int], *, complete: bool,
                         created: bool = False) -> list[str]:
    """What is wrong with one rollout's canaryTrafficPercent writes (empty: nothing).

    `values` is the percent of every spec write (generation) of the InferenceService while it carried the
    rollout's version, in order; None means the field is absent (100 % to the newest revision). The
    rules, on the sequence with consecutive repeats collapsed (re-asserting the value in force after a
    restart is not a new step):

    - every value is None, 0 or one of the policy's steps;
    - a rollout starts with the spec applied at 0 (`created`: a service created without a canary has the
      single value None);
    - then the steps come in the policy's order, each once: the k-th non-zero value is `steps[k]`. A
      value past the next step is a skipped step; a value already reached is a step applied twice;
    - then at most one final value: None (promotion, only after the last step) or 0 (rollback);
      nothing is written after it;
    - with `complete` (the rollout has ended) the sequence must have its final value (a rollback before
      the first step leaves just `[0]`).
    """
    problems: list[str] = []
    allowed: set[int | None] = {None, 0, *steps}
    for v in values:
        if v not in allowed:
            problems.append(f"percent {v} is not allowed by the policy (None, 0, steps {list(steps)})")
    seq = collapse(values)
    if created:
        if seq not in ([None], [] if not complete else [None]):
            problems.append(f"a created service must be written once without a percent, got {seq}")
        return problems
    if not seq:
        if complete:
            problems.append("no traffic write at all")
        return problems
    if seq[0] != 0:
        problems.append(f"the rollout starts at {seq[0]}, not at 0 %: writes {seq}")
    reached = 0  # steps applied so far
    i = 1
    while i < len(seq) and seq[i] not in (None, 0):
        v = seq[i]
        assert v is not None
        expected = steps[reached] if reached < len(steps) else None
        if v != expected:
            if v in steps[:reached]:
                problems.append(f"step {v} % applied twice: writes {seq}")
            else:
                missed = [s for s in steps[reached:] if s < v]
                problems.append(f"step(s) {missed} skipped before {v} %: writes {seq}")
            reached = steps.index(v) + 1 if v in steps else reached
        else:
            reached += 1
        i += 1
    if i < len(seq):
        end = seq[i]
        if end is None and reached != len(steps):
            problems.append(f"promoted after {reached} of {len(steps)} steps: writes {seq}")
        if i + 1 < len(seq):
            problems.append(f"traffic written after the rollout ended at {end}: writes {seq}")
    elif complete and reached > 0:
        # (A rollback before any step writes 0 over 0: no new value, so `[0]` may be complete.)
        problems.append(f"the rollout ended without a promotion or rollback write: writes {seq}")
    return problems


def check_step_dwell(writes: Sequence[tuple[float, int | None]], steps: Sequence[int], min_dwell_s: float
                     ) -> list[str]:
    """Steps whose traffic was in force for less than `min_dwell_s` before the next step or the promotion.

    `writes` are (time seen, percent) of one rollout's spec writes. A step that is written and replaced at
    once was not served, whatever its writes say: e.g. a restart that re-asserts step k and, in the same
    tick, advances past it on an analysis of the time when step k's traffic was not in force. A rollback
    may come at any time and is not judged. The caller picks `min_dwell_s`: the policy's interval less a
    tolerance for when the watch delivers the writes.
    """
    firsts: list[tuple[float, int | None]] = []
    for at, v in writes:
        if not firsts or firsts[-1][1] != v:
            firsts.append((at, v))
    problems = []
    for (t0, v), (t1, nxt) in itertools.pairwise(firsts):
        if v in (None, 0) or not (nxt is None or (nxt in steps and v in steps and nxt > v)):
            continue
        if t1 - t0 < min_dwell_s:
            problems.append(f"step {v} % was in force for {t1 - t0:.2f}s only (< {min_dwell_s:g}s) before"
                            f" {'the promotion' if nxt is None else f'{nxt} %'}: writes {[w for _, w in firsts]}")
    return problems


def check_rollout_object(obj: Mapping[str, Any]) -> list[str]:
    """What is wrong with one stored ModelRollout (empty: nothing): it must parse, its phase and every
    transition in its history must be in the phase table, and its weight must agree with its phase and
    step under its policy snapshot (a crash must never leave a state the engine could not have made)."""
    name = (obj.get("metadata") or {}).get("name", "?")
    try:
        st = RolloutState.from_storage(dict(obj))
    except (ValidationError, ValueError, TypeError) as exc:
        return [f"ModelRollout {name} does not parse: {exc}"]
    problems: list[str] = []
    s = st.status
    if s.phase not in ALLOWED:
        problems.append(f"ModelRollout {name}: phase {s.phase} is not in the phase table")
    for h in s.history:
        # `reset` (back to Idle) is the one move outside the table, by design.
        if h.from_phase is not None and h.phase != Phase.IDLE and h.phase not in ALLOWED[h.from_phase]:
            problems.append(f"ModelRollout {name}: illegal transition {h.from_phase} -> {h.phase} ({h.reason})")
    steps: list[int] = []
    if st.spec.policy:
        try:
            steps = list(spec_from_snapshot(st.spec.policy).steps)
        except (ValidationError, ValueError) as exc:
            problems.append(f"ModelRollout {name}: policy snapshot does not parse: {exc}")
    analysing = (Phase.PROGRESSING, Phase.HOLDING, Phase.WAITING_PROMOTION)
    if s.phase == Phase.INITIALIZING and (s.weight != 0 or s.step != -1):
        problems.append(f"ModelRollout {name}: Initializing at step {s.step}, weight {s.weight} (expected -1, 0)")
    if s.phase in analysing:
        if steps and not (0 <= s.step < len(steps) and s.weight == steps[s.step]):
            problems.append(f"ModelRollout {name}: {s.phase} at step {s.step} with weight {s.weight}"
                            f" (steps {steps})")
        if s.canary_revision is None:
            problems.append(f"ModelRollout {name}: {s.phase} without a canary revision")
    if s.phase == Phase.PROMOTING and s.weight != 100:
        problems.append(f"ModelRollout {name}: Promoting with weight {s.weight}")
    if s.phase in (Phase.ROLLING_BACK, Phase.FAILED) and s.weight != 0:
        problems.append(f"ModelRollout {name}: {s.phase} with weight {s.weight}")
    # (A service just created is Succeeded before its first revision is known: no stable revision yet.)
    if s.phase == Phase.SUCCEEDED and (s.weight != 100 or s.canary_revision is not None):
        problems.append(f"ModelRollout {name}: Succeeded with weight {s.weight}, canary {s.canary_revision}")
    return problems


# -- the kill proxy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiTrigger:
    """Kill the daemon when a request matching `kind` (and `detail`) arrives, `before` forwarding it or
    `after` the API server answered it (the answer never reaches the daemon)."""

    when: str  # before | after
    kind: str  # state-read | state-write | isvc-patch
    detail: str | None = None  # a phase for state-write; apply|traffic|promote|rollback for isvc-patch

    @classmethod
    def parse(cls, point: str) -> ApiTrigger:
        when, kind, *rest = point.split(":")
        if when not in ("before", "after") or kind not in ("state-read", "state-write", "isvc-patch"):
            raise ValueError(f"not an API kill point: {point}")
        return cls(when, kind, rest[0] if rest else None)

    def matches(self, method: str, path: str, body: bytes) -> bool:
        parts = [p for p in urlsplit(path).path.split("/") if p]
        if len(parts) < 6 or parts[0] != "apis" or parts[3] != "namespaces":
            return False
        group, plural, named = parts[1], parts[5], len(parts) >= 7
        if self.kind == "state-read":
            return group == GROUP and plural == PLURAL and method == "GET" and named
        if self.kind == "state-write":
            if group != GROUP or plural != PLURAL or method not in ("PUT", "POST"):
                return False
            return self.detail is None or _json(body).get("status", {}).get("phase") == self.detail
        if group != ISVC_GROUP or plural != ISVC_PLURAL or method != "PATCH":
            return False
        return self.detail is None or patch_kind(_json(body)) == self.detail


def patch_kind(patch: Mapping[str, Any]) -> str:
    """What an InferenceService merge patch from canaryd does: `apply` (spec fields), `promote` (drops the
    percent), `rollback` (percent 0 alone) or `traffic` (a step's percent alone)."""
    spec = patch.get("spec") or {}
    predictor = spec.get("predictor") or {}
    others = set(spec) - {"predictor"} or set(predictor) - {PERCENT} or set(patch) - {"spec"}
    if others or PERCENT not in predictor:
        return "apply"
    pct = predictor[PERCENT]
    return "promote" if pct is None else "rollback" if pct == 0 else "traffic"


def _is_watch(path: str) -> bool:
    query = dict(parse_qsl(urlsplit(path).query))
    return query.get("watch", "").lower() in ("true", "1")


def _as_dict(value: object) -> dict[str, Any]:
    """An API answer as the JSON object it is (the client's annotations say `object`)."""
    if not isinstance(value, dict):
        raise TypeError(f"the API server answered with {type(value).__name__}, not a JSON object")
    return value


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class _QuietServer(ThreadingHTTPServer):
    """Connections of a killed daemon end abruptly: that is expected, not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None


class KillProxy:
    """An HTTP proxy between the daemon and the API server that SIGKILLs the daemon at a chosen request.

    Only the daemon talks through it. `arm(trigger, kill)` sets the next kill; once it fired (or
    `freeze()` was called for a kill from outside) every request not yet forwarded is dropped without an
    answer, as the requests of a dead process would be, until the next `arm`. Each request goes upstream
    once, on a connection of its own; watches (the daemon's InferenceService cache) are relayed as they
    stream.
    """

    def __init__(self, upstream: str, trace: Path | None = None) -> None:
        self._trace = trace.open("a", buffering=1) if trace is not None else None
        u = urlsplit(upstream)
        self._upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self._lock = threading.Lock()
        self._trigger: ApiTrigger | None = None
        self._kill: Callable[[], None] | None = None
        self._frozen = True
        self._claimed = False  # the trigger matched: the proxy is killing the daemon
        self._epoch = 0  # bumped at every arm and freeze: the watch streams of a dead daemon end with it
        self.fired = threading.Event()
        self.fired_on = ""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="kill-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> KillProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._trace is not None:
            self._trace.close()

    def arm(self, trigger: ApiTrigger | None, kill: Callable[[], None]) -> None:
        """Let requests through again; kill with `kill` at the first one matching `trigger`."""
        with self._lock:
            self._trigger, self._kill, self._frozen, self._claimed = trigger, kill, False, False
            self._epoch += 1
            self.fired.clear()
            self.fired_on = ""

    def freeze(self) -> bool:
        """From now on, drop every request, for a kill from outside; False if the trigger won the race
        (then the proxy kills the daemon: wait for `fired`)."""
        with self._lock:
            self._frozen = True
            self._trigger = None
            self._epoch += 1
            return not self._claimed

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            "current-context": "proxy",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if _is_watch(h.path):
            self._relay_watch(h, body)
            return
        decision = self._decide(h.command, h.path, body)
        if decision == "drop":
            h.close_connection = True
            return
        if decision == "before":
            self._fire(h.command, h.path)
            h.close_connection = True
            return
        try:
            status, headers, payload = self._forward(h, body)
        except OSError as exc:
            if decision == "after":
                self._fire(h.command, h.path)
                h.close_connection = True
                return
            status, headers, payload = 502, [("Content-Type", "text/plain")], f"kill proxy: {exc}".encode()
        if self._trace is not None:
            with contextlib.suppress(Exception):  # tracing must never break forwarding
                self._trace_line(h.command, h.path, body, status, payload, decision)
        if decision == "after":
            self._fire(h.command, h.path)
            h.close_connection = True
            return
        with contextlib.suppress(OSError):
            h.send_response(status)
            for k, v in headers:
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                    h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)

    def _trace_line(self, method: str, path: str, body: bytes, status: int, payload: bytes, decision: str) -> None:
        """One line per forwarded request (with `trace`): what the daemon asked and what it was told."""
        answer = _json(payload)
        what = ""
        if status >= 300:
            what = str(answer.get("message") or "")[:200]
        elif "/inferenceservices/" in path and method == "GET":
            comp = ((answer.get("status") or {}).get("components") or {}).get("predictor") or {}
            spec = (answer.get("spec") or {}).get("predictor") or {}
            what = (f"gen {(answer.get('metadata') or {}).get('generation')} pct {spec.get(PERCENT)!r}"
                    f" created {comp.get('latestCreatedRevision')} ready {comp.get('latestReadyRevision')}"
                    f" uri {(spec.get('model') or {}).get('storageUri')}")
        elif "/modelrollouts/" in path or (method in ("PUT", "POST") and "modelrollouts" in path):
            st = answer.get("status") or {}
            what = (f"rv {(answer.get('metadata') or {}).get('resourceVersion')} phase {st.get('phase')}"
                    f" w {st.get('weight')} baseline {st.get('baselineCreatedRevision')}")
        elif method == "PATCH":
            what = body.decode(errors="replace")[:200]
        assert self._trace is not None
        self._trace.write(f"{time.time():.3f} {method} {urlsplit(path).path} {status} {decision} {what}\n")

    def _decide(self, method: str, path: str, body: bytes) -> str:
        with self._lock:
            if self._frozen:
                return "drop"
            t = self._trigger
            if t is not None and t.matches(method, path, body):
                self._frozen = True  # nothing else gets through: the daemon dies now
                self._trigger = None
                self._claimed = True
                return t.when
            return "pass"

    def _fire(self, method: str, path: str) -> None:
        self.fired_on = f"{method} {urlsplit(path).path}"
        if self._kill is not None:
            self._kill()
        self.fired.set()

    def _relay_watch(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        """A watch (the daemon's InferenceService cache) is relayed as it streams, byte for byte, so the
        daemon's cache sees events when the server sends them, as without the proxy. The upstream request
        asks for `Connection: close`, so the stream ends when the server ends the watch; it also ends when
        this daemon is killed (the epoch moves on). No kill point fires on a watch."""
        with self._lock:
            if self._frozen:
                h.close_connection = True
                return
            epoch = self._epoch
        h.close_connection = True
        if self._trace is not None:
            self._trace.write(f"{time.time():.3f} {h.command} {h.path} watch\n")
        hop = ("host", "connection", "keep-alive", "proxy-connection", "transfer-encoding")
        head = [f"{h.command} {h.path} HTTP/1.1", f"Host: {self._upstream[0]}:{self._upstream[1]}",
                "Connection: close", *(f"{k}: {v}" for k, v in h.headers.items() if k.lower() not in hop)]
        try:
            with socket.create_connection(self._upstream, timeout=10) as up:
                up.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                while self._epoch == epoch:
                    ready, _, _ = select.select([up], [], [], 0.5)
                    if not ready:
                        continue
                    data = up.recv(65536)
                    if not data:
                        return
                    h.wfile.write(data)
        except OSError:
            return  # either side went away: the stream ends, as a real one would

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request upstream exactly once, on a connection of its own (never retried: a retried
        write could be applied twice, which the daemon itself would never do)."""
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() not in ("host", "connection", "keep-alive", "proxy-connection", "transfer-encoding")}
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        except http.client.HTTPException as exc:
            raise OSError(f"upstream: {exc}") from exc
        finally:
            conn.close()


# -- restarting the daemon fast ----------------------------------------------------------------------


class Daemon(Protocol):
    """What the campaign needs of a running daemon (`DaemonProcess` and `ForkedDaemon` both have it)."""

    def start(self, timeout: float = 20.0) -> Any: ...

    def kill(self) -> None: ...

    def alive(self) -> bool: ...

    def terminate(self, timeout: float = 15.0) -> int: ...

    def log_tail(self, lines: int = 40) -> str: ...


#: Modules a daemon imports on its way up, imported once by the fork server instead of by every daemon.
_WARM_MODULES = ("canaryd.cli", "canaryd.config", "canaryd.logs", "canaryd.daemon.runner", "kubernetes.client.models")


def fork_server_main() -> None:
    """The fork server (a child process of the campaign): import what a daemon needs, then fork one
    daemon per request line on stdin (`{"settings", "log", "env"}`) and answer its pid on stdout.

    Half of a daemon's start-up (about 1 s of 2 on a busy 2-core machine) is importing the kubernetes
    client; a fork of a process that has done it starts `canaryd run` in a few hundred milliseconds. The
    child runs exactly the shipped entry point (`canaryd.cli`'s `run`), in a session of its own, with
    fresh threads, sockets and state; only the imported modules are shared. This process stays single-
    threaded, so forking it is safe. It reaps its children as they die (the campaign watches their pids
    disappear) and, when its stdin closes because the campaign ended or was killed, SIGKILLs the process
    groups of those still alive: only pids it has not reaped, which cannot have been reused.
    """
    import importlib

    import kubernetes.client as kc

    for module in _WARM_MODULES:
        importlib.import_module(module)
    for api in ("ApiClient", "Configuration", "CoreV1Api", "CustomObjectsApi", "CoordinationV1Api"):
        getattr(kc, api)  # the client imports these lazily, and they are most of its import time
    children: set[int] = set()  # forked and not reaped yet: these pids cannot belong to anyone else

    def reap(_signum: int, _frame: object) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)

    signal.signal(signal.SIGCHLD, reap)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        _serve_forks(children)
    finally:
        # The campaign is gone (stdin closed), even if it was killed: no daemon may outlive it.
        for pid in list(children):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _serve_forks(children: set[int]) -> None:
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        # SIGCHLD waits until the pid is in `children`, so a child that dies at once is still forgotten.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:  # the daemon
            code: object = 1
            try:
                os.setsid()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                os.environ.update(req["env"])
                from canaryd.cli import main

                main(["run", "--config", req["settings"]], prog_name="canaryd")
                code = 0
            except SystemExit as exc:
                code = exc.code
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        children.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()


class ForkServer:
    """Starts `fork_server_main` and asks it for daemons."""

    def __init__(self) -> None:
        import canaryd

        root = str(Path(canaryd.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.campaigns.crashes import fork_server_main; fork_server_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the fork server did not start")

    def spawn(self, settings: Path, log_path: Path, env: Mapping[str, str]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"settings": str(settings), "log": str(log_path), "env": dict(env)})
                                  + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the fork server died")
        return int(json.loads(answer)["pid"])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class ForkedDaemon:
    """A daemon forked by the `ForkServer`, with `DaemonProcess`'s interface (kill = SIGKILL, no cleanup)."""

    def __init__(self, server: ForkServer, settings_path: Path, log_path: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.server = server
        self.settings_path = settings_path
        self.log_path = log_path
        self.port_file = settings_path.with_suffix(".port")
        self.env = dict(env or {})
        self.pid: int | None = None

    def start(self, timeout: float = 20.0) -> ForkedDaemon:
        self.port_file.unlink(missing_ok=True)
        env = {**self.env, "CANARYD_SERVER__PORT_FILE": str(self.port_file)}
        self.pid = self.server.spawn(self.settings_path, self.log_path, env)
        deadline = time.monotonic() + timeout
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            if not self.alive():
                raise RuntimeError(f"canaryd exited during start-up; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"canaryd did not start within {timeout}s; log:\n{self.log_tail()}")
            time.sleep(0.02)
        return self

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _gone(self, timeout: float) -> bool:
        return poll(lambda: not self.alive(), timeout, every=0.01) is not None

    def kill(self) -> None:
        """SIGKILL to its whole process group (the daemon and the `git` it may be running, as when its
        container dies), and wait until the kernel has reaped it (its sockets are closed by then)."""
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            if not self._gone(10):
                raise RuntimeError(f"canaryd (pid {self.pid}) survived SIGKILL")

    def terminate(self, timeout: float = 15.0) -> int:
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not self._gone(timeout):
                self.kill()
        return 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def load_process_main() -> None:
    """The load generator in a process of its own (see `LoadProcess`): targets as one JSON line on stdin,
    then load until stdin closes."""
    from canaryd.sandbox.loadgen import LoadGenerator, Target

    spec = json.loads(sys.stdin.readline())
    targets = [Target(t["url"], t["host"], float(t["rate"])) for t in spec["targets"]]
    lg = LoadGenerator(targets, duration_s=float(spec["duration_s"]), max_requests=None, concurrency=128).start()
    sys.stdin.read()
    lg.stop()


class LoadProcess:
    """Real requests to every service through the data plane, from a child process.

    The sandbox's emulators all run in the campaign's process; sending 100+ requests a second from that
    process too would make every API answer slow under the GIL, and a slow API stretches each tick
    between the time a decision is taken and the time it reaches the InferenceService.
    """

    def __init__(self, dataplane_url: str, namespace: str, services: Sequence[str], rate_per_s: float,
                 duration_s: float) -> None:
        import canaryd

        root = str(Path(canaryd.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.campaigns.crashes import load_process_main; load_process_main()"],
            stdin=subprocess.PIPE, env=env, text=True, start_new_session=True)
        targets = [{"url": f"{dataplane_url}/v1/models/{s}:predict", "host": f"{s}.{namespace}.example.com",
                    "rate": rate_per_s} for s in services]
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"targets": targets, "duration_s": duration_s}) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# -- recording the traffic writes -------------------------------------------------------------------


@dataclass(frozen=True)
class SpecWrite:
    generation: int
    uri: str | None
    percent: int | None
    at: float  # time.monotonic() when the watch delivered it


class TrafficRecorder:
    """Watches every InferenceService of a namespace (straight at the API server, not through the proxy)
    and records each spec write (new generation): its predictor storageUri and canaryTrafficPercent.

    A generation that jumps by more than one means a write was not seen (a watch gap): counted in `gaps`
    so a missed write cannot pass for a clean sequence.
    """

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.co = client.CustomObjectsApi(api)
        self.ns = namespace
        self.writes: dict[str, list[SpecWrite]] = {}
        self.gaps: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic-recorder", daemon=True)
        self._rv: str | None = None

    def start(self) -> TrafficRecorder:
        self._relist()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def of(self, name: str, uri: str) -> list[int | None]:
        """The percents written while `name` carried version `uri`, in order."""
        return [p for _, p in self.timed(name, uri)]

    def timed(self, name: str, uri: str) -> list[tuple[float, int | None]]:
        """(time seen, percent) of the writes while `name` carried version `uri`, in order."""
        with self._lock:
            return [(w.at, w.percent) for w in self.writes.get(name, []) if w.uri == uri]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                w = watch.Watch()  # type: ignore[no-untyped-call]
                events = w.stream(  # type: ignore[no-untyped-call]
                    self.co.list_namespaced_custom_object, ISVC_GROUP, ISVC_VERSION, self.ns, ISVC_PLURAL,
                    resource_version=self._rv, timeout_seconds=30, _request_timeout=40)
                for ev in events:
                    obj = ev["object"]
                    self._rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._see(obj)
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
            except ApiException as exc:
                if exc.status == 410:  # too old: relist, and say so
                    with self._lock:
                        self.gaps.append("watch expired (410): relisted")
                    with contextlib.suppress(Exception):
                        self._relist()
                self._stop.wait(0.1)
            except Exception:  # keep recording: a transient error of the watch connection
                self._stop.wait(0.1)

    def generation(self, name: str) -> int:
        """The newest generation of `name` seen so far (0: none)."""
        with self._lock:
            seen = self.writes.get(name)
            return seen[-1].generation if seen else 0

    def _relist(self) -> None:
        lst = _as_dict(self.co.list_namespaced_custom_object(ISVC_GROUP, ISVC_VERSION, self.ns, ISVC_PLURAL))
        self._rv = lst["metadata"]["resourceVersion"]
        for item in lst["items"]:
            self._see(item)

    def _see(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name, gen = str(meta.get("name")), int(meta.get("generation") or 0)
        predictor = (obj.get("spec") or {}).get("predictor") or {}
        uri = (predictor.get("model") or {}).get("storageUri")
        pct = predictor.get(PERCENT)
        with self._lock:
            seen = self.writes.setdefault(name, [])
            last = seen[-1].generation if seen else 0
            if gen <= last:
                return
            if gen != last + 1:
                self.gaps.append(f"{name}: generation {last} -> {gen}: {gen - last - 1} write(s) not seen")
            seen.append(SpecWrite(gen, uri if isinstance(uri, str) else None,
                                  pct if isinstance(pct, int) and not isinstance(pct, bool) else None,
                                  time.monotonic()))


# -- the campaign -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignConfig:
    seed: int
    kills: int = 200
    services: int = 6
    #: Probability that a rollout ships a bad version.
    bad_ratio: float = 0.4
    steps: tuple[int, ...] = (10, 30, 60)
    interval_s: float = 3.0
    #: How much shorter than `interval_s` a step may look in the recorded writes: a step's clock starts
    #: when its tick begins, before the Prometheus reads, the state write and the patch (up to about a
    #: second on a loaded 2-core machine), and the watch delivers writes late by a little. A step that was
    #: passed without being served lasts about one analysis period (`every`, 1 s) or less.
    dwell_tolerance_s: float = 1.0
    load_per_service: float = 20.0
    #: Longest wait for a targeted kill point before killing anyway.
    fallback_s: float = 3.0
    #: A plain random kill comes this long (uniform) after the daemon is up.
    random_kill_s: tuple[float, float] = (0.2, 2.2)
    rollout_deadline_s: float = 150.0
    #: Budget for the whole run; kills stop early when it runs out (then the drain still runs).
    max_duration_s: float = 3600.0
    namespace: str = "crash"
    #: Fork daemons from a process that has imported canaryd (`ForkServer`), or spawn `python -m
    #: canaryd.cli run` each time (`DaemonProcess`): same daemon, twice the start-up time.
    fork_server: bool = True


@dataclass
class Rollout:
    service: str
    index: int
    good: bool
    uri: str
    pushed_at: float
    created: bool = False
    finished_at: float | None = None
    outcome: str | None = None
    stuck: bool = False
    #: Its traffic writes were reported once (complete, or already wrong): not checked again.
    traffic_checked: bool = False


@dataclass(frozen=True)
class Violation:
    when: str
    what: str


@dataclass
class CampaignReport:
    seed: int
    kills: int = 0
    restarts: int = 0
    kills_by_point: dict[str, int] = field(default_factory=dict)
    fallback_kills: int = 0
    promoted: int = 0
    rolled_back: int = 0
    unfinished: int = 0
    violations: list[Violation] = field(default_factory=list)
    recorder_gaps: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: One line per kill: number, point, and the request it fired on (or "not reached").
    kill_log: list[str] = field(default_factory=list)
    #: Seconds from spawning the daemon to its HTTP port being up, and from then to the kill.
    start_s: list[float] = field(default_factory=list)
    uptime_s: list[float] = field(default_factory=list)

    @property
    def rollouts_completed(self) -> int:
        return self.promoted + self.rolled_back

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}",
            f"kills: {self.kills} ({self.fallback_kills} at the fallback time of a point not reached)",
            f"restarts: {self.restarts}",
            f"rollouts completed: {self.rollouts_completed} ({self.promoted} good promoted,"
            f" {self.rolled_back} bad rolled back); unfinished at the end: {self.unfinished}",
            f"invariant violations: {len(self.violations)}",
            f"traffic recorder gaps: {len(self.recorder_gaps)}",
            f"time: {self.duration_s:.0f} s (daemon start {_mean(self.start_s):.2f} s, up {_mean(self.uptime_s):.2f} s"
            " before a kill, on average)",
            "kills by point:",
            *(f"  {k:34} {v}" for k, v in sorted(self.kills_by_point.items())),
        ]
        lines += [f"VIOLATION [{v.when}] {v.what}" for v in self.violations[:50]]
        if self.violations:
            lines += ["the last kills before the end:", *(f"  {k}" for k in self.kill_log[-8:])]
        lines += [f"GAP {g}" for g in self.recorder_gaps[:20]]
        return "\n".join(lines)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def version_uri(service: str, index: int, good: bool) -> str:
    return f"gs://crash/{'good' if good else 'bad'}/{service}/v{index}"


def plan_versions(cfg: CampaignConfig, rounds: int) -> dict[str, list[bool]]:
    """Per service, whether each rollout ships a good version (index 0 creates the service: good)."""
    rng = random.Random(f"{cfg.seed}:versions")
    return {svc: [True] + [rng.random() >= cfg.bad_ratio for _ in range(rounds - 1)]
            for svc in service_names(cfg)}


def service_names(cfg: CampaignConfig) -> list[str]:
    return [f"svc{i}" for i in range(cfg.services)]


def campaign_scenario(cfg: CampaignConfig, plan: Mapping[str, list[bool]]) -> Scenario:
    versions = {version_uri(svc, i, good): (GOOD if good else BAD)
                for svc, kinds in plan.items() for i, good in enumerate(kinds)}
    return Scenario.model_validate({"seed": cfg.seed % 100_000, "default": GOOD, "versions": versions})


def policy_doc(cfg: CampaignConfig, name: str) -> str:
    """A short policy: the threshold judge (the default sequential one needs far more traffic)."""
    spec = {
        "target": {"name": name},
        "steps": list(cfg.steps),
        "interval": f"{cfg.interval_s:g}s",
        "progressDeadline": "30s",
        "analysis": {
            "mode": "threshold", "every": "1s", "warmup": "1s", "minRequests": 3, "failureLimit": 2,
            "inconclusiveLimit": 5, "onInconclusive": "hold", "maxHold": "90s",
            "metrics": [{"name": "error-rate", "max": 0.05}, {"name": "latency", "quantile": 0.99, "maxMs": 300}],
        },
    }
    return docs.policy_doc(name, cfg.namespace, spec)


def isvc_doc(namespace: str, name: str, uri: str) -> str:
    return docs.isvc_yaml(name, namespace, uri)


def poll(fn: Callable[[], T | None], timeout: float, every: float = 0.05) -> T | None:
    """`fn()` until it answers something truthy or `timeout` passes (then None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every)


class Campaign:
    """One crash campaign: its own sandbox, daemon, proxy and recorder (see the module docstring)."""

    def __init__(self, cfg: CampaignConfig, *, workdir: Path | None = None, trace: bool = False,
                 progress: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.report = CampaignReport(seed=cfg.seed)
        self.progress = progress or (lambda _msg: None)
        self.workdir = workdir
        #: Write every request the daemon makes, and what it was told, to `proxy-trace.log` in the sandbox.
        self.trace = trace
        self.plan = plan_versions(cfg, rounds=400)
        self.rollouts: dict[str, list[Rollout]] = {s: [] for s in service_names(cfg)}
        self.retired: set[str] = set()  # services with a stuck rollout: nothing more is pushed to them
        self.sb: Sandbox | None = None
        self.proxy: KillProxy | None = None
        self.recorder: TrafficRecorder | None = None
        self.daemon: Daemon | None = None
        self.forks: ForkServer | None = None
        self.co: client.CustomObjectsApi | None = None
        self._started = 0.0

    # -- running -------------------------------------------------------------------------------------
    def run(self) -> CampaignReport:
        self._started = time.monotonic()
        with contextlib.ExitStack() as stack:
            sb = self.sb = stack.enter_context(Sandbox(campaign_scenario(self.cfg, self.plan),
                                                       namespaces=(self.cfg.namespace,), workdir=self.workdir))
            api = make_api_client(str(sb.kubeconfig))
            self.co = client.CustomObjectsApi(api)
            if self.cfg.fork_server:
                self.forks = ForkServer()
                stack.callback(self.forks.stop)
            self.proxy = KillProxy(sb.api.url, trace=sb.dir / "proxy-trace.log" if self.trace else None).start()
            stack.callback(self.proxy.stop)
            self.recorder = TrafficRecorder(api, self.cfg.namespace).start()
            stack.callback(self.recorder.stop)
            stack.callback(self._stop_daemon)
            assert sb.dataplane is not None
            load = LoadProcess(sb.dataplane.url, self.cfg.namespace, service_names(self.cfg),
                               self.cfg.load_per_service, self.cfg.max_duration_s + 600)
            stack.callback(load.stop)
            settings = sb.daemon_settings(poll_interval="1s")
            settings["kubernetes"]["kubeconfig"] = str(self.proxy.write_kubeconfig(sb.dir / "proxy-kubeconfig"))
            settings["kubernetes"]["defaultNamespace"] = self.cfg.namespace
            self.settings_path = sb.write_settings("crash-daemon.yaml", settings)
            self._push_first()
            self._kill_loop()
            self._drain()
            self._final_checks()
        self.report.duration_s = time.monotonic() - self._started
        return self.report

    def _kill_loop(self) -> None:
        cfg = self.cfg
        while self.report.kills < cfg.kills and time.monotonic() - self._started < cfg.max_duration_s:
            point = self.rng.choice(KILL_POINTS)
            n = self.report.kills + 1
            self._one_kill(point, n)
            self._check_states(f"after kill {n} ({point})")
            self._check_traffic(f"after kill {n}")
            self._advance(pushing=True)
            if n % 10 == 0:
                self.progress(f"kill {n}/{cfg.kills}: {self.report.rollouts_completed} rollouts completed,"
                              f" {len(self.report.violations)} violations, {time.monotonic() - self._started:.0f}s")

    def _one_kill(self, point: str, n: int) -> None:
        assert self.proxy is not None and self.sb is not None
        env: dict[str, str] = {}
        hold_dir: Path | None = None
        if point.startswith("hold:"):
            hold_dir = self.sb.dir / f"hold-{n}"
            env = {HOLD_ENV: str(hold_dir), HOLD_ON_ENV: point.removeprefix("hold:")}
        trigger = ApiTrigger.parse(point) if point.startswith(("before:", "after:")) else None
        delay = self.rng.uniform(*self.cfg.random_kill_s)  # drawn for every point: the RNG stream stays aligned
        daemon = self._start_daemon(env, trigger)
        up = time.monotonic()
        self._check_states(f"after restart {self.report.restarts} (before kill {n}, {point})")
        reached = True
        if trigger is not None:
            reached = self.proxy.fired.wait(self.cfg.fallback_s)
        elif hold_dir is not None:
            reached = poll(lambda: (hold_dir / "held").exists(), self.cfg.fallback_s) is not None
        else:
            time.sleep(delay)  # the kill point itself: a random moment, not a synchronisation
        if self.proxy.freeze():
            if not daemon.alive():
                self._violation(f"kill {n}", f"the daemon exited by itself before the kill; log:\n"
                                f"{daemon.log_tail(15)}")
            daemon.kill()
        else:
            self.proxy.fired.wait(30)  # the proxy matched the request just now and is killing it
        self.report.uptime_s.append(time.monotonic() - up)
        held = (hold_dir / "held").read_text() if hold_dir is not None and (hold_dir / "held").exists() else ""
        fired = self.proxy.fired_on or (f"held {held}" if held else "")
        self.report.kill_log.append(f"{n} {point}: {fired if reached else 'not reached'}"
                                    f" after {time.monotonic() - up:.2f}s")
        self.report.kills += 1
        self.report.kills_by_point[point] = self.report.kills_by_point.get(point, 0) + 1
        if not reached:
            self.report.fallback_kills += 1
        if hold_dir is not None:
            shutil.rmtree(hold_dir, ignore_errors=True)

    def _start_daemon(self, env: dict[str, str], trigger: ApiTrigger | None) -> Daemon:
        assert self.proxy is not None and self.sb is not None
        log_path = self.sb.dir / "canaryd.log"
        d: Daemon = (ForkedDaemon(self.forks, self.settings_path, log_path, env) if self.forks is not None
                     else DaemonProcess(self.settings_path, log_path, env=env))
        self.daemon = d
        self.proxy.arm(trigger, d.kill)
        spawned = time.monotonic()
        d.start()
        self.report.start_s.append(time.monotonic() - spawned)
        self.report.restarts += 1
        return d

    def _stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.alive():
            self.daemon.terminate()

    def _drain(self) -> None:
        """No more kills or pushes: one daemon runs until every rollout in flight has ended."""
        self._start_daemon({}, None)
        self._check_states("after the last restart")
        while True:
            self._advance(pushing=False)
            if all(r[-1].finished_at is not None or r[-1].stuck for r in self.rollouts.values()):
                break
            time.sleep(0.25)
        assert self.daemon is not None and self.proxy is not None
        self.proxy.freeze()
        self.daemon.terminate()

    def _final_checks(self) -> None:
        self._check_states("at the end")
        self._check_traffic("at the end")
        assert self.recorder is not None
        self.report.recorder_gaps = [*self.recorder.gaps, *self.report.recorder_gaps]
        self.report.unfinished = sum(1 for rs in self.rollouts.values() for r in rs if r.finished_at is None)

    # -- pushing and finishing rollouts ------------------------------------------------------------
    def _push_first(self) -> None:
        assert self.sb is not None
        files: dict[str, str | None] = {}
        now = time.monotonic()
        for svc in service_names(self.cfg):
            uri = version_uri(svc, 0, True)
            files[f"policies/{svc}.yaml"] = policy_doc(self.cfg, svc)
            files[f"services/{svc}.yaml"] = isvc_doc(self.cfg.namespace, svc, uri)
            self.rollouts[svc].append(Rollout(svc, 0, True, uri, now, created=True))
        self.sb.repo.commit(files, "create every service")

    def _advance(self, *, pushing: bool) -> None:
        """Finish the rollouts whose ModelRollout says they ended (checking their outcome), flag stuck
        ones, and (when `pushing`) push the next version of every service that is free."""
        assert self.sb is not None
        files: dict[str, str | None] = {}
        now = time.monotonic()
        for svc, rs in self.rollouts.items():
            r = rs[-1]
            if r.finished_at is None and not r.stuck:
                state = self._state(svc)
                # A created service is done once the daemon has recorded its revision as the stable one.
                if (state is not None and _uri_of(state.spec.last_applied) == r.uri
                        and state.status.phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED)
                        and (not r.created or state.status.stable_revision is not None)):
                    r.finished_at, r.outcome = now, str(state.status.phase)
                    self._verify(r, state)
                elif now - r.pushed_at > self.cfg.rollout_deadline_s:
                    r.stuck = True
                    self.retired.add(svc)
                    phase = f"{state.status.phase}: {state.status.message}" if state else "no ModelRollout"
                    self._violation(f"{svc} v{r.index}", f"stuck: not finished {self.cfg.rollout_deadline_s:.0f}s"
                                    f" after its push ({phase})")
            if pushing and r.finished_at is not None and svc not in self.retired:
                index = r.index + 1
                good = self.plan[svc][index]
                uri = version_uri(svc, index, good)
                files[f"services/{svc}.yaml"] = isvc_doc(self.cfg.namespace, svc, uri)
                rs.append(Rollout(svc, index, good, uri, time.monotonic()))
        if files:
            self.sb.repo.commit(files, f"push {', '.join(sorted(files))}")

    def _verify(self, r: Rollout, state: RolloutState) -> None:
        """The outcome a finished rollout must have, on the ModelRollout and the live service."""
        where = f"{r.service} v{r.index} ({'good' if r.good else 'bad'})"
        isvc = self._isvc(r.service) or {}
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        comp = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
        traffic = {t.get("revisionName"): int(t.get("percent") or 0) for t in comp.get("traffic") or []}
        revisions = self._revisions_of(r.uri)
        st = state.status
        story = "; history: " + " | ".join(f"{h.at.time().isoformat('milliseconds')} {h.from_phase}->{h.phase}"
                                           f" {h.reason} w{h.weight}: {h.message[:160]}" for h in st.history[-6:])
        live_story = (f"; live: {PERCENT} {predictor.get(PERCENT)!r}, predictor status"
                      f" {json.dumps({k: v for k, v in comp.items() if k != 'url'}, sort_keys=True)},"
                      f" conditions {json.dumps((isvc.get('status') or {}).get('conditions'))},"
                      f" generation {(isvc.get('metadata') or {}).get('generation')}"
                      f" observed {(isvc.get('status') or {}).get('observedGeneration')}")
        if r.good:
            if st.phase != Phase.SUCCEEDED:
                self._violation(where, f"a good version ended {st.phase}: {st.message}{story}{live_story};"
                                f" baseline {st.baseline_created_revision}")
                return
            self.report.promoted += 0 if r.created else 1
            if st.stable_revision not in revisions:
                self._violation(where, f"stable revision {st.stable_revision} is not this version's ({revisions})")
            if PERCENT in predictor:
                self._violation(where, f"promoted, but {PERCENT} is still {predictor[PERCENT]}")
            if traffic.get(st.stable_revision) != 100:
                self._violation(where, f"promoted, but the traffic is {traffic}")
            return
        if st.phase != Phase.FAILED:
            self._violation(where, f"a bad version ended {st.phase}: {st.message}{story}")
            return
        self.report.rolled_back += 1
        if predictor.get(PERCENT) != 0:
            self._violation(where, f"rolled back, but {PERCENT} is {predictor.get(PERCENT)!r}")
        if any(traffic.get(rev, 0) != 0 for rev in revisions):
            self._violation(where, f"rolled back, but its revision(s) {revisions} still get traffic: {traffic}")
        previous = self._last_promoted(r)
        if previous is not None and st.stable_revision != previous:
            self._violation(where, f"rolled back, but the stable revision moved from {previous}"
                            f" to {st.stable_revision}")
        if st.stable_revision is not None and traffic.get(st.stable_revision) != 100:
            self._violation(where, f"rolled back, but the stable revision does not get 100 %: {traffic}")

    def _last_promoted(self, r: Rollout) -> str | None:
        for prev in reversed(self.rollouts[r.service][: r.index]):
            if prev.good and prev.outcome == str(Phase.SUCCEEDED):
                revs = self._revisions_of(prev.uri)
                return revs[-1] if len(revs) == 1 else None
        return None

    # -- invariant checks over the whole namespace ---------------------------------------------------
    def _check_states(self, when: str) -> None:
        assert self.co is not None
        objs = _as_dict(self.co.list_namespaced_custom_object(GROUP, VERSION, self.cfg.namespace, PLURAL))["items"]
        for obj in objs:
            for problem in check_rollout_object(obj):
                self._violation(when, problem)

    def _check_traffic(self, when: str) -> None:
        """Every rollout's writes so far (a prefix while it runs); once per rollout when complete."""
        assert self.recorder is not None
        for rs in self.rollouts.values():
            for r in rs:
                complete = r.finished_at is not None
                if r.traffic_checked:
                    continue
                if complete:
                    self._recorder_caught_up(r.service)
                timed = self.recorder.timed(r.service, r.uri)
                values = [p for _, p in timed]
                problems = check_percent_writes(values, self.cfg.steps, complete=complete, created=r.created)
                problems += check_step_dwell(timed, self.cfg.steps, self.cfg.interval_s - self.cfg.dwell_tolerance_s)
                if complete and not r.created:
                    end = collapse(values)[-1:] if values else []
                    want: list[int | None] = [None] if r.good else [0]
                    if r.outcome in (str(Phase.SUCCEEDED), str(Phase.FAILED)) and end != want:
                        problems.append(f"ended {r.outcome} but the last write was {end}: writes {values}")
                for p in problems:
                    self._violation(f"{when}: {r.service} v{r.index} ({'good' if r.good else 'bad'})", p)
                if complete or problems:
                    r.traffic_checked = True  # report each sequence once

    def _recorder_caught_up(self, name: str) -> None:
        """Wait (a little) until the watch has delivered the InferenceService's newest spec write, so a
        finished rollout's last write is not missing from its sequence only because it is in flight."""
        assert self.recorder is not None
        generation = int(((self._isvc(name) or {}).get("metadata") or {}).get("generation") or 0)
        if poll(lambda: self.recorder is not None and self.recorder.generation(name) >= generation, 10) is None:
            self.report.recorder_gaps.append(f"{name}: generation {generation} not delivered by the watch in 10s")

    def _violation(self, when: str, what: str) -> None:
        what = f"{what} (last kill: {self.report.kill_log[-1] if self.report.kill_log else 'none'})"
        log.error("invariant violation [%s] %s", when, what)
        self.report.violations.append(Violation(when, what))
        self.progress(f"VIOLATION [{when}] {what}")

    # -- reads (straight at the API server) --------------------------------------------------------
    def _state(self, name: str) -> RolloutState | None:
        assert self.co is not None
        try:
            obj = _as_dict(self.co.get_namespaced_custom_object(GROUP, VERSION, self.cfg.namespace, PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return RolloutState.from_storage(obj)
        except ValidationError:
            return None  # reported by _check_states

    def _isvc(self, name: str) -> dict[str, Any] | None:
        assert self.co is not None
        try:
            return _as_dict(self.co.get_namespaced_custom_object(
                ISVC_GROUP, ISVC_VERSION, self.cfg.namespace, ISVC_PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _revisions_of(self, uri: str) -> list[str]:
        """The Knative Revisions the KServe emulator made for version `uri` (its storageUri annotation)."""
        assert self.co is not None
        items = _as_dict(self.co.list_namespaced_custom_object(
            REV_GROUP, REV_VERSION, self.cfg.namespace, REV_PLURAL))["items"]
        return sorted(str(i["metadata"]["name"]) for i in items
                      if (i["metadata"].get("annotations") or {}).get(STORAGE_URI_ANNOTATION) == uri)


def _uri_of(manifest: Mapping[str, Any] | None) -> str | None:
    predictor = ((manifest or {}).get("spec") or {}).get("predictor") or {}
    uri = (predictor.get("model") or {}).get("storageUri")
    return uri if isinstance(uri, str) else None
