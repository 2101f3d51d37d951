"""KFServing v1alpha2, pure parts: the emulated controller, its webhook, canaryd's strategy, and routing.

The last test runs canaryd's promotion against the emulated controller step by step, for several model
start-up times, and checks the property the promotion exists for: the new version's share of the traffic
never drops on the way to 100 %.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from canaryd.adapters.kserve import V1Alpha2, strategy_for
from canaryd.apply import V1ALPHA2, apply_merge_patch, subset_matches
from canaryd.sandbox.kserve_logic import (
    Outcome,
    RevisionRecord,
    parse_revision,
    reconcile_v1alpha2,
    revision_object,
    revision_status,
)
from canaryd.sandbox.kubeapi.kfserving import TRAFFIC_BOUNDS_EXCEEDED, TRAFFIC_WITHOUT_CANARY, validate_v1alpha2
from canaryd.sandbox.routing import RoutingTable, Selected, build_table
from canaryd.sandbox.scenario import Scenario, VersionBehaviour

T0 = datetime(2030, 1, 1, tzinfo=UTC)
V1, V2, V3, BAD = (f"gs://m/iris/{v}" for v in ("v1", "v2", "v3", "bad"))
SCENARIO = Scenario(
    default=VersionBehaviour(ready_after_s=1),
    versions={BAD: VersionBehaviour(ready_after_s=2, never_ready=True), V3: VersionBehaviour(ready_after_s=5)},
)
ROOT = Path(__file__).resolve().parents[2]
CRDS = [ROOT.parent / "shared" / "kfserving" / "serving.kubeflow.org_inferenceservices.yaml",
        ROOT / "canaryd" / "sandbox" / "crds" / "kfserving-lite.yaml"]


def _schemas() -> list[jsonschema.protocols.Validator]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = []
    for path in CRDS:
        if path.exists():
            crd = next(d for d in yaml.load_all(path.read_text(), Loader=loader) if d)
            out.append(jsonschema.Draft4Validator(crd["spec"]["validation"]["openAPIV3Schema"]))
    return out


SCHEMAS = _schemas()


def endpoint(uri: str) -> dict[str, Any]:
    return {"predictor": {"sklearn": {"storageUri": uri}}}


def manifest(uri: str, **meta: Any) -> dict[str, Any]:
    """A desired manifest as Git has it (canaryd's normalised form)."""
    return {
        "apiVersion": V1ALPHA2, "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": "models", "labels": {}, "annotations": {}, **meta},
        "spec": {"default": endpoint(uri)},
    }


@dataclass
class World:
    """One v1alpha2 InferenceService in an API, advanced by applying each reconcile's outcome."""

    isvc: dict[str, Any] = field(default_factory=lambda: {
        "apiVersion": V1ALPHA2, "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": "models", "uid": "u-1", "generation": 1},
        "spec": {"default": endpoint(V1)},
    })
    revisions: list[RevisionRecord] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    now: float = 0.0
    scenario: Scenario = field(default_factory=lambda: SCENARIO)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.isvc.get("status") or {})

    def write(self, patch: dict[str, Any] | None) -> None:
        """A client's merge patch, judged like the API server and the webhook judge it."""
        if not patch:
            return
        new = apply_merge_patch(self.isvc, patch)
        assert not validate_v1alpha2(new, self.isvc), patch
        for schema in SCHEMAS:
            schema.validate({k: v for k, v in new.items() if k != "status"})
        if new["spec"] != self.isvc["spec"]:
            new["metadata"]["generation"] += 1
        self.isvc = new

    def at(self, seconds: float) -> Outcome:
        self.now = seconds
        now = T0 + timedelta(seconds=seconds)
        outcome = reconcile_v1alpha2(self.isvc, self.revisions, self.scenario.behaviour, now)
        by_name = {r.name: r for r in outcome.readiness}
        gone = {r.name for r in outcome.delete}
        self.revisions = [by_name.get(r.name, r) for r in self.revisions if r.name not in gone]
        self.revisions += list(outcome.create)
        self.deleted += sorted(gone)
        self.isvc["status"] = outcome.status
        for schema in SCHEMAS:
            schema.validate(self.isvc)
        again = reconcile_v1alpha2(self.isvc, self.revisions, self.scenario.behaviour, now)
        assert again.status == outcome.status and not again.create and not again.readiness and not again.delete
        return outcome

    def condition(self, kind: str) -> str | None:
        return next((c["status"] for c in self.status.get("conditions") or [] if c["type"] == kind), None)

    def entry(self, where: str) -> dict[str, Any]:
        return dict((self.status.get(where) or {}).get("predictor") or {})

    def table(self) -> RoutingTable:
        objs = [{**revision_object(self.isvc, r), "status": revision_status(r, T0)} for r in self.revisions]
        return build_table([self.isvc], objs)

    def routes(self) -> dict[str, int]:
        """Where requests go, from the API objects, as the sandbox data plane routes them."""
        route = self.table().routes[("models", "iris", "predictor")]
        return {t.revision: t.percent for t in route.targets if t.percent > 0}

    def share_of(self, uri: str) -> int:
        uris = {r.name: r.storage_uri for r in self.revisions}
        return sum(p for name, p in self.routes().items() if uris[name] == uri)


