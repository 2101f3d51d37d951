"""The statistics of the statistical judges, against hand computations and scipy."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryd.analysis import stats

# --- SPRT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "beta", "lower", "upper"),
    [
        # Wald: A = (1-beta)/alpha, B = beta/(1-alpha); by hand: ln(0.95/0.01) = ln 95, ln(0.05/0.99)
        (0.01, 0.05, math.log(0.05 / 0.99), math.log(95.0)),
        (0.05, 0.2, math.log(0.2 / 0.95), math.log(16.0)),
        (0.005, 0.05, -2.9907197317304, 5.247024072160486),  # ln(10/199), ln(190)
    ],
)
def test_sprt_bounds_are_walds(alpha: float, beta: float, lower: float, upper: float) -> None:
    lo, up = stats.sprt_bounds(alpha, beta)
    assert lo == pytest.approx(lower, rel=1e-12)
    assert up == pytest.approx(upper, rel=1e-12)
    assert lo < 0 < up


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.1), (0.1, 1.0), (-0.1, 0.1)])
def test_sprt_bounds_reject_nonsense(alpha: float, beta: float) -> None:
    with pytest.raises(ValueError):
        stats.sprt_bounds(alpha, beta)


def test_canary_error_share_by_hand() -> None:
    # 1000 canary and 9000 stable requests, same error rate: 10 % of the errors are the canary's
    assert stats.canary_error_share(1.0, 1000, 9000) == pytest.approx(0.1)
    # twice the rate: 2000 / (2000 + 9000)
    assert stats.canary_error_share(2.0, 1000, 9000) == pytest.approx(2 / 11)


def test_llr_increment_by_hand() -> None:
    # canary 1500 requests 31 errors, stable 13500 requests 140 errors, H0 ratio 1 vs H1 ratio 2
    pi0 = 1500 / (1500 + 13500)  # 0.1
    pi1 = 3000 / (3000 + 13500)  # 0.181818...
    assert pi0 == pytest.approx(0.1)
    assert pi1 == pytest.approx(2 / 11)
    by_hand = 31 * math.log((2 / 11) / 0.1) + 140 * math.log((9 / 11) / 0.9)
    assert by_hand == pytest.approx(31 * 0.5978370007556204 + 140 * -0.0953101798043249)
    assert stats.error_llr_increment(31, 140, 1500, 13500, 1.0, 2.0) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(5.1895218508, rel=1e-9)


def test_llr_increment_without_one_side_is_zero() -> None:
    assert stats.error_llr_increment(5, 0, 100, 0, 1.0, 2.0) == 0.0
    assert stats.error_llr_increment(0, 5, 0, 100, 1.0, 2.0) == 0.0


def test_llr_increments_add_over_windows() -> None:
    """Same traffic split in both windows: the sum of increments equals the increment of the merged window."""
    a = stats.error_llr_increment(3, 20, 100, 900, 1.0, 2.0)
    b = stats.error_llr_increment(4, 17, 120, 1080, 1.0, 2.0)
    assert a + b == pytest.approx(stats.error_llr_increment(7, 37, 220, 1980, 1.0, 2.0))


def test_llr_matches_the_binomial_likelihood_ratio() -> None:
    """The increment is ln of Binomial(e, pi1) / Binomial(e, pi0) at e_c of e errors (scipy)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    e_c, e_s, n_c, n_s = 12, 40, 700, 2100
    pi0 = stats.canary_error_share(1.2, n_c, n_s)
    pi1 = stats.canary_error_share(3.0, n_c, n_s)
    expected = scipy_stats.binom.logpmf(e_c, e_c + e_s, pi1) - scipy_stats.binom.logpmf(e_c, e_c + e_s, pi0)
    assert stats.error_llr_increment(e_c, e_s, n_c, n_s, 1.2, 3.0) == pytest.approx(expected, rel=1e-10)


@given(
    e_c=st.integers(0, 10_000),
    e_s=st.integers(0, 10_000),
    n_c=st.floats(1, 1e7),
    n_s=st.floats(1, 1e7),
    theta0=st.floats(1, 10),
    gap=st.floats(1.01, 100),
    more=st.integers(1, 100),
)
def test_more_canary_errors_never_lower_the_llr(
    e_c: int, e_s: int, n_c: float, n_s: float, theta0: float, gap: float, more: int
) -> None:
    theta1 = theta0 * gap
    before = stats.error_llr_increment(e_c, e_s, n_c, n_s, theta0, theta1)
    after = stats.error_llr_increment(e_c + more, e_s, n_c, n_s, theta0, theta1)
    assert after >= before
    # and fewer stable errors (the canary's share grows) never lower it either
    if e_s >= more:
        assert stats.error_llr_increment(e_c, e_s - more, n_c, n_s, theta0, theta1) >= before


# --- alpha spending ------------------------------------------------------------------------------


