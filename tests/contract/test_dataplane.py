"""The data plane against the API emulator: routes come from objects written with the kubernetes client.

The InferenceService status and the Revisions are hand-written here in the shape the KServe controller
emulator writes them (the sandbox contract), so this checks the data plane's side of that contract alone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config

from canaryd.sandbox.dataplane import DataPlane
from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds
from canaryd.sandbox.scenario import Scenario

NS = "models"
PACKAGE = Path(__file__).resolve().parents[2] / "canaryd" / "sandbox"
REVISION_CRD = PACKAGE / "crds" / "knative-revision.yaml"
REAL_ISVC_CRD = PACKAGE.parents[1].parent / "shared" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
OLD, NEW = "gs://models/iris/v1", "gs://models/iris/v2"
R1, R2 = "iris-predictor-00001", "iris-predictor-00002"

MINIMAL_ISVC_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: inferenceservices.serving.kserve.io}
spec:
  group: serving.kserve.io
  scope: Namespaced
  names: {kind: InferenceService, listKind: InferenceServiceList, plural: inferenceservices,
          singular: inferenceservice, shortNames: [isvc]}
  versions:
    - name: v1beta1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


@dataclass
class Cluster:
    emulator: Any
    kubeconfig: Path
    api: Any  # kubernetes.client.CustomObjectsApi


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    isvc_crd = REAL_ISVC_CRD
    if not isvc_crd.exists():
        isvc_crd = tmp_path / "isvc-crd.yaml"
        isvc_crd.write_text(MINIMAL_ISVC_CRD)
    emulator = KubeApiEmulator(load_crds([isvc_crd, REVISION_CRD]), namespaces=[NS, "other"]).start()
    kubeconfig = tmp_path / "kubeconfig"
    emulator.write_kubeconfig(kubeconfig)
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Cluster(emulator, kubeconfig, client.CustomObjectsApi(api_client))
    finally:
        api_client.close()
        emulator.stop()


def write_status(api: Any, group: str, version: str, plural: str, name: str, status: dict[str, Any]) -> None:
    obj = api.get_namespaced_custom_object(group, version, NS, plural, name)
    obj["status"] = status
    api.replace_namespaced_custom_object_status(group, version, NS, plural, name, obj)


def put_revision(api: Any, name: str, uri: str, ready: bool = True) -> None:
    body = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": name,
            "labels": {
                "serving.kserve.io/inferenceservice": "iris",
                "component": "predictor",
                "serving.knative.dev/configuration": "iris-predictor",
            },
            "annotations": {"sandbox.canaryd.io/storage-uri": uri},
        },
        "spec": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}},
    }
    try:
        api.create_namespaced_custom_object("serving.knative.dev", "v1", NS, "revisions", body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    condition = {"type": "Ready", "status": "True" if ready else "False", "reason": "" if ready else "Stuck"}
    write_status(api, "serving.knative.dev", "v1", "revisions", name, {"conditions": [condition]})


def put_traffic(api: Any, traffic: list[dict[str, Any]]) -> None:
    predictor = {
        "latestCreatedRevision": traffic[0]["revisionName"],
        "latestReadyRevision": traffic[0]["revisionName"],
        "url": f"http://iris-predictor.{NS}.example.com",
        "traffic": traffic,
    }
    status = {"url": f"http://iris.{NS}.example.com", "components": {"predictor": predictor}}
    write_status(api, "serving.kserve.io", "v1beta1", "inferenceservices", "iris", status)


def create_isvc(api: Any) -> None:
    body = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": NEW}}},
    }
    api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "inferenceservices", body)


def predict(http: httpx.Client, dp: DataPlane, host_label: str) -> httpx.Response:
    headers = {"Host": f"{host_label}.{NS}.example.com"}
    return http.post(f"{dp.url}/v1/models/iris:predict", json={"instances": [[1]]}, headers=headers)


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.02)


FAST = Scenario.model_validate({"seed": 3, "default": {"latencyMs": {"base": 1, "p99": 1}}})
CANARY = [
    {"revisionName": R2, "percent": 20, "latestRevision": True, "tag": "latest"},
    {"revisionName": R1, "percent": 80, "latestRevision": False, "tag": "prev"},
]


def test_routes_follow_the_status_written_through_the_api(cluster: Cluster) -> None:
    api = cluster.api
    put_revision(api, R1, OLD)
    create_isvc(api)
    with DataPlane(cluster.kubeconfig, FAST, namespaces=[NS], refresh_s=0.1) as dp, httpx.Client() as http:
        assert predict(http, dp, "iris").status_code == 503  # exists, no traffic yet
        assert predict(http, dp, "nope").status_code == 404
        put_traffic(api, [{"revisionName": R1, "percent": 100, "latestRevision": True}])
        poll(lambda: predict(http, dp, "iris").status_code == 200)
        assert predict(http, dp, "iris").json()["revision"] == R1

        put_revision(api, R2, NEW)
        put_traffic(api, CANARY)
        poll(lambda: predict(http, dp, "latest-iris").status_code == 200)
        counts = Counter(predict(http, dp, "iris").json()["revision"] for _ in range(300))
        assert 60 - 21 <= counts[R2] <= 60 + 21  # 3 sigma of binomial(300, 0.2)
        assert predict(http, dp, "prev-iris").json()["revision"] == R1

        put_revision(api, R2, NEW, ready=False)  # a revision that stops being Ready gets nothing
        poll(lambda: predict(http, dp, "latest-iris").status_code == 503)
        assert {predict(http, dp, "iris").json()["revision"] for _ in range(30)} == {R1}

        put_revision(api, R2, NEW)
        put_traffic(api, [{"revisionName": R2, "percent": 100, "latestRevision": True}])
        poll(lambda: all(predict(http, dp, "iris").json()["revision"] == R2 for _ in range(20)))
        metrics = http.get(f"{dp.url}/metrics").text
        assert f'revision_name="{R1}"' in metrics and f'revision_name="{R2}"' in metrics


def test_an_api_outage_keeps_the_last_routes(cluster: Cluster) -> None:
    put_revision(cluster.api, R1, OLD)
    create_isvc(cluster.api)
    put_traffic(cluster.api, [{"revisionName": R1, "percent": 100, "latestRevision": True}])
    # all namespaces: the cluster-wide list
    with DataPlane(cluster.kubeconfig, FAST, refresh_s=0.1) as dp, httpx.Client() as http:
        poll(lambda: predict(http, dp, "iris").status_code == 200)
        cluster.emulator.stop()
        assert dp.refresh() is False
        assert [predict(http, dp, "iris").status_code for _ in range(10)] == [200] * 10
