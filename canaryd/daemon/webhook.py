"""`POST /hooks/git`: a verified push from GitHub, GitLab or Gitea triggers an immediate repo sync.

The decision (which provider, is the signature right, is it a push to our branch) is the pure function
`judge`, so every provider's rules are a table in the unit tests; `GitWebhook` is the thin endpoint around
it that rate-limits, caps the body, reads the secret file and counts.

Rate limits come after authentication: requests that prove the secret spend one token bucket, everything
else (no or a wrong signature, a body over the cap, a client gone mid-body) spends another. A flood of
unsigned requests therefore runs out of its own budget (429, logged at debug only) and a genuine push is
still served. A request without any signature header is refused before its body is read.

A push only *requests* a sync (the scheduler coalesces bursts into one pending sync and the sync reads
Git itself), so the payload is never trusted for content and a replayed delivery is harmless.

Nothing here logs or returns the secret or a signature header: rejections say which check failed and
carry the delivery id, which is what an operator needs to match the provider's delivery log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from canaryd.config import WebhookSettings

log = logging.getLogger("canaryd.webhook")

GITHUB, GITLAB, GITEA, UNKNOWN = "github", "gitlab", "gitea", "unknown"

#: The event header each provider sets and the value it uses for a branch push.
_EVENT_HEADER = {GITHUB: "x-github-event", GITLAB: "x-gitlab-event", GITEA: "x-gitea-event"}
_PUSH_EVENT = {GITHUB: "push", GITLAB: "Push Hook", GITEA: "push"}
#: Where each provider puts its delivery id (safe to log; lets an operator find the delivery).
_DELIVERY_HEADER = {GITHUB: "x-github-delivery", GITLAB: "x-gitlab-event-uuid", GITEA: "x-gitea-delivery"}
#: The header that carries each provider's proof of the secret.
_CREDENTIAL_HEADER = {GITHUB: "x-hub-signature-256", GITLAB: "x-gitlab-token", GITEA: "x-gitea-signature"}

UNAUTHORIZED_BODY = {"error": "unauthorized: webhook signature missing or invalid"}


@dataclass(frozen=True)
class Outcome:
    """What to answer, whether to sync, and the reason for the log (never a secret or a signature)."""

    provider: str
    status: int
    result: str  # the `result` label of canaryd_webhook_requests_total
    body: dict[str, Any]
    reason: str
    sync: bool = False
    fields: dict[str, str] = field(default_factory=dict)


def detect_provider(headers: Mapping[str, str]) -> str:
    """Gitea is checked first: it also sends GitHub's headers for compatibility (and Forgejo sends Gitea's)."""
    h = _lower(headers)
    if "x-gitea-event" in h or "x-gitea-signature" in h:
        return GITEA
    if "x-gitlab-event" in h or "x-gitlab-token" in h:
        return GITLAB
    if "x-github-event" in h or "x-hub-signature-256" in h:
        return GITHUB
    return UNKNOWN


def has_credential(provider: str, headers: Mapping[str, str]) -> bool:
    """Whether the request carries the provider's signature (or token) header at all; without one the
    request is refused without reading its body."""
    header = _CREDENTIAL_HEADER.get(provider)
    return header is not None and header in _lower(headers)


def check_signature(provider: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> str | None:
    """None if the request proves knowledge of `secret`, else why not. Comparisons are constant-time."""
    h = _lower(headers)
    if provider == GITHUB:
        sig = h.get("x-hub-signature-256")
        if sig is None:
            extra = " (the SHA-1 X-Hub-Signature is not accepted)" if "x-hub-signature" in h else ""
            return f"missing X-Hub-Signature-256 header{extra}"
        want = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        return None if hmac.compare_digest(_raw(sig).lower(), want) else "X-Hub-Signature-256 does not match the body"
    if provider == GITEA:
        sig = h.get("x-gitea-signature")
        if sig is None:
            return "missing X-Gitea-Signature header"
        want = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        return None if hmac.compare_digest(_raw(sig).lower(), want) else "X-Gitea-Signature does not match the body"
    if provider == GITLAB:
        token = h.get("x-gitlab-token")
        if token is None:
            return "missing X-Gitlab-Token header"
        return None if hmac.compare_digest(_raw(token), secret) else "X-Gitlab-Token does not match the secret"
    return "no X-GitHub-Event, X-Gitlab-Event or X-Gitea-Event header: unknown provider"


def judge(headers: Mapping[str, str], body: bytes, secret: bytes | None, branch: str,
          secret_problem: str = "no webhook secret configured (webhook.secretFile is unset)") -> Outcome:
    """Decide one webhook request. Authentication comes first: nothing of an unsigned body is looked at."""
    h = _lower(headers)
    provider = detect_provider(h)
    fields = {"provider": provider}
    if provider != UNKNOWN:
        delivery = h.get(_DELIVERY_HEADER[provider])
        if delivery:
            fields["delivery"] = delivery[:100]
        fields["event"] = h.get(_EVENT_HEADER[provider], "")[:100]

    def out(status: int, result: str, payload: dict[str, Any], reason: str, sync: bool = False) -> Outcome:
        return Outcome(provider, status, result, payload, reason, sync, fields)

    if not secret:
        return out(401, "unauthorized", UNAUTHORIZED_BODY, secret_problem)
    problem = check_signature(provider, h, body, secret)
    if problem is not None:
        return out(401, "unauthorized", UNAUTHORIZED_BODY, problem)

    event = h.get(_EVENT_HEADER[provider], "")
    if provider == GITHUB and event == "ping":
        return out(200, "ping", {"ping": "ok"}, "ping event")
    if event != _PUSH_EVENT[provider]:
        return out(202, "ignored", {"ignored": f"event {event[:100]}"}, f"not a push event: {event[:100]!r}")

    payload = _payload(h, body)
    if payload is None:
        return out(400, "bad_request", {"error": "push payload is not a JSON object"}, "payload is not JSON")
    ref = payload.get("ref")
    if not isinstance(ref, str):
        return out(400, "bad_request", {"error": "push payload has no ref"}, "payload has no ref")
    after = payload.get("after") if isinstance(payload.get("after"), str) else None
    if after:
        fields["after"] = after[:40]
    if ref != f"refs/heads/{branch}":
        what = f"branch {ref.removeprefix('refs/heads/')}" if ref.startswith("refs/heads/") else f"ref {ref}"
        return out(202, "ignored", {"ignored": what[:200]}, f"push to {what[:200]}, not branch {branch}")
    return out(202, "accepted", {"sync": "queued"}, f"push to branch {branch}", sync=True)


class TokenBucket:
    """`rate` requests per second on average, `burst` at once. `take()` is 0 when allowed, else the wait.

    Hand-written because it is fifteen lines and the well-known limiters only offer fixed or sliding
    windows; the clock is a parameter so the tests can drive it.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


