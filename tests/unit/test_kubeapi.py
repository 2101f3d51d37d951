"""The Kubernetes API emulator, driven through the real `kubernetes` client over HTTP.

Each test works in its own namespace of one shared emulator, which serves the sandbox's lite
InferenceService CRD plus two test CRDs: `Widget` (a schema using most structural-schema features,
with a status subresource) and `Gadget` (open schema, no status subresource).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from starlette.responses import JSONResponse, Response

from canaryd.sandbox.kubeapi import KubeApiEmulator, RequestInfo, load_crds, status_body
from canaryd.sandbox.kubeapi import app as kubeapi_app

REPO = Path(__file__).resolve().parents[2]
LITE_CRD = REPO / "canaryd" / "sandbox" / "crds" / "inferenceservice-lite.yaml"
G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
TG, TV = "test.canaryd.io", "v1"

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "green"]},
                "code": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                "mode": {"type": "string", "default": "auto"},
                "note": {"type": "string", "nullable": True},
                "at": {"type": "string", "format": "date-time"},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "required": ["name"],
                                    "properties": {"name": {"type": "string"}, "number": {"type": "integer"}}}},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                             "x-kubernetes-preserve-unknown-fields": True},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}, "ready": {"type": "boolean"}}},
    },
}


def _crd(plural: str, kind: str, schema: dict[str, Any], *, status: bool) -> dict[str, Any]:
    version: dict[str, Any] = {"name": TV, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
    if status:
        version["subresources"] = {"status": {}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{TG}"},
            "spec": {"group": TG, "scope": "Namespaced", "versions": [version],
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind}}}


WIDGET_CRD = _crd("widgets", "Widget", WIDGET_SCHEMA, status=True)
GADGET_CRD = _crd("gadgets", "Gadget", {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                  status=False)


@pytest.fixture(scope="module")
def emulator() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator([*load_crds([LITE_CRD]), WIDGET_CRD, GADGET_CRD]) as emu:
        yield emu


@pytest.fixture(scope="module")
def api(emulator: KubeApiEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    kubeconfig = emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def co(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def ns(api: client.ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def isvc(name: str, uri: str = "gs://bucket/v1", labels: dict[str, str] | None = None, **predictor: Any
         ) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "InferenceService",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}, **predictor}}}


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{TG}/{TV}", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": 1, **spec}}


def error(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.value.body)
    return body


def causes(exc: pytest.ExceptionInfo[ApiException]) -> list[tuple[str, str]]:
    return [(c["reason"], c["field"]) for c in error(exc)["details"]["causes"]]


# ---------------------------------------------------------------- CRUD and Status bodies


def test_crud_of_a_custom_object_fills_server_metadata(co: client.CustomObjectsApi, ns: str) -> None:
    created = co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["namespace"] == ns and isinstance(meta["resourceVersion"], str)
    got = co.get_namespaced_custom_object(G, V, ns, P, "iris")
    assert got == created
    listed = co.list_namespaced_custom_object(G, V, ns, P)
    assert listed["kind"] == "InferenceServiceList" and [i["metadata"]["name"] for i in listed["items"]] == ["iris"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    got["spec"]["predictor"]["model"]["storageUri"] = "gs://bucket/v2"
    replaced = co.replace_namespaced_custom_object(G, V, ns, P, "iris", got)
    assert int(replaced["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert replaced["metadata"]["uid"] == meta["uid"]
    deleted = co.delete_namespaced_custom_object(G, V, ns, P, "iris")
    assert deleted == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                       "details": {"name": "iris", "group": G, "kind": P, "uid": meta["uid"]}}
    with pytest.raises(ApiException) as exc:
        co.get_namespaced_custom_object(G, V, ns, P, "iris")
    assert exc.value.status == 404


def test_not_found_already_exists_and_conflict_are_kube_status_objects(
        co: client.CustomObjectsApi, ns: str) -> None:
    with pytest.raises(ApiException) as exc:
        co.get_namespaced_custom_object(G, V, ns, P, "nobody")
    assert error(exc) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": 'inferenceservices.serving.kserve.io "nobody" not found',
                          "reason": "NotFound", "details": {"name": "nobody", "group": G, "kind": P}, "code": 404}
    first = co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    assert exc.value.status == 409 and error(exc)["reason"] == "AlreadyExists"
    assert error(exc)["message"] == 'inferenceservices.serving.kserve.io "iris" already exists'
    co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiException) as exc:
        co.replace_namespaced_custom_object(G, V, ns, P, "iris", first)
    assert exc.value.status == 409
    assert error(exc)["message"] == (
        'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "iris": the object has been '
        "modified; please apply your changes to the latest version and try again")
    assert error(exc)["details"] == {"name": "iris", "group": G, "kind": P}


def test_namespaced_create_in_a_missing_namespace_is_404(co: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(G, V, "no-such-ns", P, isvc("x"))
    assert exc.value.status == 404
    assert error(exc)["message"] == 'namespaces "no-such-ns" not found'
    assert error(exc)["details"] == {"name": "no-such-ns", "kind": "namespaces"}


def test_invalid_name_is_422_with_the_dns_subdomain_message(co: client.CustomObjectsApi, ns: str) -> None:
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(G, V, ns, P, isvc("Bad_Name"))
    body = error(exc)
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    assert body["message"].startswith(
        'InferenceService.serving.kserve.io "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
        "a lowercase RFC 1123 subdomain must consist of")
    assert causes(exc) == [("FieldValueInvalid", "metadata.name")]


def test_replace_without_resource_version_is_invalid_for_custom_resources(
        co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    with pytest.raises(ApiException) as exc:
        co.replace_namespaced_custom_object(G, V, ns, P, "iris", isvc("iris"))
    assert exc.value.status == 422
    assert error(exc)["message"] == ('inferenceservices.serving.kserve.io "iris" is invalid: '
                                     "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")


def test_create_with_a_resource_version_is_refused(co: client.CustomObjectsApi, ns: str) -> None:
    body = isvc("iris")
    body["metadata"]["resourceVersion"] = "5"
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(G, V, ns, P, body)
    assert exc.value.status == 500
    assert error(exc)["message"] == "resourceVersion should not be set on objects to be created"


# ---------------------------------------------------------------- schema: types, pruning, defaults


def test_schema_type_error_names_the_field(co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"spec": {"predictor": {"canaryTrafficPercent": "s"}}})
    body = error(exc)
    assert exc.value.status == 422
    assert body["message"] == (
        'InferenceService.serving.kserve.io "iris" is invalid: spec.predictor.canaryTrafficPercent: Invalid value: '
        '"string": spec.predictor.canaryTrafficPercent in body must be of type integer: "string"')
    assert body["details"]["causes"] == [{
        "reason": "FieldValueTypeInvalid", "field": "spec.predictor.canaryTrafficPercent",
        "message": 'Invalid value: "string": spec.predictor.canaryTrafficPercent in body must be of type integer: '
                   '"string"'}]
    # no bounds in the schema: 150 is stored, as the real server does
    patched = co.patch_namespaced_custom_object(
        G, V, ns, P, "iris", {"spec": {"predictor": {"canaryTrafficPercent": 150}}})
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 150


@pytest.mark.parametrize(("spec", "expected"), [
    ({"size": 0}, [("FieldValueInvalid", "spec.size")]),
    ({"size": 11}, [("FieldValueInvalid", "spec.size")]),
    ({"size": 1.5}, [("FieldValueTypeInvalid", "spec.size")]),
    ({"color": "blue"}, [("FieldValueNotSupported", "spec.color")]),
    ({"code": "ABC"}, [("FieldValueInvalid", "spec.code")]),
    ({"code": "abcdef"}, [("FieldValueTooLong", "spec.code")]),
    ({"port": True}, [("FieldValueTypeInvalid", "spec.port"), ("FieldValueInvalid", "<nil>"),
                      ("FieldValueTypeInvalid", "spec.port")]),
    ({"tags": []}, [("FieldValueInvalid", "spec.tags")]),
    ({"tags": ["a", "b", "c"]}, [("FieldValueTooMany", "spec.tags")]),
    ({"tags": ["a", 3]}, [("FieldValueTypeInvalid", "spec.tags[1]")]),
    ({"at": "yesterday"}, [("FieldValueTypeInvalid", "spec.at")]),
    ({"ports": [{"name": "a"}, {"name": "a"}]}, [("FieldValueDuplicate", "spec.ports[1]")]),
    ({"ports": [{"number": 1}]}, [("FieldValueRequired", "spec.ports[0].name")]),
    ({"env": {"A": 1}}, [("FieldValueTypeInvalid", "spec.env.A")]),
    ({"template": {"spec": {}}}, [("FieldValueRequired", "spec.template.apiVersion"),
                                  ("FieldValueRequired", "spec.template.kind")]),
])
def test_schema_violations_are_422_with_one_cause_per_problem(
        co: client.CustomObjectsApi, ns: str, spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(TG, TV, ns, "widgets", widget("w", **spec))
    assert exc.value.status == 422
    assert causes(exc) == expected


def test_schema_error_messages_use_kube_openapi_wording(co: client.CustomObjectsApi, ns: str) -> None:
    bad = widget("w", size=11, color="blue")
    del bad["spec"]["size"]
    bad["spec"]["code"] = "A1"
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(TG, TV, ns, "widgets", bad)
    msg = error(exc)["message"]
    assert msg.startswith('Widget.test.canaryd.io "w" is invalid: [')
    assert 'spec.color: Unsupported value: "blue": supported values: "red", "green"' in msg
    assert "spec.code: Invalid value: \"A1\": spec.code in body should match '^[a-z]+$'" in msg
    assert "spec.size: Required value" in msg
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(TG, TV, ns, "widgets", widget("w", size=11))
    assert error(exc)["details"]["causes"][0]["message"] == (
        "Invalid value: 11: spec.size in body should be less than or equal to 10")


def test_valid_values_pass_and_defaults_and_nulls_are_applied(co: client.CustomObjectsApi, ns: str) -> None:
    body = widget("w", size=3, color="red", code="abc", port="http", tags=["a"], note=None,
                  at="2024-05-01T10:00:00Z", ports=[{"name": "a", "number": 1}], env={"A": "b"},
                  template={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "bogus": 1}, "spec": {"x": 1}},
                  extra={"anything": {"goes": [1, 2]}})
    body["spec"]["size"] = 3.0  # an integral float is an integer to the apiserver
    body["spec"]["mode"] = None  # non-nullable null with a default gets the default
    created = co.create_namespaced_custom_object(TG, TV, ns, "widgets", body)
    spec = created["spec"]
    assert spec["mode"] == "auto" and spec["note"] is None and spec["port"] == "http"
    assert spec["template"] == {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}}
    assert spec["extra"] == {"anything": {"goes": [1, 2]}}
    other = co.create_namespaced_custom_object(TG, TV, ns, "widgets", widget("w2", port=8080))
    assert other["spec"]["mode"] == "auto" and other["spec"]["port"] == 8080


def test_unknown_fields_are_pruned_silently_with_a_warning(
        emulator: KubeApiEmulator, co: client.CustomObjectsApi, ns: str) -> None:
    body = widget("w", env={"KEEP": "x"}, extra={"free": 1}, notAField=1)
    body["metadata"]["bogusMeta"] = "x"
    body["status"] = {"phase": "p"}
    body["top"] = 1
    created = co.create_namespaced_custom_object(TG, TV, ns, "widgets", body)
    assert created["spec"] == {"size": 1, "env": {"KEEP": "x"}, "extra": {"free": 1}, "mode": "auto"}
    assert "bogusMeta" not in created["metadata"] and "top" not in created and "status" not in created
    url = f"{emulator.url}/apis/{TG}/{TV}/namespaces/{ns}/widgets"
    r = httpx.post(url, json=widget("w2", notAField=1))
    assert r.status_code == 201
    assert r.headers.get_list("warning") == ['299 - "unknown field \\"spec.notAField\\""']
    strict = httpx.post(f"{url}?fieldValidation=Strict", json=widget("w3", notAField=1))
    assert strict.status_code == 400
    assert strict.json()["message"] == 'strict decoding error: unknown field "spec.notAField"'
    # the lite InferenceService CRD keeps unknown fields inside components, prunes them elsewhere
    lite = co.create_namespaced_custom_object(G, V, ns, P, {**isvc("iris", extraField=1), "bogus": 1})
    assert lite["spec"]["predictor"]["extraField"] == 1 and "bogus" not in lite


# ---------------------------------------------------------------- patches


def test_merge_patch_null_removes_and_nested_merge_keeps_siblings(co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("iris", canaryTrafficPercent=10, minReplicas=1))
    out = co.patch_namespaced_custom_object(
        G, V, ns, P, "iris", {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    assert "canaryTrafficPercent" not in out["spec"]["predictor"]
    assert out["spec"]["predictor"]["minReplicas"] == 1
    assert out["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/v1"


def test_resource_version_inside_a_patch_is_a_precondition(co: client.CustomObjectsApi, ns: str) -> None:
    first = co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    rv = first["metadata"]["resourceVersion"]
    second = co.patch_namespaced_custom_object(
        G, V, ns, P, "iris", {"metadata": {"resourceVersion": rv}, "spec": {"predictor": {"canaryTrafficPercent": 5}}})
    assert second["spec"]["predictor"]["canaryTrafficPercent"] == 5
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object(G, V, ns, P, "iris", {
            "metadata": {"resourceVersion": rv}, "spec": {"predictor": {"canaryTrafficPercent": 6}}})
    assert exc.value.status == 409 and error(exc)["reason"] == "Conflict"


def test_json_patch_works_and_strategic_merge_patch_is_refused_for_custom_resources(
        emulator: KubeApiEmulator, co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    out = co.patch_namespaced_custom_object(
        G, V, ns, P, "iris", [{"op": "add", "path": "/spec/predictor/canaryTrafficPercent", "value": 20}],
        _content_type="application/json-patch+json")
    assert out["spec"]["predictor"]["canaryTrafficPercent"] == 20
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object(G, V, ns, P, "iris", [{"op": "test", "path": "/spec/x", "value": 1}],
                                          _content_type="application/json-patch+json")
    assert exc.value.status == 422
    url = f"{emulator.url}/apis/{G}/{V}/namespaces/{ns}/{P}/iris"
    r = httpx.patch(url, content=b'{"spec":{}}', headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert r.status_code == 415 and r.json()["reason"] == "UnsupportedMediaType"
    assert r.json()["message"] == ("the body of the request was in an unknown format - accepted media types "
                                   "include: application/json-patch+json, application/merge-patch+json")


def test_the_python_client_patches_custom_objects_as_merge_patch(
        emulator: KubeApiEmulator, co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    seen: list[str] = []

    async def spy(info: RequestInfo) -> Response | None:
        if info.verb == "patch" and info.namespace == ns:
            seen.append(info.content_type)
        return None

    emulator.hooks.append(spy)
    try:
        co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"spec": {"predictor": {"minReplicas": 2}}})
    finally:
        emulator.hooks.remove(spy)
    assert seen == ["application/merge-patch+json"]
    assert co.get_namespaced_custom_object(G, V, ns, P, "iris")["spec"]["predictor"]["minReplicas"] == 2


# ---------------------------------------------------------------- generation and the status subresource


def test_generation_counts_spec_changes_only(co: client.CustomObjectsApi, ns: str) -> None:
    created = co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    spec_change = co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"spec": {"predictor": {"minReplicas": 2}}})
    assert spec_change["metadata"]["generation"] == 2
    label_change = co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"metadata": {"labels": {"a": "b"}}})
    assert label_change["metadata"]["generation"] == 2
    assert int(label_change["metadata"]["resourceVersion"]) > int(spec_change["metadata"]["resourceVersion"])
    noop = co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"spec": {"predictor": {"minReplicas": 2}}})
    assert noop["metadata"]["resourceVersion"] == label_change["metadata"]["resourceVersion"]
    same = co.replace_namespaced_custom_object(G, V, ns, P, "iris", noop)
    assert same == noop
    status = co.patch_namespaced_custom_object_status(G, V, ns, P, "iris", {"status": {"url": "http://x"}})
    assert status["metadata"]["generation"] == 2
    assert created["metadata"]["uid"] == status["metadata"]["uid"]


def test_status_subresource_separates_spec_and_status_writers(co: client.CustomObjectsApi, ns: str) -> None:
    body = isvc("iris")
    body["status"] = {"url": "http://ignored-on-create"}
    created = co.create_namespaced_custom_object(G, V, ns, P, body)
    assert "status" not in created
    main = co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"status": {"url": "http://main"}})
    assert "status" not in main and main["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    st = co.patch_namespaced_custom_object_status(
        G, V, ns, P, "iris", {"status": {"url": "http://status"}, "spec": {"predictor": {"minReplicas": 9}},
                              "metadata": {"labels": {"sneaky": "yes"}}})
    assert st["status"] == {"url": "http://status"}
    assert "minReplicas" not in st["spec"]["predictor"] and "sneaky" not in st["metadata"].get("labels", {})
    got = co.get_namespaced_custom_object_status(G, V, ns, P, "iris")
    assert got["status"] == {"url": "http://status"}
    got["spec"]["predictor"]["minReplicas"] = 4
    got["status"] = {"url": "http://changed-by-main-put"}
    replaced = co.replace_namespaced_custom_object(G, V, ns, P, "iris", got)
    assert replaced["spec"]["predictor"]["minReplicas"] == 4 and replaced["status"] == {"url": "http://status"}
    del replaced["status"]
    cleared = co.replace_namespaced_custom_object_status(G, V, ns, P, "iris", replaced)
    assert "status" not in cleared


def test_without_a_status_subresource_status_is_an_ordinary_field(
        co: client.CustomObjectsApi, ns: str) -> None:
    body = {"apiVersion": f"{TG}/{TV}", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"a": 1},
            "status": {"phase": "new"}}
    created = co.create_namespaced_custom_object(TG, TV, ns, "gadgets", body)
    assert created["status"] == {"phase": "new"}
    patched = co.patch_namespaced_custom_object(TG, TV, ns, "gadgets", "g", {"status": {"phase": "old"}})
    assert patched["status"] == {"phase": "old"} and patched["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object_status(TG, TV, ns, "gadgets", "g", {"status": {"phase": "x"}})
    assert exc.value.status == 404


def test_status_writes_are_validated_against_the_status_schema(co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(TG, TV, ns, "widgets", widget("w"))
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object_status(TG, TV, ns, "widgets", "w", {"status": {"ready": "yes"}})
    assert causes(exc) == [("FieldValueTypeInvalid", "status.ready")]
    ok = co.patch_namespaced_custom_object_status(TG, TV, ns, "widgets", "w", {"status": {"ready": True, "x": 1}})
    assert ok["status"] == {"ready": True}


# ---------------------------------------------------------------- selectors


@pytest.mark.parametrize(("selector", "names"), [
    ("team=a", ["a1", "a2"]),
    ("team==a", ["a1", "a2"]),
    ("team!=a", ["b1", "none"]),
    ("team in (a,b)", ["a1", "a2", "b1"]),
    ("team notin (a)", ["b1", "none"]),
    ("team", ["a1", "a2", "b1"]),
    ("!team", ["none"]),
    ("team=a,tier=web", ["a2"]),
    ("tier in (web), !missing", ["a2"]),
])
def test_label_selectors(co: client.CustomObjectsApi, ns: str, selector: str, names: list[str]) -> None:
    for name, labels in (("a1", {"team": "a"}), ("a2", {"team": "a", "tier": "web"}), ("b1", {"team": "b"}),
                         ("none", {})):
        co.create_namespaced_custom_object(G, V, ns, P, isvc(name, labels=labels))
    got = co.list_namespaced_custom_object(G, V, ns, P, label_selector=selector)
    assert sorted(i["metadata"]["name"] for i in got["items"]) == names


def test_field_selectors_and_bad_selectors(co: client.CustomObjectsApi, ns: str) -> None:
    for name in ("x", "y"):
        co.create_namespaced_custom_object(G, V, ns, P, isvc(name))
    by_name = co.list_namespaced_custom_object(G, V, ns, P, field_selector="metadata.name=y")
    assert [i["metadata"]["name"] for i in by_name["items"]] == ["y"]
    not_x = co.list_cluster_custom_object(G, V, P, field_selector=f"metadata.namespace={ns},metadata.name!=x")
    assert [i["metadata"]["name"] for i in not_x["items"]] == ["y"]
    with pytest.raises(ApiException) as exc:
        co.list_namespaced_custom_object(G, V, ns, P, field_selector="spec.predictor=x")
    assert exc.value.status == 400 and error(exc)["message"] == "field label not supported: spec.predictor"
    with pytest.raises(ApiException) as exc:
        co.list_namespaced_custom_object(G, V, ns, P, label_selector="team in (a")
    assert exc.value.status == 400 and error(exc)["reason"] == "BadRequest"


def test_list_pagination_with_limit_and_continue(co: client.CustomObjectsApi, ns: str) -> None:
    for i in range(5):
        co.create_namespaced_custom_object(G, V, ns, P, isvc(f"s{i}"))
    page = co.list_namespaced_custom_object(G, V, ns, P, limit=2)
    names = [i["metadata"]["name"] for i in page["items"]]
    while page["metadata"].get("continue"):
        page = co.list_namespaced_custom_object(G, V, ns, P, limit=2, _continue=page["metadata"]["continue"])
        names += [i["metadata"]["name"] for i in page["items"]]
    assert names == [f"s{i}" for i in range(5)]


# ---------------------------------------------------------------- watch


def _collect(func: Any, *args: Any, want: int, **kwargs: Any) -> list[str]:
    seen: list[str] = []
    w = watch.Watch()
    for ev in w.stream(func, *args, timeout_seconds=5, _request_timeout=10, **kwargs):
        seen.append(f"{ev['type']}:{ev['object']['metadata']['name']}")
        if len(seen) >= want:
            w.stop()
    return seen


def test_watch_from_a_resource_version_replays_later_changes(co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("a"))
    rv = co.list_namespaced_custom_object(G, V, ns, P)["metadata"]["resourceVersion"]
    co.create_namespaced_custom_object(G, V, ns, P, isvc("b"))
    co.patch_namespaced_custom_object(G, V, ns, P, "a", {"spec": {"predictor": {"minReplicas": 1}}})
    co.delete_namespaced_custom_object(G, V, ns, P, "b")
    seen = _collect(co.list_namespaced_custom_object, G, V, ns, P, resource_version=rv, want=3)
    assert seen == ["ADDED:b", "MODIFIED:a", "DELETED:b"]


def test_watch_without_resource_version_starts_with_current_objects_then_streams(
        co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("a"))
    seen: list[str] = []
    w = watch.Watch()

    def run() -> None:
        for ev in w.stream(co.list_namespaced_custom_object, G, V, ns, P, timeout_seconds=5, _request_timeout=10):
            seen.append(f"{ev['type']}:{ev['object']['metadata']['name']}")
            if len(seen) >= 2:
                w.stop()

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    co.create_namespaced_custom_object(G, V, ns, P, isvc("b"))
    t.join(10)
    assert seen == ["ADDED:a", "ADDED:b"]


def test_watch_with_a_label_selector_sees_objects_enter_and_leave(co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("a", labels={"team": "x"}))
    rv = co.list_namespaced_custom_object(G, V, ns, P)["metadata"]["resourceVersion"]
    co.patch_namespaced_custom_object(G, V, ns, P, "a", {"metadata": {"labels": {"team": "y"}}})
    co.patch_namespaced_custom_object(G, V, ns, P, "a", {"metadata": {"labels": {"team": "x"}}})
    seen = _collect(co.list_namespaced_custom_object, G, V, ns, P, resource_version=rv, label_selector="team=x",
                    want=2)
    assert seen == ["DELETED:a", "ADDED:a"]


def test_watch_from_a_resource_version_older_than_the_history_is_410(tmp_path: Path) -> None:
    with KubeApiEmulator([], namespaces=["default"], history=3) as emu:
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
        with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:
            core = client.CoreV1Api(api_client)
            first = core.create_namespaced_config_map("default", {"metadata": {"name": "c0"}})
            for i in range(1, 6):
                core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
            with pytest.raises(ApiException) as exc:
                for _ in watch.Watch().stream(core.list_namespaced_config_map, "default",
                                              resource_version=first.metadata.resource_version, timeout_seconds=2):
                    pass
            assert exc.value.status == 410
            recent = core.list_namespaced_config_map("default").metadata.resource_version
            names: list[str] = []
            w = watch.Watch()
            for e in w.stream(core.list_namespaced_config_map, "default", resource_version=str(int(recent) - 2),
                              timeout_seconds=5):
                names.append(e["object"].metadata.name)
                if len(names) == 2:
                    w.stop()
            assert names == ["c4", "c5"]
        with httpx.stream("GET", f"{emu.url}/api/v1/namespaces/default/configmaps",
                          params={"watch": "1", "resourceVersion": "1"}) as r:
            assert r.status_code == 200
            event = json.loads(next(r.iter_lines()))
        assert event["type"] == "ERROR"
        assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
        assert event["object"]["message"].startswith("too old resource version: 1 (")


def test_stop_ends_open_watches_promptly() -> None:
    emu = KubeApiEmulator([], namespaces=["default"]).start()
    done = threading.Event()

    def hold() -> None:
        with httpx.stream("GET", f"{emu.url}/api/v1/namespaces/default/configmaps?watch=true", timeout=30) as r:
            for _ in r.iter_lines():
                pass
        done.set()

    t = threading.Thread(target=hold)
    t.start()
    deadline = time.monotonic() + 5
    while not any(c.verb == "watch" for c in emu.calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    emu.stop()
    assert done.wait(5)
    assert time.monotonic() - started < 2
    t.join(5)


# ---------------------------------------------------------------- core kinds


def test_leases_for_leader_election(emulator: KubeApiEmulator, api: client.ApiClient, ns: str) -> None:
    coord = client.CoordinationV1Api(api)
    lease = coord.create_namespaced_lease(ns, {"metadata": {"name": "canaryd"}, "spec": {
        "holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2024-01-01T10:00:00.5+01:00"}})
    assert lease.spec.holder_identity == "a"
    stored = emulator.get_object("coordination.k8s.io", "v1", "leases", "canaryd", ns)
    assert stored is not None and stored["spec"]["renewTime"] == "2024-01-01T09:00:00.500000Z"  # MicroTime
    lease.spec.holder_identity = "b"
    replaced = coord.replace_namespaced_lease("canaryd", ns, lease)
    assert replaced.spec.holder_identity == "b"
    with pytest.raises(ApiException) as exc:
        coord.replace_namespaced_lease("canaryd", ns, lease)
    assert exc.value.status == 409
    patched = coord.patch_namespaced_lease("canaryd", ns, {"spec": {"leaseTransitions": 1}})
    assert patched.spec.lease_transitions == 1 and patched.spec.holder_identity == "b"
    with pytest.raises(ApiException) as exc:
        coord.patch_namespaced_lease("canaryd", ns, {"spec": {"leaseDurationSeconds": 0}})
    assert exc.value.status == 422 and causes(exc) == [("FieldValueInvalid", "spec.leaseDurationSeconds")]
    assert coord.read_namespaced_lease("canaryd", ns).spec.lease_duration_seconds == 15
    coord.delete_namespaced_lease("canaryd", ns)
    with pytest.raises(ApiException) as exc:
        coord.read_namespaced_lease("canaryd", ns)
    assert exc.value.status == 404
    with pytest.raises(ApiException) as exc:
        coord.create_namespaced_lease(ns, {"metadata": {"name": "x"}, "spec": {"renewTime": "2024-01-01T10:00:00"}})
    assert exc.value.status == 400


def test_events_with_generate_name(core: client.CoreV1Api, ns: str) -> None:
    ev = {"metadata": {"generateName": "iris-", "namespace": ns},
          "involvedObject": {"apiVersion": f"{G}/{V}", "kind": "InferenceService", "name": "iris", "namespace": ns},
          "reason": "Promoted", "message": "m", "type": "Normal", "source": {"component": "canaryd"}}
    created = core.create_namespaced_event(ns, ev)
    assert created.metadata.name.startswith("iris-") and len(created.metadata.name) == len("iris-") + 5
    assert core.read_namespaced_event(created.metadata.name, ns).reason == "Promoted"
    core.create_namespaced_event(ns, {**ev, "involvedObject": {**ev["involvedObject"], "name": "wine"}})
    listed = core.list_namespaced_event(ns, field_selector="involvedObject.name=iris")
    assert [e.reason for e in listed.items] == ["Promoted"]
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_event(ns, {**ev, "eventTime": "2024-01-01T00:00:00.000000Z"})
    assert exc.value.status == 422
    assert ("FieldValueRequired", "reportingComponent") in causes(exc)


def test_configmaps_and_secrets(core: client.CoreV1Api, ns: str) -> None:
    cm = core.create_namespaced_config_map(ns, {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}})
    assert cm.data == {"a": "1", "b": "2"}
    patched = core.patch_namespaced_config_map("cm", ns, {"data": {"a": None, "c": "3"}})
    assert patched.data == {"b": "2", "c": "3"}
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "bad"}, "data": {"no spaces": "x"}})
    assert exc.value.status == 422 and causes(exc) == [("FieldValueInvalid", "data[no spaces]")]
    secret = core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"token": "hunter2"}})
    assert secret.type == "Opaque" and secret.data == {"token": "aHVudGVyMg=="} and not secret.string_data
    core.delete_namespaced_secret("s", ns)
    assert [s.metadata.name for s in core.list_namespaced_secret(ns).items] == []


def test_namespaces_lifecycle(core: client.CoreV1Api, co: client.CustomObjectsApi) -> None:
    name = f"n-{uuid.uuid4().hex[:8]}"
    created = core.create_namespace({"metadata": {"name": name}})
    assert created.status.phase == "Active" and created.metadata.labels == {"kubernetes.io/metadata.name": name}
    assert name in [n.metadata.name for n in core.list_namespace().items]
    co.create_namespaced_custom_object(G, V, name, P, isvc("iris"))
    core.delete_namespace(name)
    with pytest.raises(ApiException) as exc:
        core.read_namespace(name)
    assert exc.value.status == 404
    assert co.list_cluster_custom_object(G, V, P, field_selector=f"metadata.namespace={name}")["items"] == []
    with pytest.raises(ApiException) as exc:
        core.create_namespace({"metadata": {"name": "Not.A.Label"}})
    assert exc.value.status == 422


# ---------------------------------------------------------------- discovery, dry run, recording, hooks


def test_discovery(api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().git_version == "v1.28.7"
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {G, TG, "coordination.k8s.io", "apiextensions.k8s.io"} <= groups
    core_resources = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"namespaces", "events", "configmaps", "secrets"} <= core_resources
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{P}.{G}")
    assert crd.spec.names.short_names == ["isvc"]
    assert [c.type for c in crd.status.conditions] == ["NamesAccepted", "Established"]


def test_crds_created_through_the_api_are_served_at_once(tmp_path: Path) -> None:
    gizmo = _crd("gizmos", "Gizmo", {"type": "object", "properties": {"spec": {
        "type": "object", "properties": {"n": {"type": "integer"}}}}}, status=False)
    with KubeApiEmulator([]) as emu:
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
        with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:
            ext = client.ApiextensionsV1Api(api_client)
            co = client.CustomObjectsApi(api_client)
            with pytest.raises(ApiException) as exc:
                ext.create_custom_resource_definition({**gizmo, "metadata": {"name": "wrong.name"}})
            assert exc.value.status == 422
            created = ext.create_custom_resource_definition(gizmo)
            assert created.status.accepted_names.kind == "Gizmo"
            body = {"apiVersion": f"{TG}/{TV}", "kind": "Gizmo", "metadata": {"name": "g"}, "spec": {"n": 1, "x": 2}}
            assert co.create_namespaced_custom_object(TG, TV, "default", "gizmos", body)["spec"] == {"n": 1}
            ext.delete_custom_resource_definition(f"gizmos.{TG}")
            with pytest.raises(ApiException) as exc:
                co.list_namespaced_custom_object(TG, TV, "default", "gizmos")
            assert exc.value.status == 404


def test_dry_run_validates_without_storing(co: client.CustomObjectsApi, ns: str) -> None:
    out = co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"), dry_run="All")
    assert out["metadata"]["uid"] and "resourceVersion" not in out["metadata"]
    assert co.list_namespaced_custom_object(G, V, ns, P)["items"] == []
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(G, V, ns, P, isvc("iris", canaryTrafficPercent="x"), dry_run="All")
    assert exc.value.status == 422


def test_every_call_is_recorded_with_its_verb_and_status(
        emulator: KubeApiEmulator, co: client.CustomObjectsApi, ns: str) -> None:
    start = len(emulator.calls)
    co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    co.patch_namespaced_custom_object_status(G, V, ns, P, "iris", {"status": {"url": "u"}})
    co.list_cluster_custom_object(G, V, P)
    with pytest.raises(ApiException):
        co.get_namespaced_custom_object(G, V, ns, P, "nobody")
    co.delete_namespaced_custom_object(G, V, ns, P, "iris")
    calls = [(c.verb, c.resource, c.subresource, c.namespace, c.name, c.status)
             for c in emulator.calls[start:] if c.namespace in (ns, "")]
    assert calls == [("create", P, "", ns, "", 201), ("patch", P, "status", ns, "iris", 200),
                     ("list", P, "", "", "", 200), ("get", P, "", ns, "nobody", 404),
                     ("delete", P, "", ns, "iris", 200)]
    assert all(c.group == G and c.version == V for c in emulator.calls[start:] if c.resource == P)


def test_a_request_hook_can_answer_instead_of_the_emulator(
        emulator: KubeApiEmulator, co: client.CustomObjectsApi, ns: str) -> None:
    async def throttle(info: RequestInfo) -> Response | None:
        if info.verb == "patch" and info.namespace == ns:
            return JSONResponse(status_body(429, "TooManyRequests", "slow down", {"retryAfterSeconds": 1}), 429)
        return None

    co.create_namespaced_custom_object(G, V, ns, P, isvc("iris"))
    emulator.hooks.append(throttle)
    try:
        with pytest.raises(ApiException) as exc:
            co.patch_namespaced_custom_object(G, V, ns, P, "iris", {"spec": {"predictor": {"minReplicas": 2}}})
    finally:
        emulator.hooks.remove(throttle)
    assert exc.value.status == 429 and error(exc)["reason"] == "TooManyRequests"
    assert emulator.calls[-1].status == 429
    assert "minReplicas" not in co.get_namespaced_custom_object(G, V, ns, P, "iris")["spec"]["predictor"]


def test_concurrent_writers_with_preconditions_never_lose_an_update(
        api: client.ApiClient, co: client.CustomObjectsApi, ns: str) -> None:
    co.create_namespaced_custom_object(G, V, ns, P, isvc("counter", minReplicas=0))
    workers, increments = 4, 10

    def work() -> None:
        done = 0
        while done < increments:
            cur = co.get_namespaced_custom_object(G, V, ns, P, "counter")
            cur["spec"]["predictor"]["minReplicas"] += 1
            try:
                co.replace_namespaced_custom_object(G, V, ns, P, "counter", cur)
                done += 1
            except ApiException as e:
                assert e.status == 409

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    final = co.get_namespaced_custom_object(G, V, ns, P, "counter")
    assert final["spec"]["predictor"]["minReplicas"] == workers * increments
    assert final["metadata"]["generation"] == 1 + workers * increments


def test_load_crds_reads_multi_document_yaml_and_the_v1beta1_shape(tmp_path: Path) -> None:
    legacy = {
        "apiVersion": "apiextensions.k8s.io/v1beta1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.old.example.com"},
        "spec": {"group": "old.example.com", "version": "v1alpha2", "scope": "Namespaced",
                 "names": {"plural": "things", "kind": "Thing"}, "subresources": {"status": {}},
                 "validation": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                     "type": "object", "properties": {"n": {"type": "integer"}}}}}}}}
    path = tmp_path / "crds.yaml"
    path.write_text("\n---\n".join(json.dumps(d) for d in (legacy, {"kind": "ConfigMap"}, WIDGET_CRD)))
    crds = load_crds([path])
    assert [c["metadata"]["name"] for c in crds] == ["things.old.example.com", f"widgets.{TG}"]
    with KubeApiEmulator(crds) as emu:
        url = f"{emu.url}/apis/old.example.com/v1alpha2/namespaces/default/things"
        ok = httpx.post(url, json={"apiVersion": "old.example.com/v1alpha2", "kind": "Thing",
                                   "metadata": {"name": "t"}, "spec": {"n": 1, "kept": True}})
        assert ok.status_code == 201 and ok.json()["spec"] == {"kept": True, "n": 1}  # v1beta1: no pruning
        bad = httpx.post(url, json={"apiVersion": "old.example.com/v1alpha2", "kind": "Thing",
                                    "metadata": {"name": "u"}, "spec": {"n": "one"}})
        assert bad.status_code == 422
        assert emu.get_object("old.example.com", "v1alpha2", "things", "t", "default") is not None


def test_command_line_serves_until_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-m", "canaryd.sandbox.kubeapi", "--crd", str(LITE_CRD),
                           "--kubeconfig", str(kubeconfig)], stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == str(kubeconfig)
            with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:
                items = client.CustomObjectsApi(api_client).list_namespaced_custom_object(G, V, "default", P)
                assert items["items"] == []
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_closing_bookmark_never_skips_events_still_queued_for_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (multi-component e2e flake): a watch that ended with events still queued sent a bookmark
    at the store's newest resourceVersion, so the client resumed past them and never saw those writes (the
    KServe emulator then never reconciled a promotion). The bookmark may only claim what was sent."""
    monkeypatch.setattr(kubeapi_app, "MAX_WATCH_BACKLOG", 0)  # end the watch as soon as two events queue up
    with KubeApiEmulator([], namespaces=["default"]) as emu:
        lines: list[dict[str, Any]] = []

        def read() -> None:
            with httpx.stream("GET", f"{emu.url}/api/v1/namespaces/default/configmaps", timeout=30, params={
                    "watch": "1", "resourceVersion": str(emu.store.resource_version),
                    "allowWatchBookmarks": "true", "timeoutSeconds": "20"}) as r:
                lines.extend(json.loads(line) for line in r.iter_lines() if line)

        rvs: list[int] = []

        async def commit_three(info: RequestInfo) -> Response | None:
            """Three commits from inside the server's event loop, so their deliveries all queue up before the
            watch can take the first (from another thread, the loop could take each one as it came: a flake)."""
            if info.name != "trigger":
                return None
            rvs.extend(int(emu.store.create("/configmaps", {"metadata": {"name": f"c{i}", "namespace": "default"}})[
                "metadata"]["resourceVersion"]) for i in range(3))
            return JSONResponse({})

        emu.hooks.append(commit_three)
        t = threading.Thread(target=read)
        t.start()
        deadline = time.monotonic() + 5
        while not any(c.verb == "watch" for c in emu.calls) and time.monotonic() < deadline:
            time.sleep(0.01)
        httpx.get(f"{emu.url}/api/v1/namespaces/default/configmaps/trigger", timeout=10)
        t.join(10)
        sent = [int(e["object"]["metadata"]["resourceVersion"]) for e in lines if e["type"] != "BOOKMARK"]
        bookmark = [int(e["object"]["metadata"]["resourceVersion"]) for e in lines if e["type"] == "BOOKMARK"]
        assert bookmark, lines
        assert sent and sent == rvs[:len(sent)]
        assert len(sent) < 3, "the watch was meant to end with events still queued"
        assert bookmark[-1] == sent[-1] < rvs[-1]  # a client resuming from it gets the rest
