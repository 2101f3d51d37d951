"""Client-side apply semantics (canaryd.apply): merge patches, canary percent, drift comparison."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryd.apply import (
    UnsupportedApiVersion,
    already_applied,
    apply_merge_patch,
    canary_percent,
    managed_part,
    merge_patch,
    spec_differences,
    subset_matches,
    with_canary_percent,
)


def isvc(spec: dict[str, Any], labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "iris", "namespace": "models"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": meta,
            "spec": spec}


def model(uri: str, **extra: Any) -> dict[str, Any]:
    return {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri, **extra}}}


# -- merge_patch ------------------------------------------------------------------------------------


def test_first_apply_is_the_managed_part_of_desired() -> None:
    desired = isvc(model("gs://m/v1"), labels={"team": "a"})
    assert merge_patch(None, desired) == {"metadata": {"labels": {"team": "a"}}, "spec": model("gs://m/v1")}


def test_field_removed_in_git_becomes_null() -> None:
    last = isvc(model("gs://m/v1", runtimeVersion="1.2"), labels={"team": "a", "tier": "gold"})
    desired = isvc(model("gs://m/v2"), labels={"team": "a"})
    patch = merge_patch(last, desired)
    assert patch["spec"]["predictor"]["model"]["runtimeVersion"] is None
    assert patch["spec"]["predictor"]["model"]["storageUri"] == "gs://m/v2"
    assert patch["metadata"]["labels"] == {"team": "a", "tier": None}


def test_whole_section_removed_in_git_nulls_only_what_canaryd_set() -> None:
    last = isvc(model("gs://m/v1"), annotations={"a": "1", "b": "2"})
    desired = isvc(model("gs://m/v1"))
    patch = merge_patch(last, desired)
    assert patch["metadata"]["annotations"] == {"a": None, "b": None}
    live = isvc(model("gs://m/v1"), annotations={"a": "1", "b": "2", "someone-else": "x"})
    assert apply_merge_patch(live, patch)["metadata"]["annotations"] == {"someone-else": "x"}


def test_patch_keeps_fields_set_by_others_and_reasserts_drift() -> None:
    last = isvc(model("gs://m/v1", runtimeVersion="1.2"))
    desired = isvc(model("gs://m/v2"))
    live = isvc(model("gs://m/v1-edited-by-hand", runtimeVersion="1.2", protocolVersion="v2"))
    live["spec"]["predictor"]["minReplicas"] = 1  # a default KServe filled in
    result = apply_merge_patch(live, merge_patch(last, desired))
    assert result["spec"]["predictor"]["model"] == {
        "modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/v2", "protocolVersion": "v2",
    }
    assert result["spec"]["predictor"]["minReplicas"] == 1


def test_lists_are_replaced_whole() -> None:
    last = isvc({"predictor": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}})
    desired = isvc({"predictor": {"containers": [{"name": "a", "image": "x:2"}]}})
    patch = merge_patch(last, desired)
    assert patch["spec"]["predictor"]["containers"] == [{"name": "a", "image": "x:2"}]


def test_merge_patch_ignores_unmanaged_parts_and_leaves_inputs_alone() -> None:
    last = isvc(model("gs://m/v1"))
    desired = isvc(model("gs://m/v2"))
    desired["status"] = {"url": "http://x"}
    desired["metadata"]["resourceVersion"] = "42"
    before = copy.deepcopy((last, desired))
    patch = merge_patch(last, desired)
    assert set(patch) == {"spec"}
    patch["spec"]["predictor"]["model"]["storageUri"] = "changed"
    assert (last, desired) == before


def test_empty_labels_in_yaml_removes_only_what_canaryd_set() -> None:
    last = isvc(model("gs://m/v1"), labels={"team": "a"})
    desired = isvc(model("gs://m/v1"))
    desired["metadata"]["labels"] = None
    assert merge_patch(last, desired)["metadata"] == {"labels": {"team": None}}


_keys = st.sampled_from(["a", "b", "c", "storageUri", "x.y/z"])
_scalars = st.one_of(st.integers(-3, 3), st.booleans(), st.text(max_size=3))
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(_keys, children, max_size=3)),
    max_leaves=12,
)
_section = st.dictionaries(_keys, _json, max_size=4)
_manifest = st.fixed_dictionaries(
    {"spec": _section},
    optional={"metadata": st.fixed_dictionaries(
        {}, optional={"labels": st.dictionaries(_keys, st.text(max_size=3), max_size=3),
                      "annotations": st.dictionaries(_keys, st.text(max_size=3), max_size=3)})},
)


@settings(max_examples=300, deadline=None)
@given(last=st.one_of(st.none(), _manifest), desired=_manifest)
def test_patch_turns_last_applied_into_desired(last: dict[str, Any] | None, desired: dict[str, Any]) -> None:
    result = apply_merge_patch(last or {}, merge_patch(last, desired))
    assert _normalise(managed_part(result)) == _normalise(managed_part(desired))
    assert subset_matches(desired, result)


@settings(max_examples=300, deadline=None)
@given(last=_manifest, desired=_manifest, others=_section)
def test_fields_nobody_applied_survive(last: dict[str, Any], desired: dict[str, Any],
                                       others: dict[str, Any]) -> None:
    """A top-level spec field set only by someone else (not in last_applied nor desired) is never touched."""
    theirs = {f"other-{k}": v for k, v in others.items()}
    live = {"spec": {**last["spec"], **theirs}}
    result = apply_merge_patch(live, merge_patch(last, desired))
    for key, value in theirs.items():
        assert result["spec"][key] == value


def _normalise(m: dict[str, Any]) -> dict[str, Any]:
    """No labels and empty labels are the same thing (removing every label leaves `labels: {}`)."""
    meta = {k: v for k, v in (m.get("metadata") or {}).items() if v}
    return {**m, "metadata": meta} if meta else {k: v for k, v in m.items() if k != "metadata"}


# -- canary percent ---------------------------------------------------------------------------------


def test_with_canary_percent_sets_the_component_field_without_touching_the_input() -> None:
    patch = {"spec": {"predictor": {"model": {"storageUri": "gs://m/v2"}}}}
    out = with_canary_percent(patch, "predictor", 0, "serving.kserve.io/v1beta1")
    assert out["spec"]["predictor"] == {"model": {"storageUri": "gs://m/v2"}, "canaryTrafficPercent": 0}
    assert "canaryTrafficPercent" not in patch["spec"]["predictor"]
    assert with_canary_percent({}, "transformer", 30) == {
        "spec": {"transformer": {"canaryTrafficPercent": 30}}}
    assert with_canary_percent({}, "predictor", None) == {
        "spec": {"predictor": {"canaryTrafficPercent": None}}}


@pytest.mark.parametrize("bad", [-1, 101, 150, True, 5.5, "10"])
def test_percent_outside_0_to_100_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        with_canary_percent({}, "predictor", bad)


def test_unknown_api_version_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedApiVersion, match=r"serving\.kubeflow\.org/v1alpha2"):
        with_canary_percent({}, "predictor", 10, "serving.kubeflow.org/v1alpha2")


def test_canary_percent_reads_the_component_field() -> None:
    manifest = isvc({"predictor": {"canaryTrafficPercent": 25}, "transformer": {}})
    assert canary_percent(manifest, "predictor") == 25
    assert canary_percent(manifest, "transformer") is None


# -- subset_matches / spec_differences --------------------------------------------------------------


def test_live_with_kserve_defaults_matches_desired() -> None:
    desired = isvc(model("gs://m/v1"), labels={"team": "a"})
    live = isvc(model("gs://m/v1", runtime="kserve-sklearnserver", protocolVersion="v1"),
                labels={"team": "a", "added-by": "someone"}, annotations={"x": "y"})
    live["spec"]["predictor"]["canaryTrafficPercent"] = 10
    assert subset_matches(desired, live)
    assert spec_differences(desired, live) == []


def test_differences_are_reported_as_paths() -> None:
    desired = isvc(
        {"predictor": {"model": {"storageUri": "gs://m/v2"}, "containers": [{"image": "a:1"}]}},
        labels={"app.kubernetes.io/name": "iris"}, annotations={"note": "x"},
    )
    live = isvc({"predictor": {"model": {"storageUri": "gs://m/v1"}, "containers": [{"image": "a:2"}]}},
                labels={"app.kubernetes.io/name": "other"})
    assert not subset_matches(desired, live)
    assert spec_differences(desired, live) == [
        'metadata.labels["app.kubernetes.io/name"]',
        "metadata.annotations",
        "spec.predictor.model.storageUri",
        "spec.predictor.containers[0].image",
    ]


def test_list_length_and_type_differences() -> None:
    desired = isvc({"predictor": {"args": ["a", "b"], "replicas": 1, "flag": True}})
    live = isvc({"predictor": {"args": ["a"], "replicas": True, "flag": 1}})
    assert spec_differences(desired, live) == ["spec.predictor.args", "spec.predictor.replicas",
                                               "spec.predictor.flag"]


def test_null_in_desired_means_absent() -> None:
    desired = isvc({"predictor": {"minReplicas": None}})
    assert subset_matches(desired, isvc({"predictor": {}}))
    live = isvc({"predictor": {"minReplicas": 2}})
    assert spec_differences(desired, live) == ["spec.predictor.minReplicas"]


def test_missing_field_in_live_is_a_difference() -> None:
    assert spec_differences(isvc(model("gs://m/v1")), isvc({"predictor": {}})) == ["spec.predictor.model"]


def test_empty_labels_in_git_match_a_live_service_without_labels() -> None:
    """Regression: the API server drops `labels: {}`; that must not look like drift (it re-applied forever)."""
    desired = isvc(model("gs://m/v1"))
    desired["metadata"]["labels"] = {}
    desired["metadata"]["annotations"] = {}
    live = isvc(model("gs://m/v1"))
    live["metadata"].pop("labels", None)
    live["metadata"].pop("annotations", None)
    assert subset_matches(desired, live)


def test_already_applied_sees_a_pending_removal() -> None:
    """Regression: a field removed in Git but still live is a change, although desired is a subset of live."""
    old = isvc(model("gs://m/v1", maxReplicas=3))
    new = isvc(model("gs://m/v1"))
    live = isvc(model("gs://m/v1", maxReplicas=3))
    assert subset_matches(new, live)
    assert not already_applied(old, new, live)
    assert already_applied(None, new, live)
    assert already_applied(old, new, isvc(model("gs://m/v1")))
