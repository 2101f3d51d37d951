"""canaryd.client and the CLI on top of it, against the Kubernetes API emulator (the chart's ModelRollout CRD).

The client reads and writes ModelRollout objects only; these tests put states there the way the daemon
does (StateStore.save) and check what a person, a notebook and a deploy pipeline see: human step numbers,
`status --wait` exit codes, `history -o json`, kubeconfig found as kubectl finds it, and one-line errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from canaryd.adapters.kube import KubeError, kubeconfig_search, make_api_client
from canaryd.adapters.statestore import StateStore
from canaryd.cli import EXIT_CLUSTER, EXIT_ROLLED_BACK, EXIT_TIMEOUT, main
from canaryd.client import Client, ClientError, Rollout, RolloutFailed, WaitTimeout
from canaryd.rollout.state import Phase, RolloutState, TargetRef

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT_CRD = ROOT / "charts" / "canaryd" / "crds" / "modelrollout.yaml"
NS = "models"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
STEPS = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds

    emulator = KubeApiEmulator(load_crds([ROLLOUT_CRD]), namespaces=["default", NS])
    emulator.start()
    try:
        path = tmp_path_factory.mktemp("kube") / "kubeconfig"
        emulator.write_kubeconfig(path)
        yield path
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def store(kubeconfig: Path) -> Iterator[StateStore]:
    api = make_api_client(str(kubeconfig))
    try:
        yield StateStore(api)
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def rollouts(kubeconfig: Path) -> Iterator[Client]:
    with Client.connect(str(kubeconfig)) as c:
        yield c


def progressing(name: str, commit: str, step: int = 1) -> RolloutState:
    """A rollout of `commit` at its second step (index 1), as the daemon would have saved it."""
    state = RolloutState.new(TargetRef(namespace=NS, name=name)).evolve(
        spec={"commit": commit, "spec_hash": "sha256:feed", "policy": {"steps": STEPS, "interval": "1m"}})
    state = state.transition(Phase.INITIALIZING, now=T0, reason="NewSpec", message=f"commit {commit[:8]}",
                             stable_revision=f"{name}-predictor-00001", rollout_started_at=T0)
    state = state.transition(Phase.PROGRESSING, now=T0 + timedelta(seconds=30), reason="CanaryReady", step=0,
                             weight=STEPS[0], canary_revision=f"{name}-predictor-00002")
    if step > 0:
        state = state.transition(Phase.PROGRESSING, now=T0 + timedelta(seconds=100), reason="StepUp", step=step,
                                 weight=STEPS[step])
    return state


def put(store: StateStore, state: RolloutState) -> RolloutState:
    """Save `state` over whatever is stored (the daemon's own save, resourceVersion taken from the store)."""
    current = store.load(state.spec.target.namespace, state.spec.target.name)
    rv = current.resource_version if current is not None else None
    return store.save(state.model_copy(update={"resource_version": rv}))


def ended(state: RolloutState, phase: Phase, message: str) -> RolloutState:
    """The rollout ended in `phase`, through the phase before it, as the engine moves."""
    via = Phase.PROMOTING if phase == Phase.SUCCEEDED else Phase.ROLLING_BACK
    state = state.transition(via, now=T0 + timedelta(seconds=390), reason=str(via))
    return state.transition(phase, now=T0 + timedelta(seconds=400), reason=str(phase), message=message)


# --- the client ------------------------------------------------------------------------------------


def test_a_rollout_reads_with_human_step_numbers(store: StateStore, rollouts: Client) -> None:
    put(store, progressing("steps", "1a2b3c4d5e"))
    r = rollouts.get("steps", NS)
    assert (r.phase, r.step, r.steps, r.step_label, r.weight) == (Phase.PROGRESSING, 2, 5, "2/5", 20)
    assert r.key == f"{NS}/steps" and r.is_commit("1a2b3c") and not r.is_commit("ffff")
    assert not r.done and not r.succeeded
    history = rollouts.history("steps", NS)
    assert [(h.reason, h.step_label) for h in history] == [("NewSpec", "-"), ("CanaryReady", "1/5"),
                                                           ("StepUp", "2/5")]
    assert any(x.key == f"{NS}/steps" for x in rollouts.list(NS))
    with pytest.raises(ClientError, match=f"no ModelRollout {NS}/nothing"):
        rollouts.get("nothing", NS)


def test_wait_follows_the_rollout_to_promotion(store: StateStore, rollouts: Client) -> None:
    state = put(store, progressing("waited", "aaaa1111"))
    seen: list[str] = []

    def daemon_moves_on(r: Rollout) -> None:  # the daemon's next saves, while the client waits
        seen.append(f"{r.phase} {r.step_label}")
        if r.phase == Phase.PROGRESSING:
            put(store, ended(state, Phase.SUCCEEDED, "promoted"))

    done = rollouts.wait("waited", NS, timeout_s=30, poll_s=0.05, on_change=daemon_moves_on)
    assert done.succeeded and done.phase == Phase.SUCCEEDED
    assert seen == ["Progressing 2/5", "Succeeded 2/5"]


def test_wait_for_a_commit_ignores_the_previous_rollouts_outcome(store: StateStore, rollouts: Client) -> None:
    """A pipeline that just pushed commit B must not take A's Succeeded for its own."""
    old = put(store, ended(progressing("pushed", "aaaa0000"), Phase.SUCCEEDED, "promoted"))
    assert old.status.phase == Phase.SUCCEEDED
    calls = []

    def canaryd_picks_up_b(r: Rollout) -> None:
        calls.append(r.commit)
        if r.commit == "aaaa0000":
            put(store, ended(progressing("pushed", "bbbb1111"), Phase.FAILED, "error-rate: SPRT llr 6.2 >= 5.98"))

    with pytest.raises(RolloutFailed) as failed:
        rollouts.wait("pushed", NS, commit="bbbb11", timeout_s=30, poll_s=0.05, on_change=canaryd_picks_up_b)
    assert failed.value.rollout.phase == Phase.FAILED and "SPRT" in str(failed.value)
    assert calls == ["aaaa0000", "bbbb1111"]


def test_wait_times_out_with_what_it_saw(store: StateStore, rollouts: Client) -> None:
    put(store, progressing("stuck", "cccc2222"))
    with pytest.raises(WaitTimeout, match=r"did not finish within 0\.3s") as timeout:
        rollouts.wait("stuck", NS, timeout_s=0.3, poll_s=0.05)
    assert timeout.value.rollout is not None and timeout.value.rollout.step_label == "2/5"
    with pytest.raises(WaitTimeout, match="no ModelRollout yet"):
        rollouts.wait("not-yet", NS, timeout_s=0.2, poll_s=0.05)


def test_requests_go_through_the_client(store: StateStore, rollouts: Client) -> None:
    put(store, progressing("steered", "dddd3333"))
    assert "pause recorded" in rollouts.pause("steered", NS)
    assert rollouts.get("steered", NS).state.spec.control.paused
    put(store, ended(progressing("steered", "dddd3333"), Phase.SUCCEEDED, "promoted"))
    with pytest.raises(ClientError, match="no canary in flight to abort"):
        rollouts.abort("steered", NS)


# --- kubeconfig, as kubectl finds it ---------------------------------------------------------------


def test_kubeconfig_search_order(tmp_path: Path) -> None:
    a, b, home = tmp_path / "a", tmp_path / "b", tmp_path / "home"
    a.write_text("{}")
    b.write_text("{}")
    (home / ".kube").mkdir(parents=True)
    assert kubeconfig_search(None, {}, str(home)) is None  # then in-cluster
    (home / ".kube" / "config").write_text("{}")
    assert kubeconfig_search(None, {}, str(home)) == str(home / ".kube" / "config")
    listed = f"{tmp_path / 'missing'}{os.pathsep}{b}"
    assert kubeconfig_search(None, {"KUBECONFIG": listed}, str(home)) == listed  # merged, as kubectl
    assert kubeconfig_search(str(a), {"KUBECONFIG": str(b)}, str(home)) == str(a)
    with pytest.raises(KubeError, match=r"no kubeconfig file at .*missing \(\$KUBECONFIG\)"):
        kubeconfig_search(None, {"KUBECONFIG": str(tmp_path / "missing")}, str(home))
    with pytest.raises(KubeError, match=r"\(--kubeconfig\)"):
        kubeconfig_search(str(tmp_path / "typo"), {}, str(home))


def test_kubeconfig_list_and_context_pick_the_cluster(kubeconfig: Path, store: StateStore, tmp_path: Path) -> None:
    """$KUBECONFIG names two files; the second holds the emulator's context under another name; `--context`
    picks it, as kubectl would, and a context that exists nowhere is one clear line."""
    put(store, progressing("ctx", "eeee4444"))
    doc = yaml.safe_load(kubeconfig.read_text())
    for section, key in (("contexts", "name"),):
        for item in doc[section]:
            item[key] = "emulator"
    doc["current-context"] = "emulator"
    second = tmp_path / "second"
    second.write_text(yaml.safe_dump(doc))
    first = tmp_path / "first"
    first.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [],
                                     "users": [], "current-context": ""}))
    env = {"KUBECONFIG": f"{first}{os.pathsep}{second}", "HOME": str(tmp_path)}
    runner = CliRunner()
    out = runner.invoke(main, ["status", f"{NS}/ctx", "--context", "emulator"], env=env)
    assert out.exit_code == 0, out.output
    assert "ctx" in out.output and "2/5" in out.output
    out = runner.invoke(main, ["status", f"{NS}/ctx", "--context", "prod"], env=env)
    assert out.exit_code == EXIT_CLUSTER, out.output
    assert "prod" in out.output and "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1


