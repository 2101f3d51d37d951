"""The push webhook's defences over real HTTP (Starlette on uvicorn, 127.0.0.1, an OS-picked port):

- HMAC (GitHub, Gitea) and token (GitLab) are enforced: a missing, wrong or other-scheme signature and a
  body changed after signing are 401, all with one identical body, and never queue a sync;
- a replayed delivery is accepted while the rate limit allows (it can only cause one more sync of what Git
  says), and is 429 with Retry-After beyond it;
- the rate limit is checked before the body is read, and the size cap before the signature, so neither a
  flood nor an unsigned huge body costs more than its headers and the cap;
- neither the secret nor a signature appears in a response, a log record or /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from canaryd.config import WebhookSettings
from canaryd.daemon.server import make_app
from canaryd.daemon.webhook import UNAUTHORIZED_BODY
from canaryd.httpserver import ThreadedServer

SECRET = "contract-webhook-secret-77a0"
PUSH = json.dumps({"ref": "refs/heads/main", "after": "c" * 40}).encode()


def hexmac(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-GitHub-Event": "push", "X-GitHub-Delivery": "sec-1", "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + hexmac(body, secret)}


def gitea(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Gitea-Event": "push", "X-Gitea-Delivery": "sec-2", "X-Gitea-Signature": hexmac(body, secret)}


def gitlab(_: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "sec-3", "X-Gitlab-Token": secret}


@dataclass
class Hook:
    server: ThreadedServer
    registry: CollectorRegistry
    pushes: list[float]

    @property
    def url(self) -> str:
        return f"{self.server.url}/hooks/git"

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()


def start(secret_file: Path, **limits: object) -> Hook:
    pushes: list[float] = []
    reg = CollectorRegistry()
    counter = Counter("canaryd_webhook_requests_total", "x", ["provider", "result"], registry=reg)
    settings = WebhookSettings.model_validate({"secretFile": secret_file, **limits})
    app = make_app(reg, lambda: (True, "ok"), lambda: (True, "ok"), webhook=settings, branch="main",
                   on_push=lambda: pushes.append(time.monotonic()), webhook_requests=counter)
    return Hook(ThreadedServer(app).start(), reg, pushes)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def hook(secret_file: Path) -> Iterator[Hook]:
    h = start(secret_file, maxBodyBytes=4096, ratePerSecond=1000, burst=1000, unauthenticatedRatePerSecond=1000,
              unauthenticatedBurst=1000)
    yield h
    h.server.stop()


def test_signatures_are_enforced_for_every_provider(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "canaryd.webhook")
    tampered = PUSH.replace(b"c" * 40, b"d" * 40)
    cases: list[tuple[str, dict[str, str], bytes]] = []
    for name, sign in (("github", github), ("gitea", gitea)):
        cases += [
            (f"{name} missing", {k: v for k, v in sign(PUSH).items() if "Signature" not in k}, PUSH),
            (f"{name} wrong secret", sign(PUSH, "guessed"), PUSH),
            (f"{name} tampered body", sign(PUSH), tampered),
            (f"{name} truncated body", sign(PUSH), PUSH[:-1]),
            (f"{name} empty signature", {**sign(PUSH), ("X-Hub-Signature-256" if name == "github" else
                                                        "X-Gitea-Signature"): ""}, PUSH),
        ]
    cases += [
        ("gitlab missing", {"X-Gitlab-Event": "Push Hook"}, PUSH),
        ("gitlab wrong", gitlab(PUSH, "guessed"), PUSH),
        ("gitlab hmac instead of token", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": hexmac(PUSH)}, PUSH),
        ("github sha1 only", {"X-GitHub-Event": "push", "X-Hub-Signature": "sha1=" + hmac.new(
            SECRET.encode(), PUSH, "sha1").hexdigest()}, PUSH),
        ("gitea prefixed like github", {"X-Gitea-Event": "push", "X-Gitea-Signature": "sha256=" + hexmac(PUSH)},
         PUSH),
        ("no provider", {"Content-Type": "application/json"}, PUSH),
    ]
    with httpx.Client(timeout=5) as client:
        for name, headers, body in cases:
            r = client.post(hook.url, content=body, headers=headers)
            assert (r.status_code, r.json()) == (401, UNAUTHORIZED_BODY), name  # one body: no oracle
        assert hook.pushes == []
        for sign in (github, gitea, gitlab):  # and the genuine article passes, over the same server
            assert client.post(hook.url, content=PUSH, headers=sign(PUSH)).status_code == 202
    assert len(hook.pushes) == 3
    assert 'result="unauthorized"' in hook.metrics()
    leaks = [SECRET, hexmac(PUSH), hexmac(tampered)]
    logged = caplog.text + " ".join(json.dumps(vars(r), default=str) for r in caplog.records)
    for text in (logged, hook.metrics()):
        assert not [s for s in leaks if s in text]


def test_replay_is_harmless_until_the_rate_limit(secret_file: Path) -> None:
    """A captured delivery replayed: each replay only asks for one more sync of what Git itself says (the
    sync never reads the payload), and replays are bounded by the token bucket."""
    h = start(secret_file, ratePerSecond=0.01, burst=5)
    try:
        with httpx.Client(timeout=5) as client:
            answers = [client.post(h.url, content=PUSH, headers=github(PUSH)) for _ in range(8)]
        assert [r.status_code for r in answers] == [202] * 5 + [429] * 3
        assert all(r.json() == {"sync": "queued"} for r in answers[:5])
        assert all(int(r.headers["Retry-After"]) >= 1 for r in answers[5:])
        assert len(h.pushes) == 5
        assert 'result="rate_limited"} 3.0' in h.metrics()
    finally:
        h.server.stop()


def _raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 5.0) -> tuple[int, float]:
    """Send `head` (and `body`) on a raw socket; the status line's code and how long it took to come."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), time.monotonic() - started


