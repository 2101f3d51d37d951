"""KFServing v1alpha2 over real HTTP: the API emulator with the KFServing CRD (the real v0.4.1 one, and the
sandbox's lite one) and its webhook's rules, the emulated controller, canaryd's adapter and the data plane.

Everything goes through the `kubernetes` client, as against a real cluster. Every write canaryd makes is
judged by the emulator against the CRD schema and the webhook; what ends up stored is checked once more
with the CRD's own schema (jsonschema), as an independent second opinion.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from kubernetes import client

from canaryd.adapters.kserve import KServeAdapter
from canaryd.adapters.kube import Invalid, make_api_client
from canaryd.apply import V1ALPHA2
from canaryd.rollout.model import ApplySpec
from canaryd.sandbox.dataplane import DataPlane
from canaryd.sandbox.kserve import KServeEmulator
from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds
from canaryd.sandbox.kubeapi.kfserving import TRAFFIC_BOUNDS_EXCEEDED, TRAFFIC_WITHOUT_CANARY, install_kfserving_webhook
from canaryd.sandbox.scenario import LatencyModel, Scenario, VersionBehaviour
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = ROOT / "canaryd" / "sandbox"
REAL_CRD = ROOT.parent / "shared" / "kfserving" / "serving.kubeflow.org_inferenceservices.yaml"
LITE_CRD = SANDBOX / "crds" / "kfserving-lite.yaml"
KSERVE_LITE_CRD = SANDBOX / "crds" / "inferenceservice-lite.yaml"
REVISION_CRD = SANDBOX / "crds" / "knative-revision.yaml"
G, V, P, NS = "serving.kubeflow.org", "v1alpha2", "inferenceservices", "models"
V1, V2, BAD = "gs://models/iris/v1", "gs://models/iris/v2", "gs://models/iris/bad"
INSTANT = LatencyModel(base=0, p99=0, jitter=0)
SCENARIO = Scenario(
    default=VersionBehaviour(ready_after_s=0.2, latency_ms=INSTANT),
    versions={V2: VersionBehaviour(ready_after_s=0.5, latency_ms=INSTANT),
              BAD: VersionBehaviour(ready_after_s=0.2, never_ready=True)},
)


@dataclass
class Cluster:
    emulator: KubeApiEmulator
    kubeconfig: Path
    api: client.CustomObjectsApi
    adapter: KServeAdapter
    schema: jsonschema.protocols.Validator
    dataplane: DataPlane

    def isvc(self, name: str) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(G, V, NS, P, name))

    def revisions(self, name: str) -> dict[str, dict[str, Any]]:
        items = self.api.list_namespaced_custom_object(
            "serving.knative.dev", "v1", NS, "revisions", label_selector=f"serving.kubeflow.org/inferenceservice={name}"
        )["items"]
        return {i["metadata"]["name"]: i for i in items}

    def stored(self, name: str) -> dict[str, Any]:
        """The object, after checking it against the CRD's schema independently of the emulator."""
        obj = self.isvc(name)
        self.schema.validate(obj)
        return obj