# --- the CLI ------------------------------------------------------------------------------------------


def cli(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args, "--kubeconfig", str(kubeconfig)])
    return result.exit_code, result.stdout, result.stderr


def test_status_wait_exit_codes(kubeconfig: Path, store: StateStore) -> None:
    put(store, ended(progressing("ok", "ffff5555"), Phase.SUCCEEDED, "promoted"))
    code, out, _ = cli(kubeconfig, "status", f"{NS}/ok", "--wait", "--commit", "ffff55", "--timeout", "10s")
    assert code == 0 and f"{NS}/ok: Succeeded (commit ffff5555)" in out
    put(store, ended(progressing("bad", "abcd6666"), Phase.FAILED, "rolled back: error-rate failed"))
    code, _, err = cli(kubeconfig, "status", f"{NS}/bad", "--wait", "--timeout", "10s")
    assert code == EXIT_ROLLED_BACK and "Failed: rolled back: error-rate failed" in err
    put(store, ended(progressing("stopped", "abcd7777"), Phase.ABORTED, "aborted by canaryd abort"))
    assert cli(kubeconfig, "status", f"{NS}/stopped", "--wait", "--timeout", "10s")[0] == EXIT_ROLLED_BACK
    put(store, progressing("slow", "abcd8888"))
    code, _, err = cli(kubeconfig, "status", f"{NS}/slow", "--wait", "--timeout", "1s")
    assert code == EXIT_TIMEOUT and "timed out" in err and "Progressing at 2/5" in err
    code, out, _ = cli(kubeconfig, "status", f"{NS}/ok", "--wait", "-o", "json", "--timeout", "10s")
    assert code == 0 and json.loads(out)["status"]["phase"] == "Succeeded"
    code, out, _ = cli(kubeconfig, "status", "--wait")
    assert code == 2 and "--wait and --commit need a SERVICE" in out + _
    code, out, err = cli(kubeconfig, "status", f"{NS}/ok", "--wait", "--commit", "abc")  # would never match
    assert code == 2 and "prefix of at least 4 hex digits" in out + err
    code, out, err = cli(kubeconfig, "abort", f"{NS}/ok")  # nothing in flight: the person's error, not the cluster's
    assert code == 1 and "no canary in flight to abort" in err and len(err.strip().splitlines()) == 1