class SecretFile:
    """The shared secret, from a file (a mounted Secret), re-read when the file changes.

    Kubernetes updates a mounted Secret by swapping a symlink, so (inode, mtime, size) of the resolved
    file changes and the next request sees the new secret without a restart. Surrounding whitespace is
    stripped (`echo secret > file` leaves a newline that no provider sends).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def read(self) -> tuple[bytes | None, str]:
        """(secret, "") or (None, why there is none: for the log, without any secret content)."""
        if self.path is None:
            return None, "no webhook secret configured (webhook.secretFile is unset)"
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            with self._lock:
                if key != self._key:
                    self._secret = self.path.read_bytes().strip() or None
                    self._key = key
                secret = self._secret
        except OSError as exc:
            return None, f"webhook secret file {self.path} unreadable ({exc.strerror or type(exc).__name__})"
        if secret is None:
            return None, f"webhook secret file {self.path} is empty"
        return secret, ""


class BodyTooLarge(Exception):
    pass


async def read_capped(request: Request, cap: int) -> bytes:
    """The body, read chunk by chunk; raises as soon as it would exceed `cap` (never buffers more)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge
    buf = bytearray()
    async for chunk in request.stream():
        if len(buf) + len(chunk) > cap:
            raise BodyTooLarge
        buf += chunk
    return bytes(buf)


