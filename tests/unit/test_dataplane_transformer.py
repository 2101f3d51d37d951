"""The data plane with a transformer: two hops, each by its own split and behaviour, each with its metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canaryd.sandbox.dataplane import DataPlane
from canaryd.sandbox.routing import Address, build_table, next_hop
from canaryd.sandbox.scenario import Scenario, storage_uri_of, version_key_of

NS = "models"
TX1, TX2, BAD_TX = "example/tx:v1", "example/tx:v2", "example/tx:bad"
MODEL = "gs://models/iris/v1"


def revision(component: str, n: int, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {
            "name": f"iris-{component}-{n:05d}", "namespace": NS,
            "labels": {"serving.kserve.io/inferenceservice": "iris", "component": component,
                       "serving.knative.dev/configuration": f"iris-{component}"},
            "annotations": {"sandbox.canaryd.io/storage-uri": key},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def split(component: str, shares: dict[int, int]) -> list[dict[str, Any]]:
    return [{"revisionName": f"iris-{component}-{n:05d}", "percent": p, "latestRevision": n == max(shares)}
            for n, p in shares.items()]


def isvc(transformer: dict[int, int] | None, predictor: dict[int, int]) -> dict[str, Any]:
    spec: dict[str, Any] = {"predictor": {"model": {"storageUri": MODEL}}}
    components: dict[str, Any] = {"predictor": {"traffic": split("predictor", predictor)}}
    if transformer is not None:
        spec["transformer"] = {"containers": [{"name": "kserve-container", "image": TX2}]}
        if transformer:
            components["transformer"] = {"traffic": split("transformer", transformer)}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": NS}, "spec": spec, "status": {"components": components}}


REVISIONS = [revision("transformer", 1, TX1), revision("transformer", 2, TX2), revision("transformer", 3, BAD_TX),
             revision("predictor", 1, MODEL)]


def scenario() -> Scenario:
    def quick(ms: float, errors: float = 0.0) -> dict[str, Any]:
        return {"errorRate": errors, "latencyMs": {"base": ms, "p99": ms, "jitter": 0.0}}

    return Scenario.model_validate({"seed": 3, "versions": {TX1: quick(2), TX2: quick(3), BAD_TX: quick(1, 1.0),
                                                           MODEL: quick(4)}})


@pytest.fixture
def plane() -> Iterator[DataPlane]:
    with DataPlane(None, scenario()) as dp:
        yield dp


def predict(client: httpx.Client, plane: DataPlane, host: str = "iris.models.example.com") -> httpx.Response:
    return client.post(f"{plane.url}/v1/models/iris:predict", headers={"host": host}, json={"instances": [[1]]})


def counts(plane: DataPlane) -> dict[tuple[str, str, str], float]:
    """revision_request_count by (service_name, revision_name, response code)."""
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(plane.metrics.render_opencensus()):
        if family.name != "revision_request_count":
            continue
        for s in family.samples:  # the parser names counter samples `..._total`
            out[(s.labels["service_name"], s.labels["revision_name"], s.labels["response_code"])] = s.value
    return out


def test_version_key_is_the_storage_uri_else_the_first_image() -> None:
    assert version_key_of({"model": {"storageUri": MODEL}}) == MODEL
    assert version_key_of({"sklearn": {"storageUri": MODEL}}) == MODEL
    assert version_key_of({"containers": [{"name": "kserve-container", "image": TX1}, {"image": "x"}]}) == TX1
    assert version_key_of({"containers": []}) is None
    assert storage_uri_of is version_key_of


def test_requests_enter_through_the_transformer_then_the_predictor() -> None:
    table = build_table([isvc({1: 100}, {1: 100})], REVISIONS)
    entry = table.address(NS, "iris")
    assert entry == Address(NS, "iris", "transformer")
    assert next_hop(entry) == Address(NS, "iris", "predictor")
    assert table.address(NS, "iris-predictor") == Address(NS, "iris", "predictor")
    assert next_hop(Address(NS, "iris", "predictor")) is None
    # No transformer traffic yet (not Ready): the service exists but cannot answer (503, not 404).
    pending = build_table([isvc({}, {1: 100})], REVISIONS)
    assert pending.address(NS, "iris") == Address(NS, "iris", "transformer")


def test_two_hops_answer_with_the_sum_of_latencies_and_record_both(plane: DataPlane) -> None:
    plane.set_routes([isvc({1: 100}, {1: 100})], REVISIONS)
    with httpx.Client() as client:
        answers = [predict(client, plane) for _ in range(5)]
    assert all(a.status_code == 200 for a in answers)
    assert answers[0].json()["revisions"] == ["iris-transformer-00001", "iris-predictor-00001"]
    assert answers[0].json()["latencyMs"] == 2 + 4
    assert counts(plane) == {("iris-transformer", "iris-transformer-00001", "200"): 5,
                             ("iris-predictor", "iris-predictor-00001", "200"): 5}


def test_transformer_canary_gets_its_share_and_its_own_series(plane: DataPlane) -> None:
    plane.set_routes([isvc({1: 80, 2: 20}, {1: 100})], REVISIONS)
    with httpx.Client() as client:
        first = Counter(predict(client, plane).json()["revisions"][0] for _ in range(300))
    assert 60 - 21 <= first["iris-transformer-00002"] <= 60 + 21  # 3 sigma of binomial(300, 0.2)
    seen = counts(plane)
    assert seen[("iris-predictor", "iris-predictor-00001", "200")] == 300
    assert seen[("iris-transformer", "iris-transformer-00002", "200")] == first["iris-transformer-00002"]


def test_a_failing_transformer_fails_the_request_without_calling_the_predictor(plane: DataPlane) -> None:
    plane.set_routes([isvc({3: 100}, {1: 100})], REVISIONS)
    with httpx.Client() as client:
        answers = [predict(client, plane) for _ in range(4)]
    assert {a.status_code for a in answers} == {500}
    assert answers[0].json()["revisions"] == ["iris-transformer-00003"]
    assert counts(plane) == {("iris-transformer", "iris-transformer-00003", "500"): 4}


def test_the_predictor_host_skips_the_transformer(plane: DataPlane) -> None:
    plane.set_routes([isvc({3: 100}, {1: 100})], REVISIONS)
    with httpx.Client() as client:
        answer = predict(client, plane, "iris-predictor.models.example.com")
    assert answer.status_code == 200 and answer.json()["revisions"] == ["iris-predictor-00001"]
