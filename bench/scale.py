"""canaryd at scale: 1,000 InferenceServices in 50 namespaces, 10 % of them rolling out at once.

Targets (issue 7, item 5): a full reconcile round (every service ticked once) in <= 10 s on one core,
daemon RSS <= 200 MB, Prometheus counter reads batched per namespace and metric, InferenceServices read
from a watch-fed cache rather than with a GET per service per tick, and a git sync whose cost follows the
files that changed.

Three processes, all on 127.0.0.1 with OS-picked ports:

* the cluster (`--serve`): the Kubernetes API emulator with the services seeded, the KServe controller
  emulator (revisions, readiness, traffic status) and a Prometheus-compatible stub that answers instant
  queries from counters that grow with time, one set per Knative revision it finds in the emulator; it
  also reports the API calls canaryd made (the emulator records each with its User-Agent) and the queries
  it answered. Pinned to the second CPU when there is one.
* the daemon (`--daemon MODE`), pinned to one CPU: the real `Daemon` (runner wiring, adapters, controller,
  metrics, JSON logs to a file), driven in-process. A *round* is `Daemon._tick` of every service once, in
  turn, on one thread: what the scheduler's workers do between two polls, without the scheduler's timing.
  `cached` is the daemon as shipped; `naive` turns the InferenceService cache, the batched counter reads,
  the parsed-file cache and the skipped write of resting services off (a GET per service per tick, four
  counter queries per analysis, every file parsed on every sync, a ModelRollout write per tick even when
  only its next check moved): the way it worked before.
* this orchestrator: makes the config repo (a local bare git repo, one file per service), starts the
  cluster, runs `cached` (which also adopts the services and starts the rollouts) then `naive` against the
  same cluster, and prints both side by side.

    python bench/scale.py [--services 1000] [--namespaces 50] [--rolling 0.1] [--rounds 3] [--namespaced]

About three minutes on two cores. The numbers depend on the machine: a round's wall time includes
waiting for the API emulator (Python, on the other core), so the daemon's own CPU time is printed too.

The policy (every service) is the sequential judge with analyses every second, so every rolling service
is analysed in every round, and one-hour steps, so they all stay rolling for the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
AGENT_PREFIX = "canaryd/"
POLICY = textwrap.dedent("""\
    apiVersion: canaryd.io/v1alpha1
    kind: RolloutPolicy
    metadata: {name: scale-default}
    spec:
      steps: [10, 50]
      interval: 1h
      progressDeadline: 10m
      analysis: {mode: sequential, every: 1s, warmup: 0s, minRequests: 20, inconclusiveLimit: 100000,
                 onInconclusive: hold, maxHold: 1h}
    """)
SCRAPE_INTERVAL = "5s"


def namespaces(n: int) -> list[str]:
    return [f"scale-{i:02d}" for i in range(n)]


def services(n: int, n_ns: int) -> list[tuple[str, str]]:
    ns = namespaces(n_ns)
    return [(ns[i % n_ns], f"svc-{i:04d}") for i in range(n)]


def rolling(svcs: list[tuple[str, str]], share: float, n_ns: int) -> list[tuple[str, str]]:
    """`share` of the services, spread evenly over the namespaces (service i lives in namespace i % n_ns)."""
    k = max(1, round(1 / share)) if share > 0 else len(svcs) + 1
    return [s for i, s in enumerate(svcs) if (i // n_ns) % k == 0]


def isvc_doc(ns: str, name: str, uri: str, comment: str = "") -> str:
    from canaryd.sandbox.docs import isvc_yaml

    return (f"# {comment}\n" if comment else "") + isvc_yaml(name, ns, uri)


def isvc_obj(ns: str, name: str, uri: str) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "InferenceService", "metadata": {"name": name, "namespace": ns},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}}}


def rel_path(ns: str, name: str) -> str:
    return f"services/{ns}/{name}.yaml"


# ---------------------------------------------------------------------------------------------------------
# the config repo


class BulkRepo:
    """A bare repo and a working clone; commits thousands of files with one `git add -A`."""

    def __init__(self, root: Path, create: bool = True) -> None:
        self.bare, self.work = root / "config.git", root / "config-work"
        if not create:
            return
        self._git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        self._git(root, "init", "-q", "-b", "main", str(self.work))
        for k, v in (("user.name", "scale bench"), ("user.email", "bench@canaryd.invalid"),
                     ("commit.gpgsign", "false")):
            self._git(self.work, "config", k, v)
        self._git(self.work, "remote", "add", "origin", str(self.bare))

    @classmethod
    def open(cls, root: Path) -> BulkRepo:
        """The repo another process of this bench made."""
        return cls(root, create=False)

    @staticmethod
    def _git(cwd: Path, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str], message: str) -> str:
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self._git(self.work, "add", "-A")
        self._git(self.work, "commit", "-q", "-m", message)
        self._git(self.work, "push", "-q", "origin", "main")
        return self._git(self.work, "rev-parse", "HEAD").strip()


# ---------------------------------------------------------------------------------------------------------
# the cluster process


_SELECTOR = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)(=~|!~|!=|=)"((?:[^"\\]|\\.)*)"')
_BUCKETS = (("5", 0.02), ("10", 0.1), ("25", 0.5), ("50", 0.8), ("100", 0.95), ("250", 0.99), ("500", 0.998),
            ("1000", 1.0), ("+Inf", 1.0))


class PromStub:
    """Prometheus' instant-query API over synthetic queue-proxy counters of every Knative revision.

    A bare selector gets the matching raw series (value = rate x seconds since start, so counters grow);
    anything else (`sum(increase(...))`, ratios, quantiles, `vector(1)`) gets one plausible number. Queries
    are counted by kind: raw per namespace, raw per revision, and window queries.
    """

    def __init__(self, api: Any, rate: float = 20.0, error_share: float = 0.005) -> None:
        from canaryd.sandbox.kserve_logic import REVISION_GROUP, REVISION_PLURAL, REVISION_VERSION

        self._api = api
        self._rt = api.registry.get(REVISION_GROUP, REVISION_VERSION, REVISION_PLURAL)
        self._rate, self._errors = rate, error_share
        self._t0 = time.time() - 3600
        self._revs: dict[str, list[str]] = {}
        self._revs_at = 0.0
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def _revisions(self, ns: str) -> list[str]:
        with self._lock:
            if time.monotonic() - self._revs_at > 1.0:
                items, _ = self._api.store.scan(self._rt.storage_key, None)
                revs: dict[str, list[str]] = {}
                for o in items:
                    revs.setdefault(o["metadata"]["namespace"], []).append(o["metadata"]["name"])
                self._revs, self._revs_at = revs, time.monotonic()
            return self._revs.get(ns, [])

    def _series(self, ns: str, rev: str, t: float) -> list[tuple[dict[str, str], float]]:
        n = self._rate * (t - self._t0)
        base = {"namespace_name": ns, "revision_name": rev, "pod_name": f"{rev}-deployment-0"}
        out = [({**base, "__name__": "revision_request_count", "response_code_class": "2xx"}, n * (1 - self._errors)),
               ({**base, "__name__": "revision_request_count", "response_code_class": "5xx"}, n * self._errors)]
        out += [({**base, "__name__": "revision_request_latencies_bucket", "le": le}, n * share)
                for le, share in _BUCKETS]
        return out

    def answer(self, query: str, t: float) -> list[dict[str, Any]]:
        from canaryd.analysis.counters import matches
        from canaryd.analysis.queries import Matcher

        m = _SELECTOR.match(query.strip())
        if m is None:
            with self._lock:
                self.counts["window"] += 1
            value = 1.0 if query.startswith("vector(") else 0.002 if "rate(" in query and "/" in query else \
                40.0 if "histogram_quantile" in query else self._rate * 10
            return [{"metric": {}, "value": [t, repr(value)]}]
        name, body = m.groups()
        matchers = [Matcher(lb, op, re.sub(r"\\(.)", r"\1", v)) for lb, op, v in _MATCHER.findall(body)]
        with self._lock:
            self.counts["raw-revision" if any(m.label == "revision_name" for m in matchers)
                        else "raw-namespace"] += 1
        ns = next((m.value for m in matchers if m.label == "namespace_name" and m.op == "="), None)
        if ns is None:
            return []
        out = []
        for rev in self._revisions(ns):
            for labels, value in self._series(ns, rev, t):
                if labels["__name__"] == name and all(matches(m, labels) for m in matchers):
                    out.append({"metric": labels, "value": [t, repr(value)]})
        return out


def serve(args: argparse.Namespace) -> int:
    """The cluster process: API emulator, KServe emulator, Prometheus stub; `cluster.json` when ready."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from canaryd.httpserver import ThreadedServer
    from canaryd.sandbox.cluster import KFSERVING_LITE_CRD, LITE_CRD, MODELROLLOUT_CRD, REVISION_CRD
    from canaryd.sandbox.kserve import KServeEmulator
    from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds
    from canaryd.sandbox.scenario import Scenario

    pin(args.cpu)
    out = Path(args.dir)
    api = KubeApiEmulator(load_crds([LITE_CRD, KFSERVING_LITE_CRD, REVISION_CRD, MODELROLLOUT_CRD]),
                          namespaces=namespaces(args.namespaces)).start()
    kubeconfig = api.write_kubeconfig(out / "kubeconfig")
    for ns, name in services(args.services, args.namespaces):
        api.create_object(G, V, P, isvc_obj(ns, name, "gs://scale/v1"), namespace=ns)
    good = {"errorRate": 0.0, "readyAfterSeconds": 0.5}
    kserve = KServeEmulator(kubeconfig, Scenario.model_validate({"default": good}), namespaces=None).start()
    stub = PromStub(api)

    async def query(request: Request) -> JSONResponse:
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.form()).items()})
        result = stub.answer(params.get("query", ""), float(params.get("time") or time.time()))
        return JSONResponse({"status": "success", "data": {"resultType": "vector", "result": result}})

    async def calls(request: Request) -> JSONResponse:
        since = int(request.query_params.get("since", "0"))
        snapshot = list(api.calls)
        by: Counter[str] = Counter(
            f"{c.verb} {c.resource}" for c in snapshot[since:] if c.user_agent.startswith(AGENT_PREFIX))
        return JSONResponse({"next": len(snapshot), "by": dict(by)})

    async def queries(_request: Request) -> JSONResponse:
        return JSONResponse(dict(stub.counts))

    async def status(_request: Request) -> JSONResponse:
        items, _ = api.store.scan(api.registry.get(G, V, P).storage_key, None)
        ready = sum(1 for o in items if any(c.get("type") == "Ready" and c.get("status") == "True"
                                            for c in (o.get("status") or {}).get("conditions") or []))
        return JSONResponse({"isvcs": len(items), "ready": ready})

    app = Starlette(routes=[Route("/api/v1/query", query, methods=["GET", "POST"]), Route("/bench/calls", calls),
                            Route("/bench/queries", queries), Route("/bench/status", status)])
    server = ThreadedServer(app, name="prom-stub").start()
    (out / "cluster.json.tmp").write_text(json.dumps({"kubeconfig": str(kubeconfig), "url": server.url}))
    (out / "cluster.json.tmp").rename(out / "cluster.json")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()
    kserve.stop()
    api.stop()
    return 0


