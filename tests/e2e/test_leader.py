"""Two real `canaryd run` processes on one config repo and namespace, with leader election on.

Short timings (leaseDuration 4 s, renewDeadline 3 s, retryPeriod 0.5 s) so that a takeover fits in a
test. What is shown: only the leader acts; SIGKILL of the leader mid-rollout hands the rollout to the
standby within leaseDuration + retryPeriod and every step is still applied exactly once; SIGTERM
releases the Lease, so the standby takes over in about a retry period instead of a lease duration;
and a SIGTERM while a tick hangs still exits 0 within shutdownTimeoutS, the standby finishing the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from canaryd.rollout.state import Phase
from canaryd.sandbox.daemonproc import DaemonProcess
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE_S, RENEW_DEADLINE_S, RETRY_S = 4, 3.0, 0.5
LEADER = {"enabled": True, "leaseDurationS": LEASE_S, "renewDeadlineS": RENEW_DEADLINE_S,
          "retryPeriodS": RETRY_S}
STEPS = {**FAST_POLICY, "steps": [10, 30, 60], "interval": "4s"}
SHUTDOWN_S = 4
#: Scheduling noise on a loaded 2-core machine (process start, GIL, the test's own polling).
SLACK_S = 1.0


class Pair:
    """Two daemons, `a` started first (so it leads), `b` the standby. Cleaned up whatever happens."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.settings = env.settings(leader={**LEADER, "namespace": env.ns}, shutdownTimeoutS=SHUTDOWN_S)
        self.procs: dict[str, DaemonProcess] = {}

    def start(self, who: str, **extra_env: str) -> DaemonProcess:
        # One settings file each: DaemonProcess keeps its port file beside it.
        own = self.settings.with_name(f"{self.settings.stem}-{who}.yaml")
        own.write_text(self.settings.read_text())
        p = DaemonProcess(own, self.env.dir / f"canaryd-{who}.log",
                          env={"CANARYD_LEADER__IDENTITY": self.identity(who), **extra_env}).start()
        self.procs[who] = p
        return p

    def identity(self, who: str) -> str:
        return f"{self.env.ns}-{who}"

    def lease(self) -> dict[str, Any]:
        obj = self.env.sb.api.get_object("coordination.k8s.io", "v1", "leases", "canaryd", self.env.ns)
        return dict((obj or {}).get("spec") or {})

    def holder(self) -> str | None:
        return self.lease().get("holderIdentity")

    def logs(self, who: str) -> list[dict[str, Any]]:
        out = []
        for line in self.procs[who].log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def close(self) -> None:
        for p in self.procs.values():
            if p.alive():
                p.terminate(timeout=15)


@pytest.fixture
def pair(env: Env) -> Iterator[Pair]:
    p = Pair(env)
    yield p
    p.close()


def ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


def first(records: list[dict[str, Any]], msg: str, after: float = 0.0) -> dict[str, Any] | None:
    return next((r for r in records if r.get("msg") == msg and ts(r) >= after), None)


def start_pair(pair: Pair, **a_env: str) -> None:
    a = pair.start("a", **a_env)
    wait_until(lambda: pair.holder() == pair.identity("a"), 15, "a to take the Lease")
    pair.start("b")
    wait_until(lambda: first(pair.logs("b"), "leader observed"), 15, "b to see a's Lease")
    assert a.alive()


