"""Object-level validation that is not in any schema: names, labels, annotations, and the few
per-kind rules of the built-in kinds the sandbox serves (Lease, Event, ConfigMap/Secret keys).

Messages are apimachinery's (`IsDNS1123Subdomain`, `ValidateObjectMeta`, `ValidateLeaseSpec`,
`legacyValidateEvent`), because users and tests read them.
"""

from __future__ import annotations

import re
from typing import Any

from canaryd.sandbox.kubeapi.errors import FORBIDDEN, INVALID, REQUIRED, TOO_LONG, FieldError
from canaryd.sandbox.kubeapi.selectors import label_value_errors, qualified_name_errors

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_TOTAL_ANNOTATION_SIZE = 256 * (1 << 10)


def dns_subdomain_errors(name: str, prefix: bool = False) -> list[str]:
    """NameIsDNSSubdomain (`prefix` for generateName, whose trailing dash is allowed)."""
    if prefix and name.endswith("-"):
        name = name[:-1] + "a"
    errs = []
    if len(name) > 253:
        errs.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.match(name):
        errs.append("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
                    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    return errs


def dns_label_errors(name: str, prefix: bool = False) -> list[str]:
    """NameIsDNSLabel, as namespaces are named."""
    if prefix and name.endswith("-"):
        name = name[:-1] + "a"
    errs = []
    if len(name) > 63:
        errs.append("must be no more than 63 characters")
    if not _DNS1123_LABEL.match(name):
        errs.append("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
                    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
    return errs


def validate_object_meta(meta: dict[str, Any], *, namespaced: bool,
                         name_errors: Any = dns_subdomain_errors) -> list[FieldError]:
    """ValidateObjectMeta: name or generateName, namespace, labels, annotations, owner references."""
    errs: list[FieldError] = []
    name = meta.get("name") or ""
    gen = meta.get("generateName") or ""
    if gen:
        for msg in name_errors(gen, True):
            errs.append(FieldError(INVALID, "metadata.generateName", gen, msg))
    if not name:
        errs.append(FieldError(REQUIRED, "metadata.name", detail="name or generateName is required"))
    else:
        for msg in name_errors(name, False):
            errs.append(FieldError(INVALID, "metadata.name", name, msg))
    ns = meta.get("namespace") or ""
    if namespaced:
        if not ns:
            errs.append(FieldError(REQUIRED, "metadata.namespace"))
        else:
            for msg in dns_label_errors(ns):
                errs.append(FieldError(INVALID, "metadata.namespace", ns, msg))
    elif ns:
        errs.append(FieldError(FORBIDDEN, "metadata.namespace", detail="not allowed on this type"))
    errs += validate_labels(meta.get("labels") or {}, "metadata.labels")
    errs += _validate_annotations(meta.get("annotations") or {})
    for ref in meta.get("ownerReferences") or []:
        errs += _validate_owner_ref(ref, "metadata.ownerReferences")
    for fin in meta.get("finalizers") or []:
        for msg in qualified_name_errors(fin):
            errs.append(FieldError(INVALID, "metadata.finalizers", fin, msg))
    return errs


def validate_labels(labels: dict[str, str], path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for k, v in labels.items():
        for msg in qualified_name_errors(k):
            errs.append(FieldError(INVALID, path, k, msg))
        for msg in label_value_errors(v):
            errs.append(FieldError(INVALID, path, v, msg))
    return errs


def _validate_annotations(annotations: dict[str, str]) -> list[FieldError]:
    errs: list[FieldError] = []
    size = 0
    for k, v in annotations.items():
        for msg in qualified_name_errors(k.lower()):
            errs.append(FieldError(INVALID, "metadata.annotations", k, msg))
        size += len(k) + len(v)
    if size > _TOTAL_ANNOTATION_SIZE:
        errs.append(FieldError(TOO_LONG, "metadata.annotations", "",
                               f"must have at most {_TOTAL_ANNOTATION_SIZE} bytes"))
    return errs


def _validate_owner_ref(ref: dict[str, Any], path: str) -> list[FieldError]:
    errs = []
    if not ref.get("apiVersion"):
        errs.append(FieldError(INVALID, f"{path}.apiVersion", ref.get("apiVersion", ""),
                               "version must not be empty"))
    if not ref.get("kind"):
        errs.append(FieldError(INVALID, f"{path}.kind", ref.get("kind", ""), "kind must not be empty"))
    if not ref.get("name"):
        errs.append(FieldError(INVALID, f"{path}.name", ref.get("name", ""), "name must not be empty"))
    if not ref.get("uid"):
        errs.append(FieldError(INVALID, f"{path}.uid", ref.get("uid", ""), "uid must not be empty"))
    return errs


def validate_meta_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    """ValidateObjectMetaUpdate: identity fields are immutable."""
    errs: list[FieldError] = []
    nm, om = new.get("metadata") or {}, old.get("metadata") or {}
    for key in ("name", "namespace", "uid", "creationTimestamp"):
        if nm.get(key) != om.get(key):
            errs.append(FieldError(INVALID, f"metadata.{key}", nm.get(key, ""), "field is immutable"))
    return errs


# ---------------------------------------------------------------- per-kind rules of built-in kinds


def validate_lease(obj: dict[str, Any], _old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errs = []
    if "leaseDurationSeconds" in spec and spec["leaseDurationSeconds"] <= 0:
        errs.append(FieldError(INVALID, "spec.leaseDurationSeconds", spec["leaseDurationSeconds"],
                               "must be greater than 0"))
    if "leaseTransitions" in spec and spec["leaseTransitions"] < 0:
        errs.append(FieldError(INVALID, "spec.leaseTransitions", spec["leaseTransitions"],
                               "must be greater than or equal to 0"))
    return errs


def validate_event(obj: dict[str, Any], _old: dict[str, Any] | None) -> list[FieldError]:
    """legacyValidateEvent (core/v1 Events): namespaces must agree; new-style events need reporters."""
    errs: list[FieldError] = []
    ns = (obj.get("metadata") or {}).get("namespace", "")
    involved = obj.get("involvedObject") or {}
    ins = involved.get("namespace", "")
    if not obj.get("eventTime"):
        if (not ins and ns not in ("", "default")) or (ins and ins != ns):
            errs.append(FieldError(INVALID, "involvedObject.namespace", ins, "does not match event.namespace"))
        return errs
    if not ins and ns not in ("default", "kube-system"):
        errs.append(FieldError(INVALID, "involvedObject.namespace", ins, "does not match event.namespace"))
    reporter = obj.get("reportingComponent", "")
    if not reporter:
        errs.append(FieldError(REQUIRED, "reportingComponent"))
    for msg in qualified_name_errors(reporter):
        errs.append(FieldError(INVALID, "reportingComponent", reporter, msg))
    limits = (("reportingInstance", 128, True), ("action", 128, True), ("reason", 128, True),
              ("message", 1024, False))
    for key, limit, required in limits:
        value = obj.get(key, "")
        if required and not value:
            errs.append(FieldError(REQUIRED, key))
        if len(value) > limit:
            errs.append(FieldError(INVALID, key, "", f"can have at most {limit} characters"))
    return errs


def validate_config_keys(obj: dict[str, Any], _old: dict[str, Any] | None) -> list[FieldError]:
    """ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`, unique across data and binaryData."""
    errs: list[FieldError] = []
    seen: set[str] = set()
    for section in ("data", "binaryData"):
        for key in obj.get(section) or {}:
            if not _CONFIG_KEY.match(key) or key in (".", ".."):
                errs.append(FieldError(INVALID, f"{section}[{key}]", key,
                                       "a valid config key must consist of alphanumeric characters, '-', '_' "
                                       "or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used "
                                       "for validation is '[-._a-zA-Z0-9]+')"))
            if key in seen:
                errs.append(FieldError(INVALID, f"{section}[{key}]", key, "duplicate of key present in data"))
            seen.add(key)
    return errs
