"""KServeAdapter and EventRecorder against the Kubernetes API emulator loaded with the real KServe CRD.

The real `kubernetes` client talks HTTP to the emulator, which validates every write against the CRD's
schema, as a real API server does: a write canaryd gets wrong fails here with a 422.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client

from canaryd.adapters.events import EventRecorder
from canaryd.adapters.kserve import MERGE_PATCH, KServeAdapter, UnsupportedService
from canaryd.adapters.kube import Invalid, KubeError, make_api_client
from canaryd.rollout.model import ApplySpec, TrafficTarget
from canaryd.rollout.state import TargetRef

ROOT = Path(__file__).resolve().parents[2]
KSERVE_CRD = ROOT.parent / "shared" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
ROLLOUT_CRD = ROOT / "charts" / "canaryd" / "crds" / "modelrollout.yaml"
G, V, P, NS = "serving.kserve.io", "v1beta1", "inferenceservices", "models"


@pytest.fixture(scope="module")
def api_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    if not KSERVE_CRD.exists():
        pytest.skip(f"the real KServe CRD is not at {KSERVE_CRD}")
    from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds

    emulator = KubeApiEmulator(load_crds([KSERVE_CRD, ROLLOUT_CRD]), namespaces=["default", NS])
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
def raw(api_client: client.ApiClient) -> client.CustomObjectsApi:
    """Direct access, playing KServe and other users (status writes, someone else's edits)."""
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def kserve(api_client: client.ApiClient) -> KServeAdapter:
    return KServeAdapter(api_client)


@pytest.fixture(scope="module")
def isvc_schema() -> jsonschema.Draft4Validator:
    """An independent second check of what the emulator accepted: the CRD's schema itself."""
    if not KSERVE_CRD.exists():
        pytest.skip(f"the real KServe CRD is not at {KSERVE_CRD}")
    crd = yaml.load(KSERVE_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def manifest(name: str, uri: str = "gs://models/iris/v1", *, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None, **model: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {"team": "a"}}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": f"{G}/{V}", "kind": "InferenceService", "metadata": meta,
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri, **model}}},
    }


