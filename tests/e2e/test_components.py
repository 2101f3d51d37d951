"""Several components end to end: a transformer canary, and a transformer and a predictor in turn.

Requests from the load generator enter through the transformer and go on to the predictor (the data
plane's two hops), so each component's revisions have their own queue-proxy metrics in Prometheus, and
each canary is judged on its own.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import pytest

from canaryd.rollout.state import Phase
from tests.e2e.helpers import Env, PercentRecorder, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TX, PRED = "transformer", "predictor"
#: Requests per second: enough for minRequests (8) at 10 % within a 3 s step.
RATE = 40


def isvc_with_transformer(name: str, ns: str, image: str, uri: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata:
          name: {name}
          namespace: {ns}
        spec:
          transformer:
            containers:
              - name: kserve-container
                image: {image}
          predictor:
            model:
              modelFormat: {{name: sklearn}}
              storageUri: {uri}
        """)


@dataclass(frozen=True)
class Seen:
    """The service at one write: each component's percent, and how the predictor's traffic was split."""

    generation: int
    percents: dict[str, int | None]
    predictor_traffic: dict[str, int]


class SpecRecorder(PercentRecorder):
    """Every version of the service seen by a watch (spec writes and status updates), in order."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[Seen] = []

    def _see(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec") or {}
        traffic = ((obj.get("status") or {}).get("components") or {}).get(PRED, {}).get("traffic") or []
        self.seen.append(Seen(
            generation=int(obj["metadata"].get("generation") or 0),
            percents={c: (spec.get(c) or {}).get("canaryTrafficPercent") for c in (TX, PRED)},
            predictor_traffic={t["revisionName"]: t["percent"] for t in traffic if t.get("percent")},
        ))

    def writes(self, component: str) -> list[int | None]:
        """The distinct percents written to `component`, in order (like PercentRecorder.values)."""
        out: list[int | None] = []
        for s in self.seen:
            if not out or out[-1] != s.percents[component]:
                out.append(s.percents[component])
        return out


def deploy(env: Env, name: str, components: list[str]) -> str:
    c1 = env.repo.commit({
        f"services/{name}.yaml": isvc_with_transformer(name, env.ns, "example/tx:v1", "gs://e2e/v1"),
        f"policies/{name}.yaml": policy_yaml(name, env.ns, target={"name": name, "components": components},
                                             interval="3s", analysis={"every": "1s"}),
    }, f"{name} v1")
    if env.daemon is None:
        env.start_daemon()
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state(name)) and s.status.stable_revision, 20, f"{name} v1 Ready and recorded")
    return c1


def component_status(env: Env, name: str, component: str) -> dict[str, Any]:
    obj = env.isvc(name) or {}
    status: dict[str, Any] = obj.get("status", {}).get("components", {}).get(component, {})
    return status


def traffic(env: Env, name: str, component: str) -> dict[str, int]:
    return {t["revisionName"]: t["percent"] for t in component_status(env, name, component).get("traffic", [])
            if t.get("percent")}


def test_transformer_canary_promotes_a_good_image_and_rolls_back_a_bad_one(env: Env) -> None:
    deploy(env, "tx", [TX])
    rec = SpecRecorder(env.api, env.ns, "tx")
    env.recorders.append(rec.start())
    env.load(["tx"], rate=RATE)

    c2 = env.repo.commit({"services/tx.yaml": isvc_with_transformer("tx", env.ns, "example/tx:v2", "gs://e2e/v1")},
                         "transformer v2")
    st = env.wait_phase("tx", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    assert st.spec.component == TX and st.status.stable_revision == "tx-transformer-00002"
    wait_until(lambda: rec.writes(TX)[-1:] == [None] and len(rec.writes(TX)) >= 5, 10, "promotion visible")
    assert rec.writes(TX) == [None, 0, 10, 50, None]  # the transformer's percent went through the steps
    assert rec.writes(PRED) == [None]  # the predictor's was never written
    assert traffic(env, "tx", TX) == {"tx-transformer-00002": 100}
    judged = {a.canary_revision for a in st.status.analyses}
    assert judged == {"tx-transformer-00002"}
    assert [h.reason for h in st.status.history if h.commit == c2 and h.component == TX][-1] == "Promoted"

    c3 = env.repo.commit({"services/tx.yaml": isvc_with_transformer("tx", env.ns, "example/tx:errors",
                                                                    "gs://e2e/v1")}, "transformer with 5xx")
    st = env.wait_phase("tx", {Phase.SUCCEEDED, Phase.FAILED}, c3, timeout=60)
    assert st.status.phase == Phase.FAILED, st.status.message
    assert "transformer" in st.status.message and st.spec.spec_hash in st.status.failed_spec_hashes
    failed = [a for a in st.status.analyses if a.verdict.outcome == "fail"]
    assert failed and all(a.canary_revision == "tx-transformer-00003" for a in failed)
    assert rec.writes(TX)[-1] == 0 and 50 not in rec.writes(TX)[5:]  # rolled back before step 2
    assert traffic(env, "tx", TX) == {"tx-transformer-00002": 100}
    # The predictor was never touched: one revision, no percent, all its traffic where it was.
    assert component_status(env, "tx", PRED)["latestCreatedRevision"] == "tx-predictor-00001"
    assert rec.writes(PRED) == [None]
    assert traffic(env, "tx", PRED) == {"tx-predictor-00001": 100}
    rollback = [e for e in env.events("tx") if e.reason == "AnalysisFailed"]
    assert rollback and "error rate" in rollback[0].message


def test_transformer_then_predictor_each_promoted_in_turn(env: Env) -> None:
    deploy(env, "both", [TX, PRED])
    rec = SpecRecorder(env.api, env.ns, "both")
    env.recorders.append(rec.start())
    env.load(["both"], rate=RATE)

    c2 = env.repo.commit({"services/both.yaml": isvc_with_transformer("both", env.ns, "example/tx:v2",
                                                                      "gs://e2e/v2")}, "transformer and model v2")
    st = env.wait_phase("both", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=90)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    ours = [h for h in st.status.history if h.commit == c2]
    assert [(h.component, h.reason) for h in ours if h.reason in ("RolloutStarted", "ComponentStarted", "Promoted")
            ] == [(TX, "RolloutStarted"), (TX, "Promoted"), (PRED, "ComponentStarted"), (PRED, "Promoted")]
    assert st.status.promoted_components == [TX, PRED]
    wait_until(lambda: rec.writes(PRED)[-1:] == [None] and len(rec.writes(PRED)) >= 5, 10, "promotion visible")
    assert rec.writes(TX) == [None, 0, 10, 50, None]
    assert rec.writes(PRED) == [None, 0, 10, 50, None]
    # Nothing moved on the predictor until the transformer was promoted.
    tx_done = next(i for i, s in enumerate(rec.seen)
                   if s.percents[TX] is None and any(p.percents[TX] == 50 for p in rec.seen[:i]))
    before = rec.seen[:tx_done + 1]
    assert all(s.percents[PRED] is None for s in before)
    assert all(s.predictor_traffic in ({}, {"both-predictor-00001": 100}) for s in before)
    assert traffic(env, "both", TX) == {"both-transformer-00002": 100}
    assert traffic(env, "both", PRED) == {"both-predictor-00002": 100}
    judged = [a.canary_revision for a in st.status.analyses]
    assert "both-transformer-00002" in judged and "both-predictor-00002" in judged

