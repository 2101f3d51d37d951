"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and which one a type accepts.

canaryd applies desired specs as merge patches with `null` for removed fields, so null-removal and
the precondition carried by `metadata.resourceVersion` inside a patch must behave exactly as on a
real server. Custom resources refuse strategic merge patch (415), built-in kinds accept it; here it
is applied as a merge patch, which is what it amounts to for the map-only kinds the sandbox serves.
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import jsonpointer

from canaryd.sandbox.kubeapi.errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


def accepted_patch_types(builtin: bool) -> list[str]:
    return [JSON_PATCH, MERGE, STRATEGIC] if builtin else [JSON_PATCH, MERGE]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 on decoded JSON; `target` is modified in place where it is an object."""
    if not isinstance(patch, dict):
        return patch
    result = target if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _drop_directives(patch: Any) -> Any:
    """Strategic-merge directives (`$patch`, `$setElementOrder/...`) have no merge-patch meaning."""
    if isinstance(patch, dict):
        return {k: _drop_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_drop_directives(v) for v in patch]
    return patch


def apply_patch(current: dict[str, Any], body: bytes, content_type: str, *, builtin: bool) -> dict[str, Any]:
    """The patched object (a fresh copy), or the ApiError the real server answers for this patch."""
    media = content_type.split(";")[0].strip().lower()
    if media not in accepted_patch_types(builtin):
        raise unsupported_media_type(accepted_patch_types(builtin))
    try:
        patch = json.loads(body or b"null")
    except ValueError as e:
        raise bad_request(f"error decoding patch: {e}") from None
    doc = json.loads(json.dumps(current))
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request(f"json: cannot unmarshal {_json_kind(patch)} into Go value of type jsonpatch.Patch")
        try:
            result = jsonpatch.JsonPatch(patch).apply(doc, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError):
            raise _unprocessable() from None
    else:
        if not isinstance(patch, dict):
            raise bad_request("Invalid JSON Patch")
        if media == STRATEGIC:
            patch = _drop_directives(patch)
        result = merge_patch(doc, patch)
    if not isinstance(result, dict):
        raise bad_request("Invalid JSON Patch")
    return result


def _json_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "object"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "null" if v is None else "value"


def _unprocessable() -> ApiError:
    # NewGenericServerResponse(422, ...): the real server drops the patch library's reason.
    return ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {})
