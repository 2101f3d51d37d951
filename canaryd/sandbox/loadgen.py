"""A bounded, open-loop HTTP load generator for the sandbox.

Open loop: request k of a target is due at `start + k / rate`, whether or not earlier requests have
answered, as real users do not wait for each other; a slow canary therefore sees the same offered load
as a fast one. It is bounded three ways so it can never run away in a test or a demo: by rate, by
duration or request count (it stops by itself), and by requests in flight (a request whose slot is
taken is skipped and counted, not queued, so a stall does not turn into a burst later).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

PREDICT_BODY = {"instances": [[6.8, 2.8, 4.8, 1.4]]}


@dataclass(frozen=True)
class Target:
    url: str
    host_header: str | None = None
    rate_per_s: float = 10.0


@dataclass(frozen=True)
class LoadStats:
    sent: int = 0
    ok: int = 0  # 2xx
    errors: int = 0  # any other status, or no response at all
    transport_errors: int = 0  # no response (connection refused, timeout)
    skipped: int = 0  # due while `concurrency` requests were in flight
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class LoadGenerator:
    def __init__(
        self,
        targets: Sequence[Target],
        *,
        duration_s: float | None,
        max_requests: int | None,
        concurrency: int = 64,
        timeout_s: float = 10.0,
    ) -> None:
        if duration_s is None and max_requests is None:
            raise ValueError("a load generator needs duration_s or max_requests, so that it stops by itself")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._targets = _checked(targets)
        self._duration_s = duration_s
        self._max_requests = max_requests
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._lock = threading.Lock()  # guards the counters, written on the loop and read from any thread
        self._sent = self._ok = self._errors = self._transport = self._skipped = 0
        self._in_flight = self._max_in_flight = 0
        self._by_status: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()

    def start(self) -> LoadGenerator:
        self._thread.start()
        self._ready.wait(timeout=10)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop sending, let in-flight requests finish (bounded by the request timeout), join."""
        self._stopping.set()
        self._poke()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the generator stopped by itself; True if it did."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replace the targets; every schedule restarts now (so a new rate applies at once)."""
        self._targets = _checked(targets)
        self._poke()

    def stats(self) -> LoadStats:
        with self._lock:
            return LoadStats(
                sent=self._sent,
                ok=self._ok,
                errors=self._errors,
                transport_errors=self._transport,
                skipped=self._skipped,
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                by_status=dict(self._by_status),
            )

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop thread ---------------------------------------------------------------------------

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(wake.set)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = asyncio.Event()
        self._loop = loop
        self._ready.set()
        limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=self._concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(limits=limits, timeout=self._timeout_s) as client:
            await self._schedule(client, tasks)
            if tasks:
                await asyncio.wait(tasks, timeout=self._timeout_s + 1)
            for task in tasks:
                task.cancel()

    async def _schedule(self, client: httpx.AsyncClient, tasks: set[asyncio.Task[None]]) -> None:
        assert self._wake is not None
        started = time.monotonic()
        end = started + self._duration_s if self._duration_s is not None else float("inf")
        while not self._stopping.is_set():
            targets, epoch = self._targets, time.monotonic()
            counts = [0] * len(targets)
            self._wake.clear()
            while not self._stopping.is_set() and targets is self._targets:
                now = time.monotonic()
                if now >= end:
                    return
                # Fire everything due (catching up after a late wake-up), then sleep to the next due time.
                next_due = end
                for i, target in enumerate(targets):
                    while epoch + counts[i] / target.rate_per_s <= now:
                        counts[i] += 1
                        if not self._fire(client, target, tasks):
                            return
                    next_due = min(next_due, epoch + counts[i] / target.rate_per_s)
                delay = None if next_due == float("inf") else max(0.0, next_due - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                self._wake.clear()

    def _fire(self, client: httpx.AsyncClient, target: Target, tasks: set[asyncio.Task[None]]) -> bool:
        """Send one request unless the in-flight cap is hit; False once max_requests were sent."""
        with self._lock:
            if self._max_requests is not None and self._sent >= self._max_requests:
                return False
            if self._in_flight >= self._concurrency:
                self._skipped += 1
                return True
            self._sent += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        task = asyncio.create_task(self._request(client, target))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    async def _request(self, client: httpx.AsyncClient, target: Target) -> None:
        headers = {"Host": target.host_header} if target.host_header else {}
        status: int | None = None
        try:
            response = await client.post(target.url, json=PREDICT_BODY, headers=headers)
            status = response.status_code
        except httpx.HTTPError:
            status = None
        finally:
            with self._lock:
                self._in_flight -= 1
                if status is None:
                    self._errors += 1
                    self._transport += 1
                else:
                    self._by_status[status] += 1
                    if 200 <= status < 300:
                        self._ok += 1
                    else:
                        self._errors += 1


def _checked(targets: Sequence[Target]) -> tuple[Target, ...]:
    for target in targets:
        if not (target.rate_per_s > 0 and target.rate_per_s < float("inf")):
            raise ValueError(f"rate_per_s must be positive and finite, got {target.rate_per_s}")
    return tuple(targets)
