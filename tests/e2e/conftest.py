"""One sandbox for the whole end-to-end session (Prometheus takes ~6 s to see its first scrape)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from canaryd.sandbox.cluster import Sandbox
from canaryd.sandbox.scenario import Scenario
from tests.e2e.helpers import Env

GOOD = {"errorRate": 0.0, "latencyMs": {"base": 20, "p99": 60}, "readyAfterSeconds": 1}

SCENARIO = {
    "seed": 11,
    "default": GOOD,
    "versions": {
        "gs://e2e/v1": GOOD,
        "gs://e2e/v2": {**GOOD, "latencyMs": {"base": 18, "p99": 50}},
        "gs://e2e/v3": GOOD,
        "gs://e2e/errors": {**GOOD, "errorRate": 0.3},
        "gs://e2e/slow": {**GOOD, "latencyMs": {"base": 400, "p99": 900}},
        "gs://e2e/never-ready": {**GOOD, "neverReady": True},
        "gs://e2e/broken": {**GOOD, "errorRate": 1.0},
        "example/tx:v1": GOOD,
        "example/tx:v2": {**GOOD, "latencyMs": {"base": 18, "p99": 50}},
        "example/tx:errors": {**GOOD, "errorRate": 0.3},
        # The statistical-judge scenario: a stable model that fails 5 % of requests, and a x3 regression.
        "gs://e2e/base5pct": {**GOOD, "errorRate": 0.05},
        "gs://e2e/errors3x": {**GOOD, "errorRate": 0.15},
    },
}


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(Scenario.model_validate(SCENARIO)) as sb:
        yield sb


@pytest.fixture
def env(sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[Env]:
    tag = request.node.name.replace("test_", "").replace("_", "-")[:20].strip("-")
    e = Env(sandbox, tag)
    yield e
    e.close()
