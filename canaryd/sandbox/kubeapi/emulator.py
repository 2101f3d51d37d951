"""`KubeApiEmulator`: the whole emulated API server, started and stopped as one object.

canaryd, the KServe controller emulator, the data plane and the conformance probe reach it the way
they reach a real cluster: through the `kubernetes` client and a kubeconfig written by
`write_kubeconfig`. Tests may also look at its objects directly (`get_object`, `list_objects`) and at
every request it answered (`calls`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from canaryd.httpserver import ThreadedServer
from canaryd.sandbox.kubeapi.app import KubeApp, RequestHook
from canaryd.sandbox.kubeapi.errors import ApiError
from canaryd.sandbox.kubeapi.objects import NAMESPACES_KEY, ObjectApi, WriteOptions
from canaryd.sandbox.kubeapi.requestinfo import ApiCall
from canaryd.sandbox.kubeapi.resources import (
    Registry,
    ResourceType,
    builtin_types,
    is_crd,
    types_from_crd,
    validate_crd_object,
)
from canaryd.sandbox.kubeapi.schema import compile_schema
from canaryd.sandbox.kubeapi.store import Obj, Store

CRD_GROUP, CRD_VERSION, CRD_PLURAL = "apiextensions.k8s.io", "v1", "customresourcedefinitions"


def _crd_type() -> ResourceType:
    return ResourceType(
        CRD_GROUP, CRD_VERSION, CRD_PLURAL, "customresourcedefinition", "CustomResourceDefinition",
        namespaced=False, schema=compile_schema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        short_names=("crd", "crds"), status_subresource=True, allow_unconditional_update=False,
        validator=validate_crd_object, extra={"crd": True})


def load_crds(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The CustomResourceDefinition documents in these (multi-document) YAML files, in order."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.load_all(f, Loader=loader):
                if is_crd(doc):
                    out.append(doc)
    return out


class KubeApiEmulator:
    """A faithful subset of kube-apiserver 1.28 over real HTTP on 127.0.0.1.

    `calls` records every answered request (for an RBAC check). `hooks` is the seam for fault
    injection: each `RequestHook` sees the parsed request first and may delay it or answer instead
    (a 409, 429 or 500 built with `status_body`). `history` bounds the per-resource event history that
    watches resume from; older resourceVersions get 410 Expired, as from the real watch cache.
    """

    def __init__(self, crds: Iterable[dict[str, Any]] = (), *, namespaces: Iterable[str] = ("default",),
                 host: str = "127.0.0.1", port: int = 0, history: int = 1000) -> None:
        self.registry = Registry(builtin_types())
        self.registry.add(_crd_type())
        self.store = Store(history)
        self.api = ObjectApi(self.store, self.registry, on_crd_created=self._register_crd,
                             on_crd_deleted=self._unregister_crd)
        self.calls: list[ApiCall] = []
        self.hooks: list[RequestHook] = []
        self._host, self._port = host, port
        self._server: ThreadedServer | None = None
        for crd in crds:
            self.add_crd(crd)
        ns_type = self._type("", "v1", "namespaces")
        for ns in namespaces:
            if self.store.get(NAMESPACES_KEY, "", ns) is None:
                self.api.create(ns_type, "", {"metadata": {"name": ns}})

    # ---------------------------------------------------------------- CRDs

    def add_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CRD's resources (apiextensions.k8s.io/v1, or the v1beta1 shape) and store the CRD."""
        crd = copy.deepcopy(crd)
        types_from_crd(crd)  # fail early on a bad document
        rt = self._type(CRD_GROUP, CRD_VERSION, CRD_PLURAL)
        name = (crd.get("metadata") or {}).get("name") or ""
        body = {**crd, "apiVersion": f"{CRD_GROUP}/{CRD_VERSION}"}
        if crd.get("apiVersion") == f"{CRD_GROUP}/v1beta1":
            body["spec"] = {**crd.get("spec", {}), "preserveUnknownFields": crd.get("spec", {}).get(
                "preserveUnknownFields", True)}
        body["metadata"] = {k: v for k, v in (crd.get("metadata") or {}).items()
                            if k in ("name", "labels", "annotations")}
        with self.store.lock:
            current = self.store.get(rt.storage_key, "", name)
            if current is None:
                self.api.create(rt, "", body)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.api.replace(rt, "", name, body)
                self._register_crd(body)

    def _register_crd(self, crd: Obj) -> None:
        for t in types_from_crd(crd):
            self.registry.add(t)

    def _unregister_crd(self, crd: Obj) -> None:
        for t in types_from_crd(crd):
            self.registry.remove(t)

    def _type(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.registry.get(group, version, plural)
        if rt is None:
            raise KeyError(f"{plural}.{group}/{version} is not served")
        return rt

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> KubeApiEmulator:
        if self._server is not None:
            return self
        app = KubeApp(self.api, self.calls, self.hooks, self._server_address)
        self._server = ThreadedServer(app.asgi(), host=self._host, port=self._port, name="kube-api-emulator")
        self._server.start()
        return self

    def stop(self) -> None:
        self.store.close_watchers()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> KubeApiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the API emulator is not started")
        return self._server.url

    def _server_address(self) -> str:
        return self.url.removeprefix("http://")

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """A kubeconfig with one cluster, user and context pointing at this emulator (current-context set)."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}],
            "current-context": "emulator",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ---------------------------------------------------------------- in-process access (tests)

    def get_object(self, group: str, version: str, plural: str, name: str,
                   namespace: str | None = None) -> dict[str, Any] | None:
        """A copy of a stored object as that version shows it, or None."""
        rt = self._type(group, version, plural)
        try:
            obj = self.api.get(rt, namespace or "", name)
        except ApiError:
            return None
        result: dict[str, Any] = json.loads(json.dumps(obj))
        return result

    def list_objects(self, group: str, version: str, plural: str,
                     namespace: str | None = None) -> list[dict[str, Any]]:
        rt = self._type(group, version, plural)
        items, _ = self.store.scan(rt.storage_key, namespace)
        result: list[dict[str, Any]] = json.loads(json.dumps([self.api.render(rt, o) for o in items]))
        return result

    def create_object(self, group: str, version: str, plural: str, body: dict[str, Any],
                      namespace: str | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        """Create as a client would (same validation and errors: raises ApiError)."""
        rt = self._type(group, version, plural)
        result = self.api.create(rt, namespace or "", copy.deepcopy(body), WriteOptions(dry_run=dry_run))
        created: dict[str, Any] = json.loads(json.dumps(result.body))
        return created

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

