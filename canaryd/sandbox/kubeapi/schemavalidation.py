"""Validation of decoded JSON against a compiled structural schema, worded like kube-apiserver.

kube-openapi's validators decide the order and wording of each error and apiextensions turns them into
field errors (`kubeOpenAPIResultToFieldErrors`); users read these messages and tests compare them, so
both are mirrored here, including their quirks (an anyOf failure reported on the field `<nil>`, a too
long string reported as "value is too long"). Formats other than those kube-apiserver validates
(int32, int64, ...) are ignored, as the apiserver strips them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import uuid
from datetime import datetime
from typing import Any

from canaryd.sandbox.kubeapi.errors import (
    DUPLICATE,
    INVALID,
    NOT_SUPPORTED,
    REQUIRED,
    TOO_LONG,
    TOO_MANY,
    TYPE_INVALID,
    FieldError,
    go_float,
    go_quote,
)
from canaryd.sandbox.kubeapi.schema import Schema, join_path, json_type

DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")
_HOSTNAME = re.compile(
    r"^(?=.{1,255}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}([0-9A-Fa-f]{2})$")
_HEXCOLOR = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_RGBCOLOR = re.compile(r"^rgb\(\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*\)$")
_BSON = re.compile(r"^[0-9a-fA-F]{24}$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:.*|^/.*")


def _valid_format(fmt: str, value: str) -> bool:
    try:
        if fmt == "datetime":
            return bool(DATE_TIME.match(value))
        if fmt == "date":
            if not _DATE.match(value):
                return False
            datetime.strptime(value, "%Y-%m-%d")
            return True
        if fmt == "duration":
            return bool(_DURATION.match(value))
        if fmt == "byte":
            base64.b64decode(value, validate=True)
            return True
        if fmt == "ipv4":
            ipaddress.IPv4Address(value)
            return True
        if fmt == "ipv6":
            ipaddress.IPv6Address(value)
            return True
        if fmt == "cidr":
            ipaddress.ip_network(value, strict=False)
            return "/" in value
        if fmt.startswith("uuid"):
            u = uuid.UUID(value)
            return fmt == "uuid" or u.version == int(fmt[4:])
        if fmt == "hostname":
            return bool(_HOSTNAME.match(value))
        if fmt == "email":
            return bool(_EMAIL.match(value))
        if fmt == "mac":
            return bool(_MAC.match(value))
        if fmt == "hexcolor":
            return bool(_HEXCOLOR.match(value))
        if fmt == "rgbcolor":
            return bool(_RGBCOLOR.match(value))
        if fmt == "bsonobjectid":
            return bool(_BSON.match(value))
        if fmt == "uri":
            return bool(_URI.match(value))
    except (ValueError, binascii.Error):
        return False
    return True


# ---------------------------------------------------------------- validation (kube-openapi validate)


def _field(path: str) -> str:
    """kubeOpenAPIResultToFieldErrors: the error's name, less one leading dot, or `<nil>` for none."""
    if not path or path == ".":
        return "<nil>"
    return path[1:] if path.startswith(".") else path


