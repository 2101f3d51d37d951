"""A commit over a repo-wide limit that only parsing finds (the YAML node budget) keeps the last good
desired state, like any failed sync: before, the daemon took the empty set it got for "every service left
Git" and aborted the canary in flight."""

from __future__ import annotations

import json

import httpx
import pytest

from canaryd.rollout.state import Phase
from canaryd.yamlsafe import MAX_NODES, MAX_REPO_NODES
from tests.e2e.helpers import Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IN_FLIGHT = {Phase.PROGRESSING, Phase.HOLDING}


def big_files() -> dict[str, str]:
    """Files each under the per-file node limit that together exceed the repo's node budget."""
    per_file = MAX_NODES - 1_000
    n = MAX_REPO_NODES // per_file + 1
    return {f"services/bulk/b{i}.yaml": "[" + ",".join(["1"] * per_file) + "]\n" for i in range(n)}


def test_regression_node_budget_breach_aborted_canaries_in_flight(env: Env) -> None:
    name = "nodes"
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns, interval="10m")}, "v1")
    daemon = env.start_daemon()
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=40)
    c2 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v2")}, "v2")
    env.wait_phase(name, IN_FLIGHT, c2, timeout=40)

    bulk = big_files()
    c3 = env.repo.commit(bulk, "a tree over the node budget")

    def refused() -> list[dict[str, object]] | None:
        lines = [json.loads(ln) for ln in daemon.log_path.read_text().splitlines() if ln.startswith("{")]
        return [ln for ln in lines if ln.get("msg") == "config repo commit refused; keeping the last good"
                " desired state" and ln.get("commit") == c3] or None

    (entry,) = wait_until(refused, 60, "the over-budget commit refused")
    assert f"limit: {MAX_REPO_NODES} nodes per repo" in str(entry["problem"])
    st = env.state(name)
    assert st is not None and st.spec.commit == c2 and st.status.phase in IN_FLIGHT, st and st.status.message
    assert st.status.weight == 10
    live = env.isvc(name) or {}
    assert live["spec"]["predictor"]["canaryTrafficPercent"] == 10

    # Back under the budget: the commit syncs (no config error left) and the same canary goes on.
    env.repo.commit({path: None for path in bulk}, "bulk removed")
    wait_until(lambda: "canaryd_config_errors 0.0" in httpx.get(f"{daemon.url}/metrics", timeout=5).text or None,
               30, "the next commit synced without errors")
    st = env.state(name)
    assert st is not None and st.spec.commit == c2 and st.status.phase in IN_FLIGHT
