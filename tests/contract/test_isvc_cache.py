"""The watch-fed InferenceService cache against the Kubernetes API emulator, over real HTTP.

What the daemon relies on: a scope answers only once it has listed and while its watch stream is open (not
after its watch broke, until it lists again, and not while a watch goes unanswered, as behind a proxy that
buffers watches); watch events keep it current; a watch whose resourceVersion fell out of the server's history
(410 Expired) lists again; our own writes are in the cache the moment they return, and an older event that
arrives afterwards does not undo them; a namespaced cache never makes a cluster-wide call; an API that is
not served is not watched (reads fall back to GET).

The emulator's request hooks hold or fail the cache's requests (it has its own User-Agent component), so
the tests can put the cache exactly in the state they need, without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from starlette.responses import Response, StreamingResponse

from canaryd.adapters.isvc_cache import Cached, InferenceServiceCache, rv_newer_or_same
from canaryd.adapters.kserve import KServeAdapter
from canaryd.adapters.kube import make_api_client, user_agent
from canaryd.apply import V1ALPHA2, V1BETA1
from canaryd.rollout.model import ApplySpec
from canaryd.sandbox.cluster import KFSERVING_LITE_CRD, LITE_CRD
from canaryd.sandbox.kubeapi import KubeApiEmulator, RequestInfo, load_crds, status_body
from tests.polling import wait_for

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
NS_A, NS_B = "team-a", "team-b"
CACHE_AGENT = user_agent("isvc-cache-test")


def isvc(name: str, ns: str, uri: str = "gs://m/v1") -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "InferenceService", "metadata": {"name": name, "namespace": ns},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}}}


class Gate:
    """A request hook for the cache's list/watch requests. While closed it either holds them unanswered
    (`blind=False`: like a proxy that buffers a watch until it ends) or answers a watch with an open stream
    that carries no event until the gate opens (`blind=True`: the cache is watching, but blind). It can
    also fail them."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.blind = False
        self.verbs: set[str] = {"watch"}
        self.fail_with: int | None = None
        self.waiting: set[str] = set()

    async def _until_open(self, group: str) -> None:
        self.waiting.add(group)
        try:
            while not self.open.is_set():
                await asyncio.sleep(0.01)
        finally:
            self.waiting.discard(group)

    async def __call__(self, info: RequestInfo) -> Response | None:
        if info.user_agent != CACHE_AGENT or info.verb not in self.verbs:
            return None
        if self.fail_with is not None:
            body = json.dumps(status_body(self.fail_with, "InternalError", "injected"))
            return Response(body, status_code=self.fail_with, media_type="application/json")
        if self.open.is_set():
            return None
        if self.blind and info.verb == "watch":
            async def silence() -> AsyncIterator[bytes]:
                await self._until_open(info.group)
                for chunk in ():
                    yield chunk

            return StreamingResponse(silence(), media_type="application/json")
        await self._until_open(info.group)
        return None

    def holding(self, group: str = G) -> bool:
        """Whether a watch of `group` is being held now (the cache is blind to its events)."""
        return group in self.waiting


class World:
    def __init__(self, emulator: KubeApiEmulator, kubeconfig: Path) -> None:
        self.emulator = emulator
        self.kubeconfig = kubeconfig
        self.api = make_api_client(str(kubeconfig))
        self.raw = client.CustomObjectsApi(self.api)
        self.gate = Gate()
        emulator.hooks.append(self.gate)
        self.caches: list[InferenceServiceCache] = []

    def cache(self, namespaces: list[str] | None, **kw: Any) -> InferenceServiceCache:
        kw.setdefault("watch_timeout_s", 1.0)
        kw.setdefault("retry_s", 0.05)
        c = InferenceServiceCache(make_api_client(str(self.kubeconfig), component="isvc-cache-test"), namespaces, **kw)
        self.caches.append(c)
        return c.start()

    def calls(self, verb: str, start: int = 0) -> list[Any]:
        return [c for c in self.emulator.calls[start:]
                if c.user_agent == CACHE_AGENT and c.verb == verb and c.resource == P]

    def close(self) -> None:
        self.gate.open.set()
        for c in self.caches:
            c.stop()
        self.api.close()


def _world(tmp_path: Path, crds: list[Path], history: int = 1000) -> Iterator[World]:
    emulator = KubeApiEmulator(load_crds(crds), namespaces=[NS_A, NS_B], history=history).start()
    world = World(emulator, emulator.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        yield world
    finally:
        world.close()
        emulator.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, [LITE_CRD, KFSERVING_LITE_CRD])


@pytest.fixture
def short_history(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, [LITE_CRD], history=3)


def uri_of(c: Cached | None) -> str | None:
    assert c is not None, "the cache should answer"
    return None if c.obj is None else str(c.obj["spec"]["predictor"]["model"]["storageUri"])