def test_spent_alpha_values() -> None:
    assert stats.spent_alpha(0.01, 1) == pytest.approx(0.01 * 6 / math.pi**2)
    assert stats.spent_alpha(0.01, 10) == pytest.approx(0.01 * 6 / (math.pi**2 * 100))
    with pytest.raises(ValueError):
        stats.spent_alpha(0.01, 0)


@given(alpha=st.floats(1e-6, 0.5), looks=st.integers(1, 20_000))
@settings(max_examples=50)
def test_alpha_spending_never_exceeds_alpha(alpha: float, looks: int) -> None:
    spent = [stats.spent_alpha(alpha, k) for k in range(1, looks + 1)]
    assert math.fsum(spent) <= alpha
    assert all(a > b for a, b in pairwise(spent))


def test_alpha_spending_tends_to_alpha() -> None:
    assert math.fsum(stats.spent_alpha(0.05, k) for k in range(1, 1_000_001)) == pytest.approx(0.05, rel=1e-5)


# --- binomial tail -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [
        (0, 10, 0.3),
        (1, 10, 0.3),
        (3, 10, 0.3),
        (10, 10, 0.3),
        (11, 10, 0.3),
        (31, 171, 1500 / 15000),
        (12, 66, 0.1),
        (5, 66, 0.1),
        (250, 1000, 0.2),
        (150, 1000, 0.2),
        (600, 100_000, 0.005),
        (480, 100_000, 0.005),
        (3, 5, 0.999),
        (1, 200_000, 1e-7),
        (40, 50, 0.1),  # far tail: ~1e-30
    ],
)
def test_binomial_sf_matches_scipy(k: int, n: int, p: float) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = float(scipy_stats.binom.sf(k - 1, n, p))
    got = stats.binomial_sf(k, n, p)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_binomial_sf_edges() -> None:
    assert stats.binomial_sf(0, 0, 0.5) == 1.0
    assert stats.binomial_sf(1, 0, 0.5) == 0.0
    assert stats.binomial_sf(1, 10, 0.0) == 0.0
    assert stats.binomial_sf(10, 10, 1.0) == 1.0
    with pytest.raises(ValueError):
        stats.binomial_sf(1, 10, 1.5)


@given(n=st.integers(0, 3000), k=st.integers(0, 3000), p=st.floats(1e-6, 1 - 1e-6))
def test_binomial_sf_is_a_decreasing_probability(n: int, k: int, p: float) -> None:
    a, b = stats.binomial_sf(k, n, p), stats.binomial_sf(k + 1, n, p)
    assert 0.0 <= b <= a <= 1.0


# --- Mann-Whitney on buckets ---------------------------------------------------------------------


def _expand(counts: list[int]) -> list[float]:
    return [float(i) for i, c in enumerate(counts) for _ in range(c)]


MW_CASES = [
    # canary buckets, stable buckets (same bounds)
    ([0, 5, 20, 10, 3, 1], [2, 30, 80, 20, 5, 0]),
    ([0, 0, 10, 30, 40, 5], [5, 30, 80, 20, 5, 0]),  # clearly slower
    ([10, 30, 5, 0, 0, 0], [0, 10, 40, 30, 10, 2]),  # clearly faster
    ([1, 0, 0, 0, 0, 1], [0, 3, 4, 0, 0, 0]),  # tiny samples
    ([0, 100, 0], [0, 900, 1]),  # nearly all tied
    ([3, 7, 11, 13, 0, 2, 1], [30, 70, 110, 130, 0, 20, 5]),
]


@pytest.mark.parametrize(("canary", "stable"), MW_CASES)
def test_mann_whitney_matches_scipy(canary: list[int], stable: list[int]) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    got = stats.mann_whitney_buckets([float(c) for c in canary], [float(s) for s in stable])
    ref = scipy_stats.mannwhitneyu(_expand(canary), _expand(stable), alternative="greater", method="asymptotic",
                                   use_continuity=True)
    assert got.u == pytest.approx(float(ref.statistic), rel=1e-12)
    assert got.p_value == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-300)
    assert got.effect == pytest.approx(float(ref.statistic) / (sum(canary) * sum(stable)))
    assert got.canary_n == sum(canary) and got.stable_n == sum(stable)


def test_mann_whitney_without_continuity_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    canary, stable = MW_CASES[0]
    got = stats.mann_whitney_buckets([float(c) for c in canary], [float(s) for s in stable], continuity=False)
    ref = scipy_stats.mannwhitneyu(_expand(canary), _expand(stable), alternative="greater", method="asymptotic",
                                   use_continuity=False)
    assert got.p_value == pytest.approx(float(ref.pvalue), rel=1e-9)


