"""The Kubernetes API retry policy against the real emulator over HTTP, through the real `kubernetes`
client: canaryd's adapters (StateStore, KServeAdapter, EventRecorder) meet injected 429 with Retry-After,
500/503, slow answers and 409/404, and every attempt is counted on the server side (`emulator.calls`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from canaryd.adapters.events import EventRecorder
from canaryd.adapters.kserve import KServeAdapter
from canaryd.adapters.kube import Conflict, KubeError, NotFound, RetryPolicy, make_api_client
from canaryd.adapters.statestore import StateStore
from canaryd.rollout.model import ApplySpec
from canaryd.rollout.state import GROUP, PLURAL, RolloutState, TargetRef
from canaryd.sandbox.cluster import LITE_CRD, MODELROLLOUT_CRD, real_kserve_crd
from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds
from canaryd.sandbox.kubeapi.requestinfo import ApiCall
from tests.campaigns.faults import ApiFault, ApiFaults, Match

NS = "models"
G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
#: Quick backoff so tests are fast; Retry-After is what they measure.
QUICK = RetryPolicy(attempts=4, total_s=10.0, base_s=0.02, max_wait_s=0.05, max_retry_after_s=5.0)
ANY_CLIENT = None  # Match on every User-Agent: these adapters run with the default ("cli") one


@pytest.fixture(scope="module")
def emulator() -> Iterator[KubeApiEmulator]:
    em = KubeApiEmulator(load_crds([real_kserve_crd() or LITE_CRD, MODELROLLOUT_CRD]), namespaces=["default", NS])
    em.start()
    try:
        yield em
    finally:
        em.stop()


@pytest.fixture(scope="module")
def api(emulator: KubeApiEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    kubeconfig = emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    api_client = make_api_client(str(kubeconfig), component="daemon")
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture
def faults(emulator: KubeApiEmulator) -> Iterator[ApiFaults]:
    with ApiFaults(emulator, seed=1) as f:
        yield f


def calls(emulator: KubeApiEmulator, resource: str, name: str, verb: str) -> list[ApiCall]:
    return [c for c in list(emulator.calls) if c.resource == resource and c.name == name and c.verb == verb]


def store(api: client.ApiClient, **kw: Any) -> StateStore:
    s = StateStore(api, **kw)
    s.retry = QUICK
    return s


def kserve(api: client.ApiClient, **kw: Any) -> KServeAdapter:
    k = KServeAdapter(api, **kw)
    k.retry = QUICK
    return k


def manifest(name: str, uri: str = "gs://models/iris/v1") -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "InferenceService", "metadata": {"name": name, "namespace": NS},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}}}


def create_isvc(api: client.ApiClient, name: str) -> dict[str, Any]:
    k = kserve(api)
    k.apply(ApplySpec(component="predictor", manifest=manifest(name), last_applied=None, create=True,
                      canary_percent=None))
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(G, V, NS, P, name)
    assert isinstance(obj, dict)
    return obj


# -- what is retried, and how long it waits --------------------------------------------------------------


def test_429_waits_retry_after_between_attempts(api: client.ApiClient, emulator: KubeApiEmulator,
                                                faults: ApiFaults) -> None:
    faults.add(ApiFault("throttle", Match(user_agent=ANY_CLIENT, name="throttled"), limit=2, retry_after_s=1))
    started = time.monotonic()
    assert store(api).load(NS, "throttled") is None  # 429, 429, then the real answer: 404
    elapsed = time.monotonic() - started
    seen = calls(emulator, PLURAL, "throttled", "get")
    assert [c.status for c in seen] == [429, 429, 404]
    fired = faults.fired("throttle")
    assert 2.0 <= elapsed < 3.5, elapsed  # two Retry-After waits of 1 s, no more
    assert fired[1].at - fired[0].at >= 0.95


def test_retry_after_is_capped(api: client.ApiClient, faults: ApiFaults) -> None:
    faults.add(ApiFault("throttle", Match(user_agent=ANY_CLIENT, name="patient"), limit=1, retry_after_s=600))
    s = store(api)
    s.retry = RetryPolicy(attempts=3, total_s=10.0, max_retry_after_s=0.5)
    started = time.monotonic()
    assert s.load(NS, "patient") is None
    assert 0.5 <= time.monotonic() - started < 1.5  # not ten minutes


def test_5xx_on_a_patch_is_retried_and_applied_once(api: client.ApiClient, emulator: KubeApiEmulator,
                                                    faults: ApiFaults) -> None:
    before = create_isvc(api, "flaky-patch")
    faults.add(ApiFault("error", Match(user_agent=ANY_CLIENT, name="flaky-patch", verbs=frozenset({"patch"})),
                        limit=1, status=500))
    faults.add(ApiFault("error", Match(user_agent=ANY_CLIENT, name="flaky-patch", verbs=frozenset({"patch"})),
                        limit=1, status=503))
    generation = kserve(api).set_traffic(NS, "flaky-patch", "predictor", 25)
    assert [c.status for c in calls(emulator, P, "flaky-patch", "patch")] == [500, 503, 200]
    assert generation == before["metadata"]["generation"] + 1
    live = client.CustomObjectsApi(api).get_namespaced_custom_object(G, V, NS, P, "flaky-patch")
    assert live["spec"]["predictor"]["canaryTrafficPercent"] == 25


def test_persistent_503_gives_up_within_the_bounds(api: client.ApiClient, emulator: KubeApiEmulator,
                                                   faults: ApiFaults) -> None:
    faults.add(ApiFault("error", Match(user_agent=ANY_CLIENT, name="down"), status=503))
    started = time.monotonic()
    with pytest.raises(KubeError, match=r"HTTP 503 .*gave up after 4 attempts"):
        store(api).load(NS, "down")
    assert time.monotonic() - started < QUICK.total_s
    assert [c.status for c in calls(emulator, PLURAL, "down", "get")] == [503] * 4


# -- what is never retried -----------------------------------------------------------------------------


def test_409_on_a_replace_is_not_retried(api: client.ApiClient, emulator: KubeApiEmulator,
                                         faults: ApiFaults) -> None:
    s = store(api)
    saved = s.save(RolloutState.new(TargetRef(namespace=NS, name="contested")))
    before = len(calls(emulator, PLURAL, "contested", "update"))
    faults.add(ApiFault("conflict", Match(user_agent=ANY_CLIENT, name="contested", verbs=frozenset({"update"}))))
    with pytest.raises(Conflict):
        s.save(saved)
    assert [c.status for c in calls(emulator, PLURAL, "contested", "update")][before:] == [409]


def test_404_is_not_retried(api: client.ApiClient, emulator: KubeApiEmulator) -> None:
    with pytest.raises(NotFound):
        kserve(api).set_traffic(NS, "nowhere", "predictor", 10)
    assert [c.status for c in calls(emulator, P, "nowhere", "get")] == [404]
    assert store(api).load(NS, "nowhere") is None
    assert [c.status for c in calls(emulator, PLURAL, "nowhere", "get")] == [404]


# -- slow answers and lost answers ---------------------------------------------------------------------


def test_regression_hung_api_server_cost_four_read_timeouts_per_call(api: client.ApiClient,
                                                                    emulator: KubeApiEmulator,
                                                                    faults: ApiFaults) -> None:
    """urllib3's default retries under the kubernetes client repeated a timed-out GET three more times
    before canaryd saw anything: one hung API server cost four read timeouts per call, invisibly. Now a
    read timeout surfaces at once and `call` decides (here: one attempt, one request)."""
    faults.add(ApiFault("slow", Match(user_agent=ANY_CLIENT, name="hung"), delay_s=1.5))
    s = store(api, timeout=(2.0, 0.3))
    s.retry = RetryPolicy(attempts=1)
    started = time.monotonic()
    with pytest.raises(KubeError, match=r"(?i)timed? ?out"):
        s.load(NS, "hung")
    assert time.monotonic() - started < 1.0
    arrived = [f for f in faults.fired("slow") if f.name == "hung"]
    assert len(arrived) == 1, f"{len(arrived)} requests for one call"


def test_slow_answer_past_the_timeout_is_retried(api: client.ApiClient, faults: ApiFaults) -> None:
    faults.add(ApiFault("slow", Match(user_agent=ANY_CLIENT, name="sluggish"), delay_s=1.0, limit=1))
    s = store(api, timeout=(2.0, 0.3))
    started = time.monotonic()
    assert s.load(NS, "sluggish") is None
    assert time.monotonic() - started < 1.0  # the second attempt is not slow
    assert len(faults.fired("slow")) == 1


def test_a_slow_answer_within_the_timeout_is_just_slow(api: client.ApiClient, emulator: KubeApiEmulator,
                                                       faults: ApiFaults) -> None:
    faults.add(ApiFault("slow", Match(user_agent=ANY_CLIENT, name="patient-read"), delay_s=0.3))
    assert store(api).load(NS, "patient-read") is None
    assert [c.status for c in calls(emulator, PLURAL, "patient-read", "get")] == [404]


def test_a_patch_whose_answer_was_lost_is_repeated_safely(api: client.ApiClient, emulator: KubeApiEmulator,
                                                          faults: ApiFaults) -> None:
    """The first patch is applied but its answer is lost (the client times out): the retry sends it again,
    and the service ends as asked, with one new generation (a merge patch of absolute values is idempotent)."""
    before = create_isvc(api, "lost-answer")
    faults.add(ApiFault("lost-answer", Match(user_agent=ANY_CLIENT, name="lost-answer", verbs=frozenset({"patch"})),
                        delay_s=1.0, limit=1))
    k = kserve(api, timeout=(2.0, 0.3))
    k.set_traffic(NS, "lost-answer", "predictor", 40)
    assert len(calls(emulator, P, "lost-answer", "patch")) == 2
    live = client.CustomObjectsApi(api).get_namespaced_custom_object(G, V, NS, P, "lost-answer")
    assert live["spec"]["predictor"]["canaryTrafficPercent"] == 40
    assert live["metadata"]["generation"] == before["metadata"]["generation"] + 1


def test_a_replace_whose_answer_was_lost_is_a_conflict_not_a_second_write(
        api: client.ApiClient, emulator: KubeApiEmulator, faults: ApiFaults) -> None:
    """A replace is applied but its answer is lost: the retry carries the same, now old, resourceVersion,
    so it is refused (409, a Conflict: the controller re-reads) instead of writing twice; what is stored
    is the state that was written, once."""
    s = store(api, timeout=(2.0, 0.3))
    saved = s.save(RolloutState.new(TargetRef(namespace=NS, name="held-replace")))
    before = len(calls(emulator, PLURAL, "held-replace", "update"))
    faults.add(ApiFault("lost-answer", Match(user_agent=ANY_CLIENT, name="held-replace",
                                             verbs=frozenset({"update"})), delay_s=1.0, limit=1))
    with pytest.raises(Conflict, match="gave up after 2 attempts"):
        s.save(saved.evolve(message="the write whose answer was lost"))
    assert [c.status for c in calls(emulator, PLURAL, "held-replace", "update")][before:] == [200, 409]
    loaded = s.load(NS, "held-replace")
    assert loaded is not None and loaded.status.message == "the write whose answer was lost"
    assert int(loaded.resource_version or 0) == int(saved.resource_version or 0) + 1


def test_events_get_one_quick_retry(api: client.ApiClient, emulator: KubeApiEmulator, faults: ApiFaults) -> None:
    faults.add(ApiFault("error", Match(user_agent=ANY_CLIENT, resource="events", namespace=NS), status=503, limit=1))
    rec = EventRecorder(api)
    ref = TargetRef(namespace=NS, name="evented")
    assert rec.record(ref, "StepAdvanced", "10% of traffic")
    faults.add(ApiFault("error", Match(user_agent=ANY_CLIENT, resource="events", namespace=NS), status=503))
    started = time.monotonic()
    assert not rec.record(ref, "StepAdvanced", "20% of traffic")  # best effort: logged, not raised
    assert time.monotonic() - started < 3.5
    statuses = [c.status for c in list(emulator.calls) if c.resource == "events" and c.verb == "create"]
    assert statuses == [503, 201, 503, 503]


def test_faults_match_only_their_clients(api: client.ApiClient, emulator: KubeApiEmulator, faults: ApiFaults,
                                         tmp_path: Path) -> None:
    """The daemon's User-Agent is matched by default: the harness (`cli`) is left alone."""
    faults.add(ApiFault("error", Match(name="daemon-only"), status=500))
    other = make_api_client(str(emulator.write_kubeconfig(tmp_path / "kc")), component="cli")
    try:
        assert store(other).load(NS, "daemon-only") is None
    finally:
        other.close()
    with pytest.raises(KubeError, match="HTTP 500"):
        store(api).load(NS, "daemon-only")
    assert {c.user_agent.rsplit(" ", 1)[-1] for c in calls(emulator, PLURAL, "daemon-only", "get")} == {"cli",
                                                                                                        "daemon"}
    assert GROUP in {c.group for c in calls(emulator, PLURAL, "daemon-only", "get")}


def test_hidden_retries_stay_off_when_the_rest_client_is_rebuilt(emulator: KubeApiEmulator, faults: ApiFaults,
                                                                 tmp_path: Path) -> None:
    """A REST client rebuilt from the configuration (the InferenceService cache does, for a bigger pool)
    keeps urllib3's retries narrowed to connection failures: one timed-out GET is one request."""
    from kubernetes.client import rest

    rebuilt = make_api_client(str(emulator.write_kubeconfig(tmp_path / "kc")), component="daemon")
    rebuilt.configuration.connection_pool_maxsize = 16
    rebuilt.rest_client = rest.RESTClientObject(rebuilt.configuration)
    faults.add(ApiFault("slow", Match(name="hung-rebuilt"), delay_s=1.5))
    try:
        s = store(rebuilt, timeout=(2.0, 0.3))
        s.retry = RetryPolicy(attempts=1)
        with pytest.raises(KubeError):
            s.load(NS, "hung-rebuilt")
    finally:
        rebuilt.close()
    assert len([f for f in faults.fired("slow") if f.name == "hung-rebuilt"]) == 1
