"""APScheduler jobs: the periodic repo sync, and one tick per service at its `next_check_at`.

Each service has one scheduled job (id `tick:<ns>/<name>`, replaced on every reschedule) and may get
extra immediate runs (a Git change). Ticks of one service are serialised by a lock rather than by
APScheduler's `max_instances`, because a run skipped for "too many instances" would be lost; an extra tick
is harmless, since ticks are idempotent.
"""

from __future__ import annotations

import logging
import threading
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
        self.sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"coalesce": True, "max_instances": 3, "misfire_grace_time": None},
            timezone=UTC,
        )

    def start(self) -> None:
        self.sched.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, let a running tick finish (it is short) rather than cut it."""
        self._stopping.set()
        self.sched.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return bool(self.sched.running) and not self._stopping.is_set()

    def every(self, job_id: str, fn: Callable[[], None], seconds: float) -> None:
        self.sched.add_job(fn, "interval", seconds=seconds, id=job_id, replace_existing=True,
                           next_run_time=datetime.now(UTC), max_instances=1)

    def once(self, job_id: str, fn: Callable[[], None]) -> None:
        """Run `fn` now; a request while one is still pending replaces it (bursts coalesce)."""
        if self._stopping.is_set():
            return
        self.sched.add_job(fn, "date", run_date=datetime.now(UTC), id=job_id, replace_existing=True)

    def trigger(self, key: str) -> None:
        """Tick `key` as soon as a worker is free."""
        if self._stopping.is_set():
            return
        self.sched.add_job(self._run, "date", run_date=datetime.now(UTC), args=[key],
                           id=f"now:{key}:{uuid.uuid4().hex[:8]}")

    def at(self, key: str, when: datetime) -> None:
        if self._stopping.is_set():
            return
        self.sched.add_job(self._run, "date", run_date=when, args=[key], id=f"tick:{key}", replace_existing=True)

    def scheduled(self, key: str) -> bool:
        return self.sched.get_job(f"tick:{key}") is not None

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _run(self, key: str) -> None:
        if self._stopping.is_set():
            return
        with self._lock(key):
            if self._stopping.is_set():
                return
            try:
                nxt = self._tick(key)
            except Exception:
                log.exception("tick failed", extra={"service": key})
                nxt = datetime.now(UTC) + timedelta(seconds=self._backoff)
        if nxt is not None:
            self.at(key, nxt)
