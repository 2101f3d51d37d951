"""The HTTP face of the emulator: a Starlette app that routes kube-apiserver URLs to ObjectApi.

Every request is parsed into a RequestInfo, offered to the request hooks (the seam for fault
injection: a hook may delay, or answer instead of the emulator), dispatched, and recorded as an
ApiCall with its HTTP status and the client's User-Agent. Watches stream one JSON event per line and
end on timeoutSeconds, on client disconnect or when the emulator stops; they never hold the store lock
while waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from canaryd.sandbox.kubeapi import discovery
from canaryd.sandbox.kubeapi.errors import (
    ApiError,
    bad_request,
    internal,
    method_not_allowed,
    path_not_found,
    unsupported_media_type,
)
from canaryd.sandbox.kubeapi.objects import ObjectApi, Result, WriteOptions, too_old
from canaryd.sandbox.kubeapi.requestinfo import ApiCall, RequestInfo, parse_bool, parse_request
from canaryd.sandbox.kubeapi.resources import ResourceType
from canaryd.sandbox.kubeapi.selectors import FieldSelector, LabelSelector, parse_field_selector, parse_label_selector
from canaryd.sandbox.kubeapi.store import TooOldResourceVersion, WatchEvent

log = logging.getLogger(__name__)

RequestHook = Callable[[RequestInfo], Awaitable[Response | None]]
"""Called before dispatch; returning a Response answers the request instead of the emulator."""

DEFAULT_WATCH_TIMEOUT_S = 1800.0
MAX_WATCH_BACKLOG = 10_000
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def json_response(body: Any, code: int = 200, warnings: list[str] | None = None) -> Response:
    resp = Response(json.dumps(body, separators=(",", ":")).encode(), status_code=code,
                    media_type="application/json")
    for w in warnings or ():
        resp.headers.append("Warning", f'299 - "{_escape_warning(w)}"')
    return resp


def _escape_warning(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def error_response(err: ApiError) -> Response:
    return json_response(err.status(), err.code)


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class WatchResponse(StreamingResponse):
    """A streaming response that also ends when the client goes away, even while no event is due."""

    def __init__(self, chunks: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(chunks, media_type="application/json")
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        stream = asyncio.ensure_future(self._stream(send))
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            await asyncio.gather(stream, gone, return_exceptions=True)
            self._on_close()

    async def _stream(self, send: Send) -> None:
        chunks = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()


class KubeApp:
    """Routes requests; holds no state of its own beyond what it is given."""

    def __init__(self, api: ObjectApi, calls: list[ApiCall], hooks: list[RequestHook],
                 server_address: Callable[[], str]) -> None:
        self.api = api
        self.calls = calls
        self.hooks = hooks
        self._server_address = server_address

    def asgi(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=_METHODS)])

    async def handle(self, request: Request) -> Response:
        info = dataclasses.replace(
            parse_request(request.method, request.url.path, request.query_params.get("watch"),
                          request.headers.get("content-type", "")),
            user_agent=request.headers.get("user-agent", ""))
        try:
            resp: Response | None = None
            for hook in list(self.hooks):
                resp = await hook(info)
                if resp is not None:
                    break
            if resp is None:
                resp = await self._dispatch(info, request)
        except ApiError as e:
            resp = error_response(e)
        except Exception as e:  # a bug in the emulator: answer like the apiserver does, keep serving
            log.exception("kube API emulator failed on %s %s", request.method, request.url.path)
            resp = error_response(internal(f"emulator error: {type(e).__name__}"))
        self.calls.append(ApiCall.of(info, resp.status_code))
        return resp

    # ---------------------------------------------------------------- non-resource paths

    async def _dispatch(self, info: RequestInfo, request: Request) -> Response:
        if not info.is_resource:
            return self._non_resource(info)
        rt = self.api.registry.get(info.group, info.version, info.resource)
        if rt is None or info.too_deep:
            raise path_not_found()
        if info.subresource and (info.subresource != "status" or not rt.status_subresource):
            raise path_not_found()
        if info.namespace and not rt.namespaced:
            raise path_not_found()
        return await self._resource(info, rt, request)

    def _non_resource(self, info: RequestInfo) -> Response:
        if info.method not in ("GET", "HEAD"):
            raise method_not_allowed()
        registry = self.api.registry
        path = "/" + info.path.strip("/")
        body: dict[str, Any] | None = None
        if path == "/":
            body = discovery.root_paths(registry)
        elif path == "/version":
            body = dict(discovery.VERSION_INFO)
        elif path in ("/healthz", "/livez", "/readyz"):
            return PlainTextResponse("ok")
        elif path == "/api":
            body = discovery.api_versions(self._server_address())
        elif path == "/apis":
            body = discovery.api_group_list(registry)
        elif info.api_prefix == "api" and info.version:
            body = discovery.api_resource_list(registry, "", info.version)
        elif info.api_prefix == "apis" and info.version:
            body = discovery.api_resource_list(registry, info.group, info.version)
        elif path.startswith("/apis/") and path.count("/") == 2:
            body = discovery.api_group(registry, path.split("/")[2])
        if body is None:
            raise path_not_found()
        return json_response(body)

    # ---------------------------------------------------------------- resources

    async def _resource(self, info: RequestInfo, rt: ResourceType, request: Request) -> Response:
        q = request.query_params
        ns = info.namespace
        verb = info.verb
        if rt.namespaced and not ns and verb not in ("list", "watch", "deletecollection"):
            raise path_not_found()
        if info.subresource and verb not in ("get", "update", "patch"):
            raise method_not_allowed()
        if verb == "get":
            return json_response(self.api.get(rt, ns, info.name))
        if verb == "list":
            return json_response(self.api.list_collection(
                rt, ns or None, label_selector=q.get("labelSelector"), field_selector=q.get("fieldSelector"),
                limit=_int_param(q.get("limit"), "limit"), continue_token=q.get("continue")))
        if verb == "watch":
            return self._watch(info, rt, request)
        opts = WriteOptions(dry_run=_dry_run(q.get("dryRun")), field_validation=_field_validation(q))
        result: Result
        if verb == "create":
            if info.name:
                raise method_not_allowed()
            result = self.api.create(rt, ns, await _read_object(request), opts)
        elif verb == "update":
            result = self.api.replace(rt, ns, info.name, await _read_object(request),
                                      subresource=info.subresource, opts=opts)
        elif verb == "patch":
            result = self.api.patch(rt, ns, info.name, await request.body(),
                                    request.headers.get("content-type", ""), subresource=info.subresource,
                                    opts=opts)
        elif verb == "delete":
            options = await _read_optional_object(request)
            result = self.api.delete(rt, ns, info.name, options, dry_run=opts.dry_run)
        elif verb == "deletecollection":
            result = self.api.delete_collection(rt, ns or None, label_selector=q.get("labelSelector"),
                                                field_selector=q.get("fieldSelector"), dry_run=opts.dry_run)
        else:
            raise method_not_allowed()
        return json_response(result.body, result.code, result.warnings)

    # ---------------------------------------------------------------- watch

    def _watch(self, info: RequestInfo, rt: ResourceType, request: Request) -> Response:
        q = request.query_params
        field_text = q.get("fieldSelector") or ""
        if info.name:
            field_text = ",".join(x for x in (field_text, f"metadata.name={info.name}") if x)
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(field_text, rt.allows_field)
        rv_param = q.get("resourceVersion") or ""
        since: int | None = None
        if rv_param not in ("", "0"):
            since = _int_param(rv_param, "resourceVersion")
        timeout = float(_int_param(q.get("timeoutSeconds"), "timeoutSeconds") or DEFAULT_WATCH_TIMEOUT_S)
        bookmarks = parse_bool(q.get("allowWatchBookmarks"))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()

        def deliver(ev: WatchEvent | None) -> None:
            with contextlib.suppress(RuntimeError):  # the server's loop is gone
                loop.call_soon_threadsafe(queue.put_nowait, ev)

        store = self.api.store
        try:
            watcher, backlog = store.watch(rt.storage_key, since, deliver)
        except TooOldResourceVersion as e:
            err = too_old(e.requested, e.oldest)
            return WatchResponse(_once(_line({"type": "ERROR", "object": err.status()})), lambda: None)
        scope = _WatchScope(self.api, rt, info.namespace, labels, fields, since or 0)

        async def events() -> AsyncIterator[bytes]:
            deadline = loop.time() + timeout
            # The newest resourceVersion this watch has passed on (or filtered out): what a closing bookmark
            # may claim. Not the store's current one: events still queued for this watch would be skipped
            # by a client resuming from it (the apiserver's bookmarks, too, only claim what was sent).
            sent = max(watcher.since, since or 0)
            for past in backlog:
                chunk = scope.encode(past)
                sent = max(sent, past.rv)
                if chunk:
                    yield chunk
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 or queue.qsize() > MAX_WATCH_BACKLOG:
                    break
                try:
                    ev = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if ev is None:
                    return
                chunk = scope.encode(ev)
                sent = max(sent, ev.rv)
                if chunk:
                    yield chunk
            if bookmarks:
                yield _line({"type": "BOOKMARK", "object": {
                    "kind": rt.kind, "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": str(sent)}}})

        return WatchResponse(events(), lambda: store.unwatch(watcher))


class _WatchScope:
    """Which events one watch sees, and how: objects entering or leaving a selector are ADDED or
    DELETED for that watcher, as the apiserver's cacher reports them."""

    def __init__(self, api: ObjectApi, rt: ResourceType, namespace: str, labels: LabelSelector,
                 fields: FieldSelector, since: int) -> None:
        self.api, self.rt, self.namespace, self.labels, self.fields = api, rt, namespace, labels, fields
        self.since = since

    def _matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def encode(self, ev: WatchEvent) -> bytes | None:
        if ev.rv <= self.since:
            return None  # a watch from a future resourceVersion starts there
        now, before = self._matches(ev.obj), self._matches(ev.old)
        if ev.type == "MODIFIED":
            kind = "MODIFIED" if now and before else "ADDED" if now else "DELETED" if before else ""
        else:
            kind = ev.type if now else ""
        if not kind:
            return None
        return _line({"type": kind, "object": self.api.render(self.rt, ev.obj)})


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {value!r}") from None


def _dry_run(value: str | None) -> bool:
    if not value:
        return False
    if value != "All":
        raise bad_request(f'Invalid dry run value: unsupported value "{value}", supported values: "All"')
    return True


def _field_validation(q: Any) -> str:
    value = q.get("fieldValidation") or "Warn"
    if value not in ("Ignore", "Warn", "Strict"):
        raise bad_request(f"fieldValidation must be one of Ignore, Warn or Strict, got {value!r}")
    return str(value)


async def _read_object(request: Request) -> Any:
    raw = await request.body()
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        if media in ("", "application/json", "*/*"):
            return json.loads(raw or b"null")
        if media in ("application/yaml", "text/yaml", "application/x-yaml"):
            return yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as e:
        raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None
    raise unsupported_media_type(["application/json", "application/yaml"])


async def _read_optional_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None
    return body if isinstance(body, dict) else {}

