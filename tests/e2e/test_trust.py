"""Issue 13 items 1, 2 and 5 end to end: the ModelRollout is no trust root, an operator request is spent
with its rollout attempt, and a save leaves other tools' metadata alone.

Threat model: a namespace editor may patch a ModelRollout's spec (the chart's aggregated `edit` role), never
its status; canaryd must not be steerable through it into another namespace or around its analyses.
"""

from __future__ import annotations

from typing import Any

import pytest

from canaryd.rollout.state import GROUP, PLURAL, VERSION, Phase
from tests.e2e.helpers import FAST_POLICY, Env, G, P, V, isvc_yaml, policy_yaml, wait_until
from tests.e2e.test_operator import cli, deploy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _victim(env: Env) -> tuple[str, dict[str, Any]]:
    """An InferenceService in another namespace that canaryd does not manage."""
    other = f"{env.ns}-b"
    env.core.create_namespace({"metadata": {"name": other}})
    body = {"apiVersion": f"{G}/{V}", "kind": "InferenceService", "metadata": {"name": "victim", "namespace": other},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://b/v1"}}}}
    created: dict[str, Any] = env.co.create_namespaced_custom_object(G, V, other, P, body)
    return other, created


def _generation(env: Env, ns: str, name: str) -> int:
    """Spec writes bump it; the KServe emulator's status writes do not."""
    obj: dict[str, Any] = env.co.get_namespaced_custom_object(G, V, ns, P, name)
    return int(obj["metadata"]["generation"])


def test_regression_modelrollout_spec_steered_canaryd_into_another_namespace(env: Env) -> None:
    """An editor of namespace A rewrote the ModelRollout's spec (target, lastApplied, policy): canaryd then
    re-applied `lastApplied` into namespace B (drift correction) and used the rewritten policy. Now the spec
    holds only requests: what an editor writes there is ignored, and the rollout in A goes on as Git says."""
    other, victim = _victim(env)
    deploy(env, "iris", policy_yaml("iris", env.ns, FAST_POLICY))
    hostile = {"spec": {
        "target": {"namespace": other, "name": "victim"},
        "lastApplied": {**victim, "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                                                    "storageUri": "gs://attacker/model"}}}},
        "policy": {"steps": [99], "analysis": {"metrics": []}},
        "status": {"phase": "Failed"},
    }, "status": {"phase": "Failed", "lastApplied": {"metadata": {"namespace": other, "name": "victim"}}}}
    env.co.patch_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "iris", hostile)
    env.load(["iris"], rate=25)
    c2 = env.repo.commit({"services/iris.yaml": isvc_yaml("iris", env.ns, "gs://e2e/v2")}, "v2")
    st = env.wait_phase("iris", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=90)
    assert st.status.phase == Phase.SUCCEEDED, st.status.message
    assert [h.weight for h in st.status.history if h.commit == c2 and h.reason == "StepAdvanced"] == [50]
    assert st.spec.target.key == f"{env.ns}/iris"
    assert (st.spec.last_applied or {})["metadata"]["namespace"] == env.ns
    after: dict[str, Any] = env.co.get_namespaced_custom_object(G, V, other, P, "victim")
    assert after["metadata"]["generation"] == victim["metadata"]["generation"], "B was written"
    assert after["spec"]["predictor"]["model"]["storageUri"] == "gs://b/v1"


def test_regression_a_state_naming_another_namespace_is_refused_and_reported(env: Env) -> None:
    """Defence in depth: even a status that names another object (written by someone with status rights,
    or by a canaryd bug) is never acted on: canaryd reports it (Event, status message, log) instead."""
    other, victim = _victim(env)
    c1 = deploy(env, "iris", policy_yaml("iris", env.ns, FAST_POLICY))
    obj = env.co.get_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "iris")
    obj["status"]["lastApplied"] = {**victim, "spec": {"predictor": {"model": {
        "modelFormat": {"name": "sklearn"}, "storageUri": "gs://attacker/model"}}}}
    obj["status"]["lastApplied"]["metadata"] = {"namespace": other, "name": "victim"}
    env.co.replace_namespaced_custom_object_status(GROUP, VERSION, env.ns, PLURAL, "iris", obj)
    c2 = env.repo.commit({"services/iris.yaml": isvc_yaml("iris", env.ns, "gs://e2e/v2")}, "v2")
    assert env.daemon is not None
    wait_until(lambda: any(e.reason == "StateRefused" for e in env.events("iris")), 60, "a StateRefused Event")
    refused = env.co.get_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "iris")
    assert "refuses to act" in refused["status"]["message"] and f"{other}/victim" in refused["status"]["message"]
    assert "state refused" in env.daemon.log_tail(200)
    assert refused["status"]["commit"] == c1 != c2, "the refused state was acted on"
    assert _generation(env, other, "victim") == victim["metadata"]["generation"], "B was written"
    live = env.isvc("iris") or {}
    assert live["spec"]["predictor"]["model"]["storageUri"] == "gs://e2e/v1", "A was changed from a refused state"


