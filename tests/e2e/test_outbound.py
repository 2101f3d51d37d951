"""Issue 13, items 3 and 4, end to end: hostile gate endpoints against the running daemon in the sandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from canaryd.rollout.state import Phase
from tests.badservers import BadServer, answer, blackhole, trickle_body
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: What a cloud metadata service answers (fake values): the body a hostile gate URL would leak.
CREDENTIALS = (b'{"Code":"Success","AccessKeyId":"ASIAFAKEKEYID00000001",'
               b'"SecretAccessKey":"fAkEsEcReT/0123456789abcdefEXAMPLE","Token":"FakeSessionTokenValue0123456789"}')
SECRET_PARTS = ("ASIAFAKEKEYID00000001", "fAkEsEcReT", "FakeSessionTokenValue0123456789")


@pytest.fixture
def servers() -> Iterator[dict[str, BadServer]]:
    made = {"blackhole": BadServer(blackhole), "trickle": BadServer(trickle_body),
            "metadata": BadServer(answer(500, CREDENTIALS, "application/json")),
            "ok": BadServer(answer(200, b"ok"))}
    for s in made.values():
        s.start()
    yield made
    for s in made.values():
        s.stop()


def _start_v1(env: Env, names: list[str], policies: dict[str, str]) -> str:
    files: dict[str, str | None] = {f"services/{n}.yaml": isvc_yaml(n, env.ns, "gs://e2e/v1") for n in names}
    files.update(policies)
    c1 = env.repo.commit(files, "v1")
    env.start_daemon()
    for n in names:
        env.wait_phase(n, {Phase.SUCCEEDED}, c1, timeout=30)

        def stable(name: str = n) -> str | None:
            st = env.state(name)
            return st.status.stable_revision if st else None

        wait_until(stable, 20, f"{n} v1 Ready")
    return c1


def test_regression_one_blackholed_gate_wedged_every_service_and_git_sync(env: Env,
                                                                          servers: dict[str, BadServer]) -> None:
    """Service alpha has a blackholed and a trickling pre-rollout gate. While they hang, beta rolls out to
    the end and a new commit is picked up within the normal cadence (pollInterval 1 s). On the original
    code the gates ran inside alpha's tick, every sync re-triggered alpha, and the waiting ticks filled
    the worker pool that beta's ticks and the Git sync shared: beta never finished."""
    hooks = [{"name": "blackholed", "type": "pre-rollout", "url": servers["blackhole"].url(), "timeout": "60s",
              "retries": 0},
             {"name": "trickling", "type": "pre-rollout", "url": servers["trickle"].url(), "timeout": "1s",
              "retries": 0}]
    slow = {**FAST_POLICY, "progressDeadline": "5m"}
    _start_v1(env, ["alpha", "beta"], {"policies/alpha.yaml": policy_yaml("alpha", env.ns, slow, webhooks=hooks),
                                       "policies/beta.yaml": policy_yaml("beta", env.ns, FAST_POLICY)})
    env.load(["alpha", "beta"], rate=25)
    c2 = env.repo.commit({"services/alpha.yaml": isvc_yaml("alpha", env.ns, "gs://e2e/v2"),
                          "services/beta.yaml": isvc_yaml("beta", env.ns, "gs://e2e/v2")}, "v2 of both")
    wait_until(lambda: servers["blackhole"].requests and servers["trickle"].requests, 30, "alpha's gates called")

    beta = env.wait_phase("beta", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=90)
    assert beta.status.phase == Phase.SUCCEEDED, beta.status.message

    pushed = time.monotonic()
    c3 = env.repo.commit({"services/gamma.yaml": isvc_yaml("gamma", env.ns, "gs://e2e/v1")}, "gamma")
    env.wait_phase("gamma", {Phase.SUCCEEDED}, c3, timeout=15)
    assert time.monotonic() - pushed < 15

    alpha = env.state("alpha")
    assert alpha is not None and alpha.spec.commit == c2
    assert alpha.status.phase == Phase.INITIALIZING  # waiting for its own gate, and only it
    assert len(servers["blackhole"].requests) == 1  # one call in flight, not one per tick
    assert len(servers["trickle"].requests) == 1  # its answer waits for the other gate's, not called again


def test_regression_gate_body_reached_status_and_events(env: Env, servers: dict[str, BadServer]) -> None:
    """A gate answering 500 with credentials in its body (what a metadata service returns): the rollout
    fails on the status code; status, history and Events carry no part of the body, and the daemon's log
    only a redacted excerpt. The original code copied 200 characters of the body into all of them."""
    hooks = [{"name": "meta", "type": "pre-rollout", "url": servers["metadata"].url("/latest/meta-data/iam"),
              "timeout": "5s", "retries": 0}]
    _start_v1(env, ["leaky"], {"policies/leaky.yaml": policy_yaml("leaky", env.ns, FAST_POLICY, webhooks=hooks)})
    c2 = env.repo.commit({"services/leaky.yaml": isvc_yaml("leaky", env.ns, "gs://e2e/v2")}, "v2")
    st = env.wait_phase("leaky", {Phase.FAILED, Phase.SUCCEEDED}, c2, timeout=60)
    assert st.status.phase == Phase.FAILED
    failed = next(h for h in st.status.history if h.reason == "PreRolloutFailed")
    assert "pre-rollout webhook meta: failed: HTTP 500" in failed.message
    shown: list[str] = [st.model_dump_json()]
    shown += [f"{e.reason} {e.message}" for e in env.events("leaky")]
    assert any("HTTP 500" in s for s in shown[1:])
    assert env.daemon is not None
    shown.append(env.daemon.log_tail(100000))
    for text in shown:
        assert "AccessKeyId" not in text or text is shown[-1]  # the log may show the key's name...
        for secret in SECRET_PARTS:
            assert secret not in text  # ... never its value


def test_regression_metadata_address_gate_refused(env: Env, servers: dict[str, BadServer]) -> None:
    """With the daemon's default settings (no `outbound` section), a gate URL on a loopback address (the
    stand-in for 169.254.169.254, which a test cannot bind) is refused before any connection: the
    endpoint gets nothing and the rollout fails with the reason. The original code called it."""
    hooks = [{"name": "meta", "type": "pre-rollout", "url": servers["ok"].url("/latest/meta-data/"),
              "timeout": "5s", "retries": 1},
             {"name": "imds", "type": "pre-rollout", "url": "http://169.254.169.254/latest/meta-data/",
              "timeout": "2s", "retries": 0}]
    path = env.settings()
    settings: dict[str, Any] = yaml.safe_load(path.read_text())
    settings.pop("outbound", None)  # the defaults a cluster gets
    path.write_text(yaml.safe_dump(settings))
    files: dict[str, str | None] = {"services/imds.yaml": isvc_yaml("imds", env.ns, "gs://e2e/v1"),
             "policies/imds.yaml": policy_yaml("imds", env.ns, FAST_POLICY, webhooks=hooks)}
    c1 = env.repo.commit(files, "v1")
    env.start_daemon(path)
    env.wait_phase("imds", {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state("imds")) and s.status.stable_revision, 20, "v1 Ready")
    c2 = env.repo.commit({"services/imds.yaml": isvc_yaml("imds", env.ns, "gs://e2e/v2")}, "v2")
    st = env.wait_phase("imds", {Phase.FAILED, Phase.SUCCEEDED}, c2, timeout=60)
    assert st.status.phase == Phase.FAILED, st.status.message
    failed = next(h for h in st.status.history if h.reason == "PreRolloutFailed")
    assert "loopback address" in failed.message and "link-local address" in failed.message
    assert servers["ok"].requests == []
