"""A pre-rollout smoke tester for the sandbox: a webhook that calls the canary before it gets traffic.

canaryd POSTs its webhook payload (with `canaryUrl`, the canary revision's tag URL); this server sends a
few real predictions to that revision through the data plane (by its tag host) and answers 200 only if
every one succeeded, 500 with what went wrong otherwise. A real deployment runs the same kind of check
(e.g. a Job image or a small service) against the cluster's ingress.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from canaryd.httpserver import ThreadedServer
from canaryd.sandbox.loadgen import PREDICT_BODY


class SmokeTester:
    def __init__(self, dataplane_url: str, requests: int = 5, route_wait_s: float = 8.0) -> None:
        self.dataplane_url = dataplane_url
        self.requests = requests
        self.route_wait_s = route_wait_s
        self.calls: list[dict[str, Any]] = []
        self._server = ThreadedServer(Starlette(routes=[Route("/smoke", self._smoke, methods=["POST"])]),
                                      name="smoke")

    @property
    def url(self) -> str:
        return f"{self._server.url}/smoke"

    def start(self) -> SmokeTester:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> SmokeTester:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _smoke(self, request: Request) -> JSONResponse:
        payload = await request.json()
        self.calls.append(payload)
        canary_url = payload.get("canaryUrl")
        if not canary_url:
            return JSONResponse({"error": "no canaryUrl in the payload (is tag routing on?)"}, status_code=400)
        host = urlsplit(canary_url).hostname or ""
        model = payload.get("name", "model")
        expected = payload.get("canaryRevision")
        failures: list[str] = []
        answered = 0
        # The ingress may still route the tag to the previous revision for a moment after the revision
        # became Ready (route programming lags, in the sandbox as on a cluster): only an answer from the
        # canary revision itself counts, so a smoke test can never pass on the old model.
        deadline = time.monotonic() + self.route_wait_s
        async with httpx.AsyncClient(timeout=5) as client:
            while answered < self.requests:
                try:
                    resp = await client.post(f"{self.dataplane_url}/v1/models/{model}:predict", json=PREDICT_BODY,
                                             headers={"Host": host})
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                    answered += 1
                    continue
                revision = _revision_of(resp)
                if expected and revision != expected:
                    if time.monotonic() > deadline:
                        failures.append(f"answered by {revision or 'no revision'}, not the canary {expected}")
                        break
                    await asyncio.sleep(0.1)
                    continue
                answered += 1
                if resp.status_code != 200:
                    failures.append(f"HTTP {resp.status_code}")
        if failures:
            return JSONResponse({"error": f"{len(failures)}/{self.requests} predictions failed: {failures[:3]}"},
                                status_code=500)
        return JSONResponse({"ok": f"{self.requests} predictions answered by {expected or 'the tag URL'}"})


def _revision_of(resp: httpx.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    revision = body.get("revision") if isinstance(body, dict) else None
    return str(revision) if revision else None