def serving_v1(scenario: Scenario = SCENARIO) -> World:
    world = World(scenario=scenario)
    world.at(0)
    world.at(1)
    return world


# -- the emulated KFServing controller --------------------------------------------------------------


def test_a_new_service_gets_a_default_revision_and_routes_once_it_is_ready() -> None:
    world = World()
    world.at(0)
    assert world.entry("default") == {"name": "iris-predictor-default-00001"}  # no host until Ready
    assert world.condition("DefaultPredictorReady") == "Unknown"
    assert world.condition("RoutesReady") == "False" and "traffic" not in world.status
    world.at(1)
    assert world.entry("default") == {"name": "iris-predictor-default-00001",
                                      "host": "iris-predictor-default.models.example.com"}
    assert world.status["traffic"] == 100 and "canaryTraffic" not in world.status
    assert world.status["url"] == "http://iris.models.example.com/v1/models/iris"
    assert world.condition("Ready") == "True" and world.condition("CanaryPredictorReady") is None
    assert world.status["canary"] == {}  # KFServing writes an empty map when there is no canary
    assert "observedGeneration" not in world.status  # KFServing 0.4 never wrote it
    assert world.routes() == {"iris-predictor-default-00001": 100}


def test_a_canary_gets_its_own_revision_and_the_routes_wait_until_it_is_ready() -> None:
    world = serving_v1()
    world.write({"spec": {"canary": endpoint(V2), "canaryTrafficPercent": 0}})
    world.at(2)
    assert world.entry("canary") == {"name": "iris-predictor-canary-00001"}
    assert world.condition("CanaryPredictorReady") == "Unknown"
    # KFServing cannot build the VirtualService without the canary's host: the old one stays in force.
    assert world.condition("RoutesReady") == "False" and world.status["traffic"] == 100
    assert world.condition("Ready") == "False"
    assert world.routes() == {"iris-predictor-default-00001": 100}
    world.at(3)
    assert world.condition("CanaryPredictorReady") == "True" and world.condition("Ready") == "True"
    assert world.status["traffic"] == 100 and "canaryTraffic" not in world.status
    world.write({"spec": {"canaryTrafficPercent": 30}})
    world.at(3.1)
    assert (world.status["traffic"], world.status["canaryTraffic"]) == (70, 30)
    assert world.routes() == {"iris-predictor-default-00001": 70, "iris-predictor-canary-00001": 30}


def test_dropping_the_canary_deletes_its_revisions_and_a_new_canary_starts_at_00001() -> None:
    world = serving_v1()
    world.write({"spec": {"canary": endpoint(V2), "canaryTrafficPercent": 20}})
    world.at(2)
    world.at(3)
    assert world.status["canaryTraffic"] == 20
    world.write({"spec": {"canary": None, "canaryTrafficPercent": None}})
    world.at(4)
    assert world.deleted == ["iris-predictor-canary-00001"]
    assert world.status["canary"] == {} and "canaryTraffic" not in world.status
    assert world.status["traffic"] == 100 and world.condition("CanaryPredictorReady") is None
    world.write({"spec": {"canary": endpoint(V3), "canaryTrafficPercent": 0}})
    world.at(5)
    assert world.entry("canary")["name"] == "iris-predictor-canary-00001"  # a new Knative Service
    assert {r.storage_uri for r in world.revisions if r.endpoint == "canary"} == {V3}


