"""The push webhook: provider verification as a table, the token bucket, the secret file, and the real
endpoint over real HTTP (rate limit, body cap, metrics, what reaches the sync callback and the log)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest

from canaryd.config import WebhookSettings
from canaryd.daemon.server import make_app
from canaryd.daemon.webhook import SecretFile, TokenBucket, detect_provider, judge
from canaryd.httpserver import ThreadedServer

SECRET = b"It's a Secret to Everybody"


def push(ref: str = "refs/heads/main", **extra: Any) -> bytes:
    return json.dumps({"ref": ref, "after": "a" * 40, **extra}).encode()


def gh_sig(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def gitea_sig(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def github(body: bytes, event: str = "push", sig: str | None = None) -> dict[str, str]:
    h = {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1", "Content-Type": "application/json"}
    h["X-Hub-Signature-256"] = gh_sig(body) if sig is None else sig
    return h


BODY = push()
OTHER = push("refs/heads/feature")
TAG = push("refs/tags/v1")
FORM = urlencode({"payload": BODY.decode()}).encode()

# (id, headers, body, secret) -> (status, result, sync, body fragment)
CASES: list[tuple[str, dict[str, str], bytes, bytes | None, tuple[int, str, bool, dict[str, Any]]]] = [
    ("github push", github(BODY), BODY, SECRET, (202, "accepted", True, {"sync": "queued"})),
    ("github upper-case hex", github(BODY, sig="sha256=" + gh_sig(BODY)[7:].upper()), BODY, SECRET,
     (202, "accepted", True, {"sync": "queued"})),
    ("github form-encoded", {**github(FORM), "Content-Type": "application/x-www-form-urlencoded"}, FORM, SECRET,
     (202, "accepted", True, {"sync": "queued"})),
    ("github other branch", github(OTHER), OTHER, SECRET, (202, "ignored", False, {"ignored": "branch feature"})),
    ("github tag", github(TAG), TAG, SECRET, (202, "ignored", False, {"ignored": "ref refs/tags/v1"})),
    ("github ping", github(b'{"zen":"x"}', "ping"), b'{"zen":"x"}', SECRET, (200, "ping", False, {"ping": "ok"})),
    ("github other event", github(BODY, "issues"), BODY, SECRET, (202, "ignored", False, {"ignored": "event issues"})),
    ("github wrong secret", github(BODY, sig=gh_sig(BODY, b"guess")), BODY, SECRET,
     (401, "unauthorized", False, {})),
    ("github tampered body", github(BODY), BODY + b" ", SECRET, (401, "unauthorized", False, {})),
    ("github no prefix", github(BODY, sig=gitea_sig(BODY)), BODY, SECRET, (401, "unauthorized", False, {})),
    ("github missing signature", {"X-GitHub-Event": "push"}, BODY, SECRET, (401, "unauthorized", False, {})),
    ("github sha1 only", {"X-GitHub-Event": "push", "X-Hub-Signature": "sha1=00"}, BODY, SECRET,
     (401, "unauthorized", False, {})),
    ("github ping unsigned", {"X-GitHub-Event": "ping"}, b"{}", SECRET, (401, "unauthorized", False, {})),
    ("no secret configured", github(BODY), BODY, None, (401, "unauthorized", False, {})),
    ("empty secret", github(BODY, sig=gh_sig(BODY, b"")), BODY, b"", (401, "unauthorized", False, {})),
    ("gitlab push", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode()}, BODY, SECRET,
     (202, "accepted", True, {"sync": "queued"})),
    ("gitlab other branch", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode()}, OTHER, SECRET,
     (202, "ignored", False, {"ignored": "branch feature"})),
    ("gitlab tag push event", {"X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Token": SECRET.decode()}, TAG, SECRET,
     (202, "ignored", False, {"ignored": "event Tag Push Hook"})),
    ("gitlab wrong token", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}, BODY, SECRET,
     (401, "unauthorized", False, {})),
    ("gitlab token prefix", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode()[:-1]}, BODY, SECRET,
     (401, "unauthorized", False, {})),
    ("gitlab missing token", {"X-Gitlab-Event": "Push Hook"}, BODY, SECRET, (401, "unauthorized", False, {})),
    ("gitea push", {"X-Gitea-Event": "push", "X-Gitea-Signature": gitea_sig(BODY)}, BODY, SECRET,
     (202, "accepted", True, {"sync": "queued"})),
    # Gitea also sends GitHub's headers; its own signature decides.
    ("gitea with github headers", {"X-Gitea-Event": "push", "X-GitHub-Event": "push",
                                   "X-Gitea-Signature": gitea_sig(BODY), "X-Hub-Signature-256": "sha256=00"},
     BODY, SECRET, (202, "accepted", True, {"sync": "queued"})),
    ("gitea other branch", {"X-Gitea-Event": "push", "X-Gitea-Signature": gitea_sig(OTHER)}, OTHER, SECRET,
     (202, "ignored", False, {"ignored": "branch feature"})),
    ("gitea github-style prefix", {"X-Gitea-Event": "push", "X-Gitea-Signature": gh_sig(BODY)}, BODY, SECRET,
     (401, "unauthorized", False, {})),
    ("gitea bad signature", {"X-Gitea-Event": "push", "X-Gitea-Signature": gitea_sig(BODY, b"x")}, BODY, SECRET,
     (401, "unauthorized", False, {})),
    ("gitea missing signature", {"X-Gitea-Event": "push"}, BODY, SECRET, (401, "unauthorized", False, {})),
    ("unknown provider", {"Content-Type": "application/json"}, BODY, SECRET, (401, "unauthorized", False, {})),
    ("signed but not JSON", github(b"not json"), b"not json", SECRET, (400, "bad_request", False, {})),
    ("signed JSON without ref", github(b'{"a":1}'), b'{"a":1}', SECRET, (400, "bad_request", False, {})),
    ("signed JSON array", github(b"[1]"), b"[1]", SECRET, (400, "bad_request", False, {})),
]


@pytest.mark.parametrize(("headers", "body", "secret", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge_table(headers: dict[str, str], body: bytes, secret: bytes | None,
                     expected: tuple[int, str, bool, dict[str, Any]]) -> None:
    status, result, sync, fragment = expected
    out = judge(headers, body, secret, "main")
    assert (out.status, out.result, out.sync) == (status, result, sync), out.reason
    assert fragment.items() <= out.body.items()
    assert SECRET.decode() not in out.reason and SECRET.decode() not in json.dumps(out.body)
    for value in headers.values():
        if "sha256" in value or len(value) == 64:
            assert value not in out.reason  # signatures never reach the log reason


def test_reasons_say_which_check_failed() -> None:
    assert "webhook.secretFile" in judge(github(BODY), BODY, None, "main").reason
    assert "does not match" in judge(github(BODY), BODY + b"x", SECRET, "main").reason
    assert "X-Hub-Signature-256" in judge({"X-GitHub-Event": "push"}, BODY, SECRET, "main").reason
    assert "unknown provider" in judge({}, BODY, SECRET, "main").reason
    assert judge(github(OTHER), OTHER, SECRET, "feature").sync  # the configured branch is what counts


def test_detect_provider() -> None:
    assert detect_provider({"x-github-event": "push"}) == "github"
    assert detect_provider({"X-Gitlab-Token": "t"}) == "gitlab"
    assert detect_provider({"X-Gitea-Event": "push", "X-GitHub-Event": "push"}) == "gitea"
    assert detect_provider({}) == "unknown"


@given(body=st.binary(max_size=300), secret=st.binary(min_size=1, max_size=40).filter(lambda s: s.strip() == s and s),
       flip=st.integers(min_value=0))
def test_signed_bodies_pass_and_any_change_fails(body: bytes, secret: bytes, flip: int) -> None:
    good = judge(github(body, sig=gh_sig(body, secret)), body, secret, "main")
    assert good.status != 401
    good_gitea = judge({"X-Gitea-Event": "push", "X-Gitea-Signature": gitea_sig(body, secret)}, body, secret, "main")
    assert good_gitea.status != 401
    if body:
        i = flip % len(body)
        changed = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]
        assert judge(github(body, sig=gh_sig(body, secret)), changed, secret, "main").status == 401


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_burst_then_rate() -> None:
    clock = FakeClock()
    b = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() == pytest.approx(0.5)  # one token takes 1/rate seconds
    clock.t += 0.5
    assert b.take() == 0.0
    assert b.take() > 0
    clock.t += 100  # refill is capped at burst
    assert [b.take() for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert b.take() > 0
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_secret_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    sf = SecretFile(path)
    secret, why = sf.read()
    assert secret is None and "unreadable" in why and str(path) in why
    path.write_text("first\n")
    assert sf.read() == (b"first", "")
    # A mounted Secret changes by a symlink swap: a new file, new inode.
    new = tmp_path / "secret.new"
    new.write_text("second-value")
    os.replace(new, path)
    assert sf.read() == (b"second-value", "")
    path.write_text("  \n")
    secret, why = sf.read()
    assert secret is None and "empty" in why
    assert SecretFile(None).read()[1].startswith("no webhook secret configured")


# -- the endpoint over real HTTP ----------------------------------------------------------------------


class Pushes:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "webhook-secret"
    p.write_bytes(SECRET + b"\n")
    return p


def serve(settings: WebhookSettings, pushes: Pushes) -> tuple[ThreadedServer, CollectorRegistry]:
    reg = CollectorRegistry()
    counter = Counter("canaryd_webhook_requests_total", "x", ["provider", "result"], registry=reg)
    app = make_app(reg, lambda: (True, "ok"), lambda: (True, "ok"), webhook=settings, branch="main",
                   on_push=pushes, webhook_requests=counter)
    return ThreadedServer(app).start(), reg


@pytest.fixture
def server(secret_file: Path) -> Iterator[tuple[ThreadedServer, CollectorRegistry, Pushes]]:
    pushes = Pushes()
    s = WebhookSettings(secretFile=secret_file, maxBodyBytes=4096, ratePerSecond=1000, burst=1000)
    srv, reg = serve(s, pushes)
    yield srv, reg, pushes
    srv.stop()


def test_endpoint_accepts_ignores_and_rejects(server: tuple[ThreadedServer, CollectorRegistry, Pushes],
                                             caplog: pytest.LogCaptureFixture) -> None:
    srv, reg, pushes = server
    caplog.set_level(logging.INFO, "canaryd.webhook")
    with httpx.Client(base_url=srv.url, timeout=5) as c:
        r = c.post("/hooks/git", content=BODY, headers=github(BODY))
        assert (r.status_code, r.json()) == (202, {"sync": "queued"})
        assert pushes.count == 1
        r = c.post("/hooks/git", content=BODY, headers=github(BODY))  # a replay only syncs again
        assert r.status_code == 202 and pushes.count == 2
        r = c.post("/hooks/git", content=OTHER, headers=github(OTHER))
        assert (r.status_code, r.json()) == (202, {"ignored": "branch feature"})
        bad = github(BODY, sig=gh_sig(BODY, b"wrong"))
        r = c.post("/hooks/git", content=BODY, headers=bad)
        assert r.status_code == 401 and r.headers["content-type"] == "application/json"
        assert pushes.count == 2
        assert c.get("/hooks/git").status_code == 405
        assert c.get("/healthz").text == "ok"
    rejected = [rec for rec in caplog.records if "rejected" in rec.getMessage()]
    assert len(rejected) == 1 and rejected[0].__dict__["reason"] == "X-Hub-Signature-256 does not match the body"
    assert rejected[0].__dict__["delivery"] == "d-1"
    logged = caplog.text + " ".join(str(vars(rec)) for rec in caplog.records)
    assert SECRET.decode() not in logged and bad["X-Hub-Signature-256"] not in logged
    metrics = generate_latest(reg).decode()
    assert 'canaryd_webhook_requests_total{provider="github",result="accepted"} 2.0' in metrics
    assert 'canaryd_webhook_requests_total{provider="github",result="unauthorized"} 1.0' in metrics
    assert 'canaryd_webhook_requests_total{provider="github",result="ignored"} 1.0' in metrics


def test_endpoint_caps_the_body(server: tuple[ThreadedServer, CollectorRegistry, Pushes]) -> None:
    srv, reg, pushes = server
    big = push(padding="x" * 5000)
    with httpx.Client(base_url=srv.url, timeout=5) as c:
        r = c.post("/hooks/git", content=big, headers=github(big))  # Content-Length says too much
        assert r.status_code == 413 and "4096" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the stream itself must be cut off
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    with httpx.Client(base_url=srv.url, timeout=5) as c:
        r = c.post("/hooks/git", content=chunks(), headers=github(big))
        assert r.status_code == 413
    small = push(padding="x" * 3000)  # under the cap, also streamed: accepted
    with httpx.Client(base_url=srv.url, timeout=5) as c:
        r = c.post("/hooks/git", content=iter([small[:1000], small[1000:]]), headers=github(small))
        assert r.status_code == 202
    assert pushes.count == 1
    assert 'result="too_large"} 2.0' in generate_latest(reg).decode()


def test_endpoint_rate_limits_with_retry_after(secret_file: Path) -> None:
    pushes = Pushes()
    srv, reg = serve(WebhookSettings(secretFile=secret_file, ratePerSecond=0.01, burst=3), pushes)
    try:
        with httpx.Client(base_url=srv.url, timeout=5) as c:
            codes = [c.post("/hooks/git", content=BODY, headers=github(BODY)).status_code for _ in range(3)]
            assert codes == [202, 202, 202]
            r = c.post("/hooks/git", content=BODY, headers=github(BODY))
            assert r.status_code == 429 and r.json() == {"error": "rate limited"}
            assert 90 <= int(r.headers["Retry-After"]) <= 100  # one token at 0.01/s
        assert pushes.count == 3
        assert 'result="rate_limited"} 1.0' in generate_latest(reg).decode()
    finally:
        srv.stop()


def test_regression_unsigned_requests_locked_out_genuine_pushes(secret_file: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Issue 13 item 6: the token bucket was spent before authentication, so a flood of unsigned (or
    wrongly signed) requests emptied it and every genuine push got 429 until it refilled. Now unsigned
    requests spend a budget of their own and signed pushes are still served."""
    pushes = Pushes()
    caplog.set_level(logging.DEBUG, "canaryd.webhook")
    settings = WebhookSettings(secretFile=secret_file, ratePerSecond=0.01, burst=3,
                               unauthenticatedRatePerSecond=0.01, unauthenticatedBurst=5)
    srv, reg = serve(settings, pushes)
    try:
        with httpx.Client(base_url=srv.url, timeout=5) as c:
            floods = [{"X-GitHub-Event": "push"}, github(BODY, sig=gh_sig(BODY, b"guessed")),
                      {"Content-Type": "application/json"}]
            codes = [c.post("/hooks/git", content=BODY, headers=floods[i % 3]).status_code for i in range(40)]
            answers = [c.post("/hooks/git", content=BODY, headers=github(BODY)) for _ in range(3)]
            assert [r.status_code for r in answers] == [202, 202, 202]  # genuine pushes get through ...
            assert codes == [401] * 5 + [429] * 35  # ... and the flood ran out of its own budget
            assert c.post("/hooks/git", content=BODY, headers=github(BODY)).status_code == 429  # their own limit
    finally:
        srv.stop()
    assert pushes.count == 3
    metrics = generate_latest(reg).decode()
    assert 'result="accepted"} 3.0' in metrics
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 5  # one per 401; the 429s of the flood are debug lines only