class GitWebhook:
    """The Starlette endpoint is `handle`. `on_push` must be cheap and thread-safe (it only queues a sync job)."""

    def __init__(self, settings: WebhookSettings, branch: str, on_push: Callable[[], None],
                 requests: Counter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.branch = branch
        self.on_push = on_push
        self.requests = requests
        self.bucket = TokenBucket(settings.rate_per_second, settings.burst, clock)
        self.unauthenticated = TokenBucket(settings.unauthenticated_rate_per_second,
                                           settings.unauthenticated_burst, clock)
        self.secret = SecretFile(settings.secret_file)

    def _count(self, provider: str, result: str) -> None:
        if self.requests is not None:
            self.requests.labels(provider, result).inc()

    def _limited(self, bucket: TokenBucket, provider: str, remote: str | None) -> Response | None:
        """429 with Retry-After if `bucket` is empty, else None (a token was taken)."""
        wait = bucket.take()
        if wait <= 0:
            return None
        self._count(provider, "rate_limited")
        # debug, not warning: a flood must not turn into a flood of log lines (the metric counts it)
        log.debug("webhook rate-limited", extra={"provider": provider, "remote": remote,
                                                 "authenticated": bucket is self.bucket})
        return JSONResponse({"error": "rate limited"}, status_code=429,
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def _unauthorized(self, outcome: Outcome, remote: str | None) -> Response:
        limited = self._limited(self.unauthenticated, outcome.provider, remote)
        if limited is not None:
            return limited
        log.warning("webhook rejected (401)", extra={**outcome.fields, "remote": remote, "reason": outcome.reason})
        self._count(outcome.provider, outcome.result)
        return JSONResponse(outcome.body, status_code=outcome.status)

    async def handle(self, request: Request) -> Response:
        provider = detect_provider(request.headers)
        remote = request.client.host if request.client else None
        if not self.settings.enabled:
            self._count(provider, "disabled")
            return JSONResponse({"error": "webhook disabled (webhook.enabled: false)"}, status_code=404)
        secret, problem = self.secret.read()
        if secret is None or not has_credential(provider, request.headers):
            # Nothing to verify: refused from the unauthenticated budget, without reading the body.
            return self._unauthorized(judge(request.headers, b"", secret, self.branch, problem), remote)
        cap = self.settings.max_body_bytes
        try:
            body = await read_capped(request, cap)
        except ClientDisconnect:  # gone before its body arrived: nobody to answer, nothing to judge
            limited = self._limited(self.unauthenticated, provider, remote)
            if limited is not None:
                return limited
            self._count(provider, "bad_request")
            log.debug("webhook client disconnected before sending its body", extra={"remote": remote})
            return Response(status_code=400)
        except BodyTooLarge:
            limited = self._limited(self.unauthenticated, provider, remote)
            if limited is not None:
                return limited
            self._count(provider, "too_large")
            log.warning("webhook rejected: body too large", extra={"provider": provider, "remote": remote,
                                                                   "max_body_bytes": cap})
            return JSONResponse({"error": f"body larger than {cap} bytes"}, status_code=413)
        outcome = judge(request.headers, body, secret, self.branch, problem)
        if outcome.status == 401:
            return self._unauthorized(outcome, remote)
        # Authenticated: only now is the (signed pushes') bucket spent.
        limited = self._limited(self.bucket, outcome.provider, remote)
        if limited is not None:
            return limited
        extra = {**outcome.fields, "remote": remote, "reason": outcome.reason}
        if outcome.status >= 400:
            log.warning(f"webhook rejected ({outcome.status})", extra=extra)
        elif outcome.sync:
            try:
                self.on_push()
            except Exception as exc:  # e.g. the scheduler is shutting down: the Git host will retry
                self._count(outcome.provider, "error")  # counted as an error, not as accepted
                log.error("webhook push accepted but the sync could not be queued",
                          extra={**extra, "error": type(exc).__name__})
                return JSONResponse({"error": "could not queue a sync; try again"}, status_code=503)
            log.info("webhook push accepted; sync queued", extra=extra)
        else:
            log.info(f"webhook {outcome.result}", extra=extra)
        self._count(outcome.provider, outcome.result)
        return JSONResponse(outcome.body, status_code=outcome.status)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _raw(value: str) -> bytes:
    """Header text back to its bytes (ASGI servers decode headers as latin-1), for compare_digest."""
    return value.encode("latin-1", errors="replace")


def _payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any] | None:
    """The push JSON: the raw body, or GitHub's form encoding (`payload=<json>`)."""
    text: str | bytes = body
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        values = parse_qs(body.decode("utf-8", errors="replace")).get("payload")
        if not values:
            return None
        text = values[0]
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the JSON decoder goes
        return None
    return data if isinstance(data, dict) else None
