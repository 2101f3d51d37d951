"""Calls the policy's webhooks (gates and hooks, as in Flagger) over HTTP, beside the tick, never inside it.

A gate's answer is an observation for the pure engine. The controller asks `poll(service, calls)` at every
tick: a call not running yet is started, one still running is reported `pending` (the engine waits for
it), and a finished one hands over its answer once. `on_answer(service)` is called when an answer comes
in, so the daemon ticks that service again at once instead of at its next check. A tick therefore never
waits for an endpoint: a blackholed or trickling gate delays only its own service's decision, and each
call ends by its total deadline, `(retries + 1) x timeout` plus the backoff (the policy caps both).

The calls run as coroutines on one event-loop thread (`outbound.OutboundLoop`), so hanging calls hold no
worker thread. Gate URLs come from config-repo authors: every call goes through the daemon's address
rules (`outbound.OutboundRules`), its answer is read up to a cap, and only the status code (or canaryd's
own reason) goes into the result; the log gets the status and a short, redacted excerpt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable

import httpx

from canaryd.adapters.outbound import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DeadlineExceeded,
    OutboundError,
    OutboundLoop,
    OutboundMetrics,
    OutboundRules,
    excerpt,
    request,
    safe_url,
)
from canaryd.rollout.model import GateCall, GateResult

log = logging.getLogger("canaryd.hooks")

__all__ = ["WebhookCaller", "safe_url"]

#: Most calls one service may have running at once; more wait (reported pending) for a later tick.
MAX_IN_FLIGHT_PER_SERVICE = 16


def _key(call: GateCall) -> str:
    return json.dumps([call.name, call.type, call.url, call.timeout_s, call.retries, call.payload],
                      sort_keys=True, default=str)


class WebhookCaller:
    def __init__(self, rules: OutboundRules | None = None, *, backoff_s: float = 0.2,
                 metrics: OutboundMetrics | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.rules = rules or OutboundRules()
        self._backoff_s = backoff_s
        self._metrics = metrics or OutboundMetrics()
        self._max_bytes = max_response_bytes
        self._loop = OutboundLoop("webhooks")
        self._lock = threading.Lock()
        self._calls: dict[str, dict[str, concurrent.futures.Future[GateResult]]] = {}
        #: Called (on the event-loop thread) with the service key when one of its gates answered.
        self.on_answer: list[Callable[[str], None]] = []

    def poll(self, service: str, calls: list[GateCall]) -> list[GateResult]:
        """The answers of this tick's gates, as far as they are in; never blocks and never raises."""
        results: list[GateResult] = []
        with self._lock:
            slots = self._calls.setdefault(service, {})
            wanted = {_key(c) for c in calls}
            for k in [k for k, f in slots.items() if k not in wanted and f.done()]:
                del slots[k]  # an answer nobody asks for any more (the rollout moved on)
            for c in calls:
                k = _key(c)
                fut = slots.get(k)
                if fut is not None and fut.done():
                    results.append(fut.result())
                    continue
                if fut is None and sum(not f.done() for f in slots.values()) < MAX_IN_FLIGHT_PER_SERVICE:
                    slots[k] = self._start(service, c)
                results.append(GateResult(name=c.name, type=c.type, ok=False, pending=True))
            if not any(r.pending for r in results):
                for k in wanted:  # all in: this tick decides with them; the next due round calls again
                    slots.pop(k, None)
            if not slots:
                del self._calls[service]
        return results

    def call(self, call: GateCall) -> GateResult:
        """One call, waited for (its total deadline bounds the wait)."""
        return self._loop.submit(self._call(call)).result()

    def fire(self, call: GateCall) -> None:
        """A hook whose answer changes nothing (post-rollout): started, not waited for."""
        self._loop.submit(self._call(call))

    def _start(self, service: str, call: GateCall) -> concurrent.futures.Future[GateResult]:
        fut = self._loop.submit(self._call(call))

        def answered(_f: concurrent.futures.Future[GateResult]) -> None:
            for notify in self.on_answer:
                try:
                    notify(service)
                except Exception:
                    log.exception("on_answer failed", extra={"service": service})

        fut.add_done_callback(answered)
        return fut

    async def _call(self, call: GateCall) -> GateResult:
        attempts = call.retries + 1
        result = GateResult(name=call.name, type=call.type, ok=False, error="not called")
        done = 0
        try:
            for attempt in range(attempts):
                if attempt:
                    await asyncio.sleep(min(self._backoff_s * 2 ** (attempt - 1), 5.0))
                result = await self._post(call)
                done += 1
                if result.ok:
                    break
        except Exception as exc:  # a bug here must still end as a failed gate, not a lost future
            log.exception("webhook call crashed", extra={"webhook": call.name})
            result = GateResult(name=call.name, type=call.type, ok=False, error=f"internal error: {type(exc).__name__}")
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "webhook called", extra={"webhook": call.name, "type": call.type, "url": safe_url(call.url),
                                                "ok": result.ok, "status": result.status, "error": result.error,
                                                "attempts": done, "service": f"{call.payload.get('namespace')}/"
                                                f"{call.payload.get('name')}"})
        return result

    async def _post(self, call: GateCall) -> GateResult:
        where = safe_url(call.url)
        try:
            answer = await request(self._loop.client, "POST", call.url, json=call.payload,
                                   deadline_s=call.timeout_s, max_bytes=self._max_bytes, rules=self.rules)
        except DeadlineExceeded as exc:
            self._metrics.count("gate", exc)
            return GateResult(name=call.name, type=call.type, ok=False,
                              error=f"timed out after {call.timeout_s:g}s ({where})")
        except OutboundError as exc:
            self._metrics.count("gate", exc)
            return GateResult(name=call.name, type=call.type, ok=False, error=str(exc))
        except httpx.HTTPError as exc:
            return GateResult(name=call.name, type=call.type, ok=False, error=f"{type(exc).__name__} ({where})")
        if not answer.ok:
            # The body stays out of the result (it reaches status and Events): a log line gets an excerpt.
            log.warning("webhook answered %s", answer.status,
                        extra={"webhook": call.name, "url": where, "status": answer.status,
                               "excerpt": excerpt(answer.body)})
        return GateResult(name=call.name, type=call.type, ok=answer.ok, status=answer.status)

    def close(self) -> None:
        self._loop.close()