def get(raw: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = raw.get_namespaced_custom_object(G, V, NS, P, name)
    return obj


def predictor(raw: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = get(raw, name)["spec"]["predictor"]
    return spec


# -- read -------------------------------------------------------------------------------------------


def test_read_missing_service_is_none(kserve: KServeAdapter) -> None:
    assert kserve.read(NS, "nobody") is None
    assert kserve.read("no-such-namespace", "nobody") is None


def test_read_parses_a_kserve_style_status(kserve: KServeAdapter, raw: client.CustomObjectsApi) -> None:
    kserve.apply(ApplySpec(manifest("reader", annotations={"note": "x"}), None, "predictor", None, create=True))
    raw.patch_namespaced_custom_object(G, V, NS, P, "reader",
                                       {"spec": {"predictor": {"canaryTrafficPercent": 10}}})
    raw.patch_namespaced_custom_object_status(G, V, NS, P, "reader", {"status": {
        "observedGeneration": 2,
        "deploymentMode": "Serverless",
        "url": "http://reader.models.example.com",
        "components": {"predictor": {
            "latestCreatedRevision": "reader-predictor-00002",
            "latestReadyRevision": "reader-predictor-00002",
            "latestRolledoutRevision": "reader-predictor-00001",
            "previousRolledoutRevision": "reader-predictor-00000",
            "traffic": [
                {"revisionName": "reader-predictor-00002", "percent": 10, "latestRevision": True,
                 "tag": "latest", "url": "http://latest-reader.models.example.com"},
                {"revisionName": "reader-predictor-00001", "percent": 90, "latestRevision": False,
                 "tag": "prev"},
            ],
        }},
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"},
            {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing", "message": "m",
             "severity": "Info"},
        ],
    }})

    live = kserve.read(NS, "reader")

    assert live is not None
    assert (live.api_version, live.generation, live.observed_generation) == (f"{G}/{V}", 2, 2)
    assert live.reconciled
    assert live.canary_percent == 10
    assert live.deployment_mode == "Serverless" and not live.raw_deployment
    assert live.manifest["metadata"]["labels"] == {"team": "a"}
    assert live.manifest["metadata"]["annotations"] == {"note": "x"}
    assert live.manifest["metadata"]["uid"]
    assert live.manifest["spec"]["predictor"]["model"]["storageUri"] == "gs://models/iris/v1"
    assert "status" not in live.manifest
    pred = live.component("predictor")
    assert (pred.latest_created, pred.latest_ready) == ("reader-predictor-00002",) * 2
    assert (pred.latest_rolledout, pred.previous_rolledout) == ("reader-predictor-00001",
                                                                "reader-predictor-00000")
    assert pred.traffic == [
        TrafficTarget(revision="reader-predictor-00002", percent=10, latest=True, tag="latest",
                      url="http://latest-reader.models.example.com"),
        TrafficTarget(revision="reader-predictor-00001", percent=90, latest=False, tag="prev"),
    ]
    assert pred.percent_of("reader-predictor-00001") == 90
    assert live.conditions["Ready"].status == "True"
    assert live.conditions["PredictorReady"].reason == "RevisionMissing"


def test_unreachable_server_is_a_kube_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = False
    with client.ApiClient(configuration) as api, pytest.raises(KubeError, match="read InferenceService"):
        KServeAdapter(api).read(NS, "iris")


def test_hung_server_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        configuration.retries = False
        with client.ApiClient(configuration) as api, pytest.raises(KubeError, match=r"(?i)timed? ?out"):
            KServeAdapter(api, timeout=(1.0, 0.5)).read(NS, "iris")


# -- apply ------------------------------------------------------------------------------------------


def test_create_then_merge_patch_removes_what_git_removed_and_keeps_others_fields(
    kserve: KServeAdapter, raw: client.CustomObjectsApi, isvc_schema: jsonschema.Draft4Validator
) -> None:
    v1 = manifest("applied", runtimeVersion="1.3.0", labels={"team": "a", "tier": "gold"})
    assert kserve.apply(ApplySpec(v1, None, "predictor", None, create=True)) == 1
    # Someone else (KServe's defaulting, another controller) sets fields canaryd never applied.
    raw.patch_namespaced_custom_object(G, V, NS, P, "applied", {
        "metadata": {"labels": {"owner": "platform"}},
        "spec": {"predictor": {"minReplicas": 2, "model": {"protocolVersion": "v2"}}},
    })

    v2 = manifest("applied", "gs://models/iris/v2", labels={"team": "a"})  # runtimeVersion, tier dropped
    generation = kserve.apply(ApplySpec(v2, v1, "predictor", 0))

    obj = get(raw, "applied")
    assert generation == obj["metadata"]["generation"] == 3
    assert obj["metadata"]["labels"] == {"team": "a", "owner": "platform"}
    assert obj["spec"]["predictor"] == {
        "minReplicas": 2,
        "canaryTrafficPercent": 0,
        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://models/iris/v2",
                  "protocolVersion": "v2"},
    }
    isvc_schema.validate(obj)


def test_reapplying_the_same_spec_changes_nothing(kserve: KServeAdapter, raw: client.CustomObjectsApi) -> None:
    m = manifest("steady")
    kserve.apply(ApplySpec(m, None, "predictor", None, create=True))
    before = get(raw, "steady")
    assert kserve.apply(ApplySpec(m, m, "predictor", None)) == before["metadata"]["generation"]
    assert get(raw, "steady")["spec"] == before["spec"]


