"""Who asked for what: the apiserver's RequestInfo (verb, group, version, resource, subresource,
namespace, name) parsed from a URL, and the `ApiCall` record kept for every request.

The recorded calls are what an RBAC check works from later (which verbs on which resources canaryd
really uses), and request hooks (fault injection) match on the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


def parse_bool(value: str | None) -> bool:
    """strconv.ParseBool's true values (what `?watch=` accepts)."""
    return value in _TRUE


@dataclass(frozen=True)
class RequestInfo:
    method: str
    path: str
    is_resource: bool
    verb: str = ""
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    too_deep: bool = False
    content_type: str = ""
    user_agent: str = ""  # the client's User-Agent header, for request hooks that target one client


@dataclass(frozen=True)
class ApiCall:
    """One answered request. `verb` is the RBAC verb: get list watch create update patch delete
    deletecollection (non-resource paths record the lower-case HTTP method). `user_agent` is the
    client's User-Agent header, which tells canaryd's daemon (`canaryd/<version> (...) daemon`) from the
    test harness and the other emulators sharing one API server."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    status: int
    method: str = ""
    path: str = ""
    user_agent: str = ""

    @classmethod
    def of(cls, info: RequestInfo, status: int) -> ApiCall:
        return cls(info.verb, info.group, info.version, info.resource, info.subresource, info.namespace,
                   info.name, status, info.method, info.path, info.user_agent)


def parse_request(method: str, path: str, watch_param: str | None, content_type: str = "") -> RequestInfo:
    """Split /api/v1/... and /apis/{group}/{version}/... the way k8s.io/apiserver's RequestInfoFactory does."""
    parts = [p for p in path.split("/") if p]
    method = method.upper()
    if len(parts) >= 2 and parts[0] == "api":
        prefix, group, version, rest = "api", "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        prefix, group, version, rest = "apis", parts[1], parts[2], parts[3:]
    else:
        return RequestInfo(method, path, False, verb=method.lower(), content_type=content_type)
    if not rest:
        return RequestInfo(method, path, False, verb=method.lower(), api_prefix=prefix, group=group,
                           version=version, content_type=content_type)
    watch = parse_bool(watch_param)
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
        else:
            namespace = ""  # the namespace object itself (or its status/finalize)
    if not rest:
        return RequestInfo(method, path, False, verb=method.lower(), content_type=content_type)
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
    if method in ("GET", "HEAD"):
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    return RequestInfo(method, path, True, verb=verb, api_prefix=prefix, group=group, version=version,
                       resource=resource, subresource=sub, namespace=namespace, name=name,
                       too_deep=len(rest) > 3, content_type=content_type)
