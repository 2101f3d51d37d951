"""The KServe controller emulator against the Kubernetes API emulator with the real KServe CRD.

Everything goes through the `kubernetes` client over HTTP, as against a real cluster: the test plays
canaryd (spec patches) and watches what the emulator writes; every status it wrote is validated against
the CRD's schema (the API emulator validates writes too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client, config, watch

from canaryd.sandbox.kserve import KServeEmulator
from canaryd.sandbox.scenario import Scenario, VersionBehaviour
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
KSERVE_CRD = ROOT.parent / "shared" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
REVISION_CRD = ROOT / "canaryd" / "sandbox" / "crds" / "knative-revision.yaml"
G, V, P, NS = "serving.kserve.io", "v1beta1", "inferenceservices", "models"
RG, RV, RP = "serving.knative.dev", "v1", "revisions"
V1, V2 = "gs://models/iris/v1", "gs://models/iris/v2"
SCENARIO = Scenario(
    default=VersionBehaviour(ready_after_s=0.2),
    versions={V2: VersionBehaviour(ready_after_s=1.0)},
)


@dataclass
class Cluster:
    kubeconfig: Path
    api: client.CustomObjectsApi
    seen: list[dict[str, Any]] = field(default_factory=list)  # every InferenceService version watched

    def isvc(self, name: str = "iris") -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(G, V, NS, P, name))

    def revisions(self, name: str = "iris") -> dict[str, dict[str, Any]]:
        items = self.api.list_namespaced_custom_object(
            RG, RV, NS, RP, label_selector=f"serving.kserve.io/inferenceservice={name}"
        )["items"]
        return {i["metadata"]["name"]: i for i in items}

    def patch(self, predictor: dict[str, Any], name: str = "iris") -> None:
        self.api.patch_namespaced_custom_object(G, V, NS, P, name, {"spec": {"predictor": predictor}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not KSERVE_CRD.exists():
        pytest.skip(f"the real KServe CRD is not at {KSERVE_CRD}")
    from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds

    emulator = KubeApiEmulator(load_crds([KSERVE_CRD, REVISION_CRD]), namespaces=["default", NS])
    emulator.start()
    api_client: Any = None
    stop = threading.Event()
    watcher: threading.Thread | None = None
    try:
        kubeconfig = tmp_path_factory.mktemp("kube") / "kubeconfig"
        emulator.write_kubeconfig(kubeconfig)
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        state = Cluster(kubeconfig, client.CustomObjectsApi(api_client))
        version = state.api.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]

        def record() -> None:
            nonlocal version
            while not stop.is_set():
                w = watch.Watch()
                for event in w.stream(
                    state.api.list_namespaced_custom_object,
                    G,
                    V,
                    NS,
                    P,
                    resource_version=version,
                    timeout_seconds=1,
                    _request_timeout=(5, 3),
                ):
                    version = event["raw_object"]["metadata"]["resourceVersion"]
                    state.seen.append(event["raw_object"])

        watcher = threading.Thread(target=record, daemon=True)
        watcher.start()
        yield state
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(5)
        if api_client is not None:
            api_client.close()
        emulator.stop()


@pytest.fixture
def kserve(cluster: Cluster) -> Iterator[KServeEmulator]:
    emulator = KServeEmulator(cluster.kubeconfig, SCENARIO, namespaces=[NS], tick_s=0.05).start()
    try:
        yield emulator
    finally:
        started = time.monotonic()
        emulator.stop()
        assert time.monotonic() - started < 2.5


@pytest.fixture(scope="module")
def status_schema() -> jsonschema.protocols.Validator:
    if not KSERVE_CRD.exists():
        pytest.skip(f"the real KServe CRD is not at {KSERVE_CRD}")
    crd = yaml.load(KSERVE_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"])


def predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    return dict(((isvc.get("status") or {}).get("components") or {}).get("predictor") or {})


def split(isvc: dict[str, Any]) -> list[tuple[str, int, bool, str | None]]:
    return [
        (t["revisionName"][-5:], t["percent"], t["latestRevision"], t.get("tag"))
        for t in predictor(isvc).get("traffic") or []
    ]


def condition(isvc: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (isvc.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def until(cluster: Cluster, check: Callable[[dict[str, Any]], Any], name: str = "iris") -> Callable[[], Any]:
    """A probe: the service once `check` holds for it."""

    def probe() -> dict[str, Any] | None:
        isvc = cluster.isvc(name)
        return isvc if check(isvc) else None

    return probe


def settled(cluster: Cluster, want: list[tuple[str, int, bool, str | None]]) -> Callable[[], Any]:
    """A probe: the service once its status describes the current spec with this split."""

    def probe() -> dict[str, Any] | None:
        isvc = cluster.isvc()
        status = isvc.get("status") or {}
        current = status.get("observedGeneration") == isvc["metadata"]["generation"]
        return isvc if current and split(isvc) == want else None

    return probe


def test_create_canary_promote_through_the_api(
    cluster: Cluster, kserve: KServeEmulator, status_schema: jsonschema.protocols.Validator
) -> None:
    manifest = {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": NS, "labels": {"team": "a"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V1}}},
    }
    cluster.api.create_namespaced_custom_object(G, V, NS, P, manifest)

    # created, then Ready with all traffic on the first revision
    isvc = wait_for("the first revision to serve", settled(cluster, [("00001", 100, True, None)]))
    assert condition(isvc, "Ready")["status"] == "True"
    assert isvc["status"]["url"] == "http://iris.models.example.com"
    revs = cluster.revisions()
    assert list(revs) == ["iris-predictor-00001"]
    rev = revs["iris-predictor-00001"]
    assert rev["metadata"]["labels"]["serving.knative.dev/configuration"] == "iris-predictor"
    assert rev["metadata"]["annotations"]["sandbox.canaryd.io/storage-uri"] == V1
    assert rev["spec"]["model"]["storageUri"] == V1
    assert rev["status"]["conditions"][0]["status"] == "True"

    # a new model at 0 %: a new revision, the old one keeps everything until and after it is Ready
    cluster.patch({"canaryTrafficPercent": 0, "model": {"storageUri": V2}})
    isvc = wait_for(
        "the new revision to be Ready",
        until(cluster, lambda i: predictor(i).get("latestReadyRevision", "").endswith("2")),
    )
    assert split(isvc) == [("00002", 0, True, "latest"), ("00001", 100, False, "prev")]
    deploying = next(s for s in cluster.seen if predictor(s).get("latestCreatedRevision", "").endswith("2"))
    assert predictor(deploying)["latestReadyRevision"].endswith("1")
    assert split(deploying) == [("00001", 0, True, "latest"), ("00001", 100, False, "prev")]  # the hazard
    assert condition(deploying, "LatestDeploymentReady")["status"] == "Unknown"
    revs = cluster.revisions()
    assert sorted(revs) == ["iris-predictor-00001", "iris-predictor-00002"]
    assert revs["iris-predictor-00002"]["status"]["conditions"][0]["status"] == "True"
    assert "canaryTrafficPercent" not in revs["iris-predictor-00002"]["spec"]

    # canary at 10 %: no new revision
    cluster.patch({"canaryTrafficPercent": 10})
    isvc = wait_for("a 10 % split", settled(cluster, [("00002", 10, True, "latest"), ("00001", 90, False, "prev")]))
    assert len(cluster.revisions()) == 2
    assert predictor(isvc)["traffic"][1]["url"] == "http://prev-iris-predictor.models.example.com"

    # promotion: the field removed
    cluster.patch({"canaryTrafficPercent": None})
    isvc = wait_for("promotion", settled(cluster, [("00002", 100, True, None)]))
    assert predictor(isvc)["latestRolledoutRevision"] == "iris-predictor-00002"
    assert predictor(isvc)["previousRolledoutRevision"] == "iris-predictor-00001"
    assert condition(isvc, "Ready")["status"] == "True"

    # quiet once settled: nothing more is written (no write storm from the emulator's own writes)
    current = isvc["metadata"]["resourceVersion"]
    wait_for("the watch to catch up", lambda: cluster.seen[-1]["metadata"]["resourceVersion"] == current)
    writes, end = len(cluster.seen), time.monotonic() + 1.0
    while time.monotonic() < end:  # an observation window: nothing may be written in it
        assert len(cluster.seen) == writes, [s["metadata"]["resourceVersion"] for s in cluster.seen[writes:]]
        time.sleep(0.05)

    # an out-of-range percent is stored by the API and fails the reconcile, traffic untouched
    cluster.patch({"canaryTrafficPercent": 150})
    isvc = wait_for("ReconcileFailed", until(cluster, lambda i: condition(i, "PredictorReady").get("reason")))
    assert condition(isvc, "Ready")["status"] == "False"
    assert "0 <= 150 <= 100" in condition(isvc, "Ready")["message"]
    assert split(isvc) == [("00002", 100, True, None)]

    # every status the emulator wrote is valid for the real CRD
    statuses = [s["status"] for s in cluster.seen if s.get("status")]
    assert len(statuses) >= 5
    for status in statuses:
        status_schema.validate(status)


def test_restart_resumes_and_delete_removes_revisions(cluster: Cluster) -> None:
    first = KServeEmulator(cluster.kubeconfig, SCENARIO, namespaces=[NS], tick_s=0.05).start()
    manifest = {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceService",
        "metadata": {"name": "wine", "namespace": NS},
        "spec": {
            "predictor": {"canaryTrafficPercent": 20, "model": {"modelFormat": {"name": "sklearn"}, "storageUri": V1}}
        },
    }
    try:
        cluster.api.create_namespaced_custom_object(G, V, NS, P, manifest)
        wait_for(
            "wine to serve",
            lambda: split(cluster.isvc("wine")) == [("00001", 20, True, "latest"), ("00001", 80, False, "prev")],
        )
    finally:
        first.stop()
    with KServeEmulator(cluster.kubeconfig, SCENARIO, namespaces=[NS], tick_s=0.05):
        cluster.patch({"model": {"storageUri": V2}}, name="wine")
        wait_for("the second wine revision", lambda: len(cluster.revisions("wine")) == 2)
        # the restarted emulator made no revision of its own, continued the numbering, kept the bookkeeping
        isvc = wait_for(
            "wine's new revision to be Ready",
            until(cluster, lambda i: predictor(i).get("latestReadyRevision", "").endswith("2"), "wine"),
        )
        assert sorted(cluster.revisions("wine")) == ["wine-predictor-00001", "wine-predictor-00002"]
        assert split(isvc) == [("00002", 20, True, "latest"), ("00001", 80, False, "prev")]
        cluster.api.delete_namespaced_custom_object(G, V, NS, P, "wine")
        wait_for("wine's revisions to be deleted", lambda: not cluster.revisions("wine"))
