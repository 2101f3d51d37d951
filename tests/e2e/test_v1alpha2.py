"""KFServing `serving.kubeflow.org/v1alpha2` services end to end: the real daemon, real git, real Prometheus,
and the emulated KFServing controller (default and canary endpoints, webhook rules) and data plane.

The good version is promoted without a dip: a sampler reads the data plane's routing table and its
per-revision request counters all along; once every request goes to the new version, the old one never
gets a request again. The bad one is rolled back: `spec.canary` gone, all traffic on the default.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from canaryd.rollout.state import Phase
from canaryd.sandbox.cluster import Sandbox
from tests.e2e.helpers import Env, kfserving_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

G, V, P = "serving.kubeflow.org", "v1alpha2", "inferenceservices"
V1, V2, ERRORS = "gs://e2e/v1", "gs://e2e/v2", "gs://e2e/errors"


def isvc(env: Env, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = env.co.get_namespaced_custom_object(G, V, env.ns, P, name)
    return obj


def deploy_v1(env: Env, name: str) -> str:
    c1 = env.repo.commit({f"services/{name}.yaml": kfserving_yaml(name, env.ns, V1),
                          f"policies/{name}.yaml": policy_yaml(name, env.ns)}, f"{name} v1")
    env.start_daemon()
    env.wait_phase(name, {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state(name)) and s.status.stable_revision, 20, f"{name} v1 Ready and recorded")
    return c1


class SpecRecorder:
    """Every distinct (canary storageUri, canaryTrafficPercent) written to one v1alpha2 service, in order."""

    def __init__(self, env: Env, name: str) -> None:
        self.env, self.name = env, name
        self.values: list[tuple[str | None, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        co, ns = self.env.co, self.env.ns
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = co.list_namespaced_custom_object(G, V, ns, P, field_selector=f"metadata.name={self.name}")
                    rv = listed["metadata"]["resourceVersion"]
                    for item in listed["items"]:
                        self._see(item)
                for ev in watch.Watch().stream(co.list_namespaced_custom_object, G, V, ns, P,  # type: ignore[no-untyped-call]
                                               field_selector=f"metadata.name={self.name}", resource_version=rv,
                                               timeout_seconds=1, _request_timeout=5):
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    if ev["type"] != "DELETED":
                        self._see(ev["object"])
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                self._stop.wait(0.1)
            except Exception:  # keep recording through connection blips
                self._stop.wait(0.1)

    def _see(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec") or {}
        canary = ((spec.get("canary") or {}).get("predictor") or {}).get("sklearn", {}).get("storageUri")
        value = (canary, spec.get("canaryTrafficPercent"))
        if not self.values or self.values[-1] != value:
            self.values.append(value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Sample:
    uris: frozenset[str | None]  # the model versions the routing table sends requests to
    counts: dict[str, int]  # requests answered so far, per revision


@dataclass
class DataPlaneSampler:
    """What the sandbox's data plane routes and serves for one service, sampled every 50 ms."""

    sb: Sandbox
    ns: str
    name: str
    samples: list[Sample] = field(default_factory=list)
    uri_of: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._sample())

    def _sample(self) -> Sample:
        assert self.sb.dataplane is not None
        table = self.sb.dataplane.table
        route = table.routes.get((self.ns, self.name, "predictor"))
        uris = set()
        for target in route.targets if route else ():
            rev = table.revisions.get((self.ns, target.revision))
            if target.percent > 0 and rev is not None and rev.ready:
                uris.add(rev.storage_uri)
                self.uri_of[rev.name] = rev.storage_uri
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(self.sb.dataplane.metrics.render_opencensus()):
            if family.name != "revision_request_count":  # (the parser names its samples `..._total`)
                continue
            for s in family.samples:
                if s.labels.get("namespace_name") == self.ns:
                    rev_name = s.labels["revision_name"]
                    if rev_name.startswith(f"{self.name}-"):
                        counts[rev_name] = counts.get(rev_name, 0) + int(s.value)
        return Sample(frozenset(uris), counts)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def served(self, sample: Sample, uri: str) -> int:
        return sum(n for rev, n in sample.counts.items() if self.uri_of.get(rev) == uri)


