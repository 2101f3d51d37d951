"""The KServe emulator's pure logic: spec changes in, revisions, traffic and status out (KServe v1beta1)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from canaryd.sandbox.kserve_logic import (
    ChildMemo,
    Conditions,
    Options,
    Readiness,
    RevisionRecord,
    deployment_mode,
    merge_patch,
    parse_revision,
    reconcile_v1beta1,
    revision_object,
    revision_status,
)
from canaryd.sandbox.scenario import Scenario, VersionBehaviour

T0 = datetime(2030, 1, 1, tzinfo=UTC)
V1, V2, V3, SLOW, BAD = (f"gs://m/iris/{v}" for v in ("v1", "v2", "v3", "slow", "bad"))
SCENARIO = Scenario(
    default=VersionBehaviour(ready_after_s=1),
    versions={
        SLOW: VersionBehaviour(ready_after_s=30),
        BAD: VersionBehaviour(ready_after_s=2, never_ready=True),
    },
)
CRD = Path(__file__).resolve().parents[3] / "shared" / "kserve" / "serving.kserve.io_inferenceservices.yaml"


def _status_validator() -> jsonschema.protocols.Validator | None:
    if not CRD.exists():
        return None
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return jsonschema.Draft7Validator(schema)


STATUS_SCHEMA = _status_validator()


def new_isvc(uri: str = V1, percent: int | None = None, **meta: Any) -> dict[str, Any]:
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": "models", "generation": 1, "uid": "u-1", **meta},
        "spec": {"predictor": predictor},
    }


@dataclass
class World:
    """The API as the emulator sees it, advanced by applying each outcome (what the shell does)."""

    isvc: dict[str, Any]
    options: Options = field(default_factory=Options)
    scenario: Scenario = field(default_factory=lambda: SCENARIO)
    revisions: list[RevisionRecord] = field(default_factory=list)
    memos: dict[str, ChildMemo] = field(default_factory=dict)
    writes: int = 0

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.isvc.get("status") or {})

    def edit(self, change: Any) -> None:
        """Change the spec like a client would (the API server bumps the generation)."""
        change(self.isvc)
        self.isvc["metadata"]["generation"] += 1

    def at(self, seconds: float) -> dict[str, Any]:
        now = T0 + timedelta(seconds=seconds)
        outcome = reconcile_v1beta1(self.isvc, self.revisions, self.scenario.behaviour, now, self.memos, self.options)
        by_name = {r.name: r for r in outcome.readiness}
        self.revisions = [by_name.get(r.name, r) for r in self.revisions] + list(outcome.create)
        self.memos = dict(outcome.memos)
        if outcome.status != self.status:
            self.writes += 1
            self.isvc["status"] = outcome.status
        if STATUS_SCHEMA is not None:
            STATUS_SCHEMA.validate(outcome.status)
        # a second reconcile at the same instant changes nothing: no write storm, no new revision
        again = reconcile_v1beta1(self.isvc, self.revisions, self.scenario.behaviour, now, self.memos, self.options)
        assert again.status == self.isvc["status"] and not again.create and not again.readiness
        return self.component()

    def component(self, name: str = "predictor") -> dict[str, Any]:
        return dict((self.status.get("components") or {}).get(name) or {})

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.status.get("conditions") or [] if c["type"] == kind), {})


def split(component: dict[str, Any]) -> list[tuple[str, int, bool, str | None]]:
    """Traffic as (revision number, percent, latestRevision, tag)."""
    return [
        (t["revisionName"].rsplit("-", 1)[1], t["percent"], t["latestRevision"], t.get("tag"))
        for t in component.get("traffic") or []
    ]


def set_uri(uri: str, percent: int | None = 0) -> Any:
    def change(isvc: dict[str, Any]) -> None:
        predictor = isvc["spec"]["predictor"]
        predictor["model"]["storageUri"] = uri
        if percent is None:
            predictor.pop("canaryTrafficPercent", None)
        else:
            predictor["canaryTrafficPercent"] = percent

    return change


def set_percent(percent: int | None) -> Any:
    def change(isvc: dict[str, Any]) -> None:
        if percent is None:
            isvc["spec"]["predictor"].pop("canaryTrafficPercent", None)
        else:
            isvc["spec"]["predictor"]["canaryTrafficPercent"] = percent

    return change


def rolled_out_v1() -> World:
    world = World(new_isvc())
    world.at(0)
    world.at(1)
    return world


# --------------------------------------------------------------------------------------------------------
# Revisions: which changes make one
# --------------------------------------------------------------------------------------------------------


def test_first_revision_is_created_then_ready_with_all_traffic() -> None:
    world = World(new_isvc())
    comp = world.at(0)
    assert [r.name for r in world.revisions] == ["iris-predictor-00001"]
    assert comp["latestCreatedRevision"] == "iris-predictor-00001"
    assert "latestReadyRevision" not in comp and "traffic" not in comp
    assert world.condition("Ready")["status"] == "Unknown"
    assert world.condition("PredictorRouteReady")["reason"] == "RevisionMissing"
    comp = world.at(1)
    assert split(comp) == [("00001", 100, True, None)]
    assert comp["latestReadyRevision"] == comp["latestRolledoutRevision"] == "iris-predictor-00001"
    assert "previousRolledoutRevision" not in comp
    assert comp["url"] == "http://iris-predictor.models.example.com"
    assert world.status["url"] == "http://iris.models.example.com"
    assert world.status["address"]["url"] == "http://iris.models.svc.cluster.local"
    for kind in (
        "Ready",
        "PredictorReady",
        "IngressReady",
        "PredictorRouteReady",
        "PredictorConfigurationReady",
        "RoutesReady",
        "LatestDeploymentReady",
    ):
        assert world.condition(kind)["status"] == "True", kind
    assert world.condition("LatestDeploymentReady")["severity"] == "Info"
    assert "severity" not in world.condition("Ready")
    assert world.status["observedGeneration"] == 1 and world.status["deploymentMode"] == "Knative"


@pytest.mark.parametrize(
    ("change", "new_revision"),
    [
        (set_uri(V2), True),
        (set_percent(10), False),
        (set_percent(0), False),
        (lambda i: i["metadata"].setdefault("labels", {}).update(team="b"), True),
        (lambda i: i["metadata"].setdefault("annotations", {}).update(note="x"), True),
        (lambda i: i["spec"]["predictor"].update(minReplicas=2), True),
        # KServe's disallowed lists never reach the revision template
        (
            lambda i: (
                i["metadata"]
                .setdefault("annotations", {})
                .update({"kubectl.kubernetes.io/last-applied-configuration": "{}"})
            ),
            False,
        ),
        (
            lambda i: (
                i["metadata"].setdefault("labels", {}).update({"networking.knative.dev/visibility": "cluster-local"})
            ),
            False,
        ),
        # a transformer is a component of its own: the predictor keeps its revision
        (lambda i: i["spec"].update(transformer={"containers": [{"name": "t", "image": "t:1"}]}), False),
    ],
    ids=[
        "storageUri",
        "percent-10",
        "percent-0",
        "label",
        "annotation",
        "minReplicas",
        "last-applied-annotation",
        "visibility-label",
        "transformer-added",
    ],
)
def test_which_changes_make_a_predictor_revision(change: Any, new_revision: bool) -> None:
    world = rolled_out_v1()
    world.edit(change)
    comp = world.at(2)
    names = [r.name for r in world.revisions if r.component == "predictor"]
    assert names == (["iris-predictor-00001", "iris-predictor-00002"] if new_revision else ["iris-predictor-00001"])
    assert comp["latestCreatedRevision"] == names[-1]


def test_revision_object_carries_the_contract_labels_and_spec() -> None:
    world = World(new_isvc(percent=0))
    world.at(0)
    obj = revision_object(world.isvc, world.revisions[0])
    meta = obj["metadata"]
    assert meta["name"] == "iris-predictor-00001" and meta["namespace"] == "models"
    assert meta["labels"] == {
        "serving.kserve.io/inferenceservice": "iris",
        "component": "predictor",
        "serving.knative.dev/configuration": "iris-predictor",
        "serving.knative.dev/service": "iris-predictor",
    }
    assert meta["annotations"]["sandbox.canaryd.io/storage-uri"] == V1
    assert meta["ownerReferences"][0]["uid"] == "u-1"
    assert obj["spec"] == {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V1}}  # no percent
    # written and read back, it is the same revision (how the shell sees it after a restart)
    obj["status"] = revision_status(world.revisions[0], T0)
    back = parse_revision(obj)
    assert back == world.revisions[0]


# --------------------------------------------------------------------------------------------------------
# Traffic: canary, rollback, promotion, and the hazard
# --------------------------------------------------------------------------------------------------------

# Each case: steps of (time, edit or None, expected split after it, rolled-out, previous).
CASES: dict[str, list[tuple[float, Any, list[tuple[str, int, bool, str | None]], str, str | None]]] = {
    "new spec at 0 %: old keeps everything": [
        (2, set_uri(V2, 0), [("00001", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (3, None, [("00002", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
    ],
    "canary at 10 %": [
        (2, set_uri(V2, 0), [("00001", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (3, set_percent(10), [("00002", 10, True, "latest"), ("00001", 90, False, "prev")], "00001", None),
    ],
    "promotion by removing the field": [
        (2, set_uri(V2, 0), [("00001", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (3, set_percent(10), [("00002", 10, True, "latest"), ("00001", 90, False, "prev")], "00001", None),
        (4, set_percent(None), [("00002", 100, True, None)], "00002", "00001"),
    ],
    "promotion by 100": [
        (2, set_uri(V2, 0), [("00001", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (3, set_percent(100), [("00002", 100, True, None)], "00002", "00001"),
    ],
    "rollback by 0 keeps the new spec and gives prev everything": [
        (2, set_uri(V2, 0), [("00001", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (3, set_percent(25), [("00002", 25, True, "latest"), ("00001", 75, False, "prev")], "00001", None),
        (4, set_percent(0), [("00002", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
    ],
    # THE HAZARD: the canary share goes to the newest *Ready* revision, not the newest created one
    "hazard: percent raised before the new revision is ready": [
        (2, set_uri(SLOW, 10), [("00001", 10, True, "latest"), ("00001", 90, False, "prev")], "00001", None),
        (20, None, [("00001", 10, True, "latest"), ("00001", 90, False, "prev")], "00001", None),
        (32, None, [("00002", 10, True, "latest"), ("00001", 90, False, "prev")], "00001", None),
    ],
    "hazard: a rolled-back revision gets the next canary's share": [
        (2, set_uri(V2, 0), [("00001", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (3, set_percent(10), [("00002", 10, True, "latest"), ("00001", 90, False, "prev")], "00001", None),
        (4, set_percent(0), [("00002", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (5, set_uri(SLOW, 20), [("00002", 20, True, "latest"), ("00001", 80, False, "prev")], "00001", None),
        (36, None, [("00003", 20, True, "latest"), ("00001", 80, False, "prev")], "00001", None),
    ],
    "never-ready revision gets no traffic": [
        (2, set_uri(BAD, 0), [("00001", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", None),
        (10, set_percent(50), [("00001", 50, True, "latest"), ("00001", 50, False, "prev")], "00001", None),
    ],
    "first revision takes everything whatever the percent": [
        (2, set_percent(10), [("00001", 10, True, "latest"), ("00001", 90, False, "prev")], "00001", None),
    ],
    # KServe's 'rolled out and then rolled back' rule: after a promotion, a percent without a new spec
    # sends the rest back to the revision rolled out before (a trap for a controller that re-applies 0 %)
    "percent after a promotion splits with the previous rollout": [
        (2, set_uri(V2, None), [("00001", 100, True, None)], "00001", None),
        (3, None, [("00002", 100, True, None)], "00002", "00001"),
        (4, set_percent(0), [("00002", 0, True, "latest"), ("00001", 100, False, "prev")], "00001", "00001"),
    ],
}


@pytest.mark.parametrize("steps", list(CASES.values()), ids=list(CASES))
def test_traffic(steps: list[tuple[float, Any, list[Any], str, str | None]]) -> None:
    world = rolled_out_v1()
    for at, edit, expected, rolled, previous in steps:
        if edit is not None:
            world.edit(edit)
        comp = world.at(at)
        assert split(comp) == expected, f"at {at}s"
        assert comp["latestRolledoutRevision"] == f"iris-predictor-{rolled}", f"at {at}s"
        assert comp.get("previousRolledoutRevision") == (previous and f"iris-predictor-{previous}"), f"at {at}s"
        assert sum(t["percent"] for t in comp["traffic"]) == 100


def test_conditions_while_a_new_revision_deploys_and_after() -> None:
    world = rolled_out_v1()
    world.edit(set_uri(V2, 0))
    world.at(2)
    assert world.condition("Ready")["status"] == "Unknown"
    assert world.condition("PredictorConfigurationReady")["status"] == "Unknown"
    assert world.condition("LatestDeploymentReady") | {"lastTransitionTime": ""} == {
        "type": "LatestDeploymentReady",
        "status": "Unknown",
        "severity": "Info",
        "reason": "PredictorConfigurationReady not ready",
        "lastTransitionTime": "",
    }
    assert world.condition("PredictorRouteReady")["status"] == "True"  # the old revision still serves
    assert world.condition("IngressReady")["status"] == "True"
    assert world.status["modelStatus"]["transitionStatus"] == "InProgress"
    assert world.status["observedGeneration"] == 2
    world.at(3)
    assert world.condition("Ready")["status"] == "True"
    assert world.condition("LatestDeploymentReady")["status"] == "True"
    assert world.status["modelStatus"]["transitionStatus"] == "UpToDate"


def test_never_ready_revision_fails_the_service_conditions() -> None:
    world = rolled_out_v1()
    world.edit(set_uri(BAD, 0))
    world.at(2)
    assert world.revisions[-1].readiness.status == "Unknown"
    comp = world.at(4)
    assert comp["latestCreatedRevision"] == "iris-predictor-00002"
    assert comp["latestReadyRevision"] == "iris-predictor-00001"
    bad = world.revisions[-1]
    assert bad.readiness.status == "False"
    ready = world.condition("Ready")
    assert ready["status"] == "False" and ready["reason"] == "RevisionFailed"
    assert 'Revision "iris-predictor-00002" failed' in ready["message"]
    assert world.condition("LatestDeploymentReady")["status"] == "False"
    assert world.condition("PredictorRouteReady")["status"] == "True"
    assert world.status["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"


def test_a_never_ready_first_revision_leaves_the_service_without_traffic() -> None:
    world = World(new_isvc(BAD))
    world.at(0)
    comp = world.at(3)
    assert "traffic" not in comp and "url" not in comp and "url" not in world.status
    assert world.condition("PredictorRouteReady")["status"] == "False"
    assert world.condition("Ready")["status"] == "False"


@pytest.mark.parametrize("percent", [150, 101, -5])
def test_percent_out_of_range_fails_reconcile_and_changes_nothing(percent: int) -> None:
    world = rolled_out_v1()
    world.edit(set_uri(V2, 10))
    world.at(2)
    world.at(3)
    before = world.component()
    world.edit(set_uri(V3, percent))  # a new spec too: Knative rejects the whole service update
    comp = world.at(4)
    assert comp == before
    assert [r.name for r in world.revisions] == ["iris-predictor-00001", "iris-predictor-00002"]
    for kind in ("Ready", "PredictorReady"):
        cond = world.condition(kind)
        assert cond["status"] == "False" and cond["reason"] == "ReconcileFailed"
        assert f"expected 0 <= {percent} <= 100" in cond["message"]
    world.edit(set_uri(V3, 0))  # fixed: reconciles again
    comp = world.at(5)
    assert comp["latestCreatedRevision"] == "iris-predictor-00003"
    assert world.condition("PredictorReady")["status"] != "False"


def test_percent_150_on_a_first_revision_fails_once_it_is_rolled_out() -> None:
    world = World(new_isvc(percent=150))
    world.at(0)
    comp = world.at(1)
    # rolled out at 100 % first; the next KServe reconcile splits by the percent, which Knative rejects
    assert split(comp) == [("00001", 100, True, None)]
    assert comp["latestRolledoutRevision"] == "iris-predictor-00001"
    assert world.condition("Ready")["reason"] == "ReconcileFailed"


# --------------------------------------------------------------------------------------------------------
# Other components, modes and options
# --------------------------------------------------------------------------------------------------------


def test_transformer_has_its_own_revisions_and_traffic() -> None:
    isvc = new_isvc()
    isvc["spec"]["transformer"] = {"containers": [{"name": "t", "image": "t:1"}]}
    world = World(isvc)
    world.at(0)
    world.at(1)

    def new_image(i: dict[str, Any]) -> None:
        i["spec"]["transformer"]["containers"][0]["image"] = "t:2"
        i["spec"]["transformer"]["canaryTrafficPercent"] = 30

    world.edit(new_image)
    world.at(2)
    world.at(3)
    assert split(world.component("transformer")) == [("00002", 30, True, "latest"), ("00001", 70, False, "prev")]
    assert split(world.component("predictor")) == [("00001", 100, True, None)]
    assert {r.name for r in world.revisions} == {
        "iris-predictor-00001",
        "iris-transformer-00001",
        "iris-transformer-00002",
    }
    assert world.component("transformer")["traffic"][1]["url"] == "http://prev-iris-transformer.models.example.com"
    assert world.condition("TransformerRouteReady")["status"] == "True"
    assert world.status["url"] == "http://iris.models.example.com"


@pytest.mark.parametrize("mode", ["RawDeployment", "Standard"])
def test_raw_deployment_mode_has_no_revisions_and_ignores_the_percent(mode: str) -> None:
    world = World(new_isvc(annotations={"serving.kserve.io/deploymentMode": mode}))
    world.at(0)
    assert world.condition("Ready")["status"] == "False"
    world.edit(set_uri(V2, 10))
    comp = world.at(2)
    assert world.revisions == []
    assert "traffic" not in comp and "latestCreatedRevision" not in comp
    assert world.status["deploymentMode"] == "Standard"
    assert world.condition("Ready")["status"] == "True"
    assert "LatestDeploymentReady" not in {c["type"] for c in world.status["conditions"]}


def test_deployment_mode_recorded_in_the_status_wins_over_the_annotation() -> None:
    isvc = new_isvc(annotations={"serving.kserve.io/deploymentMode": "RawDeployment"})
    assert deployment_mode(isvc) == "Standard"
    isvc["status"] = {"deploymentMode": "Knative"}
    assert deployment_mode(isvc) == "Knative"
    assert deployment_mode(new_isvc()) == "Knative"


def test_upstream_tags_latest_only_with_tag_routing() -> None:
    world = World(new_isvc(), options=Options(tag_latest_in_split=False))
    world.at(0)
    world.at(1)
    world.edit(set_uri(V2, 10))
    world.at(2)
    world.at(3)
    assert split(world.component()) == [("00002", 10, True, None), ("00001", 90, False, "prev")]

    def tag_routing(i: dict[str, Any]) -> None:
        i["metadata"]["annotations"] = {"serving.kserve.io/enable-tag-routing": "true"}

    world.edit(tag_routing)  # an annotation: a new revision too
    world.at(4)
    comp = world.at(5)
    assert split(comp) == [("00003", 10, True, "latest"), ("00001", 90, False, "prev")]
    assert comp["traffic"][0]["url"] == "http://latest-iris-predictor.models.example.com"


def test_knative_observed_generation_counts_the_knative_service_not_the_isvc() -> None:
    world = World(new_isvc(), options=Options(observed_generation="knative"))
    world.at(0)
    world.at(1)
    assert world.status["observedGeneration"] == 1

    def label(i: dict[str, Any]) -> None:
        i["metadata"]["labels"] = {"team": "b"}

    label(world.isvc)  # metadata only: the InferenceService's generation stays 1
    world.at(2)
    assert world.isvc["metadata"]["generation"] == 1
    assert world.status["observedGeneration"] == 2


def test_restart_resumes_from_the_api_without_counting_changes() -> None:
    world = World(new_isvc(), options=Options(observed_generation="knative"))
    world.at(0)
    world.at(1)
    world.edit(set_uri(V2, 10))
    world.at(2)
    world.at(3)
    before, writes = copy.deepcopy(world.status), world.writes
    world.memos = {}  # a restarted emulator has only what the API holds
    world.at(4)
    assert world.status == before and world.writes == writes


def test_scenario_change_applies_to_pending_revisions() -> None:
    world = World(new_isvc(SLOW))
    world.at(1)
    assert "traffic" not in world.component()
    world.scenario = Scenario(default=VersionBehaviour(ready_after_s=1))
    assert split(world.at(2)) == [("00001", 100, True, None)]


def test_requeue_after_points_at_the_next_readiness_change() -> None:
    isvc = new_isvc(SLOW)
    outcome = reconcile_v1beta1(isvc, [], SCENARIO.behaviour, T0)
    assert outcome.requeue_after == pytest.approx(30)
    created = replace(outcome.create[0])
    later = reconcile_v1beta1(isvc, [created], SCENARIO.behaviour, T0 + timedelta(seconds=31))
    assert later.requeue_after is None and later.readiness[0].readiness.status == "True"


# --------------------------------------------------------------------------------------------------------
# Helpers the shell relies on
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 3}}, {"b": {"c": 3, "d": None}}),
        ({"l": [1, 2]}, {"l": [2]}, {"l": [2]}),
        ({}, {"x": {"y": 1}}, {"x": {"y": 1}}),
        ({"x": 1}, {"x": 1}, {}),
    ],
)
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_patch(old, new) == patch


def test_condition_times_move_only_when_a_condition_changes() -> None:
    first = Conditions([], "Ready", ("A",), T0)
    first.mark_true("A")
    old = first.finish()
    later = T0 + timedelta(minutes=5)
    same = Conditions(old, "Ready", ("A",), later)
    same.mark_false("A", "Broken")  # flips within one reconcile ...
    same.mark_true("A")  # ... and back: nothing to write
    assert same.finish() == old
    changed = Conditions(old, "Ready", ("A",), later)
    changed.mark_unknown("A", "Deploying")
    by_type = {c["type"]: c for c in changed.finish()}
    assert by_type["Ready"] == {
        "type": "Ready",
        "status": "Unknown",
        "reason": "Deploying",
        "lastTransitionTime": "2030-01-01T00:05:00Z",
    }


def test_ready_condition_follows_knative_living_condition_rules() -> None:
    conds = Conditions([], "Ready", ("PredictorReady", "IngressReady"), T0)
    conds.mark_true("PredictorReady")
    assert conds.get("Ready") is None  # IngressReady not known yet
    conds.mark_true("IngressReady")
    assert conds.status("Ready") == "True"
    conds.mark_true("Stopped")  # not a dependent: severity Info, Ready untouched
    assert conds.get("Stopped") == {
        "type": "Stopped",
        "status": "True",
        "severity": "Info",
        "lastTransitionTime": "2030-01-01T00:00:00Z",
    }
    conds.apply("PredictorReady", Readiness("False", "ReconcileFailed", "no"))
    assert conds.readiness("Ready") == Readiness("False", "ReconcileFailed", "no")