def test_sigkill_of_the_leader_mid_rollout_hands_over_every_step_once(env: Env, pair: Pair) -> None:
    name = "ha"
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns, STEPS)}, "v1")
    start_pair(pair)
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    rec = env.record(name)
    env.load([name], rate=25)
    c2 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v2")}, "v2")
    wait_until(lambda: (s := env.state(name)) and s.spec.commit == c2
               and any(h.reason == "StepAdvanced" for h in s.status.history if h.commit == c2), 40,
               "the first StepAdvanced of v2")
    assert pair.holder() == pair.identity("a")

    killed_wall, killed = time.time(), time.monotonic()
    pair.procs["a"].kill()
    wait_until(lambda: pair.holder() == pair.identity("b"), LEASE_S + RETRY_S + 10, "b to take the Lease", every=0.02)
    takeover = time.monotonic() - killed
    acquired = datetime.fromisoformat(pair.lease()["acquireTime"].replace("Z", "+00:00")).timestamp() - killed_wall

    st = env.wait_phase(name, {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    wait_until(lambda: rec.values[-1:] == [None], 10, "promotion visible")
    b_logs = pair.logs("b")
    became = first(b_logs, "became leader")
    assert became is not None
    first_decision = first(b_logs, "decision", after=killed_wall)
    assert first_decision is not None
    print(f"\nSIGKILL takeover: Lease acquired {acquired:.2f}s after the kill (seen by the test after "
          f"{takeover:.2f}s); first decision of the new leader {ts(first_decision) - killed_wall:.2f}s after")
    # The standby waited for the Lease to expire, no more than leaseDuration + retryPeriod.
    assert LEASE_S - RETRY_S - SLACK_S <= acquired <= LEASE_S + RETRY_S + SLACK_S, acquired
    # Only the leader acts: b decided nothing before it became the leader.
    assert not [r for r in b_logs if r.get("msg") == "decision" and ts(r) < ts(became)]
    # Every step exactly once, none skipped, none repeated.
    assert rec.values == [None, 0, 10, 30, 60, None]
    advances = [h.weight for h in st.status.history if h.commit == c2 and h.reason == "StepAdvanced"]
    assert advances == [30, 60]
    assert pair.lease()["leaseTransitions"] == 1


def test_sigterm_releases_the_lease_and_the_standby_takes_over_at_once(env: Env, pair: Pair) -> None:
    name = "calm"
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns, STEPS)}, "v1")
    start_pair(pair)
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    a, b = pair.procs["a"], pair.procs["b"]

    # Both serve HTTP; /readyz and /metrics say who leads; both are Ready.
    def role(p: DaemonProcess) -> dict[str, Any]:
        r = httpx.get(f"{p.url}/readyz?format=json", timeout=5)
        return {"code": r.status_code, **r.json()}

    wait_until(lambda: role(a)["code"] == 200, 15, "a ready")
    assert role(a)["role"] == "leader", a.log_tail(30)
    assert role(b) == {"code": 200, "ready": True, "role": "standby", "reason": role(b)["reason"],
                       "leaderElection": True, "identity": pair.identity("b"), "holder": pair.identity("a")}
    assert "role: standby" in httpx.get(f"{b.url}/readyz", timeout=5).text
    assert "canaryd_leader 1.0" in httpx.get(f"{a.url}/metrics", timeout=5).text
    assert "canaryd_leader 0.0" in httpx.get(f"{b.url}/metrics", timeout=5).text

    started = time.monotonic()
    code = a.terminate(timeout=15)
    exited = time.monotonic() - started
    assert code == 0
    spec = pair.lease()  # released on the way out: empty holder (or already b)
    assert spec["holderIdentity"] in ("", pair.identity("b")), spec
    wait_until(lambda: pair.holder() == pair.identity("b"), LEASE_S, "b to take the Lease", every=0.02)
    takeover = time.monotonic() - started
    print(f"\nSIGTERM: a exited (code 0) after {exited:.2f}s; b held the Lease {takeover:.2f}s after the SIGTERM")
    assert takeover < LEASE_S - 1, takeover  # well before the Lease would have expired
    a_logs = pair.logs("a")
    assert first(a_logs, "lease released") is not None
    assert first(a_logs, "canaryd stopped") is not None
    # The new leader works: a new commit is rolled out by b.
    c2 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v3")}, "v3")
    env.wait_phase(name, {Phase.INITIALIZING, Phase.PROGRESSING, Phase.SUCCEEDED}, c2, timeout=30)
    wait_until(lambda: role(b)["role"] == "leader" and "canaryd_leader 1.0"
               in httpx.get(f"{b.url}/metrics", timeout=5).text, 10, "b reports itself leader")


def test_sigterm_during_a_hung_tick_exits_within_the_bound_and_the_standby_resumes(env: Env, pair: Pair) -> None:
    """The leader's tick hangs between saving the ModelRollout (30 %) and patching the service (still 10 %)."""
    name = "stuck"
    hold = env.dir / "hold"
    c1 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v1"),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns, STEPS)}, "v1")
    start_pair(pair, CANARYD_TEST_HOLD_DIR=str(hold), CANARYD_TEST_HOLD_ON="traffic=30")
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    rec = env.record(name)
    env.load([name], rate=25)
    c2 = env.repo.commit({f"services/{name}.yaml": isvc_yaml(name, env.ns, "gs://e2e/v2")}, "v2")
    wait_until(lambda: (hold / "held").exists(), 40, "the leader's tick to hang at the hold point")
    st = env.state(name)
    assert st is not None and st.status.weight == 30
    assert (env.isvc(name) or {})["spec"]["predictor"]["canaryTrafficPercent"] == 10

    started = time.monotonic()
    code = pair.procs["a"].terminate(timeout=SHUTDOWN_S + 10)
    exited = time.monotonic() - started
    assert code == 0
    assert exited <= SHUTDOWN_S + SLACK_S, exited  # the hung tick was abandoned at the bound
    a_logs = pair.logs("a")
    assert any(str(r.get("msg", "")).startswith("abandoning the work still running") for r in a_logs)
    assert first(a_logs, "lease released") is not None
    wait_until(lambda: pair.holder() == pair.identity("b"), LEASE_S, "b to take the Lease", every=0.02)
    print(f"\nSIGTERM with a hung tick: a exited (code 0) after {exited:.2f}s (bound {SHUTDOWN_S}s); "
          f"b held the Lease {time.monotonic() - started:.2f}s after the SIGTERM")

    st = env.wait_phase(name, {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    wait_until(lambda: rec.values[-1:] == [None], 10, "promotion visible")
    assert rec.values == [None, 0, 10, 30, 60, None]
    assert [h.weight for h in st.status.history if h.commit == c2 and h.reason == "StepAdvanced"] == [30, 60]
