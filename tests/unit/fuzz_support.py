"""Document surgery shared by the fuzzing tests: a path into a YAML document, and copies of the document
with the value at that path replaced or removed."""

from __future__ import annotations

import copy
from typing import Any

import yaml

FuzzPath = tuple[str | int, ...]


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=10**6)


def get_at(doc: Any, path: FuzzPath) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def set_at(doc: dict[str, Any], path: FuzzPath, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    get_at(out, path[:-1])[path[-1]] = value
    return out


def delete_at(doc: dict[str, Any], path: FuzzPath) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    del get_at(out, path[:-1])[path[-1]]
    return out
