"""A watch-fed cache of InferenceServices, so a reconcile tick reads its service from memory, not with a GET.

At scale (a thousand services, each ticked every few seconds while it rolls out) one GET per service per
tick is most of the daemon's API traffic. This is client-go's informer, cut down to what canaryd needs:
per watched namespace (or cluster-wide when `kubernetes.namespaces` is empty, so namespaced RBAC never
sees a cluster-wide call) and per InferenceService API, one thread lists the objects (paged) and then
watches from the list's resourceVersion, with bookmarks. A watch that times out is resumed from the
last resourceVersion seen; one answered 410 Expired (the server's watch history moved on) lists again.
An API that is not served (404 on the list: KFServing's v1alpha2 on a KServe-only cluster) is not
watched; it is looked for again now and then, in case its CRD is installed later.

Reads never trust a cache that cannot vouch for itself: until a scope's first list has completed, after
any list or watch error (until the next list succeeds), while no watch stream of the scope is open (the
server has not answered the watch request yet), and for namespaces nobody watches, `lookup` answers None
and the adapter falls back to a GET. The open-stream condition matters on paths that do not stream: a
proxy that buffers a watch response until it ends would otherwise leave a listed cache silently frozen
for the whole watch; there, reads simply keep going to the server. A cache that is behind is still
possible (a watch event not delivered yet), exactly as with informers; two things keep it from hurting
canaryd:

* write-through: the object the API server returned for one of *our* writes (create, merge patch,
  replace) goes into the cache at once, so the next tick never sees an older object than the one it
  wrote (which would make it write again or misread its own progress); a delete removes the object;
* ordering: an event or write-through replaces a cached object only if it is not older. Kubernetes
  resourceVersions are opaque strings, but every real API server (etcd) and the sandbox's emulator
  issue integers that grow, so they are compared as integers when both parse; when they do not, the
  later arrival wins (watch order). Tombstones of deletions stop a late, older event from resurrecting
  a deleted object; the next list clears them.

`metadata.managedFields` is dropped from cached objects (it is large and canaryd never reads it), like
the informer transforms of big controllers. Everything else is kept as the server sent it, as compact
JSON: a thousand services then take a few MB rather than tens (a parsed object is a tree of dicts), and
`lookup` parses a fresh copy (faster than a deep copy), so a caller can never corrupt the cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from canaryd.apply import V1ALPHA2, V1BETA1

log = logging.getLogger(__name__)

PLURAL = "inferenceservices"
#: The InferenceService APIs canaryd reads: KServe's v1beta1 and KFServing's v1alpha2.
ISVC_API_VERSIONS: tuple[str, ...] = (V1BETA1, V1ALPHA2)

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (apiVersion, namespace, name)


@dataclass(frozen=True)
class Cached:
    """The cache's answer for one service: its object (a private copy), or None when it does not exist."""

    obj: Obj | None


@dataclass
class CacheStats:
    """Counters for benchmarks, tests and logs (how often the cache answered, and how it was fed)."""

    hits: int = 0
    fallbacks: int = 0  # lookups the cache could not answer (not synced, or a namespace nobody watches)
    lists: int = 0
    watches: int = 0
    relists_expired: int = 0  # lists caused by 410 Expired
    errors: int = 0
    events: int = 0
    written_through: int = 0
    stale_dropped: int = 0  # events or write-throughs older than what the cache held


@dataclass
class _Scope:
    """One list+watch: an API version in one namespace (None: every namespace)."""

    api_version: str
    namespace: str | None
    synced: bool = False
    absent: bool = False  # the API is not served (404 on the list)
    failing: bool = False  # the last list or watch failed (logged once, until a list succeeds)
    watching: bool = False  # a watch stream is open: the server answered and events flow as they happen
    resource_version: str | None = None
    keys: set[Key] = field(default_factory=set)

    @property
    def live(self) -> bool:
        """Listed, and following the server now: the cache may answer for this scope."""
        return self.synced and self.watching

    @property
    def group(self) -> str:
        return self.api_version.split("/", 1)[0]

    @property
    def version(self) -> str:
        return self.api_version.split("/", 1)[1]

    def covers(self, namespace: str) -> bool:
        return self.namespace is None or self.namespace == namespace

    def __str__(self) -> str:
        return f"{self.api_version} in {self.namespace or 'all namespaces'}"


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def rv_newer_or_same(new: str | None, old: str | None) -> bool:
    """Whether an object at resourceVersion `new` may replace one at `old`.

    Integers compare as integers (what etcd and the emulator issue); anything else is opaque, and then the
    later arrival wins, which is the watch's own order.
    """
    if new is None or old is None:
        return True
    try:
        return int(new) >= int(old)
    except ValueError:
        return True


