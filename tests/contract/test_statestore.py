"""StateStore against the Kubernetes API emulator loaded with the ModelRollout CRD from the chart.

The emulator prunes unknown fields and separates the status subresource the way a real API server
does, so a field missing from the CRD schema, or a status written to the main resource, shows up here
as lost state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from pydantic import BaseModel

from canaryd.adapters.kube import make_api_client
from canaryd.adapters.statestore import Conflict, StateStore, UntrustedState
from canaryd.analysis.samples import MetricVerdict, Verdict
from canaryd.rollout.state import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    AnalysisRecord,
    Control,
    HistoryRecord,
    Phase,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    TargetRef,
)

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT_CRD = ROOT / "charts" / "canaryd" / "crds" / "modelrollout.yaml"
NS = "models"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def api_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds

    emulator = KubeApiEmulator(load_crds([ROLLOUT_CRD]), namespaces=["default", NS, "other"])
    emulator.start()
    try:
        kubeconfig = tmp_path_factory.mktemp("kube") / "kubeconfig"
        emulator.write_kubeconfig(kubeconfig)
        api = make_api_client(str(kubeconfig))
        try:
            yield api
        finally:
            api.close()
    finally:
        emulator.stop()


@pytest.fixture
def store(api_client: client.ApiClient) -> StateStore:
    return StateStore(api_client)


def realistic(name: str, namespace: str = NS) -> RolloutState:
    """A rollout two steps in, with every kind of field for_storage() writes."""
    state = RolloutState.new(TargetRef(namespace=namespace, name=name)).evolve(spec={
        "commit": "0123abcd",
        "spec_hash": "sha256:feed",
        "policy_source": "services/iris/policy.yaml",
        "last_applied": {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace, "labels": {"team": "a"},
                         "annotations": {"serving.kserve.io/enable-tag-routing": "true"}},
            "spec": {"predictor": {"minReplicas": 1, "model": {
                "modelFormat": {"name": "sklearn"}, "storageUri": "gs://models/iris/v2",
                "args": ["--workers", "2"], "env": [{"name": "A", "value": "1"}]}}},
        },
        "policy": {"steps": [5, 25, 50], "interval": "1m", "analysis": {
            "every": "10s", "minRequests": 200, "metrics": [{"name": "error-rate", "max": 0.01}]}},
    })
    state = state.transition(Phase.INITIALIZING, now=T0, reason="NewSpec", message="commit 0123abcd",
                             stable_revision=f"{name}-predictor-00001", canary_revision=f"{name}-predictor-00002",
                             baseline_created_revision=f"{name}-predictor-00001", rollout_started_at=T0)
    state = state.transition(Phase.PROGRESSING, now=T0 + timedelta(seconds=40), reason="CanaryReady",
                             step=0, weight=5, ready_at=T0 + timedelta(seconds=40),
                             step_started_at=T0 + timedelta(seconds=40))
    for i, outcome in enumerate(["pass", "inconclusive", "fail"]):
        state = state.with_analysis(AnalysisRecord(
            at=T0 + timedelta(seconds=60 + 10 * i), step=0, weight=5, canary_revision=f"{name}-predictor-00002",
            verdict=Verdict(outcome=outcome, requests=250.0 + i, window_s=20.0 + i, metrics=[
                MetricVerdict(name="error-rate", outcome=outcome, value=0.004, baseline=0.001,
                              reason="0.004 <= max 0.01"),
                MetricVerdict(name="latency", outcome="inconclusive", reason="no data"),
            ]),
        ))
    return state.evolve(failed_analyses=1, inconclusive_in_row=1, failed_spec_hashes=["sha256:bad"],
                        next_check_at=T0 + timedelta(seconds=100), hold_since=T0 + timedelta(seconds=70),
                        last_verdict="fail")


def without_rv(state: RolloutState) -> dict[str, Any]:
    body = state.for_storage()
    body["metadata"].pop("resourceVersion", None)
    return body


# -- round trip -------------------------------------------------------------------------------------


def test_realistic_state_round_trips_without_pruning(store: StateStore) -> None:
    state = realistic("iris")
    saved = store.save(state)
    assert saved.resource_version
    loaded = store.load(NS, "iris")
    assert loaded is not None
    assert loaded.resource_version == saved.resource_version
    assert loaded.generation == 1 and loaded.observed_generation == 1  # status.observedGeneration
    unversioned = loaded.model_copy(update={"generation": None, "observed_generation": None})
    assert without_rv(unversioned) == without_rv(state)  # every field came back: nothing was pruned
    assert loaded.status.analyses[2].verdict.metrics[0].baseline == 0.001
    assert loaded.status.history[-1].from_phase is Phase.INITIALIZING


def test_load_missing_is_none(store: StateStore) -> None:
    assert store.load(NS, "nobody") is None


def test_save_replaces_spec_and_status(store: StateStore) -> None:
    first = store.save(RolloutState.new(TargetRef(namespace=NS, name="wine")))
    moved = first.evolve(spec={"commit": "c2"}).transition(Phase.INITIALIZING, now=T0, reason="NewSpec",
                                                          canary_revision="wine-predictor-00002")
    second = store.save(moved)
    assert second.resource_version != first.resource_version
    loaded = store.load(NS, "wine")
    assert loaded is not None
    assert (loaded.spec.commit, loaded.status.phase) == ("c2", Phase.INITIALIZING)
    assert loaded.status.canary_revision == "wine-predictor-00002"
    # A field set before and absent now is gone (status is replaced, not merged).
    cleared = store.save(loaded.evolve(canary_revision=None, history=[]))
    reloaded = store.load(NS, "wine")
    assert reloaded is not None
    assert reloaded.status.canary_revision is None and reloaded.status.history == []
    assert reloaded.resource_version == cleared.resource_version


# -- optimistic concurrency -------------------------------------------------------------------------


def test_stale_writer_gets_conflict(api_client: client.ApiClient) -> None:
    writer_a, writer_b = StateStore(api_client), StateStore(api_client)
    writer_a.save(RolloutState.new(TargetRef(namespace=NS, name="contested")))
    seen_by_a = writer_a.load(NS, "contested")
    seen_by_b = writer_b.load(NS, "contested")
    assert seen_by_a is not None and seen_by_b is not None

    writer_a.save(seen_by_a.transition(Phase.INITIALIZING, now=T0, reason="NewSpec"))
    with pytest.raises(Conflict, match="409"):
        writer_b.save(seen_by_b.evolve(spec={"commit": "b's idea"}))

    final = writer_b.load(NS, "contested")
    assert final is not None
    assert final.status.phase is Phase.INITIALIZING and final.spec.commit is None  # A's write stands


def test_creating_twice_is_a_conflict(store: StateStore) -> None:
    state = RolloutState.new(TargetRef(namespace=NS, name="twice"))
    store.save(state)
    with pytest.raises(Conflict):
        store.save(state)


# -- list / delete ----------------------------------------------------------------------------------


def test_list_by_namespace_and_everywhere_then_delete(store: StateStore) -> None:
    for ns, name in [("other", "a1"), ("other", "a2"), ("default", "b1")]:
        store.save(RolloutState.new(TargetRef(namespace=ns, name=name)))
    assert sorted(s.spec.target.name for s in store.list("other")) == ["a1", "a2"]
    everywhere = {s.spec.target.key for s in store.list()}
    assert {"other/a1", "other/a2", "default/b1"} <= everywhere
    assert all(s.resource_version for s in store.list())

    assert store.delete("other", "a1") is True
    assert store.load("other", "a1") is None
    assert store.delete("other", "a1") is False
    assert [s.spec.target.name for s in store.list("other")] == ["a2"]


# -- the CRD mirrors the model ----------------------------------------------------------------------


def crd() -> dict[str, Any]:
    return dict(yaml.safe_load(ROLLOUT_CRD.read_text()))


def schema() -> dict[str, Any]:
    return dict(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def aliases(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


@pytest.mark.parametrize(("model", "path"), [
    (RolloutStatus, ["status"]),
    (AnalysisRecord, ["status", "analyses", "items"]),
    (HistoryRecord, ["status", "history", "items"]),
])
def test_crd_schema_has_exactly_the_models_fields(model: type[BaseModel], path: list[str]) -> None:
    node = schema()
    for key in path:
        node = node["items"] if key == "items" else node["properties"][key]
    want = aliases(model)
    if model is RolloutStatus:  # what is rolled out lives in status too, beside the progress
        # ...and what is written for people and kubectl (observedGeneration, printer-column fields)
        want |= (aliases(RolloutSpec) - {"control"}) | {"stateVersion", "observedGeneration", "shortCommit",
                                                        "stepLabel"}
    assert set(node["properties"]) == want


def test_crd_spec_is_the_operators_requests_plus_the_legacy_fields_read_for_migration() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert set(spec["control"]["properties"]) == aliases(Control)
    assert set(spec) == aliases(RolloutSpec)  # control + the canaryd 0.1 fields (read once, then removed)
    assert set(schema()["properties"]["status"]["properties"]["target"]["properties"]) == {"apiVersion", "kind"}
    assert {"namespace", "name"} <= aliases(TargetRef)  # ... which come from the object's own metadata


def test_crd_identity_and_printer_columns() -> None:
    doc = crd()
    assert doc["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (doc["spec"]["group"], doc["spec"]["names"]["kind"], doc["spec"]["scope"]) == (GROUP, KIND,
                                                                                          "Namespaced")
    assert doc["spec"]["names"]["shortNames"] == ["mro"]
    version = doc["spec"]["versions"][0]
    assert version["name"] == VERSION and version["subresources"] == {"status": {}}
    phases = schema()["properties"]["status"]["properties"]["phase"]["enum"]
    assert phases == [p.value for p in Phase]
    body = realistic("cols").for_storage()
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Component", "Step", "Weight", "Canary", "Stable", "Commit", "Healthy",
                             "Message", "Age"]
    assert body["status"]["stepLabel"] == "1/3" and body["status"]["shortCommit"] == "0123abcd"
    for name, json_path in columns.items():
        if name == "Age":
            continue
        if name == "Healthy":
            assert any(c["type"] == "Healthy" for c in body["status"]["conditions"])
            continue
        section, key = json_path.lstrip(".").split(".")
        assert key in body[section], f"{name} column points at missing {json_path}"


# -- issue 13: the status subresource, and the state written by canaryd 0.1 --------------------------------


def legacy_object(api_client: client.ApiClient, state: RolloutState, **spec_changes: Any) -> dict[str, Any]:
    """Write `state` as canaryd 0.1 did (all it computed in spec, status beside it, no stateVersion), the way
    such an object looks on a cluster after the CRD upgrade: create (spec) then the status subresource."""
    co = client.CustomObjectsApi(api_client)
    t = state.spec.target
    spec = json.loads(state.spec.model_dump_json(by_alias=True, exclude_none=True))
    spec.update(spec_changes)
    status = json.loads(state.status.model_dump_json(by_alias=True, exclude_none=True))
    status.pop("attempt", None)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "spec": spec,
            "metadata": {"name": t.name, "namespace": t.namespace, "labels": {"team": "a"}}}
    created = co.create_namespaced_custom_object(GROUP, VERSION, t.namespace, PLURAL, body)
    created["status"] = status
    written: dict[str, Any] = co.replace_namespaced_custom_object_status(GROUP, VERSION, t.namespace, PLURAL,
                                                                         t.name, created)
    return written


def test_a_state_written_by_canaryd_0_1_is_migrated_not_misread(store: StateStore,
                                                                api_client: client.ApiClient) -> None:
    old = realistic("legacy")
    legacy_object(api_client, old, control={"paused": True, "promote": old.spec.spec_hash})
    loaded = store.load(NS, "legacy")
    assert loaded is not None
    assert loaded.spec.last_applied == old.spec.last_applied and loaded.spec.policy == old.spec.policy
    assert loaded.status.phase == old.status.phase and loaded.status.history == old.status.history
    assert loaded.spec.control.paused is True  # a pause stays in force
    assert loaded.spec.control.promote != loaded.attempt_id  # a 0.1 promote (a spec hash) is spent
    raw = client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "legacy")
    assert raw["status"]["stateVersion"] == 2 and raw["status"]["lastApplied"] == old.spec.last_applied
    assert set(raw["spec"]) == {"control"}, "the 0.1 fields were not removed from spec"
    assert raw["metadata"]["labels"] == {"team": "a"}
    again = store.load(NS, "legacy")
    assert again is not None
    assert again.model_copy(update={"observed_generation": None}) == loaded.model_copy(update={
        "resource_version": raw["metadata"]["resourceVersion"], "generation": again.generation})


def test_a_0_1_state_naming_another_namespace_is_refused_not_migrated(store: StateStore,
                                                                      api_client: client.ApiClient) -> None:
    old = realistic("legacy-hostile")
    legacy_object(api_client, old, target={"namespace": "other", "name": "victim"})
    with pytest.raises(UntrustedState, match="not this ModelRollout's own"):
        store.load(NS, "legacy-hostile")
    old2 = realistic("legacy-hostile2")
    applied = {**(old2.spec.last_applied or {}), "metadata": {"namespace": "other", "name": "legacy-hostile2"}}
    legacy_object(api_client, old2, lastApplied=applied)
    with pytest.raises(UntrustedState, match="lastApplied names other/legacy-hostile2"):
        store.load(NS, "legacy-hostile2")
    assert "legacy-hostile2" not in {s.spec.target.name for s in store.list(NS)}  # skipped, not misread


def test_a_state_from_a_newer_canaryd_is_refused(store: StateStore, api_client: client.ApiClient) -> None:
    saved = store.save(realistic("future"))
    co = client.CustomObjectsApi(api_client)
    obj = co.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "future")
    obj["status"]["stateVersion"] = 3
    co.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "future", obj)
    with pytest.raises(UntrustedState, match="stateVersion is 3"):
        store.load(NS, "future")
    assert saved.resource_version


def test_editors_cannot_change_status_through_the_main_resource(store: StateStore,
                                                                api_client: client.ApiClient) -> None:
    """The emulator enforces the status subresource as a real API server does: a main-resource write
    changes spec and metadata only."""
    saved = store.save(realistic("guarded"))
    co = client.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "guarded", {
        "spec": {"control": {"paused": True}},
        "status": {"phase": "Failed", "lastApplied": {"metadata": {"namespace": "other", "name": "x"}}}})
    loaded = store.load(NS, "guarded")
    assert loaded is not None and loaded.spec.control.paused is True
    assert loaded.status.phase == saved.status.phase and loaded.spec.last_applied == saved.spec.last_applied


def test_a_save_writes_status_only_and_keeps_others_metadata(store: StateStore,
                                                             api_client: client.ApiClient) -> None:
    saved = store.save(realistic("shared"))
    co = client.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "shared", {"metadata": {
        "labels": {"argocd.argoproj.io/instance": "app"}, "annotations": {"note": "x"}}})
    fresh = store.load(NS, "shared")
    assert fresh is not None
    store.save(fresh.evolve(message="next"))
    meta = co.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "shared")["metadata"]
    assert meta["labels"]["argocd.argoproj.io/instance"] == "app" and meta["annotations"] == {"note": "x"}
    assert saved.resource_version


# -- issue 15: conditions and observedGeneration, as Kubernetes tools read them ----------------------------


def conditions_of(api_client: client.ApiClient, name: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    raw = client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    return {c["type"]: c for c in raw["status"]["conditions"]}, raw


def test_conditions_follow_the_phase_and_keep_their_transition_times(store: StateStore,
                                                                      api_client: client.ApiClient) -> None:
    state = store.save(realistic("cond"))
    conds, raw = conditions_of(api_client, "cond")
    assert {k: c["status"] for k, c in conds.items()} == {"Healthy": "Unknown", "Progressing": "True",
                                                         "Paused": "False"}
    assert all(c["observedGeneration"] == raw["metadata"]["generation"] for c in conds.values())
    assert raw["status"]["observedGeneration"] == raw["metadata"]["generation"]
    assert conds["Progressing"]["reason"] == "CanaryReady"
    later = T0 + timedelta(minutes=5)
    done = state.transition(Phase.PROMOTING, now=later, reason="Promoting").transition(
        Phase.SUCCEEDED, now=later, reason="Promoted", message="iris-predictor-00002 serves 100%")
    store.save(done)
    conds2, _ = conditions_of(api_client, "cond")
    assert conds2["Healthy"]["status"] == "True" and conds2["Healthy"]["reason"] == "Promoted"
    assert conds2["Healthy"]["message"] == "iris-predictor-00002 serves 100%"
    assert conds2["Progressing"]["status"] == "False"
    # a status that did not change keeps its time; one that changed has the transition's
    assert conds2["Paused"]["lastTransitionTime"] == conds["Paused"]["lastTransitionTime"]
    assert conds2["Healthy"]["lastTransitionTime"].startswith("2024-05-01T12:05:00")


def test_an_operator_request_is_observed_in_observed_generation(store: StateStore,
                                                                api_client: client.ApiClient) -> None:
    store.save(realistic("obs"))
    co = client.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "obs", {"spec": {"control": {"paused": True}}})
    loaded = store.load(NS, "obs")
    assert loaded is not None and loaded.generation == 2 and loaded.observed_generation == 1
    assert loaded.generation_unobserved, "the daemon saves the status even if nothing else changed"
    saved = store.save(loaded)
    assert not saved.generation_unobserved
    _, raw = conditions_of(api_client, "obs")
    assert raw["status"]["observedGeneration"] == raw["metadata"]["generation"] == 2
