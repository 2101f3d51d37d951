"""Push -> first InferenceService patch latency with the push webhook (target: p95 <= 2 s).

Runs the real daemon (`canaryd run`, a child process) against the sandbox with a 1 h poll interval, so
polling cannot be what reacts. Each push changes an annotation of one service in Git (a new revision, so
a canary that supersedes the previous one), then POSTs a GitHub-style signed push to /hooks/git. The
clock starts when the webhook is sent and stops when a Kubernetes watch on the InferenceService first
shows the new annotation value.

    python bench/reaction.py [--pushes 50]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import statistics
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from canaryd.adapters.kube import make_api_client
from canaryd.adapters.statestore import StateStore
from canaryd.rollout.state import Phase
from canaryd.sandbox.cluster import Sandbox
from canaryd.sandbox.daemonproc import DaemonProcess
from canaryd.sandbox.docs import isvc_yaml
from canaryd.sandbox.scenario import Scenario

NS, NAME = "models", "bench"
ANNOTATION = "bench.canaryd.io/push"
G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
SECRET = "bench-webhook-secret"
GOOD = {"errorRate": 0.0, "latencyMs": {"base": 20, "p99": 60}, "readyAfterSeconds": 1}

POLICY = textwrap.dedent(f"""\
    apiVersion: canaryd.io/v1alpha1
    kind: RolloutPolicy
    metadata: {{name: {NAME}, namespace: {NS}}}
    spec:
      target: {{name: {NAME}}}
      steps: [10, 50]
      interval: 5s
      progressDeadline: 30s
      analysis: {{every: 2s, warmup: 1s, minRequests: 8, onInconclusive: hold, maxHold: 30s}}
    """)


def isvc(push: int) -> str:
    return isvc_yaml(NAME, NS, "gs://bench/model", annotations={ANNOTATION: str(push)})


class FirstSeen:
    """Watches the InferenceService; records when each annotation value was first seen (monotonic)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.co = client.CustomObjectsApi(api)
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)

    def start(self) -> FirstSeen:
        self._thread.start()
        return self

    def _see(self, obj: dict[str, Any], at: float) -> None:
        value = (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION)
        if value is not None:
            with self.cond:
                if value not in self.seen:
                    self.seen[value] = at
                    self.cond.notify_all()

    def _run(self) -> None:
        rv: str | None = None
        sel = f"metadata.name={NAME}"
        while not self._stop.is_set():
            try:
                if rv is None:
                    lst: Any = self.co.list_namespaced_custom_object(G, V, NS, P, field_selector=sel)
                    rv = lst["metadata"]["resourceVersion"]
                    for item in lst["items"]:
                        self._see(item, time.monotonic())
                w = watch.Watch()  # type: ignore[no-untyped-call]
                events = w.stream(  # type: ignore[no-untyped-call]
                    self.co.list_namespaced_custom_object, G, V, NS, P, field_selector=sel,
                    resource_version=rv, timeout_seconds=5, _request_timeout=10)
                for ev in events:
                    at = time.monotonic()
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._see(obj, at)
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                self._stop.wait(0.05)
            except Exception:  # the emulator restarts nothing, but keep watching whatever happens
                self._stop.wait(0.05)

    def wait_for(self, value: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: value in self.seen, timeout)
            return self.seen.get(value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def signed_push(url: str, commit: str, n: int) -> int:
    body = json.dumps({"ref": "refs/heads/main", "after": commit}).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    r = httpx.post(f"{url}/hooks/git", content=body, timeout=5, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": f"bench-{n}", "X-Hub-Signature-256": sig,
        "Content-Type": "application/json"})
    return r.status_code


def wait_until(what: str, timeout: float, fn: Any) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the value below which q % of the samples fall (no interpolation)."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[rank - 1]


