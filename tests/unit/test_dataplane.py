"""The data plane without an API server: routes installed from hand-written objects, real HTTP."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canaryd.sandbox.dataplane import LATENCY_BUCKETS_MS, DataPlane, emulate
from canaryd.sandbox.routing import Selected, Unavailable, build_table, split_host
from canaryd.sandbox.scenario import Scenario, VersionBehaviour, unit_draw

NS = "models"
OLD, NEW = "gs://models/iris/v1", "gs://models/iris/v2"


def revision(name: str, uri: str | None, ready: bool = True, isvc: str = "iris") -> dict[str, Any]:
    annotations = {"sandbox.canaryd.io/storage-uri": uri} if uri else {}
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "serving.kserve.io/inferenceservice": isvc,
                "component": "predictor",
                "serving.knative.dev/configuration": f"{isvc}-predictor",
            },
            "annotations": annotations,
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def isvc(name: str = "iris", traffic: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"predictor": {"model": {"storageUri": NEW}}},
    }
    if traffic is not None:
        obj["status"] = {"components": {"predictor": {"traffic": traffic}}}
    return obj


CANARY_TRAFFIC = [
    {"revisionName": "iris-predictor-00002", "percent": 10, "latestRevision": True, "tag": "latest"},
    {"revisionName": "iris-predictor-00001", "percent": 90, "latestRevision": False, "tag": "prev"},
]
REVISIONS = [revision("iris-predictor-00001", OLD), revision("iris-predictor-00002", NEW)]


def scenario(seed: int = 7, new_error_rate: float = 0.0, **latency: float) -> Scenario:
    fast = {"base": 0.0, "p99": 0.0, **latency}
    return Scenario.model_validate(
        {
            "seed": seed,
            "default": {"latencyMs": fast},
            "versions": {NEW: {"errorRate": new_error_rate, "latencyMs": fast}},
        }
    )


@pytest.fixture
def plane() -> Iterator[DataPlane]:
    dp = DataPlane(None, scenario()).start()
    dp.set_routes([isvc(traffic=CANARY_TRAFFIC)], REVISIONS)
    try:
        yield dp
    finally:
        dp.stop()


def predict(client: httpx.Client, dp: DataPlane, host: str) -> httpx.Response:
    return client.post(f"{dp.url}/v1/models/iris:predict", json={"instances": [[1]]}, headers={"Host": host})


# -- the pure routing table --------------------------------------------------------------------------


def test_split_follows_percents_within_tolerance() -> None:
    table = build_table([isvc(traffic=CANARY_TRAFFIC)], REVISIONS)
    address = table.address(NS, "iris")
    assert address is not None
    n = 20_000
    chosen: Counter[str] = Counter()
    for i in range(n):
        selection = table.select(address, unit_draw(3, "route", i))
        assert isinstance(selection, Selected)
        chosen[selection.revision.name] += 1
    # 3 sigma of a binomial(20000, 0.1) is ~0.0064
    assert abs(chosen["iris-predictor-00002"] / n - 0.10) < 0.0065
    assert chosen["iris-predictor-00001"] + chosen["iris-predictor-00002"] == n


def test_unready_revision_gets_no_share_and_no_ready_traffic_is_unavailable() -> None:
    revisions = [revision("iris-predictor-00001", OLD), revision("iris-predictor-00002", NEW, ready=False)]
    table = build_table([isvc(traffic=CANARY_TRAFFIC)], revisions)
    address = table.address(NS, "iris")
    assert address is not None
    picks = {table.select(address, unit_draw(1, "r", i)) for i in range(200)}
    assert {p.revision.name for p in picks if isinstance(p, Selected)} == {"iris-predictor-00001"}
    only_new = [{"revisionName": "iris-predictor-00002", "percent": 100, "latestRevision": True}]
    address = build_table([isvc(traffic=only_new)], revisions).address(NS, "iris")
    assert address is not None
    assert isinstance(build_table([isvc(traffic=only_new)], revisions).select(address, 0.5), Unavailable)


def test_tag_hosts_resolve_and_dashed_service_names_win_over_tags() -> None:
    table = build_table(
        [isvc(traffic=CANARY_TRAFFIC), isvc("prev-iris", traffic=[{"revisionName": "x", "percent": 100}])],
        REVISIONS,
    )
    assert table.address(NS, "latest-iris") == table.address(NS, "latest-iris-predictor")
    latest = table.address(NS, "latest-iris")
    assert latest is not None and latest.tag == "latest" and latest.isvc == "iris"
    shadowed = table.address(NS, "prev-iris")  # a real service called prev-iris, not the tag of iris
    assert shadowed is not None and shadowed.isvc == "prev-iris" and shadowed.tag is None
    assert table.address(NS, "canary-iris") is None
    assert split_host("Prev-Iris.models.example.com:8080", "example.com") == ("prev-iris", "models")
    assert split_host("iris.models.other.org", "example.com") is None


# -- over HTTP --------------------------------------------------------------------------------------


def test_http_split_and_tag_routing(plane: DataPlane) -> None:
    with httpx.Client() as client:
        host = "iris.models.example.com"
        revisions = Counter(predict(client, plane, host).json()["revision"] for _ in range(400))
        # 400 draws at p=0.1: 3 sigma is 18 requests
        assert 40 - 18 <= revisions["iris-predictor-00002"] <= 40 + 18
        for host, expected in [
            ("prev-iris.models.example.com", "iris-predictor-00001"),
            ("latest-iris.models.example.com", "iris-predictor-00002"),
            ("latest-iris-predictor.models.example.com", "iris-predictor-00002"),
        ]:
            assert {predict(client, plane, host).json()["revision"] for _ in range(20)} == {expected}
        path_style = client.post(f"{plane.url}/serving/models/prev-iris/v1/models/iris:predict", json={})
        assert path_style.status_code == 200 and path_style.json()["revision"] == "iris-predictor-00001"


def test_http_unknown_service_is_404_and_unserved_service_is_503(plane: DataPlane) -> None:
    plane.set_routes(
        [isvc(traffic=CANARY_TRAFFIC), isvc("fresh"), isvc("broken", traffic=CANARY_TRAFFIC[:1])],
        [revision("iris-predictor-00001", OLD), revision("iris-predictor-00002", NEW, ready=False)],
    )
    with httpx.Client() as client:
        assert predict(client, plane, "nope.models.example.com").status_code == 404
        assert predict(client, plane, "iris.elsewhere.example.com").status_code == 404
        assert predict(client, plane, "canary-iris.models.example.com").status_code == 404
        assert predict(client, plane, "fresh.models.example.com").status_code == 503  # no status yet
        assert predict(client, plane, "broken.models.example.com").status_code == 503
        assert predict(client, plane, "latest-iris.models.example.com").status_code == 503  # not ready
        assert predict(client, plane, "iris.models.example.com").json()["revision"] == "iris-predictor-00001"
        assert client.get(f"{plane.url}/healthz").json()["ok"] is True


def test_error_schedule_is_the_same_on_two_runs_and_follows_the_rate() -> None:
    only_new = [{"revisionName": "iris-predictor-00002", "percent": 100, "latestRevision": True}]

    def run(seed: int) -> list[int]:
        with DataPlane(None, scenario(seed=seed, new_error_rate=0.2)) as dp, httpx.Client() as client:
            dp.set_routes([isvc(traffic=only_new)], REVISIONS)
            return [predict(client, dp, "iris.models.example.com").status_code for _ in range(300)]

    first, second, other_seed = run(11), run(11), run(12)
    assert first == second
    assert first != other_seed
    assert set(first) == {200, 500}
    assert 0.2 - 0.07 < first.count(500) / len(first) < 0.2 + 0.07  # 3 sigma of binomial(300, 0.2)


def test_emulated_latency_is_base_with_jitter_and_a_one_percent_tail() -> None:
    behaviour = VersionBehaviour.model_validate({"latencyMs": {"base": 100, "p99": 900, "jitter": 0.2}})
    outcomes = [emulate(5, "r-00001", n, behaviour) for n in range(20_000)]
    assert outcomes == [emulate(5, "r-00001", n, behaviour) for n in range(20_000)]
    tail = [o for o in outcomes if o.latency_ms == 900]
    assert 0.0085 < len(tail) / len(outcomes) < 0.0115
    body = [o.latency_ms for o in outcomes if o.latency_ms != 900]
    assert 80 <= min(body) < 81 and 119 < max(body) <= 120
    assert all(o.status == 200 for o in outcomes)


# -- the queue-proxy metrics -------------------------------------------------------------------------


def test_metrics_text_matches_knative_opencensus_queue_proxy() -> None:
    only_new = [{"revisionName": "iris-predictor-00002", "percent": 100, "latestRevision": True}]
    # jitter 0: every request takes exactly 20 ms (p99 also 20), so the buckets are known exactly
    with DataPlane(None, scenario(new_error_rate=0.3, base=20.0, p99=20.0, jitter=0.0)) as dp:
        dp.set_routes([isvc(traffic=only_new)], REVISIONS)
        with httpx.Client() as client:
            assert client.get(f"{dp.url}/metrics").text == ""  # no samples, no families yet
            codes = Counter(predict(client, dp, "iris.models.example.com").status_code for _ in range(40))
            text = client.get(f"{dp.url}/metrics").text

    sample_names = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
    assert sample_names == {
        "revision_request_count",  # no _total: opencensus' exporter does not add it
        "revision_request_latencies_bucket",
        "revision_request_latencies_sum",
        "revision_request_latencies_count",
    }
    assert "# TYPE revision_request_count counter" in text
    assert "# TYPE revision_request_latencies histogram" in text

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"revision_request_count", "revision_request_latencies"}
    counts = {s.labels["response_code"]: s.value for s in families["revision_request_count"].samples}
    assert counts == {"200": codes[200], "500": codes[500]} and codes[500] > 0
    for s in families["revision_request_count"].samples:
        assert s.labels == {
            "namespace_name": NS,
            "service_name": "iris-predictor",
            "configuration_name": "iris-predictor",
            "revision_name": "iris-predictor-00002",
            "pod_name": "iris-predictor-00002-deployment-0",
            "container_name": "queue-proxy",
            "response_code": s.labels["response_code"],
            "response_code_class": s.labels["response_code"][0] + "xx",
            "route_tag": "DISABLED",
        }

    histogram = families["revision_request_latencies"].samples
    ok = [s for s in histogram if s.labels["response_code"] == "200"]
    buckets = [s for s in ok if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets] == [f"{b:g}" for b in LATENCY_BUCKETS_MS] + ["+Inf"]
    # opencensus counts v in the first bucket with v < bound: 20 ms lands in le=40, not le=20
    by_le = {s.labels["le"]: s.value for s in buckets}
    assert by_le["20"] == 0 and by_le["40"] == codes[200] and by_le["+Inf"] == codes[200]
    assert [s.value for s in ok if s.name.endswith("_sum")] == [20.0 * codes[200]]
    assert [s.value for s in ok if s.name.endswith("_count")] == [codes[200]]
