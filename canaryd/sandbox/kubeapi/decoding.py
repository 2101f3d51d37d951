"""Built-in kinds decode into Go structs: wrong JSON types fail the request, nulls mean "unset",
and timestamps are parsed and re-printed (metav1.Time to the second, MicroTime to the microsecond).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from canaryd.sandbox.kubeapi.schema import Schema, join_path, json_type
from canaryd.sandbox.kubeapi.schemavalidation import DATE_TIME

_GO_JSON_TYPE = {"string": "string", "integer": "number", "number": "number", "boolean": "bool",
                 "array": "array", "object": "object"}


class DecodeError(Exception):
    """A value a Go struct could not hold: the apiserver answers 400 BadRequest."""


def decode_typed(x: Any, s: Schema, kind: str, path: str = "") -> None:
    """Check and normalise a built-in object like encoding/json into a Go struct would.

    Nulls mean "unset" (dropped); a wrong JSON type fails the whole request; timestamps must be
    RFC 3339 and are re-serialised at the field's precision (seconds, or microseconds for MicroTime).
    """
    if isinstance(x, dict):
        for k in list(x):
            v = x[k]
            sub = s.properties.get(k, s.additional)
            if sub is None:
                continue
            if v is None:
                del x[k]
                continue
            _decode_value(x, k, v, sub, kind, join_path(path, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            if s.items is not None and v is not None:
                _decode_value(x, i, v, s.items, kind, f"{path}[{i}]")


def _decode_value(parent: Any, key: Any, v: Any, s: Schema, kind: str, path: str) -> None:
    jt = json_type(v)
    if s.types:
        want = s.types[0] if len(s.types) == 1 else None
        ok = jt in s.types or (jt == "integer" and "number" in s.types) or (
            jt == "number" and "integer" in s.types and float(v).is_integer())
        if not ok:
            go_type = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool",
                       "array": "[]", "object": "map"}.get(want or "", "value")
            raise DecodeError(f"json: cannot unmarshal {_GO_JSON_TYPE.get(jt, jt)} into Go struct field "
                              f"{kind}.{path} of type {go_type}")
        if jt == "number" and "integer" in s.types:
            parent[key] = int(v)
    if s.time_precision and isinstance(v, str):
        parent[key] = normalise_time(v, s.time_precision)
    if isinstance(v, dict | list):
        decode_typed(v, s, kind, path)


def normalise_time(value: str, precision: str) -> str:
    """Parse RFC 3339 (as metav1.Time/MicroTime do) and print it back in UTC at that precision."""
    if not DATE_TIME.match(value):
        raise DecodeError(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse '
                          f'"{value}" as "2006-01-02T15:04:05Z07:00"')
    text = value.replace("z", "Z").replace("t", "T").replace(" ", "T")
    main, _, rest = text.partition(".")
    frac = ""
    if rest:
        digits = re.match(r"\d+", rest)
        frac = digits.group(0) if digits else ""
        tz = rest[len(frac):]
    else:
        tz = main[19:]
        main = main[:19]
    tz = "+00:00" if tz == "Z" else tz
    dt = datetime.fromisoformat(f"{main[:19]}.{(frac + '000000')[:6]}{tz}").astimezone(UTC)
    if precision == "us":
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
