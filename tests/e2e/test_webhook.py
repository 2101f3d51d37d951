"""Push webhooks end to end: with polling effectively off (1h), a signed push is what makes the real daemon
sync and start the canary; a badly signed one is rejected with 401 and changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import pytest

from canaryd.rollout.state import Phase
from tests.e2e.helpers import Env, isvc_yaml, policy_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECRET = "e2e-webhook-secret-5f1c"


def start_with_v1(env: Env, name: str) -> str:
    """Daemon with a 1h poll interval and a webhook secret; v1 synced by the start-up sync."""
    secret = env.dir / "webhook-secret"
    secret.write_text(SECRET + "\n")
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns)}, f"{name} v1")
    env.start_daemon(env.settings(repo={"pollInterval": "1h"}, webhook={"secretFile": str(secret)}))
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    return c1


def github_push(url: str, commit: str, secret: str = SECRET, delivery: str = "e2e-1") -> httpx.Response:
    body = json.dumps({"ref": "refs/heads/main", "before": "0" * 40, "after": commit}).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": sig,
               "Content-Type": "application/json"}
    return httpx.post(f"{url}/hooks/git", content=body, headers=headers, timeout=5)


def log_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_signed_push_starts_the_rollout_without_polling(env: Env) -> None:
    start_with_v1(env, "hooked")
    assert env.daemon is not None
    c2 = env.repo.commit({"services/hooked.yaml": isvc_yaml("hooked", env.ns, "gs://e2e/v2")}, "hooked v2")
    sent = time.monotonic()
    r = github_push(env.daemon.url, c2)
    assert (r.status_code, r.json()) == (202, {"sync": "queued"})
    st = env.wait_phase("hooked", {Phase.INITIALIZING, Phase.PROGRESSING}, c2, timeout=5)
    assert st.spec.commit == c2
    assert time.monotonic() - sent < 5
    obj = env.isvc("hooked") or {}
    assert obj["spec"]["predictor"]["model"]["storageUri"] == "gs://e2e/v2"
    metrics = httpx.get(f"{env.daemon.url}/metrics", timeout=5).text
    assert 'canaryd_webhook_requests_total{provider="github",result="accepted"} 1.0' in metrics


def test_bad_signature_is_rejected_and_does_not_sync(env: Env) -> None:
    c1 = start_with_v1(env, "guarded")
    assert env.daemon is not None
    c2 = env.repo.commit({"services/guarded.yaml": isvc_yaml("guarded", env.ns, "gs://e2e/v2")}, "guarded v2")
    r = github_push(env.daemon.url, c2, secret="not-the-secret", delivery="forged-1")
    assert r.status_code == 401 and "unauthorized" in r.json()["error"]
    # Bounded window: a sync would start the rollout of c2 within about a second (see the test above).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        st = env.state("guarded")
        assert st is not None and st.spec.commit == c1, "a rejected webhook must not sync"
        time.sleep(0.2)
    log_path = env.dir / "canaryd.log"
    rejected = [ln for ln in log_lines(log_path) if str(ln.get("msg", "")).startswith("webhook rejected")]
    assert rejected, env.daemon.log_tail()
    assert rejected[0]["delivery"] == "forged-1" and rejected[0]["level"] == "warning"
    assert rejected[0]["reason"] == "X-Hub-Signature-256 does not match the body"
    text = log_path.read_text(errors="replace")
    assert SECRET not in text and "not-the-secret" not in text and "sha256=" not in text
    # The same push, signed with the right secret, is what moves it: the webhook, not polling, reacts.
    assert github_push(env.daemon.url, c2, delivery="real-1").status_code == 202
    env.wait_phase("guarded", {Phase.INITIALIZING, Phase.PROGRESSING}, c2, timeout=5)