def _rv(obj: Mapping[str, Any]) -> str | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return str(value) if value not in (None, "") else None


@dataclass(frozen=True)
class _Stored:
    rv: str | None
    raw: bytes  # compact JSON


def _stored(obj: Mapping[str, Any]) -> _Stored:
    """The object as kept: without `metadata.managedFields` (large, never read by canaryd), as JSON."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return _Stored(_rv(obj), json.dumps(obj, separators=(",", ":")).encode())


def _ensure_pool(api_client: Any, size: int) -> None:
    """Every watch holds a connection for minutes: size the client's pool for all of them plus the lists,
    or urllib3 would open and discard extra connections (with a warning each time)."""
    cfg = api_client.configuration
    if (cfg.connection_pool_maxsize or 0) >= size:
        return
    cfg.connection_pool_maxsize = size
    api_client.rest_client = rest.RESTClientObject(cfg)


class InferenceServiceCache:
    """List+watch InferenceServices into memory; `lookup` answers reads once a scope is synced.

    `api_client` should be the cache's own (read-only) client: its connections are held by watches.
    """

    def __init__(
        self,
        api_client: Any,
        namespaces: Sequence[str] | None = None,
        *,
        api_versions: Sequence[str] = ISVC_API_VERSIONS,
        watch_timeout_s: float = 30.0,
        stall_margin_s: float = 5.0,
        page_size: int = 500,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
        absent_retry_s: float = 60.0,
        request_timeout: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        scopes: list[str | None] = list(dict.fromkeys(namespaces)) if namespaces else [None]
        self._scopes = [_Scope(v, ns) for v in api_versions for ns in scopes]
        self._index = {(s.api_version, s.namespace): s for s in self._scopes}
        _ensure_pool(api_client, len(self._scopes) + 4)
        self._api = client.CustomObjectsApi(api_client)
        self._watch_timeout_s = watch_timeout_s
        self._stall_margin_s = stall_margin_s
        self._page_size = page_size
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._absent_retry_s = absent_retry_s
        self._request_timeout = request_timeout
        self._lock = threading.Lock()
        self._objects: dict[Key, _Stored] = {}
        self._tombstones: dict[Key, str | None] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[int, Any] = {}  # open watch responses, closed by stop()
        self._changed = threading.Condition(self._lock)
        self.stats = CacheStats()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> InferenceServiceCache:
        """One thread per scope; returns at once (reads fall back to GETs until a scope is synced)."""
        if self._threads:
            return self
        self._stop.clear()
        for i, scope in enumerate(self._scopes):
            t = threading.Thread(target=self._run, args=(i, scope), daemon=True,
                                 name=f"isvc-cache-{scope.version}-{scope.namespace or 'all'}")
            self._threads.append(t)
            t.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching: close the open watch streams (a blocked read returns at once) and join."""
        self._stop.set()
        with self._lock:
            responses = list(self._responses.values())
            for scope in self._scopes:
                scope.synced = False  # no longer fed: reads go to the server
            self._changed.notify_all()
        for resp in responses:
            with contextlib.suppress(Exception):
                resp.shutdown()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def synced(self, api_version: str | None = None, namespace: str | None = None) -> bool:
        """Whether every scope (or those serving `api_version`/`namespace`) can answer reads now (listed and
        watching). An API that is not served counts as synced here: there is nothing to wait for."""
        with self._lock:
            return all(s.live or s.absent for s in self._scopes
                       if (api_version is None or s.api_version == api_version)
                       and (namespace is None or s.covers(namespace)))

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every scope listed once (or turned out not to be served); False at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(s.live or s.absent for s in self._scopes):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._changed.wait(left)
        return True

    # -- reads -------------------------------------------------------------------------------------
    def lookup(self, api_version: str, namespace: str, name: str) -> Cached | None:
        """The cached service (None inside `Cached` when it does not exist), or None when the cache cannot
        vouch for the answer and the caller must GET it."""
        with self._lock:
            scope = self._scope_for(api_version, namespace)
            if scope is None or not scope.live:
                self.stats.fallbacks += 1
                return None
            self.stats.hits += 1
            stored = self._objects.get((api_version, namespace, name))
        return Cached(json.loads(stored.raw) if stored is not None else None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # -- write-through -----------------------------------------------------------------------------
    def observe(self, obj: Mapping[str, Any]) -> None:
        """An object the API server returned for our own write: cache it now (unless something newer is)."""
        key = self._key(obj)
        if key is None:
            return
        with self._lock:
            if self._scope_for(key[0], key[1]) is None:
                return  # nobody watches it: caching it would only leak
        stored = _stored(obj)
        with self._lock:
            if self._put(key, stored):
                self.stats.written_through += 1

    def forget(self, api_version: str, namespace: str, name: str) -> None:
        """We deleted the service: drop it, and ignore older events that may still be on their way."""
        key = (api_version, namespace, name)
        with self._lock:
            old = self._objects.pop(key, None)
            self._tombstones[key] = old.rv if old is not None else self._tombstones.get(key)

    def write_through(self, api: Any) -> Any:
        """`api` (a CustomObjectsApi) wrapped so that InferenceService writes feed this cache."""
        return _WriteThroughApi(api, self)

    # -- the store (under self._lock) -------------------------------------------------------------
    def _scope_for(self, api_version: str, namespace: str) -> _Scope | None:
        return self._index.get((api_version, None)) or self._index.get((api_version, namespace))

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        api_version, ns, name = obj.get("apiVersion"), meta.get("namespace"), meta.get("name")
        if not (isinstance(api_version, str) and isinstance(ns, str) and isinstance(name, str)):
            return None
        return api_version, ns, name

    def _put(self, key: Key, obj: _Stored) -> bool:
        rv = obj.rv
        cur = self._objects.get(key)
        if cur is not None and not rv_newer_or_same(rv, cur.rv):
            self.stats.stale_dropped += 1
            return False
        if key in self._tombstones:
            dead = self._tombstones[key]
            if dead is not None and rv is not None and rv_newer_or_same(dead, rv):
                self.stats.stale_dropped += 1
                return False  # an event from before our delete
            del self._tombstones[key]
        self._objects[key] = obj
        return True

    def _delete(self, key: Key, rv: str | None) -> None:
        cur = self._objects.get(key)
        if cur is not None and not rv_newer_or_same(rv, cur.rv):
            self.stats.stale_dropped += 1
            return  # recreated (and written through) after this deletion
        self._objects.pop(key, None)
        self._tombstones.pop(key, None)

    def _replace(self, scope: _Scope, items: dict[Key, _Stored], list_rv: str | None) -> None:
        """A fresh list is the truth for its scope, except for writes we made after its snapshot."""
        for key, item in items.items():
            self._put(key, item)
        for key in [k for k in self._objects if k[0] == scope.api_version and scope.covers(k[1]) and k not in items]:
            if rv_newer_or_same(list_rv, self._objects[key].rv):
                del self._objects[key]
        for key, dead in list(self._tombstones.items()):
            if key[0] == scope.api_version and scope.covers(key[1]) and (
                    dead is None or rv_newer_or_same(list_rv, dead)):
                del self._tombstones[key]  # the list already reflects that deletion

    # -- the reflector ---------------------------------------------------------------------------
    def _set(self, scope: _Scope, *, synced: bool | None = None, absent: bool | None = None) -> None:
        with self._lock:
            if synced is not None:
                scope.synced = synced
            if absent is not None:
                scope.absent = absent
            self._changed.notify_all()

    def _run(self, index: int, scope: _Scope) -> None:
        backoff = self._retry_s
        while not self._stop.is_set():
            try:
                rv = self._list(scope)
                backoff = self._retry_s
                self._watch(index, scope, rv)
            except _Expired:
                with self._lock:
                    self.stats.relists_expired += 1
                continue  # list again at once (reads go to the server until the new watch is open)
            except ApiException as exc:
                if exc.status == 404:
                    if not scope.absent:
                        log.info("InferenceService API not served; not watching it",
                                 extra={"api": scope.api_version, "namespace": scope.namespace})
                    self._set(scope, synced=False, absent=True)
                    self._stop.wait(self._absent_retry_s)
                    continue
                if exc.status == 410:
                    with self._lock:
                        self.stats.relists_expired += 1
                    continue
                self._failed(scope, f"HTTP {exc.status} {exc.reason}")
                self._stop.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self._max_retry_s)
            except Exception as exc:  # a dead reflector thread would leave a stale cache behind
                if self._stop.is_set():
                    return
                if not isinstance(exc, (urllib3.exceptions.HTTPError, OSError, ValueError, KeyError, TypeError)):
                    log.exception("InferenceService cache reflector crashed; listing again")
                self._failed(scope, f"{type(exc).__name__}: {exc}")
                self._stop.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self._max_retry_s)

    def _failed(self, scope: _Scope, why: str) -> None:
        """Until the next list succeeds, reads of this scope go to the API server (never a stale answer
        from a cache that lost its watch)."""
        if self._stop.is_set():
            return
        with self._lock:
            # One step under the lock: a reader that sees the error counted never gets the stale answer
            # (a fresh-clone CI run caught the cache answering in between, counted but not yet unsynced).
            scope.synced = False
            self.stats.errors += 1
            first = not scope.failing
            scope.failing = True
            self._changed.notify_all()
        (log.warning if first else log.debug)(
            "InferenceService list/watch failed; reads fall back to GET until it lists again",
            extra={"api": scope.api_version, "namespace": scope.namespace, "error": why[:300]})

    def _call_list(self, scope: _Scope, **kw: Any) -> Any:
        if scope.namespace is None:
            return self._api.list_cluster_custom_object(scope.group, scope.version, PLURAL, **kw)
        return self._api.list_namespaced_custom_object(scope.group, scope.version, scope.namespace, PLURAL, **kw)

    def _call_watch(self, scope: _Scope, **kw: Any) -> Any:
        """The watch request; `watch=True` spelled out (the chart's RBAC test finds the verb in the source)."""
        if scope.namespace is None:
            return self._api.list_cluster_custom_object(scope.group, scope.version, PLURAL, watch=True, **kw)
        return self._api.list_namespaced_custom_object(scope.group, scope.version, scope.namespace, PLURAL,
                                                       watch=True, **kw)

    def _list(self, scope: _Scope) -> str:
        """List the scope (in pages, one consistent snapshot) into the store; the list's resourceVersion."""
        items: list[Obj] = []
        cont: str | None = None
        list_rv: str | None = None
        while True:
            kw: dict[str, Any] = {"limit": self._page_size, "_request_timeout": self._request_timeout}
            if cont:
                kw["_continue"] = cont
            page = self._call_list(scope, **kw)
            if not isinstance(page, dict):
                raise ValueError(f"list answered {type(page).__name__}, not an object")
            meta = page.get("metadata") or {}
            list_rv = list_rv or (str(meta["resourceVersion"]) if meta.get("resourceVersion") else None)
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            cont = meta.get("continue") or None
            if not cont:
                break
        if list_rv is None:
            raise ValueError("the list carried no resourceVersion to watch from")
        stored: dict[Key, _Stored] = {}
        for item in items:  # a list's items carry no apiVersion/kind of their own on some servers
            item.setdefault("apiVersion", scope.api_version)
            item.setdefault("kind", "InferenceService")
            key = self._key(item)
            if key is not None and key[0] == scope.api_version:
                stored[key] = _stored(item)
        with self._lock:
            if self._stop.is_set():
                return list_rv  # stopped meanwhile: stay unsynced
            self._replace(scope, stored, list_rv)
            self.stats.lists += 1
            scope.resource_version = list_rv
            if scope.failing:
                log.info("InferenceService cache listed again", extra={"api": scope.api_version,
                                                                        "namespace": scope.namespace})
            scope.synced, scope.absent, scope.failing = True, False, False
            self._changed.notify_all()
        return list_rv

    def _watch(self, index: int, scope: _Scope, rv: str) -> None:
        """Watch from `rv` until stopped; each server-side timeout resumes from the last version seen.
        Returns only when stopping; raises _Expired (list again) or the error that broke the watch.

        A watch can go silent with its connection open (a half-open TCP connection, a proxy that lost its
        upstream): nothing tells the cache, which would keep answering from the last event it saw. So the
        server is asked to end each watch after `watch_timeout_s` (about 30 s) and the socket's read
        timeout is that plus `stall_margin_s`: a healthy, idle watch ends first and is resumed cheaply; a
        stalled one times out, counts as broken, and reads go to the server until the scope lists again.
        client-go gets the same bound from HTTP/2 pings, which urllib3's HTTP/1.1 does not have."""
        while not self._stop.is_set():
            timeout = int(self._watch_timeout_s * random.uniform(1.0, 1.2))
            resp = self._call_watch(
                scope, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=timeout,
                _preload_content=False, _request_timeout=(self._request_timeout[0], timeout + self._stall_margin_s),
            )
            with self._lock:
                self._responses[index] = resp
                self.stats.watches += 1
                scope.watching = True
                self._changed.notify_all()
            ended = False  # the server ended the stream (its timeout): the connection can be reused
            try:
                if self._stop.is_set():
                    return
                for event in _events(resp):
                    rv = self._apply(scope, event) or rv
                    if self._stop.is_set():
                        return
                ended = True
            finally:
                with self._lock:
                    self._responses.pop(index, None)
                    scope.watching = False
                with contextlib.suppress(Exception):
                    resp.release_conn() if ended else resp.close()
            with self._lock:
                scope.resource_version = rv

    def _apply(self, scope: _Scope, event: Mapping[str, Any]) -> str | None:
        """Apply one watch event; the resourceVersion to resume from."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"watch event without an object: {str(event)[:120]}")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired(str(obj.get("message") or "expired"))
            raise ValueError(f"watch error: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        rv = _rv(obj)
        if kind == "BOOKMARK":
            return rv
        obj.setdefault("apiVersion", scope.api_version)
        key = self._key(obj)
        if key is None or key[0] != scope.api_version or not scope.covers(key[1]):
            return rv
        stored = _stored(obj) if kind in ("ADDED", "MODIFIED") else None
        with self._lock:
            self.stats.events += 1
            if kind == "DELETED":
                self._delete(key, rv)
            elif stored is not None:
                self._put(key, stored)
        return rv


def _events(resp: Any) -> Iterator[dict[str, Any]]:
    """The JSON events of a watch stream, one per line (a line may arrive in several chunks)."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event
    if buffer.strip():
        event = json.loads(buffer)
        if isinstance(event, dict):
            yield event


