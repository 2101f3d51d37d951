"""Security end to end, with the real daemon (`canaryd run`) in the sandbox.

1. Secrets never leak. The daemon runs with a private Git repo (HTTPS token), a webhook secret, a Slack
   notification URL (the URL is the credential), a second notifier whose receiver is unreachable, and
   Prometheus behind a proxy that wants HTTP basic auth (and, like careless proxies, echoes the credentials
   it got in its 401). It rolls a version out, then meets failures: badly signed webhook deliveries, an
   undeliverable notification, a rotated Prometheus password that is wrong, and a Git server whose token
   was changed. Every output is then searched for every secret: the daemon's log, the Kubernetes Events,
   the ModelRollouts, the InferenceService, /metrics, `canaryd status -o json`, `canaryd status`,
   `canaryd history`, the webhook answers and the notifications delivered.
2. Namespaces outside `kubernetes.namespaces` are refused even when the repo asks: a valid and a broken
   manifest and a policy for another (existing) namespace are reported, with file, line and field, and
   nothing (no InferenceService, ModelRollout or Event) is written there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from canaryd.httpserver import ThreadedServer
from canaryd.rollout.state import GROUP, PLURAL, VERSION, Phase
from canaryd.sandbox.githttp import AuthGitServer
from canaryd.sandbox.receiver import WebhookReceiver
from tests.e2e.helpers import Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GIT_USER = "canaryd-sec"
GIT_TOKEN = "glpat-SecT0kenAlpha0123456789"
GIT_TOKEN_ROTATED = "glpat-SecT0kenBravo9876543210"  # the server's new token, which the daemon does not have
WEBHOOK_SECRET = "whsec-5ecret-Charlie-4f1d0e"
WEBHOOK_GUESS = "whsec-guess-Delta-77aa01"  # what a forger sends as a GitLab token
SLACK_TOKEN = "slackpathEcho4242xyzzy"
DEAD_TOKEN = "deadpathFoxtrot1313plugh"
PROM_USER = "prom-reader"
PROM_PASSWORD = "promPassGolf-8c2d7e"
PROM_PASSWORD_WRONG = "promPassHotel-0b9a3f"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class PromAuthProxy:
    """Prometheus behind HTTP basic auth. A 401 echoes the Authorization header it got, as careless proxies
    do: whatever canaryd makes of that answer must not carry it on."""

    upstream: str
    expected: str
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def forward(request: Request) -> Response:
            auth = request.headers.get("authorization", "")
            with self.lock:
                self.seen.append(auth)
            if auth != self.expected:
                return PlainTextResponse(f"unauthorized: got {auth}", status_code=401)
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                up = await client.request(request.method, f"{self.upstream}{request.url.path}",
                                          params=list(request.query_params.items()), content=await request.body(),
                                          headers={"content-type": request.headers.get("content-type", "")})
            return Response(up.content, status_code=up.status_code, media_type=up.headers.get("content-type"))

        return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed_push(url: str, body: bytes, secret: str) -> httpx.Response:
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(f"{url}/hooks/git", content=body, timeout=5, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": "sec-e2e", "X-Hub-Signature-256": sig,
        "Content-Type": "application/json"})


def cli(env: Env, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "canaryd.cli", *args, "--kubeconfig", str(env.sb.kubeconfig)],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout + out.stderr


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def test_no_secret_leaks_into_any_output(env: Env, receiver: WebhookReceiver) -> None:
    assert env.sb.prometheus is not None
    name = "vault"
    secrets_dir = env.dir / "secrets"
    secrets_dir.mkdir()
    token_file, hook_file = secrets_dir / "git-token", secrets_dir / "webhook"
    slack_file, dead_file, prom_file = secrets_dir / "slack-url", secrets_dir / "dead-url", secrets_dir / "prom"
    token_file.write_text(GIT_TOKEN + "\n")
    hook_file.write_text(WEBHOOK_SECRET + "\n")
    slack_url = receiver.url(f"/services/T0SEC/B0SEC/{SLACK_TOKEN}")
    dead_url = f"http://127.0.0.1:{closed_port()}/hooks/{DEAD_TOKEN}"
    slack_file.write_text(slack_url + "\n")
    dead_file.write_text(dead_url + "\n")
    prom_file.write_text(PROM_PASSWORD + "\n")
    secrets = {
        "git token": GIT_TOKEN, "rotated git token": GIT_TOKEN_ROTATED, "webhook secret": WEBHOOK_SECRET,
        "forged webhook token": WEBHOOK_GUESS, "slack URL": slack_url, "slack token": SLACK_TOKEN,
        "dead URL": dead_url, "dead token": DEAD_TOKEN, "prometheus password": PROM_PASSWORD,
        "wrong prometheus password": PROM_PASSWORD_WRONG, "basic credentials": basic(PROM_USER, PROM_PASSWORD),
        "wrong basic credentials": basic(PROM_USER, PROM_PASSWORD_WRONG),
    }

    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns)}, "v1")
    proxy = PromAuthProxy(env.sb.prometheus.url, "Basic " + basic(PROM_USER, PROM_PASSWORD))
    answers: list[str] = []
    with AuthGitServer(env.repo.bare.parent, GIT_USER, GIT_TOKEN) as git_server, \
            ThreadedServer(proxy.app(), name="prom-auth-proxy") as prom_proxy:
        path = env.settings(
            repo={"username": GIT_USER, "tokenFile": str(token_file), "fetchRetries": 0},
            webhook={"secretFile": str(hook_file)},
            notifications={"notifiers": [{"kind": "slack", "urlFile": str(slack_file)},
                                         {"kind": "generic", "urlFile": str(dead_file)}], "minInterval": "1s"},
            prometheus={"url": prom_proxy.url, "basicAuthUser": PROM_USER, "basicAuthPasswordFile": str(prom_file)},
            logLevel="debug",
        )
        settings = yaml.safe_load(path.read_text())
        settings["repo"]["url"] = git_server.repo_url()  # the sandbox repo, served privately
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        daemon = env.start_daemon(path)
        log = daemon.log_path
        env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=40)
        wait_until(lambda: (s := env.state(name)) and s.status.stable_revision, 20, "v1 Ready")

        # Forged deliveries: a signature made with a guessed secret, and a guessed GitLab token.
        body = json.dumps({"ref": "refs/heads/main", "after": c1}).encode()
        r = signed_push(daemon.url, body, WEBHOOK_GUESS)
        assert r.status_code == 401
        answers.append(r.text)
        r = httpx.post(f"{daemon.url}/hooks/git", content=body, timeout=5,
                       headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": WEBHOOK_GUESS})
        assert r.status_code == 401
        answers.append(r.text)
        r = signed_push(daemon.url, body, WEBHOOK_SECRET)
        assert r.status_code == 202
        answers.append(r.text)

        # A rollout analysed through the authenticated Prometheus, notified to Slack (and to a dead receiver).
        env.load([name], rate=25)
        c2 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v2")}, "v2")
        st = env.wait_phase(name, {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
        assert st.status.phase == Phase.SUCCEEDED, st.status.message
        assert proxy.expected in proxy.seen  # the credentials really were sent
        wait_until(lambda: any("promoted" in str(m.body) for m in receiver.delivered), 15, "a promoted message")
        wait_until(lambda: "not delivered via generic webhook" in log.read_text(), 20, "a failed delivery logged")

        # The Prometheus password is rotated to a wrong one: analyses of the next canary are refused (401).
        prom_file.write_text(PROM_PASSWORD_WRONG + "\n")
        c3 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v3")}, "v3")

        def refused_analysis() -> bool:
            s = env.state(name)
            return s is not None and s.spec.commit == c3 and "answered HTTP 401" in json.dumps(
                s.for_storage()["status"], default=str)

        wait_until(refused_analysis, 30, "an analysis refused by Prometheus recorded in the ModelRollout")
        assert "Basic " + basic(PROM_USER, PROM_PASSWORD_WRONG) in proxy.seen

        # The Git server's token is changed: the daemon's token is now wrong and its syncs fail.
        lines_before = len(log.read_text().splitlines())
        git_server.password = GIT_TOKEN_ROTATED
        wait_until(lambda: any("config repo sync failed" in ln
                               for ln in log.read_text().splitlines()[lines_before:]), 20, "a failed sync logged")
        failed = [ln for ln in log.read_text().splitlines()[lines_before:] if "config repo sync failed" in ln]
        assert "Authentication failed" in failed[0] or "401" in failed[0], failed[0]

        metrics = httpx.get(f"{daemon.url}/metrics", timeout=5).text
        assert 'canaryd_git_syncs_total{result="error"}' in metrics
        assert 'canaryd_webhook_requests_total{provider="github",result="unauthorized"} 1.0' in metrics

    outputs: dict[str, str] = {"/metrics": metrics, "webhook answers": "\n".join(answers)}
    outputs["canaryd status -o json"] = cli(env, "status", "-n", env.ns, "-o", "json")
    outputs["canaryd status"] = cli(env, "status", "-n", env.ns)
    outputs["canaryd history"] = cli(env, "history", f"{env.ns}/{name}")
    sanitize = env.api.sanitize_for_serialization
    outputs["Events"] = json.dumps([sanitize(e) for e in env.core.list_namespaced_event(env.ns).items], default=str)
    outputs["ModelRollouts"] = json.dumps(env.co.list_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL))
    outputs["InferenceService"] = json.dumps(env.isvc(name))
    outputs["notifications delivered"] = json.dumps([m.body for m in receiver.delivered])
    assert env.daemon is not None and env.daemon.terminate(timeout=15) == 0
    outputs["daemon log"] = log.read_text(errors="replace")
    # the outputs do hold what the failures were about (so the search below is not vacuous)
    assert "webhook rejected (401)" in outputs["daemon log"] and "config repo sync failed" in outputs["daemon log"]
    assert "AnalysisInconclusive" in outputs["Events"] or "inconclusive" in outputs["ModelRollouts"].lower()
    assert f"{env.ns}/{name}" in outputs["notifications delivered"]
    assert "answered HTTP 401: unauthorized: *** Basic ***" in outputs["ModelRollouts"]  # echoed, then redacted
    leaks = [f"{what} in {where}" for where, text in outputs.items() for what, value in secrets.items()
             if value in text]
    assert not leaks, leaks


# ---------------------------------------------------------------------------------------------------------


def _json(items: Any) -> str:
    return json.dumps(items, default=str)


def test_manifests_for_unmanaged_namespaces_are_refused_and_nothing_is_written_there(env: Env) -> None:
    other = f"{env.ns}-other"
    env.core.create_namespace({"metadata": {"name": other}})
    broken = isvc_yaml("broken", other, "gs://e2e/v1").replace("  predictor:\n", "  predictor:\n"
                                                               "    canaryTrafficPercent: 50\n")
    c1 = env.repo.commit({
        "services/inside.yaml": isvc_yaml("inside", env.ns, "gs://e2e/v1"),
        "policies/inside.yaml": policy_yaml("inside", env.ns),
        "services/outside.yaml": isvc_yaml("outside", other, "gs://e2e/v1"),
        "policies/outside.yaml": policy_yaml("outside", other),
        "services/broken.yaml": broken,
    }, "one namespace of ours, one not")
    daemon = env.start_daemon()
    env.wait_phase("inside", {Phase.SUCCEEDED}, c1, timeout=40)

    def problems() -> list[str]:
        lines = [json.loads(ln) for ln in daemon.log_path.read_text().splitlines() if ln.startswith("{")]
        return [str(ln["problem"]) for ln in lines if ln.get("msg") == "config repo problem"]

    refusals = wait_until(lambda: [p for p in problems() if "not managed by this canaryd" in p] or None, 20,
                          "the refusals logged")
    assert f"services/outside.yaml:5: metadata.namespace: namespace '{other}' is not managed by this canaryd" \
        f" (kubernetes.namespaces: {env.ns}); refused: nothing is applied or written there" in refusals
    assert any(p.startswith("policies/outside.yaml:") and "spec.target.name" in p for p in refusals), refusals
    assert any(p.startswith("services/broken.yaml:5: metadata.namespace") for p in refusals), refusals
    assert any(p.startswith("services/broken.yaml:8: spec.predictor.canaryTrafficPercent") for p in problems())

    # Nothing in the other namespace: no InferenceService, no ModelRollout, no Event (not even the
    # "InvalidConfig" warning a broken service in our own namespaces gets).
    from canaryd.rollout.state import GROUP as MR_GROUP
    from tests.e2e.helpers import G, P, V

    assert env.co.list_namespaced_custom_object(G, V, other, P)["items"] == []
    assert env.co.list_namespaced_custom_object(MR_GROUP, VERSION, other, PLURAL)["items"] == []
    assert env.core.list_namespaced_event(other).items == [], _json(
        [e.reason for e in env.core.list_namespaced_event(other).items])
    # ... and our own service went on as if the others were not in the repo.
    assert (env.state("inside") or pytest.fail("no state")).status.phase == Phase.SUCCEEDED
