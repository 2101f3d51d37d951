"""End-to-end test helpers: a namespace of our own in the shared sandbox, its own config repo and daemon.

Tests share one sandbox (API emulator, KServe emulator, data plane, Prometheus) for speed, and isolate
themselves by namespace: each gets a fresh namespace, a fresh bare repo and a daemon restricted to that
namespace.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from canaryd.adapters.kube import make_api_client
from canaryd.adapters.statestore import StateStore
from canaryd.rollout.state import Phase, RolloutState
from canaryd.sandbox.cluster import Sandbox
from canaryd.sandbox.daemonproc import DaemonProcess
from canaryd.sandbox.docs import isvc_yaml as isvc_yaml
from canaryd.sandbox.docs import kfserving_yaml as kfserving_yaml
from canaryd.sandbox.docs import policy_doc
from canaryd.sandbox.gitrepo import ConfigRepo
from canaryd.sandbox.loadgen import LoadGenerator, Target

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
T = TypeVar("T")

#: Test-only fast policy: seconds instead of minutes. Not a production setting.
FAST_POLICY = {
    "steps": [10, 50],
    "interval": "5s",
    "progressDeadline": "20s",
    "analysis": {
        "mode": "threshold",  # these tests pin the threshold judge's behaviour (test_statistical the others)
        "every": "2s",
        "warmup": "1s",
        "minRequests": 8,
        "failureLimit": 2,
        "inconclusiveLimit": 3,
        "onInconclusive": "hold",
        "maxHold": "90s",  # generous: a loaded CI machine can starve the load generator for a while
        "metrics": [
            {"name": "error-rate", "max": 0.05},
            {"name": "latency", "quantile": 0.99, "maxMs": 300},
        ],
    },
}


def wait_until(fn: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def policy_yaml(name: str, ns: str, spec: dict[str, Any] | None = None, **overrides: Any) -> str:
    s: dict[str, Any] = {"target": {"name": name}, **(spec or FAST_POLICY)}
    for k, v in overrides.items():
        if k == "analysis":
            s["analysis"] = {**s["analysis"], **v}
        else:
            s[k] = v
    return policy_doc(name, ns, s)


class PercentRecorder:
    """Watches one InferenceService and records every distinct canaryTrafficPercent written to it."""

    def __init__(self, api: client.ApiClient, ns: str, name: str) -> None:
        self.co = client.CustomObjectsApi(api)
        self.ns, self.name = ns, name
        self.values: list[int | None] = []
        self.gens: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PercentRecorder:
        self._thread.start()
        return self

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    lst = self.co.list_namespaced_custom_object(G, V, self.ns, P,
                                                                field_selector=f"metadata.name={self.name}")
                    rv = lst["metadata"]["resourceVersion"]
                    for item in lst["items"]:
                        self._see(item)
                w = watch.Watch()
                for ev in w.stream(self.co.list_namespaced_custom_object, G, V, self.ns, P,
                                   field_selector=f"metadata.name={self.name}", resource_version=rv,
                                   timeout_seconds=2, _request_timeout=5):
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] != "DELETED":
                        self._see(obj)
                    if self._stop.is_set():
                        w.stop()
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                time.sleep(0.1)
            except Exception:  # keep recording
                time.sleep(0.1)

    def _see(self, obj: dict[str, Any]) -> None:
        pct = (obj.get("spec", {}).get("predictor") or {}).get("canaryTrafficPercent")
        gen = obj["metadata"].get("generation", 0)
        if self.gens and gen == self.gens[-1]:
            return
        self.gens.append(gen)
        if not self.values or self.values[-1] != pct:
            self.values.append(pct)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Env:
    """One test's namespace, repo and daemon in the shared sandbox."""

    def __init__(self, sb: Sandbox, tag: str) -> None:
        self.sb = sb
        self.ns = f"{tag}-{uuid.uuid4().hex[:6]}"
        self.api = make_api_client(str(sb.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.co = client.CustomObjectsApi(self.api)
        self.core.create_namespace({"metadata": {"name": self.ns}})
        self.dir = sb.dir / self.ns
        self.dir.mkdir()
        self.repo = ConfigRepo(self.dir)
        self.store = StateStore(self.api)
        self.daemon: DaemonProcess | None = None
        self.loads: list[LoadGenerator] = []
        self.recorders: list[PercentRecorder] = []

    def settings(self, prometheus_url: str | None = None, **extra: Any) -> Path:
        s = self.sb.daemon_settings(extra=extra)
        s["repo"]["url"] = self.repo.url
        s["repo"]["workdir"] = str(self.dir / "checkout")
        s["kubernetes"]["namespaces"] = [self.ns]
        s["kubernetes"]["defaultNamespace"] = self.ns
        if prometheus_url:
            s["prometheus"]["url"] = prometheus_url
        return self.sb.write_settings(f"{self.ns}.yaml", s)

    def start_daemon(self, settings: Path | None = None, env: dict[str, str] | None = None) -> DaemonProcess:
        settings = settings or self.settings()
        self.daemon = DaemonProcess(settings, self.dir / "canaryd.log", env=env).start()
        return self.daemon

    def load(self, names: list[str], rate: float = 20.0, duration: float = 120.0) -> LoadGenerator:
        assert self.sb.dataplane is not None
        targets = [Target(f"{self.sb.dataplane.url}/v1/models/{n}:predict", f"{n}.{self.ns}.example.com", rate)
                   for n in names]
        lg = LoadGenerator(targets, duration_s=duration, max_requests=None, concurrency=128).start()
        self.loads.append(lg)
        return lg

    def record(self, name: str) -> PercentRecorder:
        r = PercentRecorder(self.api, self.ns, name).start()
        self.recorders.append(r)
        return r

    def isvc(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.co.get_namespaced_custom_object(G, V, self.ns, P, name)
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def state(self, name: str) -> RolloutState | None:
        return self.store.load(self.ns, name)

    def wait_phase(self, name: str, phases: set[Phase], commit: str | None = None, timeout: float = 60
                   ) -> RolloutState:
        def check() -> RolloutState | None:
            st = self.state(name)
            if st is None or (commit is not None and st.spec.commit != commit):
                return None
            return st if st.status.phase in phases else None

        try:
            return wait_until(check, timeout, f"{self.ns}/{name} in {sorted(phases)} at {commit}")
        except AssertionError as exc:
            st = self.state(name)
            detail = (f"; state: {st.status.phase} {st.status.message}; next check {st.status.next_check_at};"
                      f" analyses run {st.status.analyses_run}; last verdict {st.status.last_verdict}"
                      if st else "; no state")
            if st:
                detail += "".join(f"\n  {h.at.time()} {h.from_phase}->{h.phase} {h.reason}: {h.message[:200]}"
                                  for h in st.status.history[-8:])
            tail = self.daemon.log_tail(25) if self.daemon else ""
            raise AssertionError(f"{exc}{detail}\ndaemon log:\n{tail}") from None

    def events(self, name: str) -> list[Any]:
        evs = self.core.list_namespaced_event(self.ns).items
        return [e for e in evs if e.involved_object.name == name]

    def close(self) -> None:
        for r in self.recorders:
            r.stop()
        for lg in self.loads:
            lg.stop()
        if self.daemon is not None:
            self.daemon.terminate()
