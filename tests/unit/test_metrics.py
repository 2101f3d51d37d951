"""canaryd's own /metrics: what a replica reports once it is no longer the leader."""

from __future__ import annotations

from prometheus_client import generate_latest

from canaryd.daemon.metrics import Metrics
from canaryd.rollout.state import Phase
from tests.unit.engine_fixtures import progressing, state


def test_a_replica_that_drops_to_standby_stops_reporting_rollouts() -> None:
    m = Metrics()
    m.observe_state(state(Phase.SUCCEEDED), progressing())
    text = generate_latest(m.registry).decode()
    assert 'canaryd_rollouts{phase="Progressing"} 1.0' in text
    assert "canaryd_canary_weight_percent{" in text
    m.forget_rollouts()
    text = generate_latest(m.registry).decode()
    assert 'canaryd_rollouts{phase="Progressing"} 0.0' in text  # not the old leader's 1 forever
    assert "canaryd_canary_weight_percent{" not in text
    assert "canaryd_transitions_total{" in text  # counters keep what happened