def test_lists_then_follows_the_watch(world: World) -> None:
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("iris", NS_A))
    cache = world.cache([NS_A])
    assert cache.wait_synced(20)
    assert uri_of(cache.lookup(V1BETA1, NS_A, "iris")) == "gs://m/v1"
    assert cache.lookup(V1BETA1, NS_A, "nope") == Cached(None)  # synced: absent means it does not exist

    world.raw.patch_namespaced_custom_object(G, V, NS_A, P, "iris", {"spec": {"predictor": {"model": {
        "storageUri": "gs://m/v2"}}}})
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("wine", NS_A))
    wait_for("the patch and the new service", lambda: uri_of(cache.lookup(V1BETA1, NS_A, "iris")) == "gs://m/v2"
             and uri_of(cache.lookup(V1BETA1, NS_A, "wine")) == "gs://m/v1")
    world.raw.delete_namespaced_custom_object(G, V, NS_A, P, "wine")
    wait_for("the deletion", lambda: cache.lookup(V1BETA1, NS_A, "wine") == Cached(None))

    # A lookup hands out a copy: a caller cannot corrupt the cache.
    got = cache.lookup(V1BETA1, NS_A, "iris")
    assert got is not None and got.obj is not None
    got.obj["spec"]["predictor"]["model"]["storageUri"] = "mutated"
    assert uri_of(cache.lookup(V1BETA1, NS_A, "iris")) == "gs://m/v2"


def test_namespaced_cache_stays_in_its_namespaces_and_falls_back_elsewhere(world: World) -> None:
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("iris", NS_A))
    world.raw.create_namespaced_custom_object(G, V, NS_B, P, isvc("iris", NS_B))
    start = len(world.emulator.calls)
    cache = world.cache([NS_A])
    assert cache.wait_synced(20)
    wait_for("a watch", lambda: world.calls("watch", start))
    assert cache.lookup(V1BETA1, NS_B, "iris") is None  # nobody watches team-b: the caller must GET
    assert cache.stats.fallbacks == 1
    assert len(cache) == 1
    calls = world.calls("list", start) + world.calls("watch", start)
    assert {c.namespace for c in calls} == {NS_A}, "a namespaced cache must never list or watch cluster-wide"
    assert {(c.group, c.version) for c in calls} == {(G, V), ("serving.kubeflow.org", "v1alpha2")}


def test_cluster_wide_cache_answers_every_namespace(world: World) -> None:
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("iris", NS_A))
    world.raw.create_namespaced_custom_object(G, V, NS_B, P, isvc("wine", NS_B, "gs://w/v1"))
    start = len(world.emulator.calls)
    cache = world.cache(None)
    assert cache.wait_synced(20)
    assert uri_of(cache.lookup(V1BETA1, NS_A, "iris")) == "gs://m/v1"
    assert uri_of(cache.lookup(V1BETA1, NS_B, "wine")) == "gs://w/v1"
    assert {c.namespace for c in world.calls("list", start)} == {""}


def test_api_that_is_not_served_is_not_watched_and_reads_fall_back(tmp_path: Path) -> None:
    for world in _world(tmp_path, [LITE_CRD]):  # no KFServing CRD
        start = len(world.emulator.calls)
        cache = world.cache([NS_A])
        assert cache.wait_synced(20)
        assert cache.lookup(V1ALPHA2, NS_A, "legacy") is None  # a GET will say 404
        assert cache.lookup(V1BETA1, NS_A, "iris") == Cached(None)
        kfs = [c for c in world.calls("list", start) if c.group == "serving.kubeflow.org"]
        assert kfs and all(c.status == 404 for c in kfs)
        assert not [c for c in world.calls("watch", start) if c.group == "serving.kubeflow.org"]


def test_watch_too_old_lists_again(short_history: World) -> None:
    world = short_history
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("iris", NS_A))
    cache = world.cache([NS_A])
    assert cache.wait_synced(20)
    world.gate.open.clear()  # the next watch (after the 1 s server timeout) waits at the door
    wait_for("the cache to come back for a new watch", world.gate.holding)
    # Not answered yet (a proxy that buffers watches looks the same): the cache does not vouch for itself.
    assert cache.lookup(V1BETA1, NS_A, "iris") is None
    for i in range(5):  # more changes than the emulator keeps (history=3): the watch's version expires
        world.raw.patch_namespaced_custom_object(G, V, NS_A, P, "iris", {"metadata": {"labels": {"n": str(i)}}})
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("wine", NS_A))
    lists = cache.stats.lists
    world.gate.open.set()
    wait_for("a list after 410 Expired", lambda: cache.stats.relists_expired >= 1 and cache.stats.lists > lists)
    # it vouches again once the watch after that list is up (on a loaded machine, a moment later)
    got = wait_for("the cache to vouch again", lambda: cache.lookup(V1BETA1, NS_A, "iris"))
    assert got is not None and got.obj is not None and got.obj["metadata"]["labels"] == {"n": "4"}
    assert uri_of(cache.lookup(V1BETA1, NS_A, "wine")) == "gs://m/v1"


