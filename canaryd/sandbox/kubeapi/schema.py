"""Structural OpenAPI v3 schemas, compiled, and what the apiserver does with them before validating.

A CRD's `openAPIV3Schema` decides what a custom resource may hold. The apiserver applies it in three
steps, and canaryd relies on each: unknown fields are *pruned* silently (200, field gone), missing
fields get their `default`, and what remains is *validated* (schemavalidation.py). The `jsonschema`
package validates but neither prunes nor defaults, and words its errors differently, so this is a
small walker mirroring `apiextensions-apiserver/pkg/apiserver/schema/{pruning,defaulting}`. Built-in
kinds (ConfigMap, Lease, ...) reuse it with hand-written schemas, so that they prune like Go structs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Final

MISSING: Final = object()
META_FIELDS: Final = frozenset({"apiVersion", "kind", "metadata"})
# Formats kube-apiserver validates; every other format (int32, int64, float, ...) is stripped.
SUPPORTED_FORMATS: Final = frozenset({
    "bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid", "uuid3", "uuid4",
    "uuid5", "isbn", "isbn10", "isbn13", "creditcard", "ssn", "hexcolor", "rgbcolor", "byte", "password",
    "date", "duration", "datetime",
})


@dataclass(eq=False)
class Schema:
    """One compiled schema node; `types` empty means any type."""

    types: tuple[str, ...] = ()
    nullable: bool = False
    format: str = ""
    properties: dict[str, Schema] = field(default_factory=dict)
    additional: Schema | None = None
    items: Schema | None = None
    required: tuple[str, ...] = ()
    enum: list[Any] | None = None
    maximum: float | None = None
    minimum: float | None = None
    exclusive_maximum: bool = False
    exclusive_minimum: bool = False
    multiple_of: float | None = None
    max_length: int | None = None
    min_length: int | None = None
    max_items: int | None = None
    min_items: int | None = None
    max_properties: int | None = None
    min_properties: int | None = None
    unique_items: bool = False
    pattern: str | None = None
    pattern_re: re.Pattern[str] | None = None
    preserve_unknown: bool = False
    embedded: bool = False
    any_of: tuple[Schema, ...] = ()
    all_of: tuple[Schema, ...] = ()
    one_of: tuple[Schema, ...] = ()
    not_: Schema | None = None
    default: Any = MISSING
    list_type: str | None = None
    list_map_keys: tuple[str, ...] = ()
    time_precision: str | None = None  # built-in kinds only: "s" (metav1.Time) or "us" (MicroTime)


def compile_schema(d: dict[str, Any] | None) -> Schema:
    """Compile a JSONSchemaProps dict (a CRD's openAPIV3Schema) into `Schema` nodes."""
    if not d:
        return Schema(preserve_unknown=True)
    s = Schema()
    t = d.get("type")
    if d.get("x-kubernetes-int-or-string"):
        s.types = ("integer", "string")
    elif isinstance(t, str) and t:
        s.types = (t,)
    s.nullable = bool(d.get("nullable", False))
    fmt = str(d.get("format") or "")
    s.format = fmt if fmt.replace("-", "") in SUPPORTED_FORMATS else ""
    s.properties = {k: compile_schema(v) for k, v in (d.get("properties") or {}).items()}
    ap = d.get("additionalProperties")
    if isinstance(ap, dict):
        s.additional = compile_schema(ap)
    elif ap is True:
        s.additional = Schema(preserve_unknown=True)
    items = d.get("items")
    if isinstance(items, dict):
        s.items = compile_schema(items)
    s.required = tuple(d.get("required") or ())
    if "enum" in d and d["enum"] is not None:
        s.enum = list(d["enum"])
    s.maximum = d.get("maximum")
    s.minimum = d.get("minimum")
    s.exclusive_maximum = bool(d.get("exclusiveMaximum", False))
    s.exclusive_minimum = bool(d.get("exclusiveMinimum", False))
    s.multiple_of = d.get("multipleOf")
    s.max_length = d.get("maxLength")
    s.min_length = d.get("minLength")
    s.max_items = d.get("maxItems")
    s.min_items = d.get("minItems")
    s.max_properties = d.get("maxProperties")
    s.min_properties = d.get("minProperties")
    s.unique_items = bool(d.get("uniqueItems", False))
    if d.get("pattern"):
        s.pattern = str(d["pattern"])
        try:
            s.pattern_re = re.compile(s.pattern)
        except re.error:
            s.pattern_re = None
    s.preserve_unknown = bool(d.get("x-kubernetes-preserve-unknown-fields", False))
    s.embedded = bool(d.get("x-kubernetes-embedded-resource", False))
    s.any_of = tuple(compile_schema(x) for x in d.get("anyOf") or ())
    s.all_of = tuple(compile_schema(x) for x in d.get("allOf") or ())
    s.one_of = tuple(compile_schema(x) for x in d.get("oneOf") or ())
    if isinstance(d.get("not"), dict):
        s.not_ = compile_schema(d["not"])
    if "default" in d:
        s.default = d["default"]
    s.list_type = d.get("x-kubernetes-list-type")
    s.list_map_keys = tuple(d.get("x-kubernetes-list-map-keys") or ())
    s.time_precision = d.get("x-emulator-time")
    return s


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


# ---------------------------------------------------------------- pruning (pruning/algorithm.go)


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(obj: Any, s: Schema, *, root: bool = True) -> list[str]:
    """Drop fields the schema does not know, in place; return their paths (sorted, for warnings).

    The resource root, like an embedded resource, keeps apiVersion/kind/metadata untouched here:
    metadata is coerced separately (ObjectMeta knows its own fields).
    """
    pruned: list[str] = []
    if root and not s.embedded:
        s = copy.copy(s)
        s.embedded = True
    _prune(obj, s, "", pruned)
    pruned.sort()
    return pruned


def _prune(x: Any, s: Schema | None, path: str, pruned: list[str]) -> None:
    if s is not None and s.preserve_unknown:
        _skip_prune(x, s, path, pruned)
        return
    if isinstance(x, dict):
        if s is None:
            for k in list(x):
                pruned.append(join_path(path, k))
                del x[k]
            return
        for k in list(x):
            if s.embedded and k in META_FIELDS:
                continue
            prop = s.properties.get(k)
            if prop is not None:
                _prune(x[k], prop, join_path(path, k), pruned)
            elif s.additional is not None:
                _prune(x[k], s.additional, join_path(path, k), pruned)
            else:
                pruned.append(join_path(path, k))
                del x[k]
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _prune(v, s.items if s is not None else None, f"{path}[{i}]", pruned)


def _skip_prune(x: Any, s: Schema, path: str, pruned: list[str]) -> None:
    if isinstance(x, dict):
        for k in list(x):
            if s.embedded and k in META_FIELDS:
                continue
            prop = s.properties.get(k)
            if prop is not None:
                _prune(x[k], prop, join_path(path, k), pruned)
            elif s.additional is not None:
                _prune(x[k], s.additional, join_path(path, k), pruned)
    elif isinstance(x, list) and s.items is not None:
        for i, v in enumerate(x):
            _skip_prune(v, s.items, f"{path}[{i}]", pruned)


def embedded_objects(x: Any, s: Schema | None) -> list[tuple[str, dict[str, Any]]]:
    """Every embedded resource inside x, with its path (their metadata is coerced like the root's)."""
    out: list[tuple[str, dict[str, Any]]] = []
    _find_embedded(x, s, "", out, root=True)
    return out


def _find_embedded(x: Any, s: Schema | None, path: str, out: list[tuple[str, dict[str, Any]]],
                   root: bool = False) -> None:
    if s is None:
        return
    if isinstance(x, dict):
        if s.embedded and not root:
            out.append((path, x))
        for k, v in x.items():
            if (s.embedded or root) and k in META_FIELDS:
                continue
            sub = s.properties.get(k, s.additional)
            _find_embedded(v, sub, join_path(path, k), out)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _find_embedded(v, s.items, f"{path}[{i}]", out)


# ---------------------------------------------------------------- defaulting (defaulting/algorithm.go)


def _non_nullable_null(v: Any, s: Schema | None) -> bool:
    return v is None and s is not None and not s.nullable


def prune_nulls(x: Any, s: Schema | None) -> None:
    """PruneNonNullableNullsWithoutDefaults: `field: null` where null is not allowed means "unset"."""
    if s is None:
        return
    if isinstance(x, dict):
        for k in list(x):
            v = x[k]
            prop = s.properties.get(k)
            if prop is None:
                prop = s.additional
                if prop is None:
                    continue
            if v is None and not prop.nullable and prop.default is MISSING:
                del x[k]
            else:
                prune_nulls(v, prop)
    elif isinstance(x, list):
        for v in x:
            prune_nulls(v, s.items)


def apply_defaults(x: Any, s: Schema | None) -> None:
    """Fill `default`s of missing (or non-nullable null) properties, recursively, in place."""
    if s is None:
        return
    if isinstance(x, dict):
        for k, prop in s.properties.items():
            if prop.default is MISSING:
                continue
            if k not in x or _non_nullable_null(x[k], prop):
                x[k] = copy.deepcopy(prop.default)
        for k, v in x.items():
            sub = s.properties.get(k)
            if sub is not None:
                apply_defaults(v, sub)
            elif s.additional is not None:
                if _non_nullable_null(v, s.additional) and s.additional.default is not MISSING:
                    x[k] = copy.deepcopy(s.additional.default)
                apply_defaults(x[k], s.additional)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            if _non_nullable_null(v, s.items) and s.items is not None and s.items.default is not MISSING:
                x[i] = copy.deepcopy(s.items.default)
            apply_defaults(x[i], s.items)




def canonical_order(x: Any, s: Schema | None, *, struct: bool) -> Any:
    """Keys in the order the real server writes them: a Go struct's field order for built-in kinds
    (`struct=True`; maps sorted), sorted everywhere for custom resources (unstructured maps)."""
    if isinstance(x, dict):
        if struct and s is not None and s.properties:
            keys = [k for k in s.properties if k in x] + sorted(k for k in x if k not in s.properties)
        else:
            keys = sorted(x)
        out = {}
        for k in keys:
            sub = None if s is None else s.properties.get(k, s.additional)
            out[k] = canonical_order(x[k], sub, struct=struct)
        return out
    if isinstance(x, list):
        return [canonical_order(v, None if s is None else s.items, struct=struct) for v in x]
    return x
