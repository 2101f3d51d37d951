"""Calls the policy's webhooks (gates and hooks, as in Flagger) over HTTP.

A gate's answer is an observation for the pure engine, so calls happen before `decide`; a hook whose
answer changes nothing (post-rollout) is fired in the background. Retries use tenacity with a short
backoff, bounded by the webhook's own `retries`; every attempt has the webhook's `timeout`.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_attempt, wait_exponential

from canaryd.rollout.model import GateCall, GateResult

log = logging.getLogger("canaryd.hooks")


def safe_url(url: str) -> str:
    """scheme://host:port/path only: webhook URLs may carry tokens in the query or userinfo."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookCaller:
    def __init__(self, max_parallel: int = 8, backoff_s: float = 0.2) -> None:
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="webhook")
        self._backoff_s = backoff_s
        self._client = httpx.Client(follow_redirects=False)

    def call_all(self, calls: list[GateCall]) -> list[GateResult]:
        """All gates of one tick, in parallel; never raises (a failure is a `not ok` result)."""
        if not calls:
            return []
        return list(self._pool.map(self.call, calls))

    def fire(self, call: GateCall) -> None:
        self._pool.submit(self.call, call)

    def call(self, call: GateCall) -> GateResult:
        attempt: list[GateResult] = []

        def once() -> GateResult:
            result = self._post(call)
            attempt.append(result)
            return result

        retrying = Retrying(stop=stop_after_attempt(call.retries + 1),
                            wait=wait_exponential(multiplier=self._backoff_s, max=5),
                            retry=retry_if_result(lambda r: not r.ok))
        with contextlib.suppress(RetryError):  # the last attempt's result is the answer
            retrying(once)
        final = attempt[-1] if attempt else GateResult(name=call.name, type=call.type, ok=False, error="not called")
        level = logging.INFO if final.ok else logging.WARNING
        log.log(level, "webhook called", extra={"webhook": call.name, "type": call.type, "url": safe_url(call.url),
                                                "ok": final.ok, "status": final.status, "error": final.error,
                                                "attempts": len(attempt), "service": f"{call.payload.get('namespace')}/"
                                                f"{call.payload.get('name')}"})
        return final

    def _post(self, call: GateCall) -> GateResult:
        try:
            resp = self._client.post(call.url, json=call.payload, timeout=call.timeout_s)
        except httpx.TimeoutException:
            return GateResult(name=call.name, type=call.type, ok=False,
                              error=f"timed out after {call.timeout_s:g}s ({safe_url(call.url)})")
        except httpx.HTTPError as exc:
            return GateResult(name=call.name, type=call.type, ok=False,
                              error=f"{type(exc).__name__} ({safe_url(call.url)})")
        ok = 200 <= resp.status_code < 300
        detail = None if ok else resp.text[:200].strip() or None
        return GateResult(name=call.name, type=call.type, ok=ok, status=resp.status_code, error=detail)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