class _WriteThroughApi:
    """A CustomObjectsApi whose InferenceService writes also update the cache (everything else passes)."""

    def __init__(self, inner: Any, cache: InferenceServiceCache) -> None:
        self._inner = inner
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _wrap(self, call: Callable[..., Any], plural: str, *args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        if plural == PLURAL and isinstance(result, dict) and not kwargs.get("dry_run"):
            self._cache.observe(result)
        return result

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: Any,
                                        **kwargs: Any) -> Any:
        return self._wrap(self._inner.create_namespaced_custom_object, plural, group, version, namespace, plural,
                          body, **kwargs)

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                       body: Any, **kwargs: Any) -> Any:
        return self._wrap(self._inner.patch_namespaced_custom_object, plural, group, version, namespace, plural,
                          name, body, **kwargs)

    def replace_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                         body: Any, **kwargs: Any) -> Any:
        return self._wrap(self._inner.replace_namespaced_custom_object, plural, group, version, namespace, plural,
                          name, body, **kwargs)

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                        **kwargs: Any) -> Any:
        try:
            result = self._inner.delete_namespaced_custom_object(group, version, namespace, plural, name, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and plural == PLURAL and not kwargs.get("dry_run"):
                self._cache.forget(f"{group}/{version}", namespace, name)
            raise
        if plural == PLURAL and not kwargs.get("dry_run"):
            self._cache.forget(f"{group}/{version}", namespace, name)
        return result