def test_apply_sends_a_json_merge_patch(kserve: KServeAdapter, raw: client.CustomObjectsApi) -> None:
    """A null only deletes under merge-patch semantics: JSON patch would be refused, strategic merge
    is not allowed on custom resources. Also pins the content type the adapter asks for."""
    assert MERGE_PATCH == "application/merge-patch+json"
    m = manifest("nulls", runtimeVersion="1.0")
    kserve.apply(ApplySpec(m, None, "predictor", None, create=True))
    # The premise: the server tells the patch types apart (strategic merge on a custom resource: 415).
    with pytest.raises(client.ApiException) as refused:
        raw.patch_namespaced_custom_object(G, V, NS, P, "nulls", {"spec": {}},
                                           _content_type="application/strategic-merge-patch+json")
    assert refused.value.status == 415
    kserve.apply(ApplySpec(manifest("nulls"), m, "predictor", None))
    assert "runtimeVersion" not in predictor(raw, "nulls")["model"]


def test_rejected_write_is_reported_with_the_servers_reason(kserve: KServeAdapter) -> None:
    m = manifest("typo")
    kserve.apply(ApplySpec(m, None, "predictor", None, create=True))
    bad = manifest("typo")
    bad["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(Invalid, match=r"apply spec to InferenceService models/typo: HTTP 422"):
        kserve.apply(ApplySpec(bad, m, "predictor", None))


def test_apply_to_a_missing_service_fails_clearly(kserve: KServeAdapter) -> None:
    with pytest.raises(KubeError, match="models/ghost does not exist"):
        kserve.apply(ApplySpec(manifest("ghost"), None, "predictor", 0))


# -- traffic ----------------------------------------------------------------------------------------


def test_canary_percent_promote_and_rollback(kserve: KServeAdapter, raw: client.CustomObjectsApi,
                                            isvc_schema: jsonschema.Draft4Validator) -> None:
    m = manifest("traffic")
    kserve.apply(ApplySpec(m, None, "predictor", None, create=True))
    v2 = manifest("traffic", "gs://models/iris/v2")
    kserve.apply(ApplySpec(v2, m, "predictor", 0))
    assert predictor(raw, "traffic")["canaryTrafficPercent"] == 0

    kserve.set_traffic(NS, "traffic", "predictor", 25)
    assert predictor(raw, "traffic")["canaryTrafficPercent"] == 25
    isvc_schema.validate(get(raw, "traffic"))

    kserve.promote(NS, "traffic", "predictor")
    assert "canaryTrafficPercent" not in predictor(raw, "traffic")

    kserve.set_traffic(NS, "traffic", "predictor", 5)
    kserve.rollback(NS, "traffic", "predictor")
    spec = predictor(raw, "traffic")
    assert spec["canaryTrafficPercent"] == 0
    assert spec["model"]["storageUri"] == "gs://models/iris/v2"  # the spec stays, only traffic moves
    live = kserve.read(NS, "traffic")
    assert live is not None and live.canary_percent == 0


@pytest.mark.parametrize("bad", [-5, 101, 150])
def test_percent_outside_0_to_100_is_never_written(kserve: KServeAdapter, raw: client.CustomObjectsApi,
                                                  bad: int) -> None:
    name = f"bounds{bad + 10}"
    kserve.apply(ApplySpec(manifest(name), None, "predictor", 10, create=True))
    with pytest.raises(ValueError, match=r"0\.\.100"):
        kserve.set_traffic(NS, name, "predictor", bad)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        kserve.apply(ApplySpec(manifest(name, "gs://x"), manifest(name), "predictor", bad))
    assert predictor(raw, name)["canaryTrafficPercent"] == 10
    assert predictor(raw, name)["model"]["storageUri"] == "gs://models/iris/v1"


# -- RawDeployment ----------------------------------------------------------------------------------


def test_raw_deployment_by_annotation_is_refused_before_writing(
    kserve: KServeAdapter, raw: client.CustomObjectsApi
) -> None:
    raw_ann = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    with pytest.raises(UnsupportedService, match="RawDeployment"):
        kserve.apply(ApplySpec(manifest("raw-new", annotations=raw_ann), None, "predictor", None, create=True))
    assert kserve.read(NS, "raw-new") is None

    raw.create_namespaced_custom_object(G, V, NS, P, manifest("raw-live", annotations=raw_ann))
    live = kserve.read(NS, "raw-live")
    assert live is not None and live.raw_deployment
    with pytest.raises(UnsupportedService, match="Serverless"):
        kserve.apply(ApplySpec(manifest("raw-live", "gs://v2"), None, "predictor", 0))
    with pytest.raises(UnsupportedService):
        kserve.set_traffic(NS, "raw-live", "predictor", 10)
    obj = get(raw, "raw-live")
    assert obj["metadata"]["generation"] == 1
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]