def test_a_canary_that_never_gets_ready_says_why_and_never_gets_traffic() -> None:
    world = serving_v1()
    world.write({"spec": {"canary": endpoint(BAD), "canaryTrafficPercent": 0}})
    world.at(2)
    world.at(10)
    cond = next(c for c in world.status["conditions"] if c["type"] == "CanaryPredictorReady")
    assert cond["status"] == "False" and cond["reason"] == "RevisionMissing"  # as `kubectl get ksvc` says
    assert "does not have any ready Revision" in cond["message"]
    assert cond.get("severity") == "Info"  # the canary never makes the service unready by itself...
    assert world.condition("RoutesReady") == "False"  # ...but KFServing cannot route it
    assert world.routes() == {"iris-predictor-default-00001": 100}


def test_revision_objects_carry_kfservings_labels_and_read_back() -> None:
    world = serving_v1()
    world.write({"spec": {"canary": endpoint(V2)}})
    world.at(2)
    canary = next(r for r in world.revisions if r.endpoint == "canary")
    obj = revision_object(world.isvc, canary)
    labels = obj["metadata"]["labels"]
    assert labels == {
        "serving.kubeflow.org/inferenceservice": "iris", "component": "predictor", "endpoint": "canary",
        "serving.knative.dev/configuration": "iris-predictor-canary",
        "serving.knative.dev/service": "iris-predictor-canary",
    }
    assert obj["metadata"]["annotations"]["sandbox.canaryd.io/storage-uri"] == V2
    assert obj["metadata"]["ownerReferences"][0]["apiVersion"] == V1ALPHA2
    back = parse_revision({**obj, "status": revision_status(canary, T0)})
    assert back is not None and back.endpoint == "canary" and back.number == 1 and back.storage_uri == V2


# -- the KFServing webhook -----------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "error"), [
    ({"default": endpoint(V1), "canaryTrafficPercent": 10}, TRAFFIC_WITHOUT_CANARY),
    ({"default": endpoint(V1), "canary": endpoint(V2), "canaryTrafficPercent": 101}, TRAFFIC_BOUNDS_EXCEEDED),
    ({"default": endpoint(V1), "canary": endpoint(V2), "canaryTrafficPercent": -1}, TRAFFIC_BOUNDS_EXCEEDED),
    ({"default": endpoint(V1), "canaryTrafficPercent": -1}, TRAFFIC_WITHOUT_CANARY),  # KFServing's order
    ({"default": endpoint(V1), "canary": endpoint(V2), "canaryTrafficPercent": 100}, None),
    ({"default": endpoint(V1), "canaryTrafficPercent": 0}, None),
    ({"default": endpoint(V1)}, None),
])
def test_the_webhook_denies_what_kfserving_denied(spec: dict[str, Any], error: str | None) -> None:
    errors = validate_v1alpha2({"spec": spec}, None)
    assert [e.detail for e in errors] == ([error] if error else [])
    if errors:
        assert errors[0].field == "spec.canaryTrafficPercent"
    # a status write does not reach the webhook, even on an object stored before the webhook existed
    assert validate_v1alpha2({"spec": spec, "status": {"traffic": 1}}, {"spec": copy.deepcopy(spec)}) == []


# -- canaryd's strategy: what the engine sees ------------------------------------------------------------