def test_v1alpha2_good_version_is_promoted_without_a_traffic_dip(env: Env) -> None:
    deploy_v1(env, "kfs")
    obj = isvc(env, "kfs")
    assert "canary" not in obj["spec"]
    assert obj["status"]["default"]["predictor"]["name"] == "kfs-predictor-default-00001"
    spec_rec = SpecRecorder(env, "kfs")
    env.load(["kfs"], rate=25)
    sampler = DataPlaneSampler(env.sb, env.ns, "kfs")
    try:
        c2 = env.repo.commit({"services/kfs.yaml": kfserving_yaml("kfs", env.ns, V2)}, "kfs v2")
        st = env.wait_phase("kfs", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
        assert st.status.phase == Phase.SUCCEEDED, st.status.message
        final = wait_until(lambda: (o := isvc(env, "kfs"))["status"].get("traffic") == 100
                           and not o["status"].get("canary") and o, 10, "the canary gone from the status")
        # Let the new version serve alone for a moment, then stop sampling.
        end = time.monotonic() + 1.0
        wait_until(lambda: time.monotonic() > end, 5, "traffic after the promotion")
    finally:
        sampler.stop()
        spec_rec.stop()

    # canaryd's writes, in order: the canary at 0 %, each step, 100 %, then canary and percent dropped.
    assert spec_rec.values == [(None, None), (V2, 0), (V2, 10), (V2, 50), (V2, 100), (None, None)]
    assert final["spec"]["default"]["predictor"]["sklearn"]["storageUri"] == V2
    assert "canaryTrafficPercent" not in final["spec"]
    assert final["status"]["default"]["predictor"]["name"] == "kfs-predictor-default-00002"
    assert st.status.stable_revision == "kfs-predictor-default-00002"
    reasons = [h.reason for h in st.status.history if h.commit == c2]
    # A hold (too few requests yet, as on a loaded machine) is allowed; skipping a step or the analysis is not.
    moves = [r for r in reasons if r not in ("Holding", "Resumed")]
    assert moves[:3] == ["RolloutStarted", "CanaryReady", "StepAdvanced"] and moves[-1] == "Promoted", reasons
    passes = [a for a in st.status.analyses if a.verdict.outcome == "pass"]
    assert passes and all(a.canary_revision == "kfs-predictor-canary-00001" for a in passes)

    # No dip: once only V2 is routed, it stays so, and V1 never answers another request.
    samples = sampler.samples
    only_new = next(i for i, s in enumerate(samples) if s.uris == {V2})
    dips = [(i - only_new, sorted(map(str, s.uris))) for i, s in enumerate(samples) if i >= only_new and s.uris != {V2}]
    assert not dips, (f"after serving only {V2} (sample {only_new} of {len(samples)}, every 50 ms), the data plane"
                      f" routed elsewhere at (samples after, uris): {dips[:10]}; spec writes {spec_rec.values};"
                      f" history {[(h.reason, h.message[:80]) for h in st.status.history[-4:]]}")
    settled = samples[min(only_new + 2, len(samples) - 1)]  # past requests in flight at the switch
    assert sampler.served(samples[-1], V1) == sampler.served(settled, V1)
    assert sampler.served(samples[-1], V2) > sampler.served(settled, V2) + 10
    # and the new revision made by the promotion took over while the old default had none of the traffic
    assert samples[-1].counts.get("kfs-predictor-default-00002", 0) > 0
    assert any(e.reason == "Promoted" for e in env.events("kfs"))


def test_v1alpha2_bad_version_is_rolled_back_to_the_default(env: Env) -> None:
    deploy_v1(env, "kfserr")
    spec_rec = SpecRecorder(env, "kfserr")
    env.load(["kfserr"], rate=25)
    try:
        c2 = env.repo.commit({"services/kfserr.yaml": kfserving_yaml("kfserr", env.ns, ERRORS)}, "kfserr errors")
        st = env.wait_phase("kfserr", {Phase.SUCCEEDED, Phase.FAILED}, c2, timeout=60)
    finally:
        spec_rec.stop()
    assert st.status.phase == Phase.FAILED, st.status.message
    assert st.status.failed_analyses == 2 and st.spec.spec_hash in st.status.failed_spec_hashes
    obj = wait_until(lambda: not (o := isvc(env, "kfserr"))["status"].get("canary") and o, 10, "canary status gone")
    assert "canary" not in obj["spec"] and "canaryTrafficPercent" not in obj["spec"]
    assert obj["spec"]["default"]["predictor"]["sklearn"]["storageUri"] == V1
    assert obj["status"]["traffic"] == 100 and "canaryTraffic" not in obj["status"]
    assert obj["status"]["default"]["predictor"]["name"] == "kfserr-predictor-default-00001"
    assert spec_rec.values[-1] == (None, None) and (ERRORS, 50) not in spec_rec.values  # never reached step 2
    revisions = client.CustomObjectsApi(env.api).list_namespaced_custom_object(
        "serving.knative.dev", "v1", env.ns, "revisions", label_selector="serving.kubeflow.org/inferenceservice=kfserr")
    assert [r["metadata"]["name"] for r in revisions["items"]] == ["kfserr-predictor-default-00001"]
    warnings = [e for e in env.events("kfserr") if e.reason == "AnalysisFailed"]
    assert len(warnings) >= 2
