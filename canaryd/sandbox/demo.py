"""`canaryd demo`: the whole story on a laptop, with every part real but the cluster.

v1 is deployed; then commits are pushed to the sandbox's Git repo: v2 (good) is promoted step by step,
v3 (returns 5xx) and v4 (slow p99) are rolled back to v2. The live table shows what canaryd sees.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from canaryd.adapters.kube import make_api_client
from canaryd.adapters.statestore import StateStore
from canaryd.rollout.state import Phase, RolloutState
from canaryd.sandbox.cluster import Sandbox
from canaryd.sandbox.daemonproc import DaemonProcess
from canaryd.sandbox.docs import isvc_yaml
from canaryd.sandbox.scenario import Scenario
from canaryd.status import COLUMNS, row

NS, NAME = "models", "iris"

SCENARIO = {
    "seed": 7,
    "default": {"errorRate": 0.0, "latencyMs": {"base": 20, "p99": 60}, "readyAfterSeconds": 2},
    "versions": {
        "gs://models/iris/v1": {"errorRate": 0.0, "latencyMs": {"base": 20, "p99": 60}},
        "gs://models/iris/v2": {"errorRate": 0.001, "latencyMs": {"base": 18, "p99": 55}},
        "gs://models/iris/v3": {"errorRate": 0.25, "latencyMs": {"base": 20, "p99": 60}},
        "gs://models/iris/v4": {"errorRate": 0.0, "latencyMs": {"base": 450, "p99": 900}},
    },
}

#: Fast demo policy: seconds instead of minutes, so the story fits in under three minutes.
POLICY = textwrap.dedent(f"""\
    apiVersion: canaryd.io/v1alpha1
    kind: RolloutPolicy
    metadata: {{name: {NAME}, namespace: {NS}}}
    spec:
      target: {{name: {NAME}}}
      steps: [20, 50]
      interval: 8s
      progressDeadline: 30s
      analysis:
        mode: sequential          # the default judge: canary vs stable, evidence over the rollout
        every: 2s
        warmup: 1s
        minRequests: 30
        inconclusiveLimit: 4
        onInconclusive: hold
        maxHold: 40s
    """)


def isvc(version: str) -> str:
    return isvc_yaml(NAME, NS, f"gs://models/iris/{version}")


#: Column widths of the live table, one per `canaryd.status.COLUMNS` entry (the last is free).
WIDTHS = (12, 13, 10, 5, 7, 21, 21, 9, 9, 8, 0)


def format_row(cells: tuple[str, ...]) -> str:
    return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, WIDTHS, strict=True)).rstrip()


def failed_checks(st: RolloutState) -> str:
    """The checks that failed the rollout's last failed analysis, with their evidence ("" if none failed)."""
    failed = [a for a in st.status.analyses if a.verdict.outcome == "fail"]
    if not failed:
        return ""
    metrics = [m for m in failed[-1].verdict.metrics if m.outcome == "fail"]
    return "; ".join(f"{m.name}: {m.reason[:120]}" for m in metrics)


class Story:
    def __init__(self, sandbox: Sandbox, out: Callable[[str], None]) -> None:
        self.sb = sandbox
        self.out = out
        self.store = StateStore(make_api_client(str(sandbox.kubeconfig)))
        self._last_row: tuple[str, ...] | None = None

    def state(self) -> RolloutState | None:
        return self.store.load(NS, NAME)

    def show(self, st: RolloutState) -> None:
        r = row(st)
        if r != self._last_row:
            self._last_row = r
            self.out(format_row(r))

    def wait_stable(self, timeout: float) -> None:
        """v1 is Ready and serves 100 % (canaryd recorded it as the stable revision)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st is not None and st.status.stable_revision:
                self.show(st)
                return
            time.sleep(0.3)
        raise TimeoutError(f"v1 did not become Ready within {timeout:.0f}s")

    def wait_for(self, commit: str, phases: set[Phase], timeout: float) -> RolloutState:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st is not None and st.spec.commit == commit:
                self.show(st)
                if st.status.phase in phases:
                    return st
            time.sleep(0.5)
        raise TimeoutError(f"commit {commit[:8]} did not reach {sorted(phases)} within {timeout:.0f}s")


def run_demo(keep_dir: Path | None = None, kserve_crd: Path | None = None, out: Callable[[str], None] = print
             ) -> int:
    started = time.monotonic()
    out("canaryd demo: starting the sandbox (API emulator, KServe emulator, data plane, Prometheus, Git)")
    results: list[tuple[str, str, str]] = []
    with Sandbox(Scenario.model_validate(SCENARIO), workdir=keep_dir, kserve_crd=kserve_crd) as sb:
        settings = sb.write_settings("canaryd.yaml", sb.daemon_settings(poll_interval="1s"))
        daemon = DaemonProcess(settings, sb.dir / "canaryd.log")
        story = Story(sb, out)
        try:
            c1 = sb.repo.commit({f"services/{NAME}.yaml": isvc("v1"), f"policies/{NAME}.yaml": POLICY},
                                "deploy iris v1")
            daemon.start()
            out(f"canaryd running (pid {daemon.proc.pid if daemon.proc else '?'}, http {daemon.url});"
                f" sandbox files in {sb.dir}")
            out(f"watch it from another terminal: canaryd status --kubeconfig {sb.kubeconfig} --watch")
            out(format_row(COLUMNS))
            story.wait_for(c1, {Phase.SUCCEEDED}, 60)
            story.wait_stable(60)
            sb.start_load([(NS, NAME)], rate_per_s=30, duration_s=170)
            for version, expect, what in (("v2", Phase.SUCCEEDED, "good model"),
                                          ("v3", Phase.FAILED, "returns 5xx for 25% of requests"),
                                          ("v4", Phase.FAILED, "p99 latency 900 ms")):
                commit = sb.repo.commit({f"services/{NAME}.yaml": isvc(version)}, f"iris {version}")
                out(f"pushed {version} ({what}) as commit {commit[:8]}")
                st = story.wait_for(commit, {Phase.SUCCEEDED, Phase.FAILED}, 90)
                ok = st.status.phase == expect
                checks = failed_checks(st)
                results.append((version, str(st.status.phase), checks or "-"))
                out(f"  -> {version}: {st.status.phase} ({'as expected' if ok else 'UNEXPECTED'}): "
                    f"{st.status.message}")
        except (TimeoutError, RuntimeError) as exc:
            out(f"demo failed: {exc}")
            out(daemon.log_tail(30))
            return 1
        finally:
            daemon.terminate()
    out("")
    out("summary:")
    out(f"  {'VERSION':<8} {'OUTCOME':<10} FAILED CHECK")
    for version, phase, check in results:
        out(f"  {version:<8} {phase:<10} {check}")
    good = [r[1] for r in results] == ["Succeeded", "Failed", "Failed"]
    out(f"demo {'finished' if good else 'FAILED'} in {time.monotonic() - started:.0f}s")
    return 0 if good else 1
