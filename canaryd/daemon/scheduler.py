"""APScheduler jobs: the periodic repo sync, and one tick per service at its `next_check_at`.

Each service has one scheduled job (id `tick:<ns>/<name>`, replaced on every reschedule) and may get
extra immediate runs (a Git change). Ticks of one service are serialised by a lock rather than by
APScheduler's `max_instances`, because a run skipped for "too many instances" would be lost; an extra tick
is harmless, since ticks are idempotent. A run that finds its service ticking already does not wait for
the lock (a slow service would park every worker on it): it leaves one re-run for when the tick ends.
The repo sync runs on an executor of its own, so no amount of tick work can delay it (issue 13).

A standby replica (leader election) keeps the scheduler running but `pause()`d: no job runs and none can
be added, so it cannot act; `resume()` when it becomes the leader. `drain()` waits, with a bound, for the
ticks already running (graceful shutdown).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("canaryd.scheduler")

TickFn = Callable[[str], datetime | None]


class TickScheduler:
    def __init__(self, tick: TickFn, workers: int = 4, error_backoff_s: float = 5.0) -> None:
        self._tick = tick
        self._backoff = error_backoff_s
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._active = 0  # ticks and syncs running now (what drain() waits for)
        self._idle = threading.Condition(self._guard)
        self._rerun: set[str] = set()
        # The repo sync has a worker of its own: however long ticks take, they cannot delay it (issue 13).
        self.sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(workers), "sync": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 3, "misfire_grace_time": None},
            timezone=UTC,
        )

    def start(self) -> None:
        self.sched.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, let a running tick finish (it is short) rather than cut it."""
        self._stopping.set()
        self.sched.shutdown(wait=wait)

    def pause(self) -> None:
        """No job runs or can be added until `resume()`; ticks already running finish (or are fenced)."""
        self._paused.set()
        self.sched.remove_all_jobs()

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def drain(self, timeout: float) -> bool:
        """Stop starting ticks and wait up to `timeout` s for the running ones; True if none is left."""
        self.pause()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @property
    def running(self) -> bool:
        return bool(self.sched.running) and not self._stopping.is_set()

    def _closed(self) -> bool:
        return self._stopping.is_set() or self._paused.is_set()

    def every(self, job_id: str, fn: Callable[[], None], seconds: float) -> None:
        if self._closed():
            return
        self.sched.add_job(self._counted, "interval", args=[fn], seconds=seconds, id=job_id, replace_existing=True,
                           next_run_time=datetime.now(UTC), max_instances=1, executor="sync")

    def once(self, job_id: str, fn: Callable[[], None]) -> None:
        """Run `fn` now; a request while one is still pending replaces it (bursts coalesce)."""
        if self._closed():
            return
        self.sched.add_job(self._counted, "date", args=[fn], run_date=datetime.now(UTC), id=job_id,
                           replace_existing=True, executor="sync")

    def trigger(self, key: str) -> None:
        """Tick `key` as soon as a worker is free."""
        if self._closed():
            return
        self.sched.add_job(self._run, "date", run_date=datetime.now(UTC), args=[key],
                           id=f"now:{key}:{uuid.uuid4().hex[:8]}")

    def at(self, key: str, when: datetime) -> None:
        if self._closed():
            return
        self.sched.add_job(self._run, "date", run_date=when, args=[key], id=f"tick:{key}", replace_existing=True)

    def scheduled(self, key: str) -> bool:
        return self.sched.get_job(f"tick:{key}") is not None

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _enter(self) -> bool:
        with self._guard:
            if self._closed():
                return False
            self._active += 1
            return True

    def _leave(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def _counted(self, fn: Callable[[], None]) -> None:
        """Run a non-tick job (a repo sync) so that `drain()` waits for it too; skipped while paused."""
        if not self._enter():
            return
        try:
            fn()
        finally:
            self._leave()

    def _run(self, key: str) -> None:
        if self._closed():
            return
        lock = self._lock(key)
        if not lock.acquire(blocking=False):
            # This service is ticking already: note one more run for when it ends rather than hold a worker
            # waiting for the lock (a slow service would otherwise fill the pool that every service needs).
            with self._guard:
                self._rerun.add(key)
            return
        try:
            if not self._enter():
                return
            try:
                nxt = self._tick(key)
            except Exception:
                log.exception("tick failed", extra={"service": key})
                nxt = datetime.now(UTC) + timedelta(seconds=self._backoff)
            finally:
                self._leave()
        finally:
            lock.release()
        with self._guard:
            again = key in self._rerun
            self._rerun.discard(key)
        if again:
            self.trigger(key)
        if nxt is not None:
            self.at(key, nxt)
