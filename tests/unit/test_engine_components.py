"""Engine tables for several components (issue 4 item 4): which ones canary, in which order, and how.

The service has a transformer (a container image) and a predictor (a model). Each row drives the pure
engine through a whole rollout against a small model of KServe v1beta1 (a revision per component template,
traffic split by that component's `canaryTrafficPercent`), ticking at the state's next check time; every
tick is also replayed from the persisted-and-reloaded state (restart safety).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from canaryd.apply import apply_merge_patch, merge_patch, with_canary_percent
from canaryd.policy import PolicySpec
from canaryd.rollout import components as comps
from canaryd.rollout.engine import analysis_request, decide
from canaryd.rollout.model import (
    PERCENT_FIELD,
    Action,
    ApplySpec,
    ComponentStatus,
    Condition,
    Decision,
    Desired,
    LiveService,
    Notify,
    Observation,
    Promote,
    Rollback,
    SetTraffic,
    TrafficTarget,
)
from canaryd.rollout.state import Phase, RolloutState
from tests.unit.engine_fixtures import API, NAME, NS, T0, TARGET, desired, effects, policy, roundtrip

TX, PRED = "transformer", "predictor"


def body(tx: str = "v1", pred: str = "v1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": NAME, "namespace": NS}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": API, "kind": "InferenceService", "metadata": meta,
        "spec": {
            TX: {"containers": [{"name": "kserve-container", "image": f"example/tx:{tx}"}]},
            PRED: {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": f"gs://models/iris/{pred}"}},
        },
    }


def pol(*listed: str) -> PolicySpec:
    return policy(target={"name": NAME, "components": list(listed)})


def want(b: dict[str, Any], p: PolicySpec) -> Desired:
    return desired("x", p, body=b, commit="c0ffee" + str(abs(hash(str(b))))[:10])


def rname(component: str, n: int) -> str:
    return f"{NAME}-{component}-{n:05d}"


# -- a small KServe ----------------------------------------------------------------------------------------

@dataclass
class Kserve:
    """KServe v1beta1 in a few lines: a new revision when a component's template (its spec without the
    percent, plus labels and annotations) changes, Ready at once; the percent splits the newest Ready
    revision against the rolled-out one; no percent (or 100) rolls the newest out."""

    manifest: dict[str, Any]
    templates: dict[str, list[Any]] = field(default_factory=dict)
    rolled: dict[str, int] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reconcile()

    def template(self, component: str) -> Any:
        meta = self.manifest.get("metadata") or {}
        return (comps.component_spec(self.manifest, component), meta.get("labels"), meta.get("annotations"))

    def percent(self, component: str) -> int | None:
        return comps.percent_of(self.manifest, component)

    def reconcile(self) -> None:
        for c in comps.present(self.manifest):
            revs = self.templates.setdefault(c, [])
            if not revs or revs[-1] != self.template(c):
                revs.append(self.template(c))
            latest = len(revs)
            p = self.percent(c)
            if c not in self.rolled or p is None or p >= 100:
                self.rolled[c] = latest

    def split(self, component: str) -> dict[int, int]:
        latest, rolled, p = len(self.templates[component]), self.rolled[component], self.percent(component)
        if p is None or rolled == latest:
            return {latest: 100}
        return {n: share for n, share in ((rolled, 100 - p), (latest, p)) if share > 0}

    def live(self) -> LiveService:
        statuses = {}
        for c in self.templates:
            latest = len(self.templates[c])
            statuses[c] = ComponentStatus(
                latest_created=rname(c, latest), latest_ready=rname(c, latest),
                latest_rolledout=rname(c, self.rolled[c]),
                traffic=[TrafficTarget(revision=rname(c, n), percent=p, latest=n == latest)
                         for n, p in self.split(c).items()])
        return LiveService(api_version=API, generation=1, observed_generation=1, manifest=copy.deepcopy(self.manifest),
                           canary_percent=self.percent(PRED), components=statuses,
                           conditions={"Ready": Condition(status="True")})

    def act(self, action: Action) -> None:
        if isinstance(action, ApplySpec):
            patch = merge_patch(action.last_applied, action.manifest)
            if action.canary_percent is not None:
                patch = with_canary_percent(patch, action.component, action.canary_percent)
            self.manifest = apply_merge_patch(self.manifest, patch)
            pct = "" if action.canary_percent is None else f"={action.canary_percent}"
            self.writes.append(f"apply({action.component}{pct})")
        elif isinstance(action, SetTraffic):
            self._percent(action.component, action.percent)
            self.writes.append(f"{action.component}={action.percent}")
        elif isinstance(action, Promote):
            self._percent(action.component, None)
            self.writes.append(f"promote({action.component})")
        elif isinstance(action, Rollback):
            self._percent(action.component, 0)
            self.writes.append(f"rollback({action.component})")
        self.reconcile()

    def _percent(self, component: str, value: int | None) -> None:
        part = self.manifest["spec"][component]
        if value is None:
            part.pop(PERCENT_FIELD, None)
        else:
            part[PERCENT_FIELD] = value


@dataclass
class Run:
    state: RolloutState
    kserve: Kserve
    decisions: list[Decision] = field(default_factory=list)
    #: (writes so far, predictor traffic) at every tick: what the predictor served while others moved
    predictor_split: list[tuple[int, dict[int, int]]] = field(default_factory=list)


def drive(start: dict[str, Any], target: Desired, p: PolicySpec, bad: frozenset[str] = frozenset(),
          ticks: int = 200) -> Run:
    """Roll `target` out over a service running `start` (Succeeded), to the end: `bad` revisions fail."""
    ks = Kserve(copy.deepcopy(start))
    old = want(start, p)
    s = RolloutState.new(TARGET).evolve(spec={
        "commit": old.commit, "spec_hash": old.spec_hash, "last_applied": start, "policy": old.policy})
    s = s.evolve(phase=Phase.SUCCEEDED, stable_revision=rname(PRED, 1), weight=100)
    run = Run(s, ks)
    now: datetime = T0
    for _ in range(ticks):
        live = ks.live()
        run.predictor_split.append((len(ks.writes), ks.split(PRED)))
        request = analysis_request(run.state, p, now)
        samples = None
        if request is not None:
            from tests.unit.engine_fixtures import samples as make

            kind = "errors" if request.canary_revision in bad else "good"
            samples = make(kind, canary=request.canary_revision, stable=request.stable_revision or "-")
        obs = Observation(desired=target, live=live, samples=samples)
        d = decide(run.state, obs, p, now)
        again = decide(roundtrip(run.state), obs, p, now)
        assert again.actions == d.actions and again.state.for_storage() == d.state.for_storage()
        run.decisions.append(d)
        for action in effects(d):
            ks.act(action)
        run.state = d.state
        if run.state.status.phase in (Phase.SUCCEEDED, Phase.FAILED) and not effects(d) and len(run.decisions) > 1:
            break
        now = max(now + timedelta(seconds=1), run.state.status.next_check_at or now)
    return run


def promoted_in_order(run: Run) -> list[str | None]:
    return [h.component for h in run.state.status.history if h.reason == "Promoted"]


def t1_t2(*listed: str) -> list[str]:
    return [f"apply({listed[0]}=0)", f"{listed[0]}=10", f"{listed[0]}=50", f"promote({listed[0]})"]


def nxt(component: str) -> list[str]:
    return [f"apply({component}=0)", f"{component}=10", f"{component}=50", f"promote({component})"]


V1 = body()


@dataclass(frozen=True)
class Scenario:
    listed: tuple[str, ...]
    to: dict[str, Any]
    phase: Phase
    writes: list[str]
    promoted: list[str | None]
    bad: frozenset[str] = frozenset()
    revisions: dict[str, int] = field(default_factory=dict)  # revisions each component has at the end
    message: tuple[str, ...] = ()


TABLE = [
    pytest.param(Scenario((TX,), body(tx="v2"), Phase.SUCCEEDED, nxt(TX), [TX], revisions={TX: 2, PRED: 1},
                          message=("transformer revision iris-transformer-00002 serves 100%",)),
                 id="transformer-canary-promoted"),
    pytest.param(Scenario((TX,), body(tx="bad"), Phase.FAILED, ["apply(transformer=0)", "transformer=10",
                                                                 "rollback(transformer)"], [],
                          bad=frozenset({rname(TX, 2)}), revisions={TX: 2, PRED: 1},
                          message=("all transformer traffic on iris-transformer-00001",)),
                 id="bad-transformer-rolled-back-predictor-untouched"),
    pytest.param(Scenario((TX, PRED), body("v2", "v2"), Phase.SUCCEEDED, nxt(TX) + nxt(PRED), [TX, PRED],
                          revisions={TX: 2, PRED: 2}), id="both-changed-transformer-first"),
    pytest.param(Scenario((PRED, TX), body("v2", "v2"), Phase.SUCCEEDED, nxt(PRED) + nxt(TX), [PRED, TX],
                          revisions={TX: 2, PRED: 2}), id="both-changed-listed-order-wins"),
    pytest.param(Scenario((TX, PRED), body("v2", "bad"), Phase.FAILED,
                          [*nxt(TX), "apply(predictor=0)", "predictor=10", "rollback(predictor)"], [TX],
                          bad=frozenset({rname(PRED, 2)}), revisions={TX: 2, PRED: 2},
                          message=("transformer already promoted and stays promoted",)),
                 id="second-fails-first-stays-promoted"),
    pytest.param(Scenario((TX, PRED), body("bad", "v2"), Phase.FAILED,
                          ["apply(transformer=0)", "transformer=10", "rollback(transformer)"], [],
                          bad=frozenset({rname(TX, 2)}), revisions={TX: 2, PRED: 1},
                          message=("predictor not rolled out",)), id="first-fails-rest-never-applied"),
    pytest.param(Scenario((TX, PRED), body(labels={"team": "b"}), Phase.SUCCEEDED, nxt(TX) + nxt(PRED),
                          [TX, PRED], revisions={TX: 2, PRED: 2}), id="labels-renew-every-component"),
    pytest.param(Scenario((PRED,), body("v2", "v2"), Phase.SUCCEEDED, nxt(PRED), [PRED],
                          revisions={TX: 2, PRED: 2}), id="unlisted-transformer-moves-at-once"),
    pytest.param(Scenario((PRED,), body(tx="v2"), Phase.SUCCEEDED, ["apply(predictor)"], [],
                          revisions={TX: 2, PRED: 1}, message=("applied at once without a canary (transformer)",)),
                 id="only-unlisted-changed-no-canary"),
    pytest.param(Scenario((TX, PRED), body(pred="v2"), Phase.SUCCEEDED, nxt(PRED), [PRED],
                          revisions={TX: 1, PRED: 2}), id="unchanged-listed-component-skipped"),
]


@pytest.mark.parametrize("sc", TABLE)
def test_components_roll_out_in_turn(sc: Scenario) -> None:
    p = pol(*sc.listed)
    target = want(sc.to, p)
    run = drive(V1, target, p, sc.bad)
    st = run.state
    assert st.status.phase == sc.phase, st.status.message
    assert run.kserve.writes == sc.writes
    assert promoted_in_order(run) == sc.promoted
    assert {c: len(t) for c, t in run.kserve.templates.items()} == sc.revisions
    for text in sc.message:
        assert text in st.status.message
    assert st.spec.pending_components == []
    if sc.phase == Phase.SUCCEEDED:
        # Everything Git wants is live, and remembered as applied, with no percent left anywhere.
        assert st.spec.last_applied == target.manifest
        assert comps.component_spec(run.kserve.manifest, TX) == comps.component_spec(target.manifest, TX)
        assert comps.component_spec(run.kserve.manifest, PRED) == comps.component_spec(target.manifest, PRED)
        assert all(run.kserve.percent(c) is None for c in (TX, PRED))
        assert all(run.kserve.split(c) == {len(run.kserve.templates[c]): 100} for c in (TX, PRED))
    else:
        assert target.spec_hash in st.status.failed_spec_hashes


@pytest.mark.parametrize("listed", [(TX, PRED)])
@pytest.mark.parametrize("to", [body("v2", "v2"), body(labels={"team": "b"})], ids=["specs", "labels"])
def test_predictor_traffic_does_not_move_until_the_transformer_is_promoted(listed: tuple[str, ...],
                                                                           to: dict[str, Any]) -> None:
    run = drive(V1, want(to, pol(*listed)), pol(*listed))
    promoted_at = run.kserve.writes.index("promote(transformer)") + 1
    before = [split for writes, split in run.predictor_split if writes <= promoted_at]
    assert before and all(split == {1: 100} for split in before)
    assert any(split == {1: 90, 2: 10} for _, split in run.predictor_split)  # then its own canary


def test_messages_and_notifications_name_the_component() -> None:
    p = pol(TX, PRED)
    run = drive(V1, want(body("v2", "v2"), p), p)
    messages = [h.message for h in run.state.status.history]
    assert "transformer revision iris-transformer-00002 is Ready; step 1/2: 10% of traffic" in messages
    assert "predictor revision iris-predictor-00002 is Ready; step 1/2: 10% of traffic" in messages
    notes = [a for d in run.decisions for a in d.actions if isinstance(a, Notify)]
    assert {(n.kind, n.fields["component"]) for n in notes} >= {("promoted", TX), ("promoted", PRED),
                                                              ("started", TX), ("started", PRED)}
    reasons = [(h.component, h.reason) for h in run.state.status.history]
    assert reasons.index((TX, "Promoted")) < reasons.index((PRED, "ComponentStarted")) < reasons.index(
        (PRED, "Promoted"))
    assert run.state.status.promoted_components == [TX, PRED]


# -- the first apply -----------------------------------------------------------------------------------------

def first_tick(start: dict[str, Any], to: dict[str, Any], p: PolicySpec) -> Decision:
    ks = Kserve(copy.deepcopy(start))
    old = want(start, p)
    s = RolloutState.new(TARGET).evolve(spec={
        "commit": old.commit, "spec_hash": old.spec_hash, "last_applied": start, "policy": old.policy})
    s = s.evolve(phase=Phase.SUCCEEDED, stable_revision=rname(PRED, 1), weight=100)
    return decide(s, Observation(desired=want(to, p), live=ks.live()), p, T0)


def test_first_apply_keeps_pending_components_at_their_previous_spec() -> None:
    d = first_tick(V1, body("v2", "v2"), pol(TX, PRED))
    (apply,) = effects(d)
    assert isinstance(apply, ApplySpec) and (apply.component, apply.canary_percent) == (TX, 0)
    assert apply.manifest["spec"][PRED] == V1["spec"][PRED]  # no percent: its spec does not change
    assert apply.manifest["spec"][TX] == body("v2")["spec"][TX]
    assert d.state.spec.component == TX and d.state.spec.pending_components == [PRED]
    assert d.state.status.baseline_created_revision == rname(TX, 1)


def test_labels_change_pins_pending_components_at_zero() -> None:
    d = first_tick(V1, body(labels={"team": "b"}), pol(TX, PRED))
    (apply,) = effects(d)
    assert isinstance(apply, ApplySpec)
    assert apply.manifest["spec"][PRED][PERCENT_FIELD] == 0
    assert apply.manifest["metadata"]["labels"] == {"team": "b"}
    assert d.state.status.component_baselines == {PRED: rname(PRED, 1)}


def test_unlisted_change_is_logged() -> None:
    d = first_tick(V1, body("v2", "v2"), pol(PRED))
    assert d.log["applied_without_canary"] == [TX]
    assert "transformer changed too and move at once" in d.state.status.message


def test_new_component_is_applied_without_canary() -> None:
    start = copy.deepcopy(V1)
    del start["spec"][TX]
    d = first_tick(start, body(pred="v2"), pol(TX, PRED))
    (apply,) = effects(d)
    assert isinstance(apply, ApplySpec) and apply.component == PRED and apply.manifest["spec"][TX]
    assert d.state.spec.pending_components == []


# -- superseding and Git moving on ---------------------------------------------------------------------------

def mid_rollout(p: PolicySpec, to: dict[str, Any], writes_until: str) -> tuple[Run, Kserve]:
    """Drive until the given write happened; return the run (state there) and KServe."""
    ks = Kserve(copy.deepcopy(V1))
    old = want(V1, p)
    s = RolloutState.new(TARGET).evolve(spec={
        "commit": old.commit, "spec_hash": old.spec_hash, "last_applied": V1, "policy": old.policy})
    run = Run(s.evolve(phase=Phase.SUCCEEDED, stable_revision=rname(PRED, 1), weight=100), ks)
    now, target = T0, want(to, p)
    from tests.unit.engine_fixtures import samples as make

    for _ in range(200):
        if writes_until in ks.writes:
            break
        request = analysis_request(run.state, p, now)
        samples = None if request is None else make("good", canary=request.canary_revision,
                                                   stable=request.stable_revision or "-")
        d = decide(run.state, Observation(desired=target, live=ks.live(), samples=samples), p, now)
        for action in effects(d):
            ks.act(action)
        run.state = d.state
        now = max(now + timedelta(seconds=1), run.state.status.next_check_at or now)
    assert writes_until in ks.writes, ks.writes
    return run, ks


def test_superseding_the_second_component_takes_its_traffic_away_until_its_turn() -> None:
    p = pol(TX, PRED)
    run, ks = mid_rollout(p, body("v2", "v2"), "predictor=10")
    assert run.state.spec.component == PRED and ks.split(PRED) == {1: 90, 2: 10}
    d = decide(run.state, Observation(desired=want(body("v3", "v2"), p), live=ks.live()), p, T0 + timedelta(hours=1))
    (apply,) = effects(d)
    assert isinstance(apply, ApplySpec) and apply.component == TX
    assert apply.manifest["spec"][PRED][PERCENT_FIELD] == 0  # the superseded predictor canary: no traffic
    assert d.state.spec.pending_components == [PRED]
    # Its canary revision (unchanged spec) is the one to judge when its turn comes: no new one to wait for.
    assert d.state.status.component_baselines == {PRED: rname(PRED, 1)}
    ks.act(apply)
    assert ks.split(PRED) == {1: 100}


def test_superseding_the_first_component_with_the_same_spec_rejudges_its_canary() -> None:
    p = pol(TX, PRED)
    run, ks = mid_rollout(p, body("v2", "v1"), "transformer=10")
    d = decide(run.state, Observation(desired=want(body("v2", "v2"), p), live=ks.live()), p, T0 + timedelta(hours=1))
    assert d.state.spec.component == TX and d.state.spec.pending_components == [PRED]
    assert d.state.status.baseline_created_revision == rname(TX, 1)  # the in-flight canary stays the candidate


def test_git_moving_on_during_a_promotion_ends_with_the_rest_not_rolled_out() -> None:
    p = pol(TX, PRED)
    run, ks = mid_rollout(p, body("v2", "v2"), "promote(transformer)")
    # KServe shows the transformer promoted; the next tick sees the service gone from Git.
    assert run.state.status.phase == Phase.PROMOTING
    d = decide(run.state, Observation(desired=None, live=ks.live()), p, T0 + timedelta(hours=1))
    assert d.state.status.phase == Phase.SUCCEEDED
    assert d.state.spec.pending_components == [] and d.state.spec.spec_hash is None
    assert "predictor not rolled out" in d.state.status.message
    assert d.log["not_rolled_out"] == [PRED]


def test_abort_mid_first_component_says_what_was_left() -> None:
    from canaryd.rollout.state import Control

    p = pol(TX, PRED)
    run, ks = mid_rollout(p, body("v2", "v2"), "transformer=10")
    s = run.state
    s = s.model_copy(update={"spec": s.spec.model_copy(update={"control": Control(abort=s.attempt_id)})})
    d = decide(s, Observation(desired=want(body("v2", "v2"), p), live=ks.live()), p, T0 + timedelta(hours=1))
    assert effects(d) == [Rollback(TX)]
    for action in effects(d):
        ks.act(action)
    d = decide(d.state, Observation(desired=want(body("v2", "v2"), p), live=ks.live()), p, T0 + timedelta(hours=2))
    assert d.state.status.phase == Phase.ABORTED and "predictor not rolled out" in d.state.status.message


# -- the plan itself ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("listed", "to", "canary", "direct", "pinned"), [
    ((PRED,), body(pred="v2"), [PRED], [], []),
    ((TX, PRED), body("v2", "v2"), [TX, PRED], [], []),
    ((PRED, TX), body("v2", "v2"), [PRED, TX], [], []),
    ((PRED,), body("v2", "v2"), [PRED], [TX], []),
    ((PRED,), body(tx="v2"), [], [TX], []),
    ((TX, PRED), body(labels={"a": "b"}), [TX, PRED], [], [PRED]),
    ((PRED,), body(labels={"a": "b"}), [PRED], [], []),
    ((TX, PRED), V1, [], [], []),
])
def test_plan(listed: tuple[str, ...], to: dict[str, Any], canary: list[str], direct: list[str],
              pinned: list[str]) -> None:
    plan = comps.plan(listed, V1, to)
    assert (plan.canary, plan.direct, plan.pinned) == (canary, direct, pinned)


def test_plan_against_a_live_object_ignores_kserve_defaults() -> None:
    live = copy.deepcopy(V1)
    live["spec"][PRED]["minReplicas"] = 1
    assert comps.plan((TX, PRED), live, V1, exact=False).canary == []
    assert comps.plan((TX, PRED), live, body(pred="v2"), exact=False).canary == [PRED]


def test_intermediate_keeps_pending_sections_and_pins() -> None:
    m = comps.intermediate(body("v2", "v2"), V1, [PRED], [PRED])
    assert m["spec"][PRED] == {**V1["spec"][PRED], PERCENT_FIELD: 0}
    assert m["spec"][TX] == body("v2")["spec"][TX]
    assert "canaryTrafficPercent" not in body("v2", "v2")["spec"][PRED]  # the input is not modified
