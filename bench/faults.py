"""Dependency-fault figures: real rollouts in the sandbox while the Kubernetes API, Prometheus or Git fail.

For each fault class, the real daemon (`canaryd run`, a child process) rolls out `--rollouts` versions,
half good (no errors) and half bad (30 % of requests fail), over two services of a namespace of its own,
while that class's fault is injected into its own dependencies only:

- API (`tests.campaigns.faults.ApiFaults`, matched on the daemon's User-Agent and the namespace): 409 on
  ModelRollout writes, 5xx, 429 with Retry-After, slow answers, cut and expired watches;
- Prometheus (`tests.campaigns.faultproxy.FaultProxy` between the daemon and the real Prometheus): down,
  hung queries, empty and NaN results, stale answers (frozen at an old evaluation time), HTTP 500, in
  bursts or on a share of the queries; and Prometheus down for good, past `maxHold`;
- Git: the remote (served over HTTP) unreachable in bursts (connections refused or reset), every push a
  force-push that rewrites the branch, the daemon's clone corrupted before every push.

It prints, per class: rollouts that ended as they must (good promoted and bad rolled back; for
Prometheus down past maxHold, every rollout held and rolled back), rollouts stuck (not ended within the
deadline), and promotions decided on missing data: a promotion whose deciding analysis lacked a number,
or used a faulted Prometheus answer about its canary (the proxy logs every answer). That last column must
be 0. Several classes run at once (`--parallel`), each with its own namespace, repo, daemon and faults,
sharing one sandbox (API emulator, KServe emulator, data plane, Prometheus).

    python bench/faults.py [--rollouts 4] [--parallel 5] [--classes api-5xx,prom-stale] [--seed 1]

Exit status 1 when a rollout ended wrong, got stuck, or was promoted on missing data.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import statistics
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Runnable from a plain checkout (`python bench/faults.py`), whether or not canaryd is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryd.adapters.kube import make_api_client
from canaryd.rollout.state import GROUP, PLURAL, VERSION, Phase, RolloutState
from canaryd.sandbox.cluster import Sandbox
from canaryd.sandbox.daemonproc import DaemonProcess
from canaryd.sandbox.githttp import AuthGitServer
from canaryd.sandbox.gitrepo import ConfigRepo
from canaryd.sandbox.loadgen import LoadGenerator, Target
from canaryd.sandbox.scenario import Scenario
from tests.campaigns.faultproxy import FaultProxy, Mode
from tests.campaigns.faults import (
    CORRUPTIONS,
    ApiFault,
    ApiFaults,
    Match,
    TcpFaultProxy,
    corrupt_checkout,
    cycle,
    force_push,
    promoted_on_missing_data,
)

ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
GOOD = {"errorRate": 0.0, "latencyMs": {"base": 20, "p99": 60}, "readyAfterSeconds": 0.5}
BAD = {**GOOD, "errorRate": 0.3}
SERVICES = ("svc-a", "svc-b")
DONE = (Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED)
USER, TOKEN = "bench", "bench-faults-token-0123456789"

POLICY: dict[str, Any] = {
    "steps": [10, 50],
    "interval": "5s",
    "progressDeadline": "30s",
    "analysis": {
        "mode": "threshold", "every": "2s", "warmup": "1s", "minRequests": 8, "failureLimit": 2,
        "inconclusiveLimit": 3, "onInconclusive": "hold", "maxHold": "90s",
        "metrics": [{"name": "error-rate", "max": 0.05}, {"name": "latency", "quantile": 0.99, "maxMs": 300}],
    },
}


# -- the fault classes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultClass:
    name: str
    family: str  # api | prometheus | git
    what: str
    rollback_all: bool = False  # every rollout must hold and roll back (Prometheus gone past maxHold)
    policy: dict[str, Any] = field(default_factory=lambda: POLICY)
    default: bool = True  # part of a run without --classes


def _hold_policy() -> dict[str, Any]:
    return {**POLICY, "analysis": {**POLICY["analysis"], "inconclusiveLimit": 2, "maxHold": "10s"}}


CLASSES: tuple[FaultClass, ...] = (
    FaultClass("api-409", "api", "409 Conflict on 30% of ModelRollout writes"),
    FaultClass("api-5xx", "api", "500/502/503/504 on 25% of requests"),
    FaultClass("api-429", "api", "429 Retry-After: 1 on 20% of requests"),
    FaultClass("api-slow", "api", "1 s delay on 30% of requests"),
    FaultClass("api-watch", "api", "watches cut after 1 s, half expired (410)"),
    FaultClass("api-watch-stall", "api", "watches go silent after 1 s, connection kept open", default=False),
    FaultClass("prom-down", "prometheus", "down (refused) 3 s of every ~8 s"),
    FaultClass("prom-hang", "prometheus", "queries hang (timeout) 3 s of every ~8 s"),
    FaultClass("prom-empty", "prometheus", "empty result on 20% of queries"),
    FaultClass("prom-nan", "prometheus", "NaN values on 20% of queries"),
    FaultClass("prom-stale", "prometheus", "answers frozen at an old time 5 s of every ~10 s"),
    FaultClass("prom-500", "prometheus", "HTTP 500 on 25% of queries"),
    FaultClass("prom-down-maxhold", "prometheus", "down for good, maxHold 10 s: hold, then roll back",
               rollback_all=True, policy=_hold_policy()),
    FaultClass("git-unreachable", "git", "remote refuses/resets connections 6 s of every ~12 s"),
    FaultClass("git-force-push", "git", "every push force-pushed (history rewritten)"),
    FaultClass("git-corrupt", "git", "daemon's clone corrupted before every push"),
)
BY_NAME = {c.name: c for c in CLASSES}

#: GitPython's index operations `os.chdir` into the work tree (process-wide) for their duration, so the
#: classes' pushes, which run in threads, take turns; so do daemon starts, whose child process would
#: otherwise inherit whatever directory another thread's push was in.
GIT_LOCK = threading.Lock()


# -- one rollout, one class ---------------------------------------------------------------------------


@dataclass
class Rollout:
    service: str
    index: int
    good: bool
    uri: str
    pushed_at: float
    finished_at: float | None = None
    phase: str | None = None
    correct: bool = False
    stuck: bool = False
    missing_data: str | None = None
    problem: str | None = None


@dataclass
class ClassResult:
    cls: FaultClass
    rollouts: list[Rollout] = field(default_factory=list)
    faults: int = 0
    fault_unit: str = "faults"
    error: str | None = None
    duration_s: float = 0.0

    def count(self, pred: Callable[[Rollout], bool]) -> int:
        return sum(1 for r in self.rollouts if pred(r))


def version_uri(cls: str, service: str, index: int, good: bool) -> str:
    return f"gs://faults/{cls}/{service}/v{index}-{'good' if good else 'bad'}"


def plan(cls: FaultClass, rollouts: int) -> dict[str, list[bool]]:
    """Good/bad per service and rollout (index 0 is the creation, always good); half good, half bad."""
    per = max(1, rollouts // len(SERVICES))
    return {svc: [True] + [(i + k) % 2 == 0 for i in range(per)] for k, svc in enumerate(SERVICES)}


def isvc_doc(ns: str, name: str, uri: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {{name: {name}, namespace: {ns}}}
        spec:
          predictor:
            model: {{modelFormat: {{name: sklearn}}, storageUri: "{uri}"}}
        """)


