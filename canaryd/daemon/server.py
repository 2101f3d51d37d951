"""canaryd's HTTP endpoints: /healthz, /readyz, /metrics and the push webhook POST /hooks/git.

/healthz means "the process is alive and its scheduler runs"; /readyz means "it has synced the config
repo at least once and the Kubernetes API answered recently" — the two facts a rollout needs. With
leader election a standby is Ready as long as it reaches the API (it can take over at any moment), and
/readyz says which role the replica has: a `role: leader|standby` line in the text answer, the
`X-Canaryd-Role` header, and a `role` field in the JSON answer (`?format=json` or
`Accept: application/json`). The webhook lives in `webhook.py`; here it is only mounted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from canaryd.config import WebhookSettings
from canaryd.daemon.webhook import GitWebhook


def make_app(registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]],
             ready: Callable[[], tuple[bool, str]], *, webhook: WebhookSettings | None = None,
             branch: str = "main", on_push: Callable[[], None] | None = None,
             webhook_requests: Counter | None = None,
             role: Callable[[], Mapping[str, object]] | None = None) -> Starlette:
    """With `webhook` and `on_push` (the daemon's `request_sync`), POST /hooks/git is served too.

    `role()` describes the replica for /readyz: at least {"role": "leader" | "standby"}.
    """
    async def healthz(_: Request) -> Response:
        ok, why = healthy()
        return PlainTextResponse(why, status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        ok, why = ready()
        code = 200 if ok else 503
        info = dict(role()) if role is not None else {}
        headers = {"X-Canaryd-Role": str(info["role"])} if "role" in info else None
        wants_json = (request.query_params.get("format") == "json"
                      or "application/json" in request.headers.get("accept", ""))
        if wants_json:
            return JSONResponse({"ready": ok, "reason": why, **info}, status_code=code, headers=headers)
        text = why + (f"\nrole: {info['role']}" if "role" in info else "")
        return PlainTextResponse(text, status_code=code, headers=headers)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if webhook is not None and on_push is not None:
        routes.append(Route("/hooks/git", GitWebhook(webhook, branch, on_push, webhook_requests).handle,
                             methods=["POST"]))
    return Starlette(routes=routes)
