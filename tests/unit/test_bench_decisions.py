"""bench/decisions.py in a tiny quick run: every judge and every scenario make it into the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "decisions.py"


@pytest.fixture(scope="module")
def decisions() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_decisions", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_quick_run_has_every_judge_and_scenario(decisions: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert decisions.main(["--quick", "--seed", "3"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| req/s")]
    header = next(line for line in table.splitlines() if line.startswith("| req/s"))
    for judge in decisions.JUDGES:
        assert decisions.JUDGE_HEADERS[judge] in header
    labels = {tuple(cell.strip() for cell in row.split("|")[1:4]) for row in rows}
    expected = {sc.label for sc in decisions.scenarios()}
    assert labels == expected
    everywhere = [g for g in decisions.REGRESSIONS if tuple(g.rates) == tuple(decisions.RATES)]
    at_10 = [g for g in decisions.REGRESSIONS if tuple(g.rates) == (10,)]
    assert len(everywhere) + len(at_10) == len(decisions.REGRESSIONS)
    assert len(expected) == len(decisions.BASELINES) * (len(decisions.RATES) * len(everywhere) + len(at_10))
    for row in rows:
        assert len(row.split("|")) == 3 + len(decisions.JUDGES) + 2
    assert "Target rows (10 req/s)" in table
    assert "fewer than minRequests canary requests in the judged scope: 0" in table


def test_same_seed_same_numbers(decisions: ModuleType) -> None:
    a = decisions.run(1, 1, seed=5)
    b = decisions.run(1, 1, seed=5)
    assert [c.results for c in a.cells.values()] == [c.results for c in b.cells.values()]


def test_samplers_have_the_right_means(decisions: ModuleType) -> None:
    import random

    sampler = decisions.Sampler(random.Random(1))
    for lam in (0.5, 5.0, 50.0, 5000.0):
        draws = [sampler.poisson(lam) for _ in range(4000)]
        mean = sum(draws) / len(draws)
        assert abs(mean - lam) < 4 * (lam / len(draws)) ** 0.5 + 1e-9
    for n, p in ((100, 0.01), (9000, 0.01), (50, 0.5)):
        draws = [sampler.binomial(n, p) for _ in range(4000)]
        mean = sum(draws) / len(draws)
        assert abs(mean - n * p) < 4 * (n * p * (1 - p) / len(draws)) ** 0.5
    probs = decisions.bucket_probabilities(1.0)
    assert sum(probs) == pytest.approx(1.0)
    # the baseline model's p99 is 400 ms: 1 % of the mass above 400 ms
    above = sum(p for b, p in zip([*decisions.BOUNDS_MS, float("inf")], probs, strict=True) if b > 400)
    assert above == pytest.approx(0.01, abs=1e-6)