@pytest.fixture(scope="module", params=["real", "lite"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    crd = REAL_CRD if request.param == "real" else LITE_CRD
    if not crd.exists():
        pytest.skip(f"the KFServing CRD is not at {crd}")
    emulator = KubeApiEmulator(load_crds([crd, KSERVE_LITE_CRD, REVISION_CRD]), namespaces=["default", NS])
    assert install_kfserving_webhook(emulator)
    emulator.start()
    kubeconfig = emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    api_client = make_api_client(str(kubeconfig))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = next(d for d in yaml.load_all(crd.read_text(), Loader=loader) if d)
    schema = jsonschema.Draft4Validator(doc["spec"]["validation"]["openAPIV3Schema"])
    kserve = KServeEmulator(kubeconfig, SCENARIO, namespaces=[NS], tick_s=0.05).start()
    dataplane = DataPlane(kubeconfig, SCENARIO, namespaces=[NS], refresh_s=0.05).start()
    try:
        yield Cluster(emulator, kubeconfig, client.CustomObjectsApi(api_client), KServeAdapter(api_client),
                      schema, dataplane)
    finally:
        dataplane.stop()
        kserve.stop()
        api_client.close()
        emulator.stop()


def manifest(name: str, uri: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": V1ALPHA2, "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS, "labels": dict(labels), "annotations": {}},
        "spec": {"default": {"predictor": {"sklearn": {"storageUri": uri}}}},
    }


def condition(obj: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def served_by(cluster: Cluster, name: str, n: int = 200) -> Counter[str]:
    """Which revisions answer `n` real requests to the service's host."""
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=cluster.dataplane.url, timeout=5) as http:
        for _ in range(n):
            resp = http.post(f"/v1/models/{name}:predict", headers={"Host": f"{name}.{NS}.example.com"}, json={})
            seen[resp.json().get("revision", f"HTTP {resp.status_code}")] += 1
    return seen


def serving_v1(cluster: Cluster, name: str) -> None:
    cluster.adapter.apply(ApplySpec(manifest(name, V1, team="a"), None, "predictor", None, create=True))
    wait_for("the default predictor Ready", lambda: condition(cluster.isvc(name), "Ready") == "True")


def canary_ready(cluster: Cluster, name: str, uri: str = V2) -> None:
    cluster.adapter.apply(ApplySpec(manifest(name, uri, team="a"), manifest(name, V1, team="a"), "predictor", 0))
    wait_for("the canary Ready", lambda: condition(cluster.isvc(name), "CanaryPredictorReady") == "True")


# -- the API: schema and webhook -----------------------------------------------------------------------------


def test_the_webhook_and_the_schema_refuse_what_kfserving_refused(cluster: Cluster) -> None:
    serving_v1(cluster, "guarded")
    before = cluster.isvc("guarded")
    bad = [
        ({"spec": {"canaryTrafficPercent": 10}}, TRAFFIC_WITHOUT_CANARY),
        ({"spec": {"canary": manifest("x", V2)["spec"]["default"], "canaryTrafficPercent": 150}},
         TRAFFIC_BOUNDS_EXCEEDED),
        ({"spec": {"canary": manifest("x", V2)["spec"]["default"], "canaryTrafficPercent": -1}},
         TRAFFIC_BOUNDS_EXCEEDED),
        ({"spec": {"canaryTrafficPercent": "10"}}, "spec.canaryTrafficPercent"),  # the CRD's type
        ({"spec": {"default": {"predictor": {"sklearn": {"storageUri": None, "runtimeVersion": "1"}}}}},
         "storageUri"),  # required by the CRD
    ]
    for patch, message in bad:
        with pytest.raises(client.exceptions.ApiException) as caught:
            cluster.api.patch_namespaced_custom_object(G, V, NS, P, "guarded", patch)
        assert caught.value.status == 422 and message in str(caught.value.body), patch
    assert cluster.isvc("guarded")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # canaryd's own writes never trip it; a bad percent is refused before any request
    with pytest.raises(ValueError, match=r"0\.\.100"):
        cluster.adapter.set_traffic(NS, "guarded", "predictor", 101, api_version=V1ALPHA2)
    with pytest.raises(Invalid, match="Canary must be specified"):
        cluster.adapter.set_traffic(NS, "guarded", "predictor", 5, api_version=V1ALPHA2)  # no canary yet


# -- the emulated controller and canaryd's adapter -------------------------------------------------------------


def test_a_canary_is_split_promoted_without_a_dip_and_its_revisions_go(cluster: Cluster) -> None:
    serving_v1(cluster, "iris")
    canary_ready(cluster, "iris")
    cluster.adapter.set_traffic(NS, "iris", "predictor", 30, api_version=V1ALPHA2)
    obj = wait_for("the 70/30 split", lambda: (o := cluster.stored("iris"))["status"].get("canaryTraffic") == 30 and o)
    assert obj["status"]["traffic"] == 70
    live = cluster.adapter.read(NS, "iris", V1ALPHA2)
    assert live is not None and live.canary_percent == 30
    comp = live.component("predictor")
    assert comp.latest_created == comp.latest_ready == "iris-predictor-canary-00001"
    assert comp.latest_rolledout == "iris-predictor-default-00001"
    wait_for("the data plane routes by the status",
             lambda: len(cluster.dataplane.table.routes[(NS, "iris", "predictor")].targets) == 2)
    seen = served_by(cluster, "iris")
    assert set(seen) == {"iris-predictor-default-00001", "iris-predictor-canary-00001"}
    assert 30 <= seen["iris-predictor-canary-00001"] <= 90  # ~60 of 200

    revisions = cluster.revisions("iris")
    canary = revisions["iris-predictor-canary-00001"]["metadata"]
    assert canary["labels"]["endpoint"] == "canary"
    assert canary["annotations"]["sandbox.canaryd.io/storage-uri"] == V2

    shares: list[int] = []  # the new version's share, as the status shows it, after every promote call

    def promoted() -> bool:
        cluster.adapter.promote(NS, "iris", "predictor", api_version=V1ALPHA2)
        st = cluster.stored("iris")
        new = st["status"].get("canaryTraffic", 0)  # the canary runs V2; so does the default once renamed
        if st["status"].get("default", {}).get("predictor", {}).get("name") != "iris-predictor-default-00001":
            new += st["status"].get("traffic", 0)
        shares.append(new)
        return "canary" not in st["spec"] and st["status"].get("traffic") == 100 and not st["status"].get("canary")

    wait_for("the promotion", promoted)
    assert shares == sorted(shares) and shares[-1] == 100, shares
    final = cluster.stored("iris")
    assert final["spec"]["default"]["predictor"]["sklearn"]["storageUri"] == V2
    assert "canaryTrafficPercent" not in final["spec"]
    assert final["status"]["default"]["predictor"]["name"] == "iris-predictor-default-00002"
    wait_for("the canary's revisions gone", lambda: "iris-predictor-canary-00001" not in cluster.revisions("iris"))
    wait_for("all traffic on the promoted revision",
             lambda: served_by(cluster, "iris", 50) == Counter({"iris-predictor-default-00002": 50}))


def test_rollback_drops_the_canary_and_all_traffic_returns_to_the_default(cluster: Cluster) -> None:
    serving_v1(cluster, "errs")
    canary_ready(cluster, "errs")
    cluster.adapter.set_traffic(NS, "errs", "predictor", 10, api_version=V1ALPHA2)
    wait_for("10 %", lambda: cluster.isvc("errs")["status"].get("canaryTraffic") == 10)
    cluster.adapter.rollback(NS, "errs", "predictor", api_version=V1ALPHA2)
    obj = wait_for("the canary gone", lambda: not (o := cluster.stored("errs"))["status"].get("canary") and o)
    assert "canary" not in obj["spec"] and "canaryTrafficPercent" not in obj["spec"]
    assert obj["status"]["traffic"] == 100 and "canaryTraffic" not in obj["status"]
    assert obj["spec"]["default"]["predictor"]["sklearn"]["storageUri"] == V1
    live = cluster.adapter.read(NS, "errs", V1ALPHA2)
    assert live is not None and live.canary_percent is None
    assert live.component("predictor").percent_of("errs-predictor-canary-00001") == 0
    wait_for("the canary's revisions gone", lambda: set(cluster.revisions("errs")) == {"errs-predictor-default-00001"})


def test_a_canary_that_never_gets_ready_never_gets_traffic(cluster: Cluster) -> None:
    serving_v1(cluster, "broken")
    cluster.adapter.apply(ApplySpec(manifest("broken", BAD, team="a"), manifest("broken", V1, team="a"),
                                    "predictor", 0))
    obj = wait_for("the canary failed", lambda: condition(o := cluster.stored("broken"), "CanaryPredictorReady")
                   == "False" and o)
    live = cluster.adapter.read(NS, "broken", V1ALPHA2)
    assert live is not None
    comp = live.component("predictor")
    assert comp.latest_created == "broken-predictor-canary-00001" != comp.latest_ready
    assert "does not have any ready Revision" in live.conditions["LatestDeploymentReady"].message
    assert obj["status"]["traffic"] == 100
    assert set(served_by(cluster, "broken", 30)) == {"broken-predictor-default-00001"}


# -- without the KFServing CRD ---------------------------------------------------------------------------------


def test_without_the_kfserving_crd_the_sandbox_parts_carry_on_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = KubeApiEmulator(load_crds([KSERVE_LITE_CRD, REVISION_CRD]), namespaces=[NS])
    assert not install_kfserving_webhook(emulator)
    emulator.start()
    caplog.set_level(logging.INFO)
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    kserve = KServeEmulator(kubeconfig, SCENARIO, namespaces=[NS], tick_s=0.05).start()
    dataplane = DataPlane(kubeconfig, SCENARIO, namespaces=[NS], refresh_s=0.05).start()
    try:
        api = client.CustomObjectsApi(make_api_client(str(kubeconfig)))
        api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "inferenceservices", {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "plain"},
            "spec": {"predictor": {"model": {"storageUri": V1}}}})
        wait_for("the v1beta1 service served", lambda: (NS, "plain", "predictor") in dataplane.table.routes
                 and dataplane.table.routes[(NS, "plain", "predictor")].targets)
        assert dataplane.refresh()
    finally:
        dataplane.stop()
        kserve.stop()
        emulator.stop()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("canaryd.sandbox")]
    assert noisy == []