def policy_doc(ns: str, name: str, policy: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
                           "metadata": {"name": name, "namespace": ns}, "spec": {"target": {"name": name}, **policy}},
                          sort_keys=False)


class ClassRun:
    """One fault class: its namespace, repo, faults and daemon, and the rollouts it drives."""

    def __init__(self, sb: Sandbox, cls: FaultClass, versions: dict[str, list[bool]], *, seed: int,
                 deadline_s: float, log: Callable[[str], None]) -> None:
        self.sb, self.cls, self.versions, self.seed = sb, cls, versions, seed
        self.deadline_s = deadline_s
        self.log = log
        self.ns = f"{cls.name}-{uuid.uuid4().hex[:5]}"
        self.dir = sb.dir / self.ns
        self.result = ClassResult(cls)
        self.api = make_api_client(str(sb.kubeconfig))
        self.co = client.CustomObjectsApi(self.api)
        self.files: dict[str, str | None] = {}
        self.proxy: FaultProxy | None = None
        self.api_faults: ApiFaults | None = None
        self.tcp: TcpFaultProxy | None = None
        self.daemon: DaemonProcess | None = None
        self.pushes = 0
        self.corruptions = 0
        self.outages = 0

    # -- running -------------------------------------------------------------------------------------
    def run(self) -> ClassResult:
        started = time.monotonic()
        try:
            with contextlib.ExitStack() as stack:
                self._setup(stack)
                stop = threading.Event()
                stack.callback(stop.set)
                # Faults from the daemon's first request on: a watch it opens at start-up must meet them too.
                self._start_faults(stack, stop)
                assert self.daemon is not None
                with GIT_LOCK:
                    self.daemon.start()
                self._create_services()
                self._drive()
        except Exception as exc:  # a broken harness is reported, not mistaken for a canaryd result
            self.result.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.log(f"{self.cls.name}: harness error: {self.result.error}\n{self._log_tail()}")
        finally:
            self.api.close()
        self.result.duration_s = time.monotonic() - started
        self._count_faults()
        return self.result

    def _setup(self, stack: contextlib.ExitStack) -> None:
        client.CoreV1Api(self.api).create_namespace({"metadata": {"name": self.ns}})
        self.dir.mkdir(parents=True)
        with GIT_LOCK:
            repo = self.repo = ConfigRepo(self.dir)
        assert self.sb.prometheus is not None and self.sb.dataplane is not None
        settings = self.sb.daemon_settings()
        settings["repo"].update(url=repo.url, workdir=str(self.dir / "checkout"))
        settings["kubernetes"].update(namespaces=[self.ns], defaultNamespace=self.ns)
        family = self.cls.family
        if family == "prometheus":
            self.proxy = stack.enter_context(FaultProxy(self.sb.prometheus.url, seed=self.seed, hang_s=10.0))
            settings["prometheus"]["url"] = self.proxy.url
        if family == "api":
            self.api_faults = stack.enter_context(ApiFaults(self.sb.api, seed=self.seed))
        if self.cls.name == "git-unreachable":
            server = stack.enter_context(AuthGitServer(repo.bare.parent, USER, TOKEN))
            self.tcp = stack.enter_context(TcpFaultProxy(server.url))
            token = self.dir / "token"
            token.write_text(TOKEN + "\n")
            settings["repo"].update(url=f"{self.tcp.url}/{repo.bare.name}", username=USER, tokenFile=str(token))
        path = self.dir / "canaryd.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.daemon = DaemonProcess(path, self.dir / "canaryd.log")
        stack.callback(self._stop_daemon)
        targets = [Target(f"{self.sb.dataplane.url}/v1/models/{s}:predict", f"{s}.{self.ns}.example.com", 25.0)
                   for s in SERVICES]
        load = LoadGenerator(targets, duration_s=3600, max_requests=None, concurrency=128).start()
        stack.callback(load.stop)

    def _stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.terminate(timeout=10)

    def _create_services(self) -> None:
        changes: dict[str, str | None] = {}
        for svc in SERVICES:
            changes[f"policies/{svc}.yaml"] = policy_doc(self.ns, svc, self.cls.policy)
            changes[f"services/{svc}.yaml"] = isvc_doc(self.ns, svc, version_uri(self.cls.name, svc, 0, True))
        with GIT_LOCK:
            self.repo.commit(changes, "create the services")
        self.files.update(changes)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = [self._state(svc) for svc in SERVICES]
            if all(s is not None and s.status.phase == Phase.SUCCEEDED and s.status.stable_revision for s in states):
                return
            time.sleep(0.25)
        raise TimeoutError(f"the services of {self.ns} were not created within 90 s")

    def _start_faults(self, stack: contextlib.ExitStack, stop: threading.Event) -> None:
        name, rng = self.cls.name, random.Random(self.seed)
        mine = Match(namespace=self.ns)
        f = self.api_faults
        p = self.proxy
        if name == "api-409" and f is not None:
            f.add(ApiFault("conflict", Match.writes(namespace=self.ns, resource=PLURAL), probability=0.3))
        elif name == "api-5xx" and f is not None:
            for status, share in ((500, 0.1), (503, 0.08), (502, 0.04), (504, 0.04)):
                f.add(ApiFault("error", mine, probability=share, status=status))
        elif name == "api-429" and f is not None:
            f.add(ApiFault("throttle", mine, probability=0.2, retry_after_s=1))
        elif name == "api-slow" and f is not None:
            f.add(ApiFault("slow", mine, probability=0.3, delay_s=1.0))
        elif name == "api-watch" and f is not None:
            f.add(ApiFault("expire-watch", mine, probability=0.5))
            f.add(ApiFault("drop-watch", mine, delay_s=1.0))
        elif name == "api-watch-stall" and f is not None:
            f.add(ApiFault("stall-watch", mine, delay_s=1.0))
        elif p is not None and name in ("prom-empty", "prom-nan", "prom-500"):
            mode: Mode = {"prom-empty": "empty", "prom-nan": "nan", "prom-500": "error"}[name]  # type: ignore[assignment]
            p.set(mode, probability=0.25 if name == "prom-500" else 0.2)
        elif p is not None and name in ("prom-down", "prom-hang", "prom-stale"):
            burst: Mode = {"prom-down": "down", "prom-hang": "hang", "prom-stale": "stale"}[name]  # type: ignore[assignment]
            on, off = (5.0, 5.0) if name == "prom-stale" else (3.0, 5.0)

            def switch(active: bool, m: Mode = burst, proxy: FaultProxy = p) -> None:
                if active:
                    self.outages += 1
                proxy.set(m if active else "pass")

            stack.callback(cycle(switch, on_s=on, off_s=off, stop=stop, rng=rng).join, 15)
        elif p is not None and name == "prom-down-maxhold":
            p.set("down")
            self.outages += 1
        elif name == "git-unreachable" and self.tcp is not None:
            tcp = self.tcp

            def cut(active: bool) -> None:
                if active:
                    self.outages += 1
                tcp.set_mode(("refuse" if self.outages % 2 else "reset") if active else "pass")

            stack.callback(cycle(cut, on_s=6.0, off_s=6.0, stop=stop, rng=rng).join, 15)

    # -- rollouts ------------------------------------------------------------------------------------
    def _push(self, changes: dict[str, str | None], message: str) -> None:
        self.files.update(changes)
        if self.cls.name == "git-corrupt":
            kind = CORRUPTIONS[self.corruptions % len(CORRUPTIONS)]
            with contextlib.suppress(FileNotFoundError):  # mid re-clone: nothing to damage right now
                corrupt_checkout(self.dir / "checkout", kind)
                self.corruptions += 1
        with GIT_LOCK:
            if self.cls.name == "git-force-push":
                force_push(self.repo, self.files, message)
            else:
                self.repo.commit(changes, message)
        self.pushes += 1

    def _drive(self) -> None:
        current: dict[str, Rollout] = {}
        queue = {svc: list(enumerate(goods))[1:] for svc, goods in self.versions.items()}

        def push_next(services: list[str]) -> None:
            changes: dict[str, str | None] = {}
            for svc in services:
                if not queue[svc]:
                    continue
                index, good = queue[svc].pop(0)
                uri = version_uri(self.cls.name, svc, index, good)
                changes[f"services/{svc}.yaml"] = isvc_doc(self.ns, svc, uri)
                current[svc] = Rollout(svc, index, good, uri, time.monotonic())
                self.result.rollouts.append(current[svc])
            if changes:
                self._push(changes, f"push {', '.join(sorted(changes))}")

        push_next(list(SERVICES))
        while any(r.finished_at is None and not r.stuck for r in current.values()):
            free = []
            for svc, r in current.items():
                if r.finished_at is not None or r.stuck:
                    continue
                if self._finished(r):
                    free.append(svc)
                elif time.monotonic() - r.pushed_at > self.deadline_s:
                    r.stuck = True
                    st = self._state(svc)
                    r.problem = f"stuck: {st.status.phase}: {st.status.message[:160]}" if st else "stuck: no state"
                    self.log(f"{self.cls.name}: {svc} v{r.index} {r.problem}\n{self._log_tail()}")
            push_next(free)
            time.sleep(0.25)

    def _finished(self, r: Rollout) -> bool:
        st = self._state(r.service)
        if st is None or _uri_of(st.spec.last_applied) != r.uri or st.status.phase not in DONE:
            return False
        r.finished_at, r.phase = time.monotonic(), str(st.status.phase)
        self._verify(r, st)
        return True

    def _verify(self, r: Rollout, st: RolloutState) -> None:
        isvc = self._isvc(r.service) or {}
        pct = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent", "absent")
        reasons = [h.reason for h in st.status.history if h.commit == st.spec.commit]
        promoted = st.status.phase == Phase.SUCCEEDED
        if promoted:
            r.missing_data = promoted_on_missing_data(st, self.proxy)
            if r.missing_data:
                self.log(f"{self.cls.name}: {r.service} v{r.index} PROMOTED ON MISSING DATA: {r.missing_data}")
        if self.cls.rollback_all:
            r.correct = st.status.phase == Phase.FAILED and "MaxHoldExceeded" in reasons and pct == 0
        elif r.good:
            r.correct = promoted and pct == "absent"
        else:
            r.correct = st.status.phase == Phase.FAILED and pct == 0
        if not r.correct:
            r.problem = f"{'good' if r.good else 'bad'} version ended {st.status.phase} (percent {pct}): " \
                        f"{st.status.message[:160]}"
            self.log(f"{self.cls.name}: {r.service} v{r.index} WRONG: {r.problem}")

    def _count_faults(self) -> None:
        res = self.result
        if self.api_faults is not None:
            res.faults, res.fault_unit = len(self.api_faults.fired()), "API errors"
        elif self.proxy is not None:
            answers = sum(1 for q in self.proxy.queries() if q.fault != "pass")
            res.faults, res.fault_unit = answers, "bad answers"
            if self.cls.name in ("prom-down", "prom-down-maxhold"):
                res.faults, res.fault_unit = self.outages, "outages"
        elif self.cls.name == "git-unreachable":
            res.faults, res.fault_unit = self._failed_fetches(), f"failed fetches in {self.outages} outages"
        elif self.cls.name == "git-force-push":
            res.faults, res.fault_unit = self.pushes, "force-pushes"
        elif self.cls.name == "git-corrupt":
            res.faults, res.fault_unit = self.corruptions, "corruptions"

    def _log_tail(self, lines: int = 6) -> str:
        tail = self.daemon.log_tail(lines) if self.daemon is not None else ""
        return textwrap.indent(tail, "      daemon> ")

    def _failed_fetches(self) -> int:
        """Fetch attempts that failed (retried within a sync) plus syncs that gave up, from the daemon's log."""
        if self.daemon is None:
            return 0
        try:
            text = self.daemon.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count("config repo fetch failed") + text.count("config repo sync failed")

    # -- reads -------------------------------------------------------------------------------------
    def _state(self, name: str) -> RolloutState | None:
        try:
            obj = self.co.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return RolloutState.from_storage(obj)

    def _isvc(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.co.get_namespaced_custom_object(*ISVC[:2], self.ns, ISVC[2], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj if isinstance(obj, dict) else None


def _uri_of(manifest: dict[str, Any] | None) -> str | None:
    predictor = ((manifest or {}).get("spec") or {}).get("predictor") or {}
    uri = (predictor.get("model") or {}).get("storageUri")
    return uri if isinstance(uri, str) else None


# -- the campaign -------------------------------------------------------------------------------------


def scenario(classes: list[FaultClass], versions: dict[str, dict[str, list[bool]]]) -> Scenario:
    entries = {version_uri(c.name, svc, i, good): GOOD if good else BAD
               for c in classes for svc, goods in versions[c.name].items() for i, good in enumerate(goods)}
    return Scenario.model_validate({"seed": 7, "default": GOOD, "versions": entries})


def run(classes: list[FaultClass], rollouts: int, parallel: int, seed: int,
        log: Callable[[str], None]) -> list[ClassResult]:
    versions = {c.name: plan(c, rollouts) for c in classes}
    with Sandbox(scenario(classes, versions), namespaces=("default",)) as sb:
        assert sb.prometheus is not None and sb.dataplane is not None
        # Prometheus sees its first scrape ~5 s after start: let it, before any canary needs numbers.
        sb.prometheus.wait_for_series("up", timeout=30)

        def one(i_cls: tuple[int, FaultClass]) -> ClassResult:
            i, cls = i_cls
            deadline = 150.0 if not cls.rollback_all else 90.0
            res = ClassRun(sb, cls, versions[cls.name], seed=seed + i, deadline_s=deadline, log=log).run()
            log(f"{cls.name}: {res.count(lambda r: r.correct)}/{len(res.rollouts)} correct, "
                f"{res.count(lambda r: r.stuck)} stuck, {res.count(lambda r: bool(r.missing_data))} on missing data,"
                f" {res.faults} {res.fault_unit}, {res.duration_s:.0f} s")
            return res

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            return list(pool.map(one, enumerate(classes)))


def table(results: list[ClassResult]) -> str:
    head = ("| fault class | injected | rollouts | ended right | good promoted | bad rolled back | stuck "
            "| promoted on missing data | median rollout |")
    rows = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        goods = [r for r in res.rollouts if r.good]
        bads = [r for r in res.rollouts if not r.good]
        promoted = sum(1 for r in goods if r.phase == str(Phase.SUCCEEDED))
        times = [r.finished_at - r.pushed_at for r in res.rollouts if r.finished_at is not None]
        median = f"{statistics.median(times):.0f} s" if times else "-"
        expect_good = "held, rolled back" if res.cls.rollback_all else "promoted"
        good_cell = f"{promoted}/{len(goods)}" if not res.cls.rollback_all else \
            f"0/{len(goods)} ({sum(1 for r in goods if r.correct)} {expect_good})"
        bad_cell = f"{sum(1 for r in bads if r.phase == str(Phase.FAILED))}/{len(bads)}"
        name = res.cls.name + (f" (harness error: {res.error})" if res.error else "")
        rows.append(f"| {name}: {res.cls.what} | {res.faults} {res.fault_unit} | {len(res.rollouts)} "
                    f"| {res.count(lambda r: r.correct)}/{len(res.rollouts)} | {good_cell} | {bad_cell} "
                    f"| {res.count(lambda r: r.stuck)} | {res.count(lambda r: bool(r.missing_data))} | {median} |")
    total = sum(len(r.rollouts) for r in results)
    right = sum(r.count(lambda x: x.correct) for r in results)
    stuck = sum(r.count(lambda x: x.stuck) for r in results)
    missing = sum(r.count(lambda x: bool(x.missing_data)) for r in results)
    rows.append(f"| **all** | | {total} | {right}/{total} | | | {stuck} | {missing} | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=4, help="rollouts per fault class, half good (default 4)")
    ap.add_argument("--parallel", type=int, default=5, help="fault classes run at once (default 5)")
    ap.add_argument("--classes", default="", help=f"comma-separated subset of: {', '.join(BY_NAME)} (default:"
                    " all but api-watch-stall)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault draws (default 1)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.classes.split(",") if n.strip()] or [c.name for c in CLASSES if c.default]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown fault classes: {', '.join(unknown)}")
    classes = [BY_NAME[n] for n in names]
    # The daemons (`python -m canaryd.cli`, child processes) run this same checkout, installed or not.
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"dependency faults: {len(classes)} classes x {args.rollouts} rollouts, {args.parallel} at once,"
          f" seed {args.seed}", flush=True)
    results = run(classes, args.rollouts, args.parallel, args.seed,
                  lambda msg: print(f"  [{time.monotonic() - started:5.0f}s] {msg}", flush=True))
    print()
    print(table(results))
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    bad = any(r.error or r.count(lambda x: not x.correct or x.stuck or bool(x.missing_data)) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
