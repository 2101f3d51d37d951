"""A service removed from Git: left running by default (with a warning), deleted with `prune: true`."""

from __future__ import annotations

import time

import pytest

from canaryd.rollout.state import Phase
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def two_services(env: Env) -> str:
    return env.repo.commit({
        "services/keep.yaml": isvc_yaml("keep", env.ns, "gs://e2e/v1"),
        "services/gone.yaml": isvc_yaml("gone", env.ns, "gs://e2e/v1"),
        "policies/gone.yaml": policy_yaml("gone", env.ns, FAST_POLICY),
    }, "two services")


def test_removed_service_is_left_running_with_a_warning(env: Env) -> None:
    c1 = two_services(env)
    env.start_daemon()
    env.wait_phase("gone", {Phase.SUCCEEDED}, c1, timeout=30)
    env.repo.commit({"services/gone.yaml": None, "policies/gone.yaml": None}, "remove gone")
    log = env.dir / "canaryd.log"
    wait_until(lambda: "no longer in Git" in log.read_text() or "left running" in log.read_text(), 20,
               "a warning about the removed service")
    deadline = time.monotonic() + 4  # a few syncs and ticks: it must stay
    while time.monotonic() < deadline:
        assert env.isvc("gone") is not None
        time.sleep(0.5)
    assert env.state("gone") is not None


def test_prune_deletes_a_removed_service_and_its_memory(env: Env) -> None:
    c1 = two_services(env)
    env.start_daemon(env.settings(prune=True))
    env.wait_phase("gone", {Phase.SUCCEEDED}, c1, timeout=30)
    env.wait_phase("keep", {Phase.SUCCEEDED}, c1, timeout=30)
    env.repo.commit({"services/gone.yaml": None, "policies/gone.yaml": None}, "remove gone")
    wait_until(lambda: env.isvc("gone") is None and env.state("gone") is None, 30, "gone pruned")
    assert env.isvc("keep") is not None
    assert any(e.reason == "Pruned" for e in env.events("gone"))