def test_status_table_and_history_json_count_steps_from_one(kubeconfig: Path, store: StateStore) -> None:
    put(store, progressing("shown", "0123abcd"))
    code, out, _ = cli(kubeconfig, "status", "-n", NS)
    assert code == 0
    header, *rows = out.splitlines()
    assert "STEP" in header.split()
    row = next(r for r in rows if r.startswith(f"{NS}/shown"))
    assert " 2/5 " in row and " 20% " in row
    code, out, _ = cli(kubeconfig, "history", f"{NS}/shown", "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["steps"] == 5 and [h["step"] for h in doc["history"]] == [None, 1, 2]
    code, out, _ = cli(kubeconfig, "history", f"{NS}/shown")
    assert code == 0 and "  2/5 " in out and " -1 " not in out


def test_an_unreachable_cluster_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = tmp_path / "dead"
    dead.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "s3cr3t-token"}}]}))
    for args in (["status"], ["status", "x/y", "--wait", "--timeout", "5s"], ["history", "x/y"], ["pause", "x/y"]):
        code, out, err = cli(dead, *args)
        text = out + err
        assert code == EXIT_CLUSTER, (args, text)
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
        assert f"127.0.0.1:{port}" in text and "s3cr3t-token" not in text
    code, out, err = cli(tmp_path / "no-such-file", "status")
    assert code == EXIT_CLUSTER and "no kubeconfig file at" in out + err