def test_our_writes_are_cached_at_once_and_older_events_do_not_undo_them(world: World) -> None:
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("iris", NS_A))
    cache = world.cache([NS_A])
    assert cache.wait_synced(20)
    world.gate.blind = True
    world.gate.open.clear()
    wait_for("the cache watching a silent stream", lambda: world.gate.holding() and cache.synced(V1BETA1, NS_A))
    # Someone else's change first (the cache is blind to its event), then ours.
    world.raw.patch_namespaced_custom_object(G, V, NS_A, P, "iris", {"metadata": {"labels": {"by": "kserve"}}})
    api = make_api_client(str(world.kubeconfig), component="daemon")
    adapter = KServeAdapter(api, cache=cache)
    gets = len([c for c in world.emulator.calls if c.verb == "get"])
    generation = adapter.set_traffic(NS_A, "iris", "predictor", 20)
    live = adapter.read(NS_A, "iris")
    assert live is not None and live.canary_percent == 20 and live.generation == generation
    assert live.manifest["metadata"]["labels"] == {"by": "kserve"}  # the server's answer, with the other change
    assert cache.stats.written_through == 1
    # set_traffic's own guard GET is the only one: the read came from the cache.
    assert len([c for c in world.emulator.calls if c.verb == "get"]) == gets + 1
    stale = cache.stats.stale_dropped
    world.gate.open.set()  # the next watch replays the older event: it must not win
    wait_for("the older event to be seen and dropped", lambda: cache.stats.stale_dropped > stale)
    live = adapter.read(NS_A, "iris")
    assert live is not None and live.canary_percent == 20

    # A create is cached at once as well, and a delete forgets at once.
    world.gate.open.clear()
    wait_for("the next silent watch", lambda: world.gate.holding() and cache.synced(V1BETA1, NS_A))
    adapter.apply(ApplySpec(manifest=isvc("wine", NS_A), last_applied=None, component="predictor",
                            canary_percent=None, create=True))
    assert adapter.read(NS_A, "wine") is not None
    adapter.delete(NS_A, "wine")
    assert adapter.read(NS_A, "wine") is None
    world.gate.open.set()  # ADDED then DELETED replayed: still gone
    wait_for("the replayed events", lambda: cache.stats.events >= 4)
    assert adapter.read(NS_A, "wine") is None
    api.close()


def test_a_broken_watch_sends_reads_to_the_server_until_it_lists_again(world: World) -> None:
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("iris", NS_A))
    cache = world.cache([NS_A], max_retry_s=0.2)
    assert cache.wait_synced(20)
    world.gate.verbs = {"watch", "list"}
    world.gate.fail_with = 500
    wait_for("the cache to give up on its watch", lambda: not cache.synced(V1BETA1, NS_A))
    assert cache.lookup(V1BETA1, NS_A, "iris") is None
    world.raw.patch_namespaced_custom_object(G, V, NS_A, P, "iris", {"metadata": {"labels": {"x": "1"}}})
    world.gate.fail_with = None
    wait_for("a new list", lambda: cache.synced(V1BETA1, NS_A))
    got = cache.lookup(V1BETA1, NS_A, "iris")
    assert got is not None and got.obj is not None and got.obj["metadata"]["labels"] == {"x": "1"}


def test_stop_returns_promptly_with_open_watches(world: World) -> None:
    cache = world.cache([NS_A, NS_B], watch_timeout_s=300)
    assert cache.wait_synced(20)
    start = len(world.emulator.calls)
    wait_for("watches", lambda: len(world.calls("watch", 0)) >= 3)
    began = time.monotonic()
    cache.stop(timeout=5)
    assert time.monotonic() - began < 3
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("isvc-cache-"))
    assert len(world.calls("list", start)) == 0


@pytest.mark.parametrize(("new", "old", "ok"), [
    ("10", "9", True), ("9", "10", False), ("10", "10", True), ("abc", "10", True), (None, "5", True),
])
def test_resource_versions_compare_as_integers_when_they_are(new: str | None, old: str, ok: bool) -> None:
    assert rv_newer_or_same(new, old) is ok


def test_a_watch_that_goes_silent_with_its_connection_open_is_not_trusted(world: World) -> None:
    """The fault behind `bench/faults.py --classes api-watch-stall`: before, a stalled watch was trusted
    until its 300 s timeout plus 30 s, and the cache answered with objects minutes old."""
    world.raw.create_namespaced_custom_object(G, V, NS_A, P, isvc("iris", NS_A))
    cache = world.cache([NS_A], watch_timeout_s=1.0, stall_margin_s=1.0)
    assert cache.wait_synced(20)
    world.gate.blind = True
    world.gate.open.clear()  # the next watch is answered, then nothing more arrives
    wait_for("a blind watch", lambda: world.gate.holding())
    world.raw.patch_namespaced_custom_object(G, V, NS_A, P, "iris",
                                             {"spec": {"predictor": {"model": {"storageUri": "gs://m/v2"}}}})
    errors = cache.stats.errors
    wait_for("the stalled watch given up (read timeout)", lambda: cache.stats.errors > errors, deadline_s=15)
    # From then on the cache never answers the old object: a GET (None) until it has listed again.
    got = cache.lookup(V1BETA1, NS_A, "iris")
    assert got is None or uri_of(got) == "gs://m/v2"
    wait_for("a fresh list carrying the change", lambda: cache.stats.lists >= 2)
    got = cache.lookup(V1BETA1, NS_A, "iris")
    assert got is None or uri_of(got) == "gs://m/v2"