def test_unsigned_requests_are_answered_before_the_body_arrives(secret_file: Path) -> None:
    """A request without a signature header that announces 10 MB and never sends them is answered at once
    (401, then 429 once the unauthenticated budget is spent): the endpoint does not wait for (or read) a
    body it is going to refuse."""
    h = start(secret_file, ratePerSecond=0.01, burst=1, unauthenticatedRatePerSecond=0.01, unauthenticatedBurst=1)
    try:
        assert httpx.post(h.url, content=PUSH, headers=github(PUSH), timeout=5).status_code == 202
        head = (b"POST /hooks/git HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: push\r\n"
                b"Content-Length: 10000000\r\n\r\n")
        assert [(status, took < 3) for status, took in (_raw_request(h.server.port, head) for _ in range(2))] \
            == [(401, True), (429, True)]
    finally:
        h.server.stop()


def test_size_cap_comes_before_the_signature_and_stops_reading(hook: Hook) -> None:
    """A signed-looking body over the cap is 413 (not 401, which would first need the whole body for the
    HMAC), both when Content-Length says so and when a chunked body only turns out too large on the way."""
    head = (b"POST /hooks/git HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: push\r\n"
            b"X-Hub-Signature-256: sha256=00\r\nContent-Length: 10000000\r\n\r\n")
    status, took = _raw_request(hook.server.port, head)
    assert status == 413 and took < 3

    def chunks() -> Iterator[bytes]:
        for _ in range(100):  # 100 x 1 KiB, no Content-Length: cut off after the first 4 KiB
            yield b"x" * 1024

    r = httpx.post(hook.url, content=chunks(), headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=00"},
                   timeout=5)
    assert (r.status_code, r.json()) == (413, {"error": "body larger than 4096 bytes"})
    assert hook.pushes == []
    assert 'result="too_large"} 2.0' in hook.metrics()


def test_secret_rotation_takes_effect_without_restart(hook: Hook, secret_file: Path) -> None:
    """Rotating the mounted secret (a new file swapped in) makes the old secret a 401 at once."""
    new = secret_file.with_name("secret.new")
    new.write_text("rotated-secret-0b1d\n")
    new.replace(secret_file)
    with httpx.Client(timeout=5) as client:
        assert client.post(hook.url, content=PUSH, headers=github(PUSH)).status_code == 401
        assert client.post(hook.url, content=PUSH, headers=github(PUSH, "rotated-secret-0b1d")).status_code == 202