def test_raw_deployment_by_status_is_refused(kserve: KServeAdapter, raw: client.CustomObjectsApi) -> None:
    """The cluster's default mode can be RawDeployment: only status.deploymentMode tells."""
    raw.create_namespaced_custom_object(G, V, NS, P, manifest("raw-status"))
    raw.patch_namespaced_custom_object_status(G, V, NS, P, "raw-status",
                                              {"status": {"deploymentMode": "RawDeployment"}})
    with pytest.raises(UnsupportedService, match="raw-status"):
        kserve.set_traffic(NS, "raw-status", "predictor", 10)
    assert "canaryTrafficPercent" not in predictor(raw, "raw-status")


# -- events -----------------------------------------------------------------------------------------


def events(api_client: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    resp = client.CoreV1Api(api_client).list_namespaced_event(namespace, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(resp.data)["items"]
    return items


def test_event_recorded_on_the_service(api_client: client.ApiClient, kserve: KServeAdapter) -> None:
    kserve.apply(ApplySpec(manifest("evented"), None, "predictor", None, create=True))
    live = kserve.read(NS, "evented")
    assert live is not None
    uid = live.manifest["metadata"]["uid"]
    recorder = EventRecorder(api_client, instance="canaryd-test")
    ref = TargetRef(namespace=NS, name="evented")

    assert recorder.record(ref, "analysis failed", "x" * 5000, "Warning", uid=uid)
    assert recorder.record(ref, "Promoted", "all traffic to evented-predictor-00002")

    # Lists come back in name order, and generateName suffixes are random: order by reason instead.
    mine = sorted((e for e in events(api_client, NS) if e["involvedObject"]["name"] == "evented"),
                  key=lambda e: e["reason"])
    assert [e["reason"] for e in mine] == ["AnalysisFailed", "Promoted"]
    first = mine[0]
    assert first["involvedObject"] == {"apiVersion": f"{G}/{V}", "kind": "InferenceService",
                                       "name": "evented", "namespace": NS, "uid": uid}
    assert first["type"] == "Warning"
    assert len(first["message"]) == 1024 and first["message"].endswith("...")
    assert first["source"] == {"component": "canaryd"}
    assert (first["reportingComponent"], first["reportingInstance"]) == ("canaryd", "canaryd-test")
    for key in ("firstTimestamp", "lastTimestamp", "eventTime"):
        assert first[key].startswith("20")
    assert mine[0]["metadata"]["name"] != mine[1]["metadata"]["name"]


def test_event_failure_is_logged_not_raised(api_client: client.ApiClient,
                                            caplog: pytest.LogCaptureFixture) -> None:
    recorder = EventRecorder(api_client)
    with caplog.at_level(logging.WARNING, logger="canaryd.adapters.events"):
        ok = recorder.record(TargetRef(namespace="no-such-namespace", name="x"), "Promoted", "m")
    assert ok is False
    assert "event not recorded" in caplog.text and "404" in caplog.text


# -- client construction ----------------------------------------------------------------------------


def test_no_kubeconfig_outside_a_cluster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="in-cluster service account"):
        make_api_client(None)


def test_missing_kubeconfig_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match="kubeconfig"):
        make_api_client(str(tmp_path / "nope"))