def test_regression_operator_promote_outlived_its_rollout(env: Env) -> None:
    """An operator promoted v2's canary; Git later went v3 -> v2 (the same spec). The old request named v2's
    spec hash and promoted the new canary with zero analyses. Now it named one attempt, which has ended."""
    gated = policy_yaml("gated", env.ns, FAST_POLICY, gates={"confirmPromotion": True})
    deploy(env, "gated", gated)
    env.load(["gated"], rate=25)
    c2 = env.repo.commit({"services/gated.yaml": isvc_yaml("gated", env.ns, "gs://e2e/v2")}, "v2")
    env.wait_phase("gated", {Phase.WAITING_PROMOTION}, c2, timeout=60)
    out = cli(env, "promote", f"{env.ns}/gated")
    assert out.returncode == 0, out.stderr
    env.wait_phase("gated", {Phase.SUCCEEDED}, c2, timeout=30)
    c3 = env.repo.commit({"services/gated.yaml": isvc_yaml("gated", env.ns, "gs://e2e/v3")}, "v3")
    env.wait_phase("gated", {Phase.INITIALIZING, Phase.PROGRESSING, Phase.WAITING_PROMOTION}, c3, timeout=30)
    c4 = env.repo.commit({"services/gated.yaml": isvc_yaml("gated", env.ns, "gs://e2e/v2")}, "back to v2")
    st = env.wait_phase("gated", {Phase.WAITING_PROMOTION, Phase.PROMOTING, Phase.SUCCEEDED}, c4, timeout=90)
    assert st.status.phase == Phase.WAITING_PROMOTION, [h.message for h in st.status.history if h.commit == c4]
    assert st.spec.control.promote is not None and st.spec.control.promote != st.attempt_id
    assert not [h for h in st.status.history if h.commit == c4 and "operator" in h.message]


def test_regression_someone_elses_metadata_was_dropped_on_save(env: Env) -> None:
    """kubectl labels, Argo CD tracking annotations, finalizers and ownerReferences on a ModelRollout
    vanished at canaryd's next save (it replaced the whole object). Now a save writes status only."""
    deploy(env, "iris", policy_yaml("iris", env.ns, FAST_POLICY))
    theirs = {"metadata": {
        "labels": {"team": "fraud", "app.kubernetes.io/instance": "argocd-app"},
        "annotations": {"argocd.argoproj.io/tracking-id": "app:canaryd.io/ModelRollout:ns/iris", "note": "hi"},
        "finalizers": ["example.com/keep"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "1234",
                             "controller": False}],
    }}
    env.co.patch_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "iris", theirs)
    env.load(["iris"], rate=25)
    c2 = env.repo.commit({"services/iris.yaml": isvc_yaml("iris", env.ns, "gs://e2e/v2")}, "v2")
    st = env.wait_phase("iris", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=90)
    assert st.status.phase == Phase.SUCCEEDED and len(st.status.history) > 3
    meta = env.co.get_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "iris")["metadata"]
    assert meta["labels"]["team"] == "fraud" and meta["labels"]["app.kubernetes.io/instance"] == "argocd-app"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "canaryd"
    assert meta["annotations"] == theirs["metadata"]["annotations"]
    assert meta["finalizers"] == ["example.com/keep"]
    assert [o["name"] for o in meta["ownerReferences"]] == ["owner"]
    # let the object go: the test namespace is deleted with it
    env.co.patch_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "iris", {"metadata": {"finalizers": None}})