def accepted_times(log_path: Path) -> dict[str, float]:
    """commit -> wall time (epoch s) of the daemon's "webhook push accepted" log line."""
    out: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("msg", "").startswith("webhook push accepted") and rec.get("after"):
            out[rec["after"]] = datetime.fromisoformat(rec["ts"]).timestamp()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pushes", type=int, default=50, help="number of measured pushes (default 50)")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for one patch")
    args = ap.parse_args(argv)

    scenario = Scenario.model_validate({"seed": 3, "default": GOOD})
    with Sandbox(scenario) as sb:
        secret = sb.dir / "webhook-secret"
        secret.write_text(SECRET + "\n")
        settings = sb.daemon_settings(poll_interval="1h", extra={
            "webhook": {"secretFile": str(secret), "ratePerSecond": 50, "burst": 50}})
        log_path = sb.dir / "canaryd.log"
        sb.repo.commit({f"services/{NAME}.yaml": isvc(0), f"policies/{NAME}.yaml": POLICY}, "bench v0")
        api = make_api_client(str(sb.kubeconfig))
        store = StateStore(api)
        daemon = DaemonProcess(sb.write_settings("bench.yaml", settings), log_path).start()
        watcher = FirstSeen(api).start()
        try:
            def v0_done() -> bool:
                st = store.load(NS, NAME)
                return st is not None and st.status.phase == Phase.SUCCEEDED
            wait_until("the service to be deployed", 30, v0_done)
            if watcher.wait_for("0", 10) is None:
                raise TimeoutError("watch did not see the deployed service")

            latencies: list[float] = []
            sent_wall: dict[str, tuple[float, float]] = {}  # commit -> (wall at send, latency)
            missed = 0
            started = time.monotonic()
            for n in range(1, args.pushes + 1):
                commit = sb.repo.commit({f"services/{NAME}.yaml": isvc(n)}, f"bench push {n}")
                wall, t0 = time.time(), time.monotonic()
                status = signed_push(daemon.url, commit, n)
                if status != 202:
                    raise RuntimeError(f"push {n}: webhook answered {status}")
                seen = watcher.wait_for(str(n), args.timeout)
                if seen is None:
                    missed += 1
                    print(f"push {n}: no patch within {args.timeout:g}s", file=sys.stderr)
                    continue
                latencies.append(seen - t0)
                sent_wall[commit] = (wall, seen - t0)
            elapsed = time.monotonic() - started
            final = store.load(NS, NAME)
            superseded = sum(1 for h in final.status.history if h.reason == "Superseded") if final else 0
        finally:
            watcher.stop()
            daemon.terminate()

        accepted = accepted_times(log_path)
        to_accept = [accepted[c] - w for c, (w, _) in sent_wall.items() if c in accepted]
        after_accept = [lat - (accepted[c] - w) for c, (w, lat) in sent_wall.items() if c in accepted]

    ms = [x * 1000 for x in latencies]
    print("canaryd push webhook reaction: webhook sent -> first InferenceService patch seen by a watch")
    print("  (real daemon, sandbox API emulator, poll interval 1h; every push supersedes the running canary)")
    print(f"  pushes measured: {len(ms)} of {args.pushes} (missed: {missed}) in {elapsed:.1f}s")
    if ms:
        print(f"  p50: {percentile(ms, 50):7.0f} ms")
        p95 = percentile(ms, 95)
        print(f"  p95: {p95:7.0f} ms   (target <= 2000 ms: {'met' if p95 <= 2000 else 'MISSED'})")
        print(f"  max: {max(ms):7.0f} ms")
        print(f"  mean: {statistics.fmean(ms):6.0f} ms")
    if final is not None:
        print(f"  ModelRollout after the last push: {final.status.phase}, commit {(final.spec.commit or '?')[:8]}, "
              f"{superseded} 'Superseded' transitions in its (bounded) history")
    if to_accept:
        print("  where the time goes (medians, from the daemon's log timestamps):")
        print(f"    webhook sent -> push accepted (HTTP, verification): {statistics.median(to_accept) * 1000:5.0f} ms")
        print(f"    push accepted -> patch seen (sync job, git fetch, tick, patch, watch): "
              f"{statistics.median(after_accept) * 1000:5.0f} ms")
    return 0 if ms and missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