def test_the_engine_sees_the_canary_as_the_new_revision_of_the_desired_spec() -> None:
    api = V1Alpha2()
    world = serving_v1()
    live = api.parse(world.isvc, "predictor")
    comp = live.component("predictor")
    assert live.canary_percent is None and live.deployment_mode is None and not live.raw_deployment
    assert comp.latest_created == comp.latest_ready == comp.latest_rolledout == "iris-predictor-default-00001"
    assert comp.percent_of("iris-predictor-default-00001") == 100
    assert subset_matches(manifest(V1), live.manifest)

    world.write(api.apply_patch(manifest(V1), manifest(V2), "predictor", 0, world.isvc))
    live = api.parse(world.isvc, "predictor")
    assert live.canary_percent == 0 and subset_matches(manifest(V2), live.manifest)
    assert "canary" not in live.manifest["spec"]
    # KFServing has not seen the canary yet: nothing new, the baseline is still the default's revision
    assert live.component("predictor").latest_created == "iris-predictor-default-00001"
    world.at(2)
    comp = api.parse(world.isvc, "predictor").component("predictor")
    assert comp.latest_created == "iris-predictor-canary-00001"
    assert comp.latest_ready == "iris-predictor-default-00001"  # the canary is not Ready yet
    assert api.parse(world.isvc, "predictor").conditions["LatestDeploymentReady"].status == "Unknown"
    world.at(3)
    world.write(api.traffic_patch("predictor", 10))
    world.at(3.1)
    live = api.parse(world.isvc, "predictor")
    comp = live.component("predictor")
    assert live.canary_percent == 10
    assert comp.latest_created == comp.latest_ready == "iris-predictor-canary-00001"
    assert comp.latest_rolledout == "iris-predictor-default-00001"
    assert (comp.percent_of("iris-predictor-canary-00001"), comp.percent_of("iris-predictor-default-00001")) == (10, 90)

    world.write(api.rollback_patch("predictor"))
    live = api.parse(world.isvc, "predictor")
    assert live.canary_percent is None and live.component("predictor").percent_of("iris-predictor-canary-00001") == 10
    world.at(4)  # only once KFServing has caught up is the canary's traffic gone
    live = api.parse(world.isvc, "predictor")
    assert live.component("predictor").percent_of("iris-predictor-canary-00001") == 0
    assert live.component("predictor").percent_of("iris-predictor-default-00001") == 100
    assert "canary" not in world.isvc["spec"] and subset_matches(manifest(V1), live.manifest)


def test_a_canary_of_another_version_loses_its_traffic_before_its_spec_changes() -> None:
    api = V1Alpha2()
    world = serving_v1()
    world.write(api.apply_patch(manifest(V1), manifest(V2), "predictor", 0, world.isvc))
    world.at(2)
    world.at(3)
    world.write(api.traffic_patch("predictor", 40))
    world.at(3.1)
    # A newer commit: swapping spec.canary now would leave the V2 canary its 40 % until V3 is Ready.
    first = api.apply_patch(manifest(V2), manifest(V3), "predictor", 0, world.isvc)
    assert first == {"spec": {"canaryTrafficPercent": 0}}
    world.write(first)
    assert api.apply_patch(manifest(V2), manifest(V3), "predictor", 0, world.isvc) is None  # routes not yet
    world.at(3.2)
    assert world.share_of(V2) == 0
    world.write(api.apply_patch(manifest(V2), manifest(V3), "predictor", 0, world.isvc))
    assert world.isvc["spec"]["canary"] == endpoint(V3) and world.isvc["spec"]["canaryTrafficPercent"] == 0
    world.at(4)
    assert world.entry("canary")["name"] == "iris-predictor-canary-00002"
    assert world.share_of(V3) == 0 and world.share_of(V2) == 0