def test_endpoint_without_secret_rejects_and_says_why(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    pushes = Pushes()
    caplog.set_level(logging.INFO, "canaryd.webhook")
    for settings, why in ((WebhookSettings(), "webhook.secretFile is unset"),
                          (WebhookSettings(secretFile=tmp_path / "missing"), "unreadable")):
        srv, _ = serve(settings, pushes)
        try:
            r = httpx.post(f"{srv.url}/hooks/git", content=BODY, headers=github(BODY), timeout=5)
            assert r.status_code == 401
        finally:
            srv.stop()
        assert why in caplog.records[-1].__dict__["reason"]
    assert pushes.count == 0


def test_endpoint_disabled_is_404(secret_file: Path) -> None:
    pushes = Pushes()
    srv, _ = serve(WebhookSettings(enabled=False, secretFile=secret_file), pushes)
    try:
        r = httpx.post(f"{srv.url}/hooks/git", content=BODY, headers=github(BODY), timeout=5)
        assert r.status_code == 404 and "disabled" in r.json()["error"]
    finally:
        srv.stop()
    assert pushes.count == 0


def test_endpoint_reports_a_sync_that_cannot_be_queued(secret_file: Path) -> None:
    def refuse() -> None:
        raise RuntimeError("scheduler stopped")

    reg = CollectorRegistry()
    counter = Counter("canaryd_webhook_requests_total", "x", ["provider", "result"], registry=reg)
    app = make_app(reg, lambda: (True, "ok"), lambda: (True, "ok"), webhook=WebhookSettings(secretFile=secret_file),
                   on_push=refuse, webhook_requests=counter)
    with ThreadedServer(app) as srv:
        r = httpx.post(f"{srv.url}/hooks/git", content=BODY, headers=github(BODY), timeout=5)
    assert r.status_code == 503 and "could not queue" in r.json()["error"]
    metrics = generate_latest(reg).decode()
    assert 'result="error"} 1.0' in metrics and 'result="accepted"' not in metrics