# ---------------------------------------------------------------------------------------------------------
# the daemon process


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def get_json(url: str) -> Any:
    import httpx

    return httpx.get(url, timeout=30).json()


def daemon(args: argparse.Namespace) -> int:
    """Run one mode's measurements and print them as one JSON line on stdout."""
    pin(args.cpu)
    from canaryd import logs
    from canaryd.config import Settings
    from canaryd.daemon.runner import Daemon
    from canaryd.desired import DesiredSet, load_desired
    from canaryd.rollout.state import RolloutState

    out = Path(args.dir)
    cluster = json.loads((out / "cluster.json").read_text())
    naive = args.daemon == "naive"
    logs.setup("info")  # the daemon's own JSON logs (stderr goes to a file): their cost is part of a round
    settings = Settings.model_validate({
        "repo": {"url": f"file://{out / 'config.git'}", "branch": "main", "pollInterval": "1h",
                 "workdir": str(out / f"checkout-{args.daemon}")},
        "kubernetes": {"kubeconfig": cluster["kubeconfig"], "namespaces": namespaces(args.namespaces)
                       if args.namespaced else [], "watchCache": not naive},
        "prometheus": {"url": cluster["url"], "timeout": "5s", "scrapeInterval": SCRAPE_INTERVAL},
        "server": {"host": "127.0.0.1", "port": 0},
        "defaultPolicy": str(out / "policy.yaml"),
        "workers": 1,
    })
    d = Daemon(settings)
    d.sched.pause()  # nothing runs by itself: the bench ticks
    if naive:
        import canaryd.daemon.controller as controller_module

        d.adapters.prometheus.batch = False
        # Before: every tick of a resting service saved its ModelRollout (only its next check had moved).
        controller_module._rescheduled_only = lambda old, new: False  # type: ignore[assignment]

        def load_every_file(commit: str, root: Path) -> DesiredSet:
            s = d.settings
            return load_desired(root, s.repo.paths, s.kubernetes.default_namespace, d.default_policy,
                                s.kubernetes.namespaces or None)

        d._load = load_every_file  # type: ignore[method-assign]
    phases: dict[str, str] = {}
    analysed: Counter[str] = Counter()

    def on_decision(old: RolloutState, new: RolloutState) -> None:
        key = new.spec.target.key
        phases[key] = str(new.status.phase)
        if new.status.analyses_run != old.status.analyses_run:
            analysed[key] += 1

    d.controller.on_decision.append(on_decision)
    result: dict[str, Any] = {"mode": args.daemon}
    if d.isvc_cache is not None:
        started = time.monotonic()
        d.isvc_cache.start()
        if not d.isvc_cache.wait_synced(120):
            raise SystemExit("the InferenceService cache did not sync in 120 s")
        result["cache_sync_s"] = time.monotonic() - started

    def timed_sync() -> float:
        started = time.perf_counter()
        d.sync()
        return time.perf_counter() - started

    result["sync_first_s"] = timed_sync()
    assert len(d.desired) == args.services, f"desired has {len(d.desired)} services"

    last_start = [0.0]

    def round_() -> dict[str, Any]:
        # Pacing, not synchronisation: a round starts at least one analysis interval (1 s) after the one
        # before, so every rolling service has an analysis due in every round, whatever the round's length.
        pause = last_start[0] + 1.1 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        last_start[0] = time.monotonic()
        calls0 = get_json(f"{cluster['url']}/bench/calls")["next"]
        q0 = get_json(f"{cluster['url']}/bench/queries")
        sent0 = d.adapters.prometheus.queries_sent
        analysed.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        for key in sorted(d.desired):
            d._tick(str(key))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        by = get_json(f"{cluster['url']}/bench/calls?since={calls0}")["by"]
        q1 = get_json(f"{cluster['url']}/bench/queries")
        return {"wall_s": wall, "cpu_s": cpu, "api": by, "api_total": sum(by.values()),
                "isvc_gets": by.get(f"get {P}", 0),
                "queries": {k: q1.get(k, 0) - q0.get(k, 0) for k in q1},
                "queries_total": d.adapters.prometheus.queries_sent - sent0, "analyses": sum(analysed.values()),
                "rss_mb": rss_mb()[0]}

    result["warmup_round"] = round_()
    svcs = services(args.services, args.namespaces)
    roll = [f"{ns}/{name}" for ns, name in rolling(svcs, args.rolling, args.namespaces)]
    if args.start_rollouts:
        repo = BulkRepo.open(out)
        repo.commit({rel_path(*k.split("/", 1)): isvc_doc(*k.split("/", 1), "gs://scale/v2") for k in roll},
                    f"v2 for {len(roll)} services")
        result["sync_rollouts_s"] = timed_sync()
        result["sync_rollouts_files"] = len(roll)
        deadline = time.monotonic() + 600
        while True:
            r = round_()
            moving = [k for k in roll if phases.get(k) not in ("Progressing", "Holding")]
            if not moving and r["analyses"] >= len(roll):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"rollouts did not start: {len(moving)} not progressing, e.g. "
                                 f"{[(k, phases.get(k)) for k in moving[:5]]}")
    rounds = [round_() for _ in range(args.rounds)]
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        round_()
        prof.disable()
        with open(out / f"profile-{args.daemon}.txt", "w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(60)
    result["rounds"] = rounds
    rolling_phases = Counter(phases.get(k, "?") for k in roll)
    result["rolling_phases"] = dict(rolling_phases)
    # git: a sync with nothing new, then one with a single file changed (a comment: no rollout).
    result["sync_nochange_s"] = timed_sync()
    repo = BulkRepo.open(out)
    ns, name = services(args.services, args.namespaces)[-1]
    repo.commit({rel_path(ns, name): isvc_doc(ns, name, "gs://scale/v1", f"touched by {args.daemon}")},
                "one file")
    hits, parsed = d.parse_cache.stats.hits, d.parse_cache.stats.parsed
    result["sync_one_file_s"] = timed_sync()
    result["sync_one_file_parsed"] = d.parse_cache.stats.parsed - parsed if not naive else args.services
    result["sync_one_file_reused"] = d.parse_cache.stats.hits - hits if not naive else 0
    result["rss_mb"], result["rss_peak_mb"] = rss_mb()
    if d.isvc_cache is not None:
        result["cache"] = vars(d.isvc_cache.stats)
        d.isvc_cache.stop()
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# the orchestrator


def orchestrate(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    daemon_cpu = cpus[0] if cpus else None
    cluster_cpu = cpus[1] if len(cpus) > 1 else None
    work = Path(tempfile.mkdtemp(prefix="canaryd-scale-")) if args.keep_dir is None else Path(args.keep_dir)
    work.mkdir(parents=True, exist_ok=True)
    svcs = services(args.services, args.namespaces)
    print(f"{len(svcs)} InferenceServices in {args.namespaces} namespaces, "
          f"{len(rolling(svcs, args.rolling, args.namespaces))} rolling out; work dir {work}", flush=True)
    repo = BulkRepo(work)
    repo.commit({rel_path(ns, name): isvc_doc(ns, name, "gs://scale/v1") for ns, name in svcs}, "v1")
    (work / "policy.yaml").write_text(POLICY)
    common = ["--dir", str(work), "--services", str(args.services), "--namespaces", str(args.namespaces)]
    cluster = subprocess.Popen([sys.executable, __file__, "--serve", *common,
                                *(["--cpu", str(cluster_cpu)] if cluster_cpu is not None else [])],
                               stdout=subprocess.DEVNULL, stderr=open(work / "cluster.log", "w"))  # noqa: SIM115
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while not (work / "cluster.json").exists():
            if cluster.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the cluster did not start; see {work / 'cluster.log'}")
            time.sleep(0.2)
        url = json.loads((work / "cluster.json").read_text())["url"]
        started = time.monotonic()
        while (st := get_json(f"{url}/bench/status"))["ready"] < args.services:
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {st['ready']} of {args.services} services became Ready")
            time.sleep(0.5)
        print(f"cluster ready: {st['ready']} services Ready in {time.monotonic() - started:.1f}s", flush=True)
        for i, mode in enumerate(args.modes.split(",")):
            cmd = [sys.executable, __file__, "--daemon", mode, *common, "--rounds", str(args.rounds),
                   "--rolling", str(args.rolling), *(["--cpu", str(daemon_cpu)] if daemon_cpu is not None else []),
                   *(["--start-rollouts"] if i == 0 else []), *(["--namespaced"] if args.namespaced else []),
                   *(["--profile"] if args.profile else [])]
            with open(work / f"daemon-{mode}.log", "w") as log:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"{mode} failed ({proc.returncode}); see {work / f'daemon-{mode}.log'}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{mode}: done", flush=True)
    finally:
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(20)
        except subprocess.TimeoutExpired:
            cluster.kill()
    (work / "results.json").write_text(json.dumps(results, indent=2))
    report(results, args, pinned=daemon_cpu is not None)
    if args.keep_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: list[dict[str, Any]], args: argparse.Namespace, *, pinned: bool) -> None:
    def med(r: dict[str, Any], key: str) -> float:
        return statistics.median(x[key] for x in r["rounds"])

    def api(r: dict[str, Any]) -> str:
        by: Counter[str] = Counter()
        for x in r["rounds"]:
            by.update(x["api"])
        n = len(r["rounds"])
        return ", ".join(f"{k} {v / n:.0f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))

    def queries(r: dict[str, Any]) -> str:
        by: Counter[str] = Counter()
        for x in r["rounds"]:
            by.update(x["queries"])
        n = len(r["rounds"])
        return ", ".join(f"{k} {v / n:.0f}" for k, v in sorted(by.items()))

    rows = [
        ("round wall time (median, s)", lambda r: f"{med(r, 'wall_s'):.2f}"),
        ("  every round (s)", lambda r: " ".join(f"{x['wall_s']:.2f}" for x in r["rounds"])),
        ("round CPU time of the daemon (median, s)", lambda r: f"{med(r, 'cpu_s'):.2f}"),
        ("analyses per round", lambda r: f"{med(r, 'analyses'):.0f}"),
        ("API calls per round (canaryd)", lambda r: f"{med(r, 'api_total'):.0f}"),
        ("  of which InferenceService GETs", lambda r: f"{med(r, 'isvc_gets'):.0f}"),
        ("  by verb", api),
        ("Prometheus queries per round", lambda r: f"{med(r, 'queries_total'):.0f}"),
        ("  by kind", queries),
        ("daemon RSS after the rounds / peak (MB)", lambda r: f"{r['rss_mb']:.0f} / {r['rss_peak_mb']:.0f}"),
        ("git sync: first (clone + read all, s)", lambda r: f"{r['sync_first_s']:.2f}"),
        ("git sync: nothing new (s)", lambda r: f"{r['sync_nochange_s']:.3f}"),
        ("git sync: 1 file changed (s)", lambda r: f"{r['sync_one_file_s']:.3f}"),
        ("  files parsed / reused", lambda r: f"{r['sync_one_file_parsed']} / {r['sync_one_file_reused']}"),
    ]
    first = results[0]
    if "sync_rollouts_s" in first:
        print(f"\nsync that started {first['sync_rollouts_files']} rollouts ({first['mode']}): "
              f"{first['sync_rollouts_s']:.2f}s")
    if "cache_sync_s" in first:
        print(f"InferenceService cache listed in {first['cache_sync_s']:.2f}s; stats {first.get('cache')}")
    print(f"rolling services' phases at the end: {first.get('rolling_phases')}")
    print(f"daemon pinned to one CPU: {'yes' if pinned else 'no (sched_setaffinity unavailable)'}; "
          f"{args.rounds} measured rounds per mode\n")
    width = max(len(label) for label, _ in rows)
    print(f"| {'':{width}} | " + " | ".join(r["mode"] for r in results) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(r["mode"]) + 2) for r in results) + "|")
    for label, fn in rows:
        print(f"| {label:{width}} | " + " | ".join(fn(r) for r in results) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--rolling", type=float, default=0.1, help="share of the services rolling out at once")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per mode")
    p.add_argument("--modes", default="cached,naive")
    p.add_argument("--namespaced", action="store_true",
                   help="configure the 50 namespaces (a cache watch per namespace) instead of all namespaces")
    p.add_argument("--keep-dir", help="work in this directory and keep it (logs, results.json)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one more round per mode (cProfile, profile-MODE.txt in the work dir)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--daemon", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    p.add_argument("--start-rollouts", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args)
    if args.daemon:
        return daemon(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