def test_mann_whitney_effect_by_hand() -> None:
    # canary: one obs in bucket 2; stable: one in bucket 1, one in bucket 2
    # pairs: (2 vs 1) canary slower -> 1, (2 vs 2) tie -> 1/2: U = 1.5, effect = 1.5 / 2
    got = stats.mann_whitney_buckets([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
    assert got.u == 1.5
    assert got.effect == 0.75


def test_mann_whitney_without_information() -> None:
    empty = stats.mann_whitney_buckets([0.0, 0.0], [3.0, 4.0])
    assert (empty.z, empty.p_value, empty.effect) == (0.0, 1.0, 0.5)
    same_bucket = stats.mann_whitney_buckets([0.0, 5.0, 0.0], [0.0, 9.0, 0.0])
    assert (same_bucket.z, same_bucket.p_value, same_bucket.effect) == (0.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        stats.mann_whitney_buckets([1.0], [1.0, 2.0])


buckets = st.lists(st.integers(0, 400), min_size=3, max_size=12)


@given(data=st.data(), stable=buckets)
def test_moving_canary_mass_up_never_lowers_u_or_the_effect(data: st.DataObject, stable: list[int]) -> None:
    canary = data.draw(st.lists(st.integers(0, 400), min_size=len(stable), max_size=len(stable)))
    src = data.draw(st.integers(0, len(stable) - 2))
    dst = data.draw(st.integers(src + 1, len(stable) - 1))
    moved = data.draw(st.integers(0, canary[src]))
    slower = list(canary)
    slower[src] -= moved
    slower[dst] += moved
    before = stats.mann_whitney_buckets([float(c) for c in canary], [float(s) for s in stable])
    after = stats.mann_whitney_buckets([float(c) for c in slower], [float(s) for s in stable])
    assert after.u >= before.u
    assert after.effect >= before.effect


# --- histogram_quantile --------------------------------------------------------------------------

BOUNDS = [100.0, 200.0, 500.0]


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        # 10 observations: cumulative 2, 7, 10, 10. p50: rank 5 in (100, 200]: 100 + 100 * (5-2)/5 = 160
        ([2, 5, 3, 0], 0.5, 160.0),
        # p90: rank 9 in (200, 500]: 200 + 300 * (9-7)/3 = 400
        ([2, 5, 3, 0], 0.9, 400.0),
        # p10: rank 1 in the first bucket, which starts at 0: 0 + 100 * 1/2 = 50
        ([2, 5, 3, 0], 0.1, 50.0),
        # p99 with rank 9.9 in +Inf (cumulative finite 9 < 9.9): highest finite bound, like Prometheus
        ([2, 5, 2, 1], 0.99, 500.0),
        # exactly at a bucket's cumulative count: its upper bound
        ([2, 5, 3, 0], 0.7, 200.0),
        # empty buckets in between are skipped: rank 2.5 of 4, cumulative 1, 1, 3 -> (200, 500]:
        # 200 + 300 * (2.5-1)/2 = 425
        ([1, 0, 2, 1], 0.625, 425.0),
    ],
)
def test_histogram_quantile_like_prometheus(counts: list[float], q: float, expected: float) -> None:
    assert stats.histogram_quantile(BOUNDS, counts, q) == pytest.approx(expected)


def test_histogram_quantile_without_data() -> None:
    assert stats.histogram_quantile(BOUNDS, [0, 0, 0, 0], 0.99) is None
    assert stats.histogram_quantile([], [5], 0.5) is None
    assert stats.histogram_quantile(BOUNDS, [0, 0, 0, 4], 0.5) == 500.0
    with pytest.raises(ValueError):
        stats.histogram_quantile(BOUNDS, [1, 2, 3], 0.5)
    with pytest.raises(ValueError):
        stats.histogram_quantile(BOUNDS, [1, 2, 3, 4], 1.5)


def test_histogram_quantile_non_positive_first_bound() -> None:
    # Prometheus: a quantile in a first bucket whose upper bound is <= 0 is that bound
    assert stats.histogram_quantile([0.0, 10.0], [4, 1, 0], 0.5) == 0.0


@given(data=st.data(), counts=st.lists(st.integers(0, 50), min_size=4, max_size=4), q=st.floats(0.01, 1.0))
def test_histogram_quantile_grows_when_mass_moves_up(data: st.DataObject, counts: list[int], q: float) -> None:
    src = data.draw(st.integers(0, 2))
    dst = data.draw(st.integers(src + 1, 3))
    moved = data.draw(st.integers(0, counts[src]))
    slower = list(counts)
    slower[src] -= moved
    slower[dst] += moved
    before = stats.histogram_quantile(BOUNDS, [float(c) for c in counts], q)
    after = stats.histogram_quantile(BOUNDS, [float(c) for c in slower], q)
    if before is None:
        assert after is None
    else:
        assert after is not None and after >= before - 1e-9


def test_normal_helpers() -> None:
    assert stats.normal_sf(0.0) == 0.5
    assert stats.normal_sf(1.6448536269514722) == pytest.approx(0.05)
    assert stats.normal_sf(10.0) == pytest.approx(7.619853024160527e-24)
    assert stats.normal_ppf(0.975) == pytest.approx(1.959963984540054)
