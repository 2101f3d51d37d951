"""What the emulator serves: one `ResourceType` per (group, version, plural), built-in or from a CRD.

A resource type carries everything that makes one kind behave differently from another on the same
generic code path: scope, schema, status subresource, name rules, the fields a field selector may use,
and the per-kind hooks (Secret's `stringData`, Lease and Event validation).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from canaryd.sandbox.kubeapi.errors import INVALID, FieldError
from canaryd.sandbox.kubeapi.schema import Schema, compile_schema
from canaryd.sandbox.kubeapi.validation import (
    dns_label_errors,
    dns_subdomain_errors,
    validate_config_keys,
    validate_event,
    validate_lease,
)

Validator = Callable[[dict[str, Any], dict[str, Any] | None], list[FieldError]]
NameRule = Callable[[str, bool], list[str]]

BASE_FIELD_SELECTORS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(eq=False)
class ResourceType:
    """One served (group, version, resource)."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    schema: Schema
    list_kind: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    builtin: bool = False
    prune_unknown: bool = True  # false for v1beta1 CRDs that keep unknown fields
    storage_version: str = ""
    allow_create_on_update: bool = False
    allow_unconditional_update: bool = True
    name_rule: NameRule = dns_subdomain_errors
    field_selectors: frozenset[str] = BASE_FIELD_SELECTORS
    validator: Validator | None = None
    prepare: Callable[[dict[str, Any]], None] | None = None
    printer_columns: tuple[dict[str, Any], ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.list_kind:
            self.list_kind = f"{self.kind}List"
        if not self.storage_version:
            self.storage_version = self.version

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> str:
        """Versions of one resource share their objects, as they share one etcd prefix."""
        return f"{self.group}/{self.plural}"

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def allows_field(self, name: str) -> bool:
        return name in self.field_selectors


# ---------------------------------------------------------------- built-in kinds


def _s(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "x-emulator-time": "s"}
_MICRO_TIME = {"type": "string", "x-emulator-time": "us"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_STR_LIST = {"type": "array", "items": {"type": "string"}}

OBJECT_META: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": _s(), "generateName": _s(), "namespace": _s(), "selfLink": _s(), "uid": _s(),
        "resourceVersion": _s(), "generation": _INT, "creationTimestamp": _TIME, "deletionTimestamp": _TIME,
        "deletionGracePeriodSeconds": _INT, "labels": _STR_MAP, "annotations": _STR_MAP,
        "ownerReferences": {"type": "array", "items": {"type": "object", "properties": {
            "apiVersion": _s(), "kind": _s(), "name": _s(), "uid": _s(), "controller": _BOOL,
            "blockOwnerDeletion": _BOOL}}},
        "finalizers": _STR_LIST,
        "managedFields": {"type": "array", "items": {"type": "object",
                                                     "x-kubernetes-preserve-unknown-fields": True}},
    },
}
OBJECT_META_SCHEMA = compile_schema(OBJECT_META)