def test_apply_replaces_the_canary_whole_and_patches_metadata_from_the_last_applied() -> None:
    api = V1Alpha2()
    world = serving_v1()
    world.isvc["spec"]["canary"] = {"predictor": {"sklearn": {"storageUri": V2, "runtimeVersion": "0.1"},
                                                  "minReplicas": 2}}
    last = manifest(V2, labels={"team": "a", "old": "x"})
    patch = api.apply_patch(last, manifest(V3, labels={"team": "b"}), "predictor", 0, world.isvc)
    assert patch == {
        "metadata": {"labels": {"team": "b", "old": None}, "annotations": {}},
        "spec": {"canary": {"predictor": {"sklearn": {"storageUri": V3, "runtimeVersion": None},
                                          "minReplicas": None}},
                 "canaryTrafficPercent": 0},
    }
    assert "default" not in patch["spec"]  # the stable version keeps serving as it is
    with pytest.raises(ValueError, match=r"0\.\.100"):
        api.apply_patch(last, manifest(V3), "predictor", 150, world.isvc)
    with pytest.raises(ValueError, match="no canary"):
        api.create_body(manifest(V1), "predictor", 10)
    assert api.create_body(manifest(V1), "predictor", None)["spec"] == {"default": endpoint(V1)}
    assert strategy_for(V1ALPHA2).api_version == V1ALPHA2


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def canary_at(world: World, api: V1Alpha2, percent: int) -> World:
    world.write(api.apply_patch(manifest(V1), manifest(V2), "predictor", 0, world.isvc))
    world.at(2)
    world.at(3)
    while world.condition("CanaryPredictorReady") != "True":
        world.at(world.now + 1)
    world.write(api.traffic_patch("predictor", percent))
    world.at(world.now + 0.1)
    return world


def test_promotion_moves_traffic_first_then_the_spec_then_drops_the_canary() -> None:
    api = V1Alpha2()
    world = canary_at(serving_v1(), api, 50)
    steps = []
    t = 3.1
    while "canary" in world.isvc["spec"]:
        patch = api.promote_patch("predictor", world.isvc)
        steps.append(patch)
        world.write(patch)
        t += 0.25
        world.at(t)
        assert len(steps) < 40, steps
    writes = [p for p in steps if p is not None]
    assert writes == [
        {"spec": {"canaryTrafficPercent": 100}},
        {"spec": {"default": {"predictor": {"sklearn": {"storageUri": V2}}}}},
        {"spec": {"canary": None, "canaryTrafficPercent": None}},
    ]
    assert None in steps  # waited for the new default revision to be Ready
    assert world.routes() == {"iris-predictor-default-00002": 100}
    assert api.promote_patch("predictor", world.isvc) is None  # promoted: nothing more to write
    live = api.parse(world.isvc, "predictor")
    comp = live.component("predictor")
    assert live.canary_percent is None and comp.latest_rolledout == comp.latest_ready == "iris-predictor-default-00002"
    assert comp.percent_of("iris-predictor-default-00002") == 100


def test_promotion_does_not_trust_a_status_that_predates_the_copy() -> None:
    api = V1Alpha2()
    world = canary_at(serving_v1(), api, 50)
    world.write(api.promote_patch("predictor", world.isvc))
    world.at(3.2)
    world.write(api.promote_patch("predictor", world.isvc))  # the copy; KFServing has not seen it yet
    assert world.isvc["spec"]["default"] == endpoint(V2)
    assert world.condition("DefaultPredictorReady") == "True"  # stale: about iris-predictor-default-00001
    assert api.promote_patch("predictor", world.isvc) is None


def test_after_a_restart_the_promotion_waits_for_evidence_then_settles() -> None:
    clock = Clock()
    world = canary_at(serving_v1(), V1Alpha2(), 50)
    first = V1Alpha2(clock=clock, settle_s=10)
    world.write(first.promote_patch("predictor", world.isvc))
    world.at(3.2)
    world.write(first.promote_patch("predictor", world.isvc))  # the copy, then the daemon restarts
    restarted = V1Alpha2(clock=clock, settle_s=10)
    assert restarted.promote_patch("predictor", world.isvc) is None  # stale status, no memory of the copy
    world.at(3.3)  # KFServing sees the copy: a new default revision, not Ready yet
    assert restarted.promote_patch("predictor", world.isvc) is None
    world.at(5)
    # Ready again after the canary was: that is the copy's revision
    assert restarted.promote_patch("predictor", world.isvc) == {"spec": {"canary": None, "canaryTrafficPercent": None}}

    # Without any evidence (e.g. a status that never showed the intermediate state), it settles.
    world = canary_at(serving_v1(), V1Alpha2(), 50)
    for c in world.isvc["status"]["conditions"]:
        c["lastTransitionTime"] = "2030-01-01T00:00:00Z"
    world.isvc["spec"]["default"] = copy.deepcopy(world.isvc["spec"]["canary"])
    world.isvc["spec"]["canaryTrafficPercent"] = 100
    world.isvc["status"]["canaryTraffic"] = 100
    lonely = V1Alpha2(clock=clock, settle_s=10)
    assert lonely.promote_patch("predictor", world.isvc) is None
    clock.t += 9
    assert lonely.promote_patch("predictor", world.isvc) is None
    clock.t += 1
    assert lonely.promote_patch("predictor", world.isvc) is not None


