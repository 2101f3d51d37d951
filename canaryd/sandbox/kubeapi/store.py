"""The emulator's etcd: versioned objects, one global resourceVersion counter, and watch fan-out.

Requests arrive on the server's event loop while tests read through an in-process accessor on their
own threads, so every read and write holds one re-entrant lock; handlers that read-check-write (an
update with a resourceVersion precondition) hold it across the whole sequence, which is what makes a
stale write a clean 409 rather than a lost update.

Committed objects are never mutated again (a write stores a new dict), so readers may serialise them
without copying and watch events may share them. Each resource keeps a bounded event history, like
the apiserver's watch cache: a watch from a resourceVersion inside it replays what followed; one
from before it is answered 410 Expired.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED or DELETED
    rv: int
    obj: Obj
    old: Obj | None = None


class TooOldResourceVersion(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


Deliver = Callable[[WatchEvent | None], None]


class Watcher:
    """A subscription to one resource's events; `deliver(None)` means the server is going away."""

    def __init__(self, key: str, deliver: Deliver, since: int = 0) -> None:
        self.key = key
        self.deliver = deliver
        #: Every event up to this resourceVersion is in the backlog or was before the watch began; later
        #: ones arrive through `deliver`. A bookmark must never claim more than what was actually sent.
        self.since = since


def _meta(obj: Obj) -> dict[str, Any]:
    meta: dict[str, Any] = obj["metadata"]
    return meta


class Store:
    def __init__(self, history: int = 1000) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self.lock = threading.RLock()
        self._history_size = history
        self._rv = 0
        # storage key -> namespace ("" for cluster-scoped) -> name -> object
        self._objects: dict[str, dict[str, dict[str, Obj]]] = {}
        self._history: dict[str, deque[WatchEvent]] = {}
        # every event after this rv is still in the history (the rv of the newest dropped event)
        self._history_start: dict[str, int] = {}
        self._watchers: dict[str, set[Watcher]] = {}

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    # ---------------------------------------------------------------- reads

    def get(self, key: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self._objects.get(key, {}).get(namespace, {}).get(name)

    def scan(self, key: str, namespace: str | None) -> tuple[list[Obj], int]:
        """Objects of one resource (one namespace, or all when None) in etcd key order, and the rv."""
        with self.lock:
            buckets = self._objects.get(key, {})
            if namespace is not None:
                items = [buckets[namespace][n] for n in sorted(buckets.get(namespace, {}))]
            else:
                items = [buckets[ns][n] for ns in sorted(buckets) for n in sorted(buckets[ns])]
            return items, self._rv

    def namespaces_in_use(self) -> set[str]:
        with self.lock:
            return {ns for b in self._objects.values() for ns, objs in b.items() if ns and objs}

    # ---------------------------------------------------------------- writes (caller builds the new object)

    def _commit(self, key: str, ev_type: str, obj: Obj, old: Obj | None) -> WatchEvent:
        self._rv += 1
        _meta(obj)["resourceVersion"] = str(self._rv)
        ev = WatchEvent(ev_type, self._rv, obj, old)
        hist = self._history.setdefault(key, deque())
        if len(hist) == self._history_size:
            self._history_start[key] = hist.popleft().rv
        hist.append(ev)
        for w in list(self._watchers.get(key, ())):
            w.deliver(ev)
        return ev

    def create(self, key: str, obj: Obj) -> Obj:
        """Store a new object (the caller has checked it does not exist); stamps its resourceVersion."""
        with self.lock:
            meta = _meta(obj)
            ns = meta.get("namespace") or ""
            self._commit(key, "ADDED", obj, None)
            self._objects.setdefault(key, {}).setdefault(ns, {})[meta["name"]] = obj
            return obj

    def update(self, key: str, obj: Obj, old: Obj) -> Obj:
        with self.lock:
            meta = _meta(obj)
            self._commit(key, "MODIFIED", obj, old)
            self._objects[key][meta.get("namespace") or ""][meta["name"]] = obj
            return obj

    def delete(self, key: str, namespace: str, name: str) -> Obj | None:
        """Remove an object; returns its last state stamped with the deletion's resourceVersion."""
        with self.lock:
            bucket = self._objects.get(key, {}).get(namespace, {})
            old = bucket.pop(name, None)
            if old is None:
                return None
            gone = {**old, "metadata": dict(_meta(old))}
            self._commit(key, "DELETED", gone, old)
            return gone

    def delete_namespace_contents(self, namespace: str) -> None:
        """What the namespace controller does when a namespace is deleted, done at once."""
        with self.lock:
            for key, buckets in self._objects.items():
                for name in sorted(buckets.get(namespace, {})):
                    self.delete(key, namespace, name)

    # ---------------------------------------------------------------- watch

    def watch(self, key: str, since: int | None, deliver: Deliver) -> tuple[Watcher, list[WatchEvent]]:
        """Subscribe; return the events to send first.

        since=None starts "at most recent": every current object as a synthetic ADDED. Otherwise the
        kept events after `since`, or TooOldResourceVersion when some of them were already dropped.
        """
        with self.lock:
            if since is None:
                items, _ = self.scan(key, None)
                backlog = [WatchEvent("ADDED", int(_meta(o)["resourceVersion"]), o) for o in items]
            else:
                start = self._history_start.get(key, 0)
                if since < start:
                    raise TooOldResourceVersion(since, start)
                backlog = [ev for ev in self._history.get(key, ()) if ev.rv > since]
            w = Watcher(key, deliver, self._rv)
            self._watchers.setdefault(key, set()).add(w)
            return w, backlog

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            self._watchers.get(w.key, set()).discard(w)

    def close_watchers(self) -> None:
        with self.lock:
            for watchers in self._watchers.values():
                for w in list(watchers):
                    w.deliver(None)
                watchers.clear()
