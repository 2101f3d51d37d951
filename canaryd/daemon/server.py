"""canaryd's HTTP endpoints: /healthz, /readyz and /metrics (the push webhook joins them later).

/healthz means "the process is alive and its scheduler runs"; /readyz means "it has synced the config
repo at least once and the Kubernetes API answered recently" — the two facts a rollout needs.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


def make_app(registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]],
             ready: Callable[[], tuple[bool, str]]) -> Starlette:
    async def healthz(_: Request) -> Response:
        ok, why = healthy()
        return PlainTextResponse(why, status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok, why = ready()
        return PlainTextResponse(why, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ])