def _type_error(path: str, type_name: str, actual: str) -> FieldError:
    return FieldError(TYPE_INVALID, _field(path), actual,
                      f"{path} in body must be of type {type_name}: {go_quote(actual)}")


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else go_float(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _enum_equal(data: Any, allowed: Any) -> bool:
    if isinstance(data, bool) or isinstance(allowed, bool):
        return type(data) is type(allowed) and data == allowed
    if isinstance(data, int | float) and isinstance(allowed, int | float):
        return bool(data == allowed)
    return bool(data == allowed)


def validate(data: Any, s: Schema, path: str = "") -> list[FieldError]:
    """All schema violations of data, as field errors worded like kube-apiserver's."""
    errs: list[FieldError] = []
    _validate(data, s, path, errs)
    return errs


def _validate(data: Any, s: Schema, path: str, errs: list[FieldError]) -> None:
    if data is None:
        if s.types and "null" not in s.types and not s.nullable:
            errs.append(_type_error(path, ",".join(s.types), "null"))
        if s.enum is not None and not any(v is None for v in s.enum):
            _enum_error(data, s, path, errs)
        return
    jt = json_type(data)
    if s.types or s.format:
        _check_type(data, jt, s, path, errs)
    if s.any_of or s.all_of or s.one_of or s.not_ is not None:
        _check_composition(data, s, path, errs)
    if jt == "string":
        _check_string(data, s, path, errs)
    elif jt in ("integer", "number"):
        _check_number(data, s, path, errs)
    elif jt == "array":
        _check_array(data, s, path, errs)
    if s.enum is not None and not any(_enum_equal(data, v) for v in s.enum):
        _enum_error(data, s, path, errs)
    if jt == "object":
        _check_object(data, s, path, errs)


def _check_type(data: Any, jt: str, s: Schema, path: str, errs: list[FieldError]) -> None:
    types = s.types
    is_float_int = jt == "number" and float(data).is_integer() and "integer" in types
    is_int_float = jt == "integer" and "number" in types
    if jt not in ("string", "array") and s.format and not (jt in types or is_float_int or is_int_float):
        data_format = {"integer": "int64", "number": "float64"}.get(jt, "")
        errs.append(_type_error(path, s.format, data_format))
        return
    if not ("number" in types or "integer" in types) and s.format and jt in ("string", "array"):
        return
    if types and not (jt in types or is_float_int or is_int_float):
        errs.append(_type_error(path, ",".join(types), jt))


def _check_composition(data: Any, s: Schema, path: str, errs: list[FieldError]) -> None:
    if s.any_of:
        results = [validate(data, sub, path) for sub in s.any_of]
        if not any(not r for r in results):
            errs.append(FieldError(INVALID, "<nil>", "", f"{go_quote(path)} must validate at least one schema (anyOf)"))
            errs.extend(_fewest(results))
    if s.one_of:
        results = [validate(data, sub, path) for sub in s.one_of]
        ok = sum(1 for r in results if not r)
        if ok != 1:
            extra = "Found none valid" if ok == 0 else f"Found {ok} valid alternatives"
            errs.append(FieldError(INVALID, "<nil>", "",
                                   f"{go_quote(path)} must validate one and only one schema (oneOf). {extra}"))
            if ok == 0:
                errs.extend(_fewest(results))
    if s.all_of:
        results = [validate(data, sub, path) for sub in s.all_of]
        for r in results:
            errs.extend(r)
        passed = sum(1 for r in results if not r)
        if passed != len(results):
            extra = ". None validated" if passed == 0 else ""
            errs.append(FieldError(INVALID, "<nil>", "",
                                   f"{go_quote(path)} must validate all the schemas (allOf){extra}"))
    if s.not_ is not None and not validate(data, s.not_, path):
        errs.append(FieldError(INVALID, "<nil>", "", f"{go_quote(path)} must not validate the schema (not)"))


def _fewest(results: list[list[FieldError]]) -> list[FieldError]:
    """The failing alternative that came closest (kube-openapi keeps the best match's errors)."""
    best = results[0]
    for r in results[1:]:
        if len(r) < len(best):
            best = r
    return best


def _check_string(data: str, s: Schema, path: str, errs: list[FieldError]) -> None:
    if s.max_length is not None and len(data) > s.max_length:
        errs.append(FieldError(TOO_LONG, _field(path), data, "value is too long"))
    elif s.min_length is not None and len(data) < s.min_length:
        errs.append(FieldError(INVALID, _field(path), data,
                               f"{path} in body should be at least {s.min_length} chars long"))
    elif s.pattern is not None:
        if s.pattern_re is None:
            errs.append(FieldError(INVALID, _field(path), data,
                                   f"{path} in body should match '{s.pattern}, but pattern is invalid'"))
        elif not s.pattern_re.search(data):
            errs.append(FieldError(INVALID, _field(path), data, f"{path} in body should match '{s.pattern}'"))
    if s.format and not _valid_format(s.format.replace("-", ""), data):
        errs.append(FieldError(TYPE_INVALID, _field(path), data,
                               f"{path} in body must be of type {s.format}: {go_quote(data)}"))


def _check_number(data: float, s: Schema, path: str, errs: list[FieldError]) -> None:
    as_int = _is_int(data)
    if s.multiple_of is not None and s.multiple_of != 0:
        factor = s.multiple_of
        q = data / factor
        if not float(q).is_integer():
            errs.append(FieldError(INVALID, _field(path), data,
                                   f"{path} in body should be a multiple of {_num(int(factor) if as_int else factor)}"))
    if s.minimum is not None:
        bound: float = int(s.minimum) if as_int else s.minimum
        if (data <= bound) if s.exclusive_minimum else (data < bound):
            word = "greater than" if s.exclusive_minimum else "greater than or equal to"
            errs.append(FieldError(INVALID, _field(path), data, f"{path} in body should be {word} {_num(bound)}"))
    if s.maximum is not None:
        bound = int(s.maximum) if as_int else s.maximum
        if (data >= bound) if s.exclusive_maximum else (data > bound):
            word = "less than" if s.exclusive_maximum else "less than or equal to"
            errs.append(FieldError(INVALID, _field(path), data, f"{path} in body should be {word} {_num(bound)}"))


def _check_array(data: list[Any], s: Schema, path: str, errs: list[FieldError]) -> None:
    if s.items is not None:
        for i, v in enumerate(data):
            _validate(v, s.items, f"{path}[{i}]", errs)
    if s.min_items is not None and len(data) < s.min_items:
        errs.append(FieldError(INVALID, _field(path), len(data),
                               f"{path} in body should have at least {s.min_items} items"))
    if s.max_items is not None and len(data) > s.max_items:
        errs.append(FieldError(TOO_MANY, _field(path), len(data), "has too many items"))
    if s.unique_items:
        seen: list[Any] = []
        for v in data:
            if v in seen:
                errs.append(FieldError(INVALID, _field(path), "", f"{path} in body shouldn't contain duplicates"))
                break
            seen.append(v)


def _enum_error(data: Any, s: Schema, path: str, errs: list[FieldError]) -> None:

    allowed = [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in s.enum or []]
    detail = "supported values: " + ", ".join(go_quote(v) for v in allowed) if allowed else ""
    errs.append(FieldError(NOT_SUPPORTED, _field(path), data, detail))


def _check_object(data: dict[str, Any], s: Schema, path: str, errs: list[FieldError]) -> None:
    n = len(data)
    if s.min_properties is not None and n < s.min_properties:
        errs.append(FieldError(INVALID, _field(path), s.min_properties,
                               f"{path} in body should have at least {s.min_properties} properties"))
        return
    if s.max_properties is not None and n > s.max_properties:
        errs.append(FieldError(TOO_MANY, _field(path), s.max_properties, "has too many items"))
        return
    for k, v in data.items():
        prop = s.properties.get(k)
        if prop is not None:
            _validate(v, prop, k if not path else f"{path}.{k}", errs)
        elif s.additional is not None:
            _validate(v, s.additional, f"{path}.{k}", errs)
    for k in s.required:
        if k not in data:
            errs.append(FieldError(REQUIRED, _field(f"{path}.{k}")))


# ---------------------------------------------------------------- list types (listtype/validation.go)


def validate_list_types(data: Any, s: Schema | None, path: str = "") -> list[FieldError]:
    """x-kubernetes-list-type set/map: duplicates are 422 Duplicate value errors."""
    errs: list[FieldError] = []
    _list_types(data, s, path, errs)
    return errs


def _list_types(x: Any, s: Schema | None, path: str, errs: list[FieldError]) -> None:
    if s is None:
        return
    if isinstance(x, dict):
        for k, v in x.items():
            sub = s.properties.get(k, s.additional)
            _list_types(v, sub, join_path(path, k), errs)
    elif isinstance(x, list):
        if s.list_type == "set":
            seen: list[Any] = []
            for i, v in enumerate(x):
                if v in seen:
                    errs.append(FieldError(DUPLICATE, f"{path}[{i}]", v))
                else:
                    seen.append(v)
        elif s.list_type == "map" and s.list_map_keys:
            seen_keys: list[dict[str, Any]] = []
            for i, v in enumerate(x):
                if not isinstance(v, dict):
                    continue
                key = {k: v[k] for k in s.list_map_keys if k in v}
                if key in seen_keys:
                    errs.append(FieldError(DUPLICATE, f"{path}[{i}]", key))
                else:
                    seen_keys.append(key)
        for i, v in enumerate(x):
            _list_types(v, s.items, f"{path}[{i}]", errs)


