"""A private config repo end to end: the real daemon syncs over `git http-backend` behind HTTP Basic auth,
first with a wrong token (the sync fails and is reported), then with the rotated Secret file (picked up
without a restart), rolls a new version out, and the tokens appear in none of its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from canaryd.rollout.state import GROUP, PLURAL, VERSION, Phase
from canaryd.sandbox.githttp import AuthGitServer
from tests.e2e.helpers import Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USER = "canaryd-bot"
TOKEN = "glpat-E2eS3cretT0ken0123456789"
WRONG = "glpat-St4leT0kenFromLastYear00"


def private_settings(env: Env, url: str, token_file: Path) -> Path:
    path = env.settings(repo={"username": USER, "tokenFile": str(token_file), "fetchRetries": 1},
                        logLevel="debug")
    settings = yaml.safe_load(path.read_text())
    settings["repo"]["url"] = url  # Env points the daemon at the local bare repo; serve it privately instead
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def test_private_repo_over_authenticated_http(env: Env) -> None:
    name = "private"
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns)}, "v1")
    token_file = env.dir / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(WRONG + "\n")
    with AuthGitServer(env.repo.bare.parent, USER, TOKEN) as server:
        daemon = env.start_daemon(private_settings(env, server.repo_url(), token_file))
        log = daemon.log_path

        # A wrong token: the sync fails, is reported, and nothing is rolled out.
        wait_until(lambda: "config repo sync failed" in log.read_text(), 20, "the failed sync to be logged")
        assert "Authentication failed" in log.read_text()
        assert env.state(name) is None

        token_file.write_text(TOKEN + "\n")  # the Secret is updated in place: no restart
        env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=40)
        wait_until(lambda: (s := env.state(name)) and s.status.stable_revision, 20, "v1 Ready and recorded")

        env.load([name], rate=25)
        c2 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v2")}, "v2")
        st = env.wait_phase(name, {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
        assert st.status.phase == Phase.SUCCEEDED, st.status.message
        seen = server.requests()

    # The transport really was authenticated, with each token in turn.
    users = {(r.user, r.status) for r in seen if r.authorization}
    assert (None, 401) in users and (USER, 200) in users
    assert all(r.status == 401 for r in seen if not r.authorization)

    status = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "status", "--kubeconfig", str(env.sb.kubeconfig), "-n", env.ns,
         "-o", "json"], capture_output=True, text=True, timeout=60, check=True,
    )
    rows = json.loads(status.stdout)
    assert [r["status"]["commit"] for r in rows] == [c2]
    rollouts = json.dumps(env.co.list_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL))
    assert c2 in rollouts
    events = "\n".join(f"{e.reason} {e.message}" for e in env.events(name))
    assert "Promoted" in events
    assert env.daemon is not None and env.daemon.terminate(timeout=10) == 0
    outputs = {"daemon log": log.read_text(), "canaryd status": status.stdout + status.stderr,
               "ModelRollouts": rollouts, "Events": events}
    for where, text in outputs.items():
        for secret in (TOKEN, WRONG):
            assert secret not in text, f"token leaked into {where}"
    checkout = env.dir / "checkout" / ".git" / "config"
    assert TOKEN not in checkout.read_text() and server.repo_url() in checkout.read_text()
