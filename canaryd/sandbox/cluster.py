"""The whole emulated cluster in one object: API emulator, KServe emulator, data plane, Prometheus, repo.

`canaryd demo` and the end-to-end tests both start one of these and run the real daemon against it as a
separate process (so tests can SIGKILL it). Everything binds to 127.0.0.1 on OS-picked ports and stops
with `stop()`; the load generator and Prometheus are bounded and die with it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from canaryd.sandbox.dataplane import DataPlane
from canaryd.sandbox.gitrepo import ConfigRepo
from canaryd.sandbox.kserve import KServeEmulator
from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds
from canaryd.sandbox.kubeapi.kfserving import install_kfserving_webhook
from canaryd.sandbox.loadgen import LoadGenerator, Target
from canaryd.sandbox.prometheus import PrometheusServer
from canaryd.sandbox.scenario import Scenario

PACKAGE = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE.parents[1]
LITE_CRD = PACKAGE / "crds" / "inferenceservice-lite.yaml"
KFSERVING_LITE_CRD = PACKAGE / "crds" / "kfserving-lite.yaml"
REVISION_CRD = PACKAGE / "crds" / "knative-revision.yaml"
MODELROLLOUT_CRD = REPO_ROOT / "charts" / "canaryd" / "crds" / "modelrollout.yaml"


def shared_dir() -> Path | None:
    """`../shared` beside the repo (the real CRDs and the API probe), if this checkout has it."""
    import os

    env = os.environ.get("CANARYD_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared"]:
        if (cand / "kserve").is_dir():
            return cand
    return None


def real_kserve_crd() -> Path | None:
    s = shared_dir()
    path = s / "kserve" / "serving.kserve.io_inferenceservices.yaml" if s else None
    return path if path and path.exists() else None


def real_kfserving_crd() -> Path | None:
    """KFServing 0.4.1's v1alpha2 CRD (an apiextensions v1beta1 document: its schema is used, as is)."""
    s = shared_dir()
    path = s / "kfserving" / "serving.kubeflow.org_inferenceservices.yaml" if s else None
    return path if path and path.exists() else None


class Sandbox:
    def __init__(self, scenario: Scenario, *, namespaces: tuple[str, ...] = ("default", "models"),
                 workdir: Path | None = None, kserve_crd: Path | None = None, scrape_interval_s: float = 1.0,
                 kfserving_crd: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="canaryd-sandbox-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scenario = scenario
        self.namespaces = namespaces
        crd = kserve_crd or real_kserve_crd() or LITE_CRD
        if not MODELROLLOUT_CRD.exists():
            raise FileNotFoundError(f"ModelRollout CRD not found at {MODELROLLOUT_CRD} (run from a source checkout)")
        self.kserve_crd = crd
        # KFServing's v1alpha2 beside KServe's v1beta1, with its validating webhook's rules.
        self.kfserving_crd = kfserving_crd or real_kfserving_crd() or KFSERVING_LITE_CRD
        self.api = KubeApiEmulator(load_crds([crd, self.kfserving_crd, REVISION_CRD, MODELROLLOUT_CRD]),
                                   namespaces=namespaces)
        install_kfserving_webhook(self.api)
        self.kubeconfig = self.dir / "kubeconfig"
        self.repo = ConfigRepo(self.dir)
        self.scrape_interval_s = scrape_interval_s
        self.kserve: KServeEmulator | None = None
        self.dataplane: DataPlane | None = None
        self.prometheus: PrometheusServer | None = None
        self.load: LoadGenerator | None = None

    def start(self) -> Sandbox:
        try:
            self.api.start()
            self.api.write_kubeconfig(self.kubeconfig)
            self.kserve = KServeEmulator(self.kubeconfig, self.scenario, namespaces=None).start()
            self.dataplane = DataPlane(self.kubeconfig, self.scenario, namespaces=None).start()
            self.prometheus = PrometheusServer(scrape_interval_s=self.scrape_interval_s).start()
            self.prometheus.set_targets([self.dataplane.metrics_target])
        except BaseException:
            self.stop()
            raise
        return self

    def start_load(self, services: list[tuple[str, str]], rate_per_s: float, duration_s: float) -> LoadGenerator:
        """Real HTTP requests to each (namespace, name) through the data plane, bounded in time."""
        assert self.dataplane is not None
        if self.load is not None:
            self.load.stop()
        targets = [Target(f"{self.dataplane.url}/v1/models/{name}:predict", f"{name}.{ns}.example.com", rate_per_s)
                   for ns, name in services]
        self.load = LoadGenerator(targets, duration_s=duration_s, max_requests=None, concurrency=256).start()
        return self.load

    def daemon_settings(self, *, poll_interval: str = "1s", default_policy: Path | None = None,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.prometheus is not None
        settings: dict[str, Any] = {
            "repo": {"url": self.repo.url, "branch": self.repo.branch, "pollInterval": poll_interval,
                     "workdir": str(self.dir / "canaryd-checkout")},
            "kubernetes": {"kubeconfig": str(self.kubeconfig), "namespaces": list(self.namespaces)},
            "prometheus": {"url": self.prometheus.url, "timeout": "3s",
                           "scrapeInterval": f"{self.scrape_interval_s:g}s"},
            "server": {"host": "127.0.0.1", "port": 0},
            # Everything in the sandbox listens on 127.0.0.1, gates included; a real cluster keeps the
            # default (loopback refused for gate webhooks).
            "outbound": {"allowLoopback": True},
            "logLevel": "info",
        }
        if default_policy is not None:
            settings["defaultPolicy"] = str(default_policy)
        for section, values in (extra or {}).items():
            if isinstance(values, dict) and isinstance(settings.get(section), dict):
                settings[section].update(values)
            else:
                settings[section] = values
        return settings

    def write_settings(self, name: str, settings: dict[str, Any]) -> Path:
        path = self.dir / name
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        return path

    def stop(self) -> None:
        parts: tuple[Any, ...] = (self.load, self.prometheus, self.dataplane, self.kserve, self.api)
        for part in parts:
            if part is not None:
                with contextlib.suppress(Exception):  # stop everything we can
                    part.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
