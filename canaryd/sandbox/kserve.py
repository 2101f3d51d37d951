"""The KServe controller emulator: InferenceService changes in, Knative Revisions and status out.

It talks to the API only through the `kubernetes` client (list + watch of InferenceServices, Revision
objects, `/status` merge patches), like the real controller, so it runs unchanged against a real
kube-apiserver that has the KServe CRD (and `crds/knative-revision.yaml`) but no KServe. Every decision
is made by `kserve_logic.reconcile_v1beta1` (KServe, `serving.kserve.io/v1beta1`) or
`kserve_logic.reconcile_v1alpha2` (KFServing 0.4, `serving.kubeflow.org/v1alpha2`); this module only
reads, writes and keeps time. Both APIs are watched; one whose CRD is not installed is looked for again
now and then, quietly, so a CRD installed later is picked up.

A deleted InferenceService's Revisions are deleted by the emulator (a real cluster's garbage collector
would do it through their ownerReferences; the API emulator has none), and so are the Revisions of a
v1alpha2 endpoint dropped from the spec (KFServing deletes its Knative Service).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from canaryd.sandbox.kserve_logic import (
    ISVC_GROUP,
    ISVC_LABEL,
    ISVC_PLURAL,
    ISVC_VERSION,
    KFS_GROUP,
    KFS_ISVC_LABEL,
    KFS_VERSION,
    REVISION_GROUP,
    REVISION_PLURAL,
    REVISION_VERSION,
    ChildMemo,
    Json,
    Options,
    Outcome,
    RevisionRecord,
    merge_patch,
    parse_revision,
    reconcile_v1alpha2,
    reconcile_v1beta1,
    revision_object,
    revision_status,
)
from canaryd.sandbox.scenario import Scenario, VersionBehaviour

log = logging.getLogger(__name__)

_WATCH_TIMEOUT_S = 1  # server-side watch timeout: bounds how long stop() waits for a watcher
_READ_TIMEOUT_S = 1.5  # client-side guard in case a server ignores timeoutSeconds
_RETRY_S = 0.5  # after an API error
_ABSENT_RETRY_S = 2.0  # an API that is not served (its CRD not installed): look again this often

Reconcile = Callable[
    [Mapping[str, Any], list[RevisionRecord], Callable[[str | None], VersionBehaviour], datetime,
     Mapping[str, ChildMemo], Options],
    Outcome,
]


@dataclass(frozen=True)
class IsvcApi:
    """One InferenceService API the emulator serves as its controller would."""

    name: str
    group: str
    version: str
    isvc_label: str  # the label on the Revisions that names their InferenceService
    reconcile: Reconcile
    plural: str = ISVC_PLURAL


V1BETA1 = IsvcApi("v1beta1", ISVC_GROUP, ISVC_VERSION, ISVC_LABEL, reconcile_v1beta1)
V1ALPHA2 = IsvcApi("v1alpha2", KFS_GROUP, KFS_VERSION, KFS_ISVC_LABEL, reconcile_v1alpha2)
APIS = (V1BETA1, V1ALPHA2)
_BY_NAME = {api.name: api for api in APIS}

Key = tuple[str, str, str]  # (api name, namespace, name)


class _WorkQueue:
    """Keys due at a time; a key queued twice runs once, at the earlier time (like client-go's queue)."""

    def __init__(self, tick_s: float) -> None:
        self._due: dict[Key, float] = {}
        self._cond = threading.Condition()
        self._tick_s = tick_s
        self._closed = False

    def add(self, key: Key, delay_s: float = 0.0) -> None:
        at = time.monotonic() + max(0.0, delay_s)
        with self._cond:
            if key not in self._due or at < self._due[key]:
                self._due[key] = at
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self) -> Key | None:
        """The next due key, or None once closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._due:
                    key, at = min(self._due.items(), key=lambda kv: kv[1])
                    if at <= now:
                        del self._due[key]
                        return key
                    self._cond.wait(min(at - now, self._tick_s))
                else:
                    self._cond.wait(self._tick_s)
            return None


@dataclass
class _Memory:
    """Per InferenceService (by uid): what a real cluster would keep in objects the emulator lacks."""

    uid: str = ""
    memos: dict[str, ChildMemo] = field(default_factory=dict)
    # the last status sent and what the server stored from it: a server that normalises what it stores
    # (defaults, pruning) must not make every reconcile look like a change worth writing
    sent: Json | None = None
    stored: Json | None = None


class KServeEmulator:
    """Emulates KServe v1beta1 in Knative (Serverless) mode, plus RawDeployment/Standard mode status, and
    KFServing 0.4's v1alpha2 (default and canary endpoints).

    `tag_latest_in_split` and `observed_generation` choose between the sandbox contract (defaults) and
    upstream KServe's exact behaviour; see `kserve_logic.Options`.
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        scenario: Scenario,
        *,
        namespaces: list[str] | None = None,
        tick_s: float = 0.1,
        domain: str = "example.com",
        tag_latest_in_split: bool = True,
        observed_generation: Literal["own", "knative"] = "own",
    ) -> None:
        self._api_client: Any = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        self._api = client.CustomObjectsApi(self._api_client)
        self._scenario = scenario
        self._namespaces = list(namespaces) if namespaces else None
        self._tick_s = tick_s
        self._options = Options(
            domain=domain, tag_latest_in_split=tag_latest_in_split, observed_generation=observed_generation
        )
        self._queue = _WorkQueue(tick_s)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._memory: dict[Key, _Memory] = {}
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> KServeEmulator:
        scopes: list[str | None] = list(self._namespaces) if self._namespaces else [None]
        self._threads = [threading.Thread(target=self._work, name="kserve-emulator-worker", daemon=True)]
        self._threads += [
            threading.Thread(
                target=self._watch, args=(api, ns), name=f"kserve-emulator-watch-{api.name}-{ns or 'all'}", daemon=True
            )
            for api in APIS
            for ns in scopes
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.close()
        deadline = time.monotonic() + 2.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = []
        self._api_client.close()

    def __enter__(self) -> KServeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_scenario(self, scenario: Scenario) -> None:
        """New readiness timings apply to revisions not Ready yet, from their creation time."""
        with self._lock:
            self._scenario = scenario
            keys = list(self._memory)
        for key in keys:
            self._queue.add(key)

    # --- watching ----------------------------------------------------------------------------------------

    def _list_isvcs(self, api: IsvcApi, namespace: str | None, **kw: Any) -> Any:
        if namespace is None:
            return self._api.list_cluster_custom_object(api.group, api.version, api.plural, **kw)
        return self._api.list_namespaced_custom_object(api.group, api.version, namespace, api.plural, **kw)

    def _list_revisions(self, namespace: str | None, selector: str) -> list[Json]:
        result: Any
        if namespace is None:
            result = self._api.list_cluster_custom_object(
                REVISION_GROUP, REVISION_VERSION, REVISION_PLURAL, label_selector=selector, _request_timeout=10
            )
        else:
            result = self._api.list_namespaced_custom_object(
                REVISION_GROUP,
                REVISION_VERSION,
                namespace,
                REVISION_PLURAL,
                label_selector=selector,
                _request_timeout=10,
            )
        return list(result.get("items") or [])

    def _watch(self, api: IsvcApi, namespace: str | None) -> None:
        """List, queue everything, then watch from the list's resourceVersion; list again on 410/errors."""
        while not self._stop.is_set():
            try:
                listed = self._list_isvcs(api, namespace, _request_timeout=10)
                version = str(listed["metadata"]["resourceVersion"])
                keys = {_key(api, item) for item in listed.get("items") or []}
                with self._lock:  # deleted while nobody watched
                    gone = {
                        k for k in self._memory
                        if k not in keys and k[0] == api.name and (namespace is None or k[1] == namespace)
                    }
                owners = {
                    (api.name, str(r["metadata"]["namespace"]), str(labels[api.isvc_label]))
                    for r in self._list_revisions(namespace, "")
                    if api.isvc_label in (labels := r["metadata"].get("labels") or {})
                }
                for key in keys | gone | (owners - keys):
                    self._queue.add(key)
                for event in self._events(api, namespace, version):
                    version = str(event["object"]["metadata"]["resourceVersion"])
                    self._queue.add(_key(api, event["object"]))
            except ApiException as exc:
                if exc.status == 404:  # this API is not served (no CRD): look again later
                    self._stop.wait(_ABSENT_RETRY_S)
                elif exc.status != 410:
                    log.warning("watching InferenceServices failed (%s %s); listing again", exc.status, exc.reason)
                    self._stop.wait(_RETRY_S)
            except (urllib3.exceptions.HTTPError, OSError, ValueError, KeyError) as exc:
                log.warning("watching InferenceServices failed (%s); listing again", type(exc).__name__)
                self._stop.wait(_RETRY_S)
            except Exception:
                log.exception("watching InferenceServices crashed; listing again")
                self._stop.wait(_RETRY_S)

    def _events(self, api: IsvcApi, namespace: str | None, version: str) -> Iterator[Json]:
        """Watch events from `version` on, re-watching after each server timeout, until stopped."""
        while not self._stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                stream = w.stream(  # type: ignore[no-untyped-call]
                    self._list_isvcs,
                    api,
                    namespace,
                    resource_version=version,
                    timeout_seconds=_WATCH_TIMEOUT_S,
                    allow_watch_bookmarks=True,
                    _request_timeout=(5, _READ_TIMEOUT_S),
                )
                for event in stream:
                    obj = event.get("raw_object") or event.get("object")
                    if not isinstance(obj, dict):
                        continue
                    version = str(obj["metadata"]["resourceVersion"])
                    if event.get("type") == "BOOKMARK":
                        continue
                    yield {"type": event.get("type"), "object": obj}
                    if self._stop.is_set():
                        return
            except urllib3.exceptions.ReadTimeoutError:
                continue  # quiet stream: watch again from the same version
            finally:
                w.stop()  # type: ignore[no-untyped-call]

    # --- reconciling -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (key := self._queue.get()) is not None:
            try:
                self._reconcile(key)
            except ApiException as exc:
                log.warning("reconciling %s %s/%s failed: %s %s; retrying", *key, exc.status, exc.reason)
                self._queue.add(key, _RETRY_S)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("reconciling %s %s/%s failed: %s; retrying", *key, type(exc).__name__)
                self._queue.add(key, _RETRY_S)
            except Exception:
                log.exception("reconciling %s %s/%s crashed; retrying", *key)
                self._queue.add(key, _RETRY_S)

    def _reconcile(self, key: Key) -> None:
        api_name, namespace, name = key
        api = _BY_NAME[api_name]
        isvc = _quiet(
            404,
            lambda: self._api.get_namespaced_custom_object(
                api.group, api.version, namespace, api.plural, name, _request_timeout=10
            ),
        )
        if isvc is None:
            self._forget(api, key)
            return
        uid = str(isvc["metadata"].get("uid") or "")
        records: list[RevisionRecord] = []
        existing: dict[str, Json] = {}
        for obj in self._list_revisions(namespace, f"{api.isvc_label}={name}"):
            owners = obj["metadata"].get("ownerReferences") or []
            if uid and owners and all(o.get("uid") != uid for o in owners):
                self._delete_revision(namespace, str(obj["metadata"]["name"]))  # left by an earlier namesake
                continue
            if (record := parse_revision(obj)) is not None:
                records.append(record)
                existing[record.name] = obj
        with self._lock:
            memory = self._memory.get(key)
            if memory is None or memory.uid != uid:
                memory = self._memory[key] = _Memory(uid=uid)
            scenario = self._scenario
        now = datetime.now(UTC)
        outcome = api.reconcile(isvc, records, scenario.behaviour, now, memory.memos, self._options)

        for rev in outcome.create:
            try:
                self._api.create_namespaced_custom_object(
                    REVISION_GROUP,
                    REVISION_VERSION,
                    namespace,
                    REVISION_PLURAL,
                    revision_object(isvc, rev),
                    _request_timeout=10,
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self._queue.add(key)  # someone made it meanwhile: look again
                return
            self._write_revision_status(namespace, rev, now, None)
        for rev in outcome.readiness:
            self._write_revision_status(namespace, rev, now, existing[rev.name].get("status"))
        memory.memos = dict(outcome.memos)

        old_status = isvc.get("status") or {}
        unchanged = outcome.status == memory.sent and old_status == memory.stored
        if outcome.status != old_status and not unchanged:
            body = {
                "metadata": {"resourceVersion": isvc["metadata"]["resourceVersion"]},
                "status": merge_patch(old_status, outcome.status),
            }
            try:
                stored: Any = self._api.patch_namespaced_custom_object_status(
                    api.group, api.version, namespace, api.plural, name, body, _request_timeout=10
                )
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                self._queue.add(key)  # changed or deleted meanwhile: read it again
                return
            memory.sent, memory.stored = outcome.status, stored.get("status") or {}
        # After the status, so that routes never name a revision that is already gone.
        for rev in outcome.delete:
            self._delete_revision(namespace, rev.name)
        if outcome.requeue_after is not None:
            self._queue.add(key, max(outcome.requeue_after, self._tick_s))

    def _write_revision_status(self, namespace: str, rev: RevisionRecord, now: datetime, old: Json | None) -> None:
        body = {"status": revision_status(rev, now, old)}
        _quiet(
            404,
            lambda: self._api.patch_namespaced_custom_object_status(
                REVISION_GROUP, REVISION_VERSION, namespace, REVISION_PLURAL, rev.name, body, _request_timeout=10
            ),
        )

    def _forget(self, api: IsvcApi, key: Key) -> None:
        """The InferenceService is gone: delete its Revisions, as garbage collection would."""
        _, namespace, name = key
        for obj in self._list_revisions(namespace, f"{api.isvc_label}={name}"):
            self._delete_revision(namespace, str(obj["metadata"]["name"]))
        with self._lock:
            self._memory.pop(key, None)

    def _delete_revision(self, namespace: str, name: str) -> None:
        _quiet(
            404,
            lambda: self._api.delete_namespaced_custom_object(
                REVISION_GROUP, REVISION_VERSION, namespace, REVISION_PLURAL, name, _request_timeout=10
            ),
        )


def _key(api: IsvcApi, obj: Json) -> Key:
    meta = obj["metadata"]
    return api.name, str(meta["namespace"]), str(meta["name"])


def _quiet(status: int, call: Callable[[], Any]) -> Any:
    """The call's result, or None if it failed with this HTTP status."""
    try:
        return call()
    except ApiException as exc:
        if exc.status == status:
            return None
        raise
