"""Kubernetes `Status` errors, built the way kube-apiserver builds them.

Clients branch on `reason` and `code` (a 409 Conflict is retried, a 422 Invalid is reported, a 410
Expired re-lists), and people read `message`: so both follow apimachinery's `errors` and `field`
packages (`NewNotFound`, `NewInvalid`, `field.Error.ErrorBody`) closely enough to be indistinguishable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final


class _Omit:
    """A field error whose value is not shown (apimachinery's `omitValue`)."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()


# apimachinery field.ErrorType: (cause reason, text in messages)
NOT_FOUND: Final = ("FieldValueNotFound", "Not found")
REQUIRED: Final = ("FieldValueRequired", "Required value")
DUPLICATE: Final = ("FieldValueDuplicate", "Duplicate value")
INVALID: Final = ("FieldValueInvalid", "Invalid value")
NOT_SUPPORTED: Final = ("FieldValueNotSupported", "Unsupported value")
FORBIDDEN: Final = ("FieldValueForbidden", "Forbidden")
TOO_LONG: Final = ("FieldValueTooLong", "Too long")
TOO_MANY: Final = ("FieldValueTooMany", "Too many")
INTERNAL: Final = ("InternalError", "Internal error")
TYPE_INVALID: Final = ("FieldValueTypeInvalid", "Invalid value")

_BODY_WITHOUT_VALUE = {REQUIRED, FORBIDDEN, TOO_LONG, INTERNAL}


def go_quote(s: str) -> str:
    """Go's %q for the strings that occur in practice."""
    return json.dumps(s, ensure_ascii=False)


def go_float(x: float) -> str:
    """Go's %v for a float64 (shortest representation, exponent outside [1e-4, 1e21))."""
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    r = repr(x)
    if "e" in r:
        mant, exp = r.split("e")
        sign = "-" if exp.startswith("-") else "+"
        return f"{mant}e{sign}{abs(int(exp)):02d}"
    return r


def go_sharp_v(v: Any) -> str:
    """Go's %#v of a decoded-JSON value (what field errors print for maps and lists)."""
    if v is None:
        return "interface {}(nil)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return go_quote(v)
    if isinstance(v, dict):
        inner = ", ".join(f"{go_quote(str(k))}:{go_sharp_v(v[k])}" for k in sorted(v))
        return "map[string]interface {}{" + inner + "}"
    if isinstance(v, list):
        return "[]interface {}{" + ", ".join(go_sharp_v(x) for x in v) + "}"
    return repr(v)


@dataclass(frozen=True)
class FieldError:
    """One apimachinery `field.Error`: where, what kind of problem, the offending value and a detail."""

    type: tuple[str, str]
    field: str
    bad_value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        if self.type in _BODY_WITHOUT_VALUE or self.bad_value is OMIT:
            s = self.type[1]
        else:
            v = self.bad_value
            if v is None:
                s = f"{self.type[1]}: null"
            elif isinstance(v, bool):
                s = f"{self.type[1]}: {'true' if v else 'false'}"
            elif isinstance(v, int):
                s = f"{self.type[1]}: {v}"
            elif isinstance(v, float):
                s = f"{self.type[1]}: {go_float(v)}"
            elif isinstance(v, GoLiteral):
                s = f"{self.type[1]}: {v}"
            elif isinstance(v, str):
                s = f"{self.type[1]}: {go_quote(v)}"
            else:
                s = f"{self.type[1]}: {go_sharp_v(v)}"
        if self.detail:
            s += f": {self.detail}"
        return s

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, Any]:
        return {"reason": self.type[0], "message": self.body(), "field": self.field}


def aggregate(errs: list[FieldError]) -> str:
    """utilerrors.Aggregate's message: one error as is, several de-duplicated in brackets."""
    msgs: list[str] = []
    for e in errs:
        m = str(e)
        if m not in msgs:
            msgs.append(m)
    if len(msgs) == 1:
        return msgs[0]
    return "[" + ", ".join(msgs) + "]"


@dataclass
class ApiError(Exception):
    """An error answered as a `Status` object with `code` as the HTTP status."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                *, success: bool = False) -> dict[str, Any]:
    """metav1.Status with fields in the order Go serialises them (empty ones left out)."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Success" if success else "Failure"}
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    if code:
        body["code"] = code
    return body


def group_resource(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if group:
        d["group"] = group
    if kind:
        d["kind"] = kind
    return d


def not_found(group: str, resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{group_resource(group, resource)} "{name}" not found',
                    _details(name, group, resource))


def already_exists(group: str, resource: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{group_resource(group, resource)} "{name}" already exists',
                    _details(name, group, resource))


OPTIMISTIC_LOCK = "the object has been modified; please apply your changes to the latest version and try again"


def conflict(group: str, resource: str, name: str, why: str = OPTIMISTIC_LOCK) -> ApiError:
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {group_resource(group, resource)} "{name}": {why}',
                    _details(name, group, resource))


def invalid(group: str, kind: str, name: str, errs: list[FieldError]) -> ApiError:
    """errors.NewInvalid: `Kind.group "name" is invalid: <aggregate>` with one cause per field error."""
    qualified = f"{kind}.{group}" if group else kind
    message = f'{qualified} "{name}" is invalid'
    if errs:
        message += f": {aggregate(errs)}"
    details = _details(name, group, kind)
    details["causes"] = [e.cause() for e in errs]
    return ApiError(422, "Invalid", message, details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(accepted: list[str]) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    + ", ".join(accepted))


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource",
                    {})


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def internal(message: str) -> ApiError:
    """A plain (non-Status) error inside the server: 500 with no reason, as ErrorToAPIStatus answers."""
    return ApiError(500, "", message)


class GoLiteral(str):
    """A bad value Go prints without quotes (e.g. the uint64 `0x0` of a missing resourceVersion)."""