def test_a_stray_percent_without_a_canary_is_what_promote_removes() -> None:
    api = V1Alpha2()
    world = serving_v1()
    world.write({"spec": {"canaryTrafficPercent": 0}})
    assert api.parse(world.isvc, "predictor").canary_percent == 0
    assert api.promote_patch("predictor", world.isvc) == {"spec": {"canaryTrafficPercent": None}}


@pytest.mark.parametrize("default_ready_s", [0.0, 0.6, 3.0])
def test_promotion_never_takes_traffic_away_from_the_new_version(default_ready_s: float) -> None:
    """canaryd's promotion against the emulated controller, one tick at a time, new version's share logged."""
    scenario = SCENARIO.model_copy(update={"versions": {V2: VersionBehaviour(ready_after_s=default_ready_s)}})
    api = V1Alpha2()
    world = canary_at(serving_v1(scenario), api, 25)
    shares = [world.share_of(V2)]
    t = world.now
    for _ in range(60):
        world.write(api.promote_patch("predictor", world.isvc))
        shares.append(world.share_of(V2))
        t += 0.3
        world.at(t)
        shares.append(world.share_of(V2))
        if "canary" not in world.isvc["spec"]:
            break
    assert "canary" not in world.isvc["spec"], "promotion did not finish"
    assert shares[0] == 25 and shares[-1] == 100
    assert all(b >= a for a, b in itertools.pairwise(shares)), shares


# -- routing ---------------------------------------------------------------------------------------------


def test_each_endpoint_share_goes_to_its_newest_ready_revision() -> None:
    world = serving_v1()
    world.write({"spec": {"default": endpoint(V3)}})  # someone edits the default: V3 takes 5 s to start
    world.at(2)
    assert world.entry("default")["name"] == "iris-predictor-default-00002"
    assert world.routes() == {"iris-predictor-default-00001": 100}  # Knative keeps the Ready one serving
    world.at(8)
    assert world.routes() == {"iris-predictor-default-00002": 100}


def test_each_endpoint_has_its_own_host_whatever_its_share() -> None:
    world = serving_v1()
    world.write({"spec": {"canary": endpoint(V2), "canaryTrafficPercent": 0}})
    world.at(2)
    world.at(3)
    table = world.table()
    for host, revision in (("iris-predictor-canary", "iris-predictor-canary-00001"),
                           ("iris-predictor-default", "iris-predictor-default-00001"),
                           ("iris", "iris-predictor-default-00001")):
        address = table.address("models", host)
        assert address is not None, host
        picked = table.select(address, 0.99)
        assert isinstance(picked, Selected) and picked.revision.name == revision, host
    live = V1Alpha2().parse(world.isvc, "predictor")
    comp = live.component("predictor")
    assert comp.url_of("iris-predictor-canary-00001") == "http://iris-predictor-canary.models.example.com"


def test_a_promotion_that_swaps_the_specs_in_one_write_would_dip() -> None:
    """The control for the no-dip property: the emulator does model the hazard canaryd's order avoids."""
    world = canary_at(serving_v1(), V1Alpha2(), 50)
    world.write({"spec": {"default": endpoint(V2), "canary": None, "canaryTrafficPercent": None}})
    world.at(world.now + 0.1)
    assert world.share_of(V2) == 0  # the default's new revision is not Ready: the old one takes it all
    world.at(world.now + 2)
    assert world.share_of(V2) == 100