_OBJECT_REFERENCE = {"type": "object", "properties": {
    k: _s() for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")}}


def _root(**props: Any) -> Schema:
    return compile_schema({"type": "object", "properties": {
        "apiVersion": _s(), "kind": _s(), "metadata": OBJECT_META, **props}})


def _secret_prepare(obj: dict[str, Any]) -> None:
    """v1 -> internal conversion: `stringData` overwrites `data` (base64) and is dropped; type defaults."""
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    obj.setdefault("type", "Opaque")
    _check_base64(obj, "data", "Secret")


def _configmap_prepare(obj: dict[str, Any]) -> None:
    _check_base64(obj, "binaryData", "ConfigMap")


class Base64Error(ValueError):
    pass


def _check_base64(obj: dict[str, Any], section: str, kind: str) -> None:
    for v in (obj.get(section) or {}).values():
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise Base64Error(f'{kind} in version "v1" cannot be handled as a {kind}: illegal base64 data: {e}'
                              ) from None


def _namespace_prepare(obj: dict[str, Any]) -> None:
    name = (obj.get("metadata") or {}).get("name")
    if name:
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def builtin_types() -> list[ResourceType]:
    """The core and coordination kinds canaryd and the sandbox use."""
    return [
        ResourceType(
            "", "v1", "namespaces", "namespace", "Namespace", namespaced=False, builtin=True,
            short_names=("ns",), status_subresource=True, name_rule=dns_label_errors,
            field_selectors=BASE_FIELD_SELECTORS | {"status.phase"}, prepare=_namespace_prepare,
            schema=_root(
                spec={"type": "object", "properties": {"finalizers": _STR_LIST}},
                status={"type": "object", "properties": {"phase": _s(), "conditions": {"type": "array", "items": {
                    "type": "object", "properties": {"type": _s(), "status": _s(), "lastTransitionTime": _TIME,
                                                     "reason": _s(), "message": _s()}}}}})),
        ResourceType(
            "", "v1", "configmaps", "configmap", "ConfigMap", namespaced=True, builtin=True, short_names=("cm",),
            validator=validate_config_keys, prepare=_configmap_prepare,
            schema=_root(data=_STR_MAP, binaryData=_STR_MAP, immutable=_BOOL)),
        ResourceType(
            "", "v1", "secrets", "secret", "Secret", namespaced=True, builtin=True,
            field_selectors=BASE_FIELD_SELECTORS | {"type"}, validator=validate_config_keys,
            prepare=_secret_prepare,
            schema=_root(data=_STR_MAP, stringData=_STR_MAP, type=_s(), immutable=_BOOL)),
        ResourceType(
            "", "v1", "events", "event", "Event", namespaced=True, builtin=True, short_names=("ev",),
            allow_create_on_update=True, validator=validate_event,
            field_selectors=BASE_FIELD_SELECTORS | {
                "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                "reason", "reportingComponent", "source", "type"},
            schema=_root(
                involvedObject=_OBJECT_REFERENCE, reason=_s(), message=_s(),
                source={"type": "object", "properties": {"component": _s(), "host": _s()}},
                firstTimestamp=_TIME, lastTimestamp=_TIME, count=_INT, type=_s(), eventTime=_MICRO_TIME,
                series={"type": "object", "properties": {"count": _INT, "lastObservedTime": _MICRO_TIME}},
                action=_s(), related=_OBJECT_REFERENCE, reportingComponent=_s(), reportingInstance=_s())),
        ResourceType(
            "coordination.k8s.io", "v1", "leases", "lease", "Lease", namespaced=True, builtin=True,
            validator=validate_lease,
            schema=_root(spec={"type": "object", "properties": {
                "holderIdentity": _s(), "leaseDurationSeconds": _INT, "acquireTime": _MICRO_TIME,
                "renewTime": _MICRO_TIME, "leaseTransitions": _INT}})),
    ]


# ---------------------------------------------------------------- CRDs


class CRDError(ValueError):
    """A document that is not a usable CustomResourceDefinition."""


def is_crd(doc: Any) -> bool:
    return (isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
            and str(doc.get("apiVersion", "")).startswith("apiextensions.k8s.io/"))


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of an apiextensions.k8s.io/v1 (or v1beta1) CRD."""
    if not is_crd(crd):
        raise CRDError("not an apiextensions.k8s.io CustomResourceDefinition")
    spec = crd.get("spec") or {}
    try:
        group = spec["group"]
        names = spec["names"]
        plural, kind = names["plural"], names["kind"]
    except (KeyError, TypeError) as e:
        raise CRDError(f"CRD {crd.get('metadata', {}).get('name')!r} lacks {e}") from None
    v1beta1 = crd["apiVersion"] == "apiextensions.k8s.io/v1beta1"
    # v1beta1 CRDs keep unknown fields unless they opt in to pruning (v1 keeps the field when converted).
    keep_unknown = spec.get("preserveUnknownFields", v1beta1) is True
    versions = spec.get("versions") or [{"name": spec.get("version"), "served": True, "storage": True}]
    storage = next((v["name"] for v in versions if v.get("storage")), versions[0]["name"])
    top_schema = (spec.get("validation") or {}).get("openAPIV3Schema")
    out = []
    for v in versions:
        if not v.get("name") or not v.get("served", True):
            continue
        raw = ((v.get("schema") or {}).get("openAPIV3Schema")) or top_schema
        schema = compile_schema(raw)
        subresources = v.get("subresources") or spec.get("subresources") or {}
        columns = v.get("additionalPrinterColumns") or spec.get("additionalPrinterColumns") or ()
        out.append(ResourceType(
            group, v["name"], plural, names.get("singular") or kind.lower(), kind,
            namespaced=spec.get("scope", "Namespaced") == "Namespaced", schema=schema,
            list_kind=names.get("listKind") or f"{kind}List",
            short_names=tuple(names.get("shortNames") or ()), categories=tuple(names.get("categories") or ()),
            status_subresource="status" in subresources, storage_version=storage,
            allow_unconditional_update=False, printer_columns=tuple(columns), prune_unknown=not keep_unknown,
        ))
    if not out:
        raise CRDError(f"CRD {crd.get('metadata', {}).get('name')!r} serves no version")
    return out


def validate_crd_object(obj: dict[str, Any], _old: dict[str, Any] | None) -> list[FieldError]:
    """A CRD written through the API must be servable and named `<plural>.<group>`."""
    try:
        types = types_from_crd(obj)
    except CRDError as e:
        return [FieldError(INVALID, "spec", "", str(e))]
    want = f"{types[0].plural}.{types[0].group}"
    name = (obj.get("metadata") or {}).get("name", "")
    if name != want:
        return [FieldError(INVALID, "metadata.name", name, 'must be spec.names.plural+"."+spec.group')]
    return []


class Registry:
    """The resource types being served, looked up the ways requests and discovery need."""

    def __init__(self, types: Iterable[ResourceType] = ()) -> None:
        self._by_gvr: dict[tuple[str, str, str], ResourceType] = {}
        for t in types:
            self.add(t)

    def add(self, t: ResourceType) -> None:
        self._by_gvr[(t.group, t.version, t.plural)] = t

    def remove(self, t: ResourceType) -> None:
        self._by_gvr.pop((t.group, t.version, t.plural), None)

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvr.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        return list(self._by_gvr.values())

    def groups(self) -> dict[str, list[str]]:
        """group -> served versions (preferred = storage version first, as discovery lists them)."""
        out: dict[str, list[str]] = {}
        for t in self._by_gvr.values():
            versions = out.setdefault(t.group, [])
            if t.version not in versions:
                if t.version == t.storage_version:
                    versions.insert(0, t.version)
                else:
                    versions.append(t.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self._by_gvr.values() if t.group == group and t.version == version]
