"""The statistics behind canaryd's `compare` and `sequential` judges: pure math, no I/O, no clock.

Why not thresholds: a fixed ceiling (success rate >= 99 %, p99 <= 500 ms) checked once a minute is
either under a noisy baseline or brushing against it, so it is slow on real regressions and rolls back
good canaries that merely share a bad minute with the stable revision. The judges here compare the
canary with the stable revision over the *same* windows and ask how strong the evidence of a
regression is, with error probabilities that hold over the whole rollout however often it looks:

* errors: Wald's sequential probability ratio test (SPRT) on the canary's share of the errors,
  conditional on the total number of errors, so the unknown baseline error rate drops out;
* repeated fixed-sample tests (the exact conditional binomial test for errors, stratified rank and tail
  tests for latency) at levels that shrink with every look (alpha spending), so their sum stays below
  alpha;
* latency: per window (stratum), a rank test on the bucketed histograms Prometheus already has (every
  observation in a bucket is a tie) and a count of canary observations above the window's pooled
  quantile, summed over windows; plus Prometheus's own `histogram_quantile` for the effect size.

Only the standard library is used at run time (`math`, `statistics.NormalDist`); the tests check the
numbers against scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


# --- normal distribution -------------------------------------------------------------------------


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z.

    `erfc` rather than `1 - cdf(z)`: the latter rounds to 0 beyond z ~ 8, and tiny p-values are still
    worth showing (and comparing with tiny spent alphas) in a verdict.
    """
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_ppf(p: float) -> float:
    """The standard normal quantile, e.g. the z a one-sided test needs at level alpha is normal_ppf(1 - alpha)."""
    return _NORMAL.inv_cdf(p)


# --- Wald's SPRT ---------------------------------------------------------------------------------


def sprt_bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's boundaries (lower, upper) for a log-likelihood ratio ln L(H1)/L(H0).

    upper = ln((1-beta)/alpha): crossing it accepts H1 (regression), and the chance that this happens
    while H0 holds is at most about alpha, *whatever the number of looks*: the likelihood ratio is a
    martingale under H0, so (Ville's inequality) it reaches A = (1-beta)/alpha with probability <= 1/A.
    lower = ln(beta/(1-alpha)): crossing it accepts H0 with a miss probability of about beta.
    That any-time validity is why the sequential judge can look every 10 s without paying for it.
    """
    if not (0.0 < alpha < 1.0 and 0.0 < beta < 1.0):
        raise ValueError(f"alpha and beta must be in (0, 1), got alpha={alpha}, beta={beta}")
    return math.log(beta / (1.0 - alpha)), math.log((1.0 - beta) / alpha)


def canary_error_share(theta: float, canary_requests: float, stable_requests: float) -> float:
    """pi(theta): the probability that one error came from the canary when its error rate is theta x stable's.

    Errors of each revision are (to a very good approximation) Poisson with rate = requests x error rate.
    Given the total number of errors in a window, each one is the canary's with probability
    theta*n_c / (theta*n_c + n_s): the unknown stable error rate cancels. This is why the judge needs no
    estimate of "the" baseline error rate, which moves with traffic, time of day and client mix.
    """
    if theta <= 0 or canary_requests <= 0 or stable_requests <= 0:
        raise ValueError("theta and both request counts must be positive")
    return theta * canary_requests / (theta * canary_requests + stable_requests)


def error_llr_increment(
    canary_errors: float,
    stable_errors: float,
    canary_requests: float,
    stable_requests: float,
    theta0: float,
    theta1: float,
) -> float:
    """The SPRT log-likelihood-ratio contribution of one window of errors, H1: ratio theta1 vs H0: theta0.

    Conditional binomial likelihood of the canary's share of the window's errors:
    e_c * ln(pi1/pi0) + e_s * ln((1-pi1)/(1-pi0)). Windows do not overlap, so their increments simply
    add up to the rollout's LLR. A window where one side served nothing says nothing about the ratio:
    its increment is 0 (an error there cannot be attributed to either hypothesis).
    """
    if canary_requests <= 0 or stable_requests <= 0:
        return 0.0
    pi0 = canary_error_share(theta0, canary_requests, stable_requests)
    pi1 = canary_error_share(theta1, canary_requests, stable_requests)
    return canary_errors * math.log(pi1 / pi0) + stable_errors * math.log((1.0 - pi1) / (1.0 - pi0))


# --- alpha spending ------------------------------------------------------------------------------


def spent_alpha(alpha: float, look: int) -> float:
    """The level of the k-th look (k = 1, 2, ...) of a repeated test: alpha * 6 / (pi^2 k^2).

    Why: a canary is looked at every few seconds for as long as it runs, and the number of looks is not
    known in advance (a step can hold for want of traffic). Testing each look at alpha would make a
    false rollback near certain over a long rollout. With alpha_k = alpha * 6/(pi^2 k^2) the levels
    sum to alpha over *infinitely* many looks (sum 1/k^2 = pi^2/6), so by the union bound the whole
    rollout falsely fails with probability <= alpha, however long it lasts. The price is that late
    looks are strict (look 10: alpha/164), which is acceptable because late looks have more data; the
    first looks get the largest share (look 1: 0.61 alpha), where a blatant regression shows at once.
    """
    if look < 1:
        raise ValueError(f"looks are numbered from 1, got {look}")
    return alpha * 6.0 / (math.pi**2 * look * look)


# --- exact binomial tail -------------------------------------------------------------------------


def _log_binom_pmf(k: int, n: int, log_p: float, log_q: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (to float precision), for any n.

    Used by the `compare` judge's conditional test: given e_c + e_s errors, how likely is it that the
    canary got e_c or more of them if its error rate were only theta0 x stable's? The sum runs from the
    starting term away from the mode with the pmf ratio recurrence and stops once terms no longer change
    the sum, so it costs O(sqrt(n)) terms, not O(n), and never forms huge binomial coefficients.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    odds = p / (1.0 - p)
    if k >= n * p:
        # upper tail directly: terms decrease from k upwards
        total, term = 1.0, 1.0
        for j in range(k, n):
            term *= (n - j) / (j + 1) * odds
            total += term
            if term < total * 1e-17:
                break
        return min(1.0, math.exp(_log_binom_pmf(k, n, log_p, log_q)) * total)
    # k below the mean: 1 - P(X <= k-1), summing down from k-1 where terms decrease
    total, term = 1.0, 1.0
    for j in range(k - 1, 0, -1):
        term *= j / (n - j + 1) / odds
        total += term
        if term < total * 1e-17:
            break
    cdf = math.exp(_log_binom_pmf(k - 1, n, log_p, log_q)) * total
    return max(0.0, 1.0 - cdf)


# --- latency: Mann-Whitney on histograms -----------------------------------------------------------


@dataclass(frozen=True)
class MannWhitney:
    """One-sided Mann-Whitney U test "canary slower than stable" on two bucketed histograms."""

    #: U of the canary: pairs (canary, stable) with the canary slower, ties counting one half.
    u: float
    #: Standardised U (tie-corrected variance, continuity correction); 0 when there is no information.
    z: float
    #: One-sided p-value P(Z >= z) under "same latency distribution".
    p_value: float
    #: Effect size P(C > S) + P(C = S)/2 = U / (n_c n_s): 0.5 = no difference, 1 = canary always slower.
    effect: float
    canary_n: float
    stable_n: float
    #: Tie-corrected variance of U under "same distribution" (0: no ordering information).
    variance: float = 0.0


def mann_whitney_buckets(canary: Sequence[float], stable: Sequence[float], *, continuity: bool = True) -> MannWhitney:
    """Mann-Whitney U on bucket counts (same buckets, same order, lowest first): canary slower?

    Why a rank test: latency is skewed and heavy-tailed, and all Prometheus keeps is a histogram, so
    a t-test on means is neither valid nor computable. Two observations in the same bucket are
    indistinguishable, so they are ties: U counts them as half, and the variance uses the usual tie
    correction n_c n_s / 12 * ((N+1) - sum(t^3 - t) / (N(N-1))), with t the pooled count of a bucket.
    The normal approximation is accurate at the sample sizes the judge requires (minRequests).
    Identical to `scipy.stats.mannwhitneyu(c, s, alternative="greater", method="asymptotic")` on the
    expanded samples, but O(buckets) instead of O(N log N).

    Monotonicity: moving canary observations to a higher bucket never lowers U or the effect size, and
    never lowers z when the destination bucket's pooled count is at least the source's minus the moved
    observations (the tie term then cannot shrink, so the variance cannot grow). Otherwise the tie
    correction can widen the variance more than U grows: moving canary mass into a bucket almost empty of
    stable observations can lower z slightly. That is a property of the tie-corrected test, seen in random
    searches only for histograms with a canary-only bucket and z near the boundary.
    """
    if len(canary) != len(stable):
        raise ValueError(f"histograms differ in length: {len(canary)} vs {len(stable)} buckets")
    n_c = float(sum(canary))
    n_s = float(sum(stable))
    if n_c <= 0 or n_s <= 0:
        return MannWhitney(u=0.0, z=0.0, p_value=1.0, effect=0.5, canary_n=n_c, stable_n=n_s)
    u = 0.0
    below = 0.0
    tie_term = 0.0
    for c, s in zip(canary, stable, strict=True):
        u += c * (below + 0.5 * s)
        below += s
        t = c + s
        tie_term += t * t * t - t
    n = n_c + n_s
    mean = n_c * n_s / 2.0
    variance = n_c * n_s / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))
    effect = u / (n_c * n_s)
    if variance <= 0.0:  # everything in one bucket: no ordering information at all
        return MannWhitney(u=u, z=0.0, p_value=1.0, effect=effect, canary_n=n_c, stable_n=n_s, variance=0.0)
    numerator = u - mean - (0.5 if continuity else 0.0)
    z = numerator / math.sqrt(variance)
    return MannWhitney(u=u, z=z, p_value=normal_sf(z), effect=effect, canary_n=n_c, stable_n=n_s,
                       variance=variance)


def histogram_quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """Prometheus's `histogram_quantile`, on non-cumulative counts (`counts[-1]` is the +Inf overflow).

    Same linear interpolation inside the bucket that holds rank q*N (from 0 for the first bucket), and
    the same answer when that rank is in the overflow bucket: the highest finite bound, as Prometheus
    does; so the numbers canaryd shows match what a user sees in Grafana for the same window.
    None when there is nothing to take a quantile of (no observations, or no finite bucket).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(bounds)} bounds need {len(bounds) + 1} counts (with +Inf), got {len(counts)}")
    total = float(sum(counts))
    if not bounds or total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    for i, upper in enumerate(bounds):
        previous = cumulative
        cumulative += counts[i]
        if cumulative >= rank:
            if i == 0 and upper <= 0:
                return float(upper)
            start = 0.0 if i == 0 else float(bounds[i - 1])
            in_bucket = cumulative - previous
            if in_bucket <= 0:  # only q == 0 with an empty first bucket: Prometheus would say NaN
                return start
            return start + (float(upper) - start) * ((rank - previous) / in_bucket)
    return float(bounds[-1])


# --- latency, stratified: one window at a time ------------------------------------------------------
#
# Why per window: the canary's share of the traffic changes at every step, so latency pooled over a
# rollout mixes the stable's early (low-weight) windows with the canary's late ones; a load trend both
# revisions share (a daily ramp) then reads as a canary regression. Compared within each window, and the
# windows then combined (stratified tests), whatever both revisions share cancels, as it does for errors.


@dataclass(frozen=True)
class StratumParts:
    """One window's contribution to a stratified one-sided test "canary slower": the statistic minus its
    expectation under "same distribution in this window", its variance and third cumulant. All three
    add up over windows (the windows are independent), so the evidence keeps three sums, not histograms."""

    excess: float = 0.0
    variance: float = 0.0
    third: float = 0.0
    #: The statistic's expectation itself (tail test: canary exceedances expected under H0).
    expected: float = 0.0


def rank_stratum(canary: Sequence[float], stable: Sequence[float]) -> StratumParts:
    """Van Elteren's stratum of a stratified Mann-Whitney test: (U - E[U]) / (N + 1) and its variance
    (tie-corrected, see `mann_whitney_buckets`) divided by (N + 1)^2, which weighs every window's
    observations about equally (the locally most powerful weights for a common shift)."""
    n_c, n_s = float(sum(canary)), float(sum(stable))
    if n_c <= 0 or n_s <= 0:
        return StratumParts()
    mw = mann_whitney_buckets(canary, stable, continuity=False)
    w = 1.0 / (n_c + n_s + 1.0)
    return StratumParts(excess=(mw.u - n_c * n_s / 2.0) * w, variance=max(0.0, mw.variance) * w * w)


def tail_stratum(canary: Sequence[float], stable: Sequence[float], q: float) -> StratumParts:
    """One window of the tail test at quantile `q`: how many canary observations lie above this window's
    pooled q-quantile bucket, minus how many would if the canary were no slower there.

    The threshold is the upper bound of the bucket that holds the pooled (canary + stable) q-quantile,
    so exceedances are exact bucket counts. Chosen from the pooled data, it is the same whichever
    observation came from which revision: under "same distribution", given the pooled histogram, the
    canary's exceedances are hypergeometric (K exceedances among N, n_c of them the canary's). A
    regression of a few percent of requests (p99 up, median unchanged) moves this count directly, where
    a rank test sees almost nothing.
    """
    if len(canary) != len(stable):
        raise ValueError(f"histograms differ in length: {len(canary)} vs {len(stable)} buckets")
    n_c, n_s = float(sum(canary)), float(sum(stable))
    n = n_c + n_s
    if n_c <= 0 or n_s <= 0 or n < 2:
        return StratumParts()
    rank = q * n
    cumulative = 0.0
    edge = len(canary) - 1
    for i, (c, s) in enumerate(zip(canary, stable, strict=True)):
        cumulative += c + s
        if cumulative >= rank:
            edge = i
            break
    above_c = float(sum(canary[edge + 1:]))
    k = above_c + float(sum(stable[edge + 1:]))
    if k <= 0:
        return StratumParts()
    pi = n_c / n
    mean = k * pi
    variance = k * pi * (1.0 - pi) * (n - k) / (n - 1.0)
    # The hypergeometric's third cumulant, K pi (1 - pi) (1 - 2 pi) (N - K)(N - 2K) / ((N - 1)(N - 2)).
    third = (k * pi * (1.0 - pi) * (1.0 - 2.0 * pi) * (n - k) * (n - 2.0 * k) / ((n - 1.0) * (n - 2.0))
             if n > 2 else 0.0)
    return StratumParts(excess=above_c - mean, variance=variance, third=third, expected=mean)


def stratified_sf(excess: float, variance: float, third: float = 0.0, continuity: float = 0.0) -> tuple[float, float]:
    """(z, one-sided p-value) of a sum of independent strata: P(sum >= observed) under H0.

    With a third cumulant, a gamma distribution matched to the three moments (Pearson type III) rather
    than the normal: counts of rare exceedances are skewed right like a Poisson, where the normal tail is
    far too thin (a Poisson(5)'s P(X >= 13) is 0.002; the normal says 0.0004) and would fail good
    canaries several times more often than the level says. The matched gamma is slightly conservative
    there (0.0023), which is the side to err on. Without skew (or with very little), the normal.
    """
    if variance <= 0.0:
        return 0.0, 1.0
    sd = math.sqrt(variance)
    x = excess - continuity
    z = x / sd
    gamma = third / (variance * sd) if third else 0.0
    if abs(gamma) < 0.02:  # shape > 10^4: the normal is the gamma to within its own rounding
        return z, normal_sf(z)
    shape = 4.0 / (gamma * gamma)
    scale = sd * abs(gamma) / 2.0
    if gamma > 0:  # X = -shape*scale + scale*G, G ~ Gamma(shape, 1)
        g = (x / scale) + shape
        p = 1.0 if g <= 0 else regularized_gamma_q(shape, g)
    else:  # mirrored: X = shape*scale - scale*G
        g = shape - (x / scale)
        p = 0.0 if g <= 0 else 1.0 - regularized_gamma_q(shape, g)
    return z, min(1.0, max(0.0, p))


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), the upper tail of a Gamma(a, 1) at x (a > 0, x >= 0).

    The standard pair: the power series of P(a, x) below x = a + 1, Lentz's continued fraction of Q
    above it, each to double precision in at most a few hundred terms for the shapes used here.
    """
    if a <= 0:
        raise ValueError(f"shape must be positive, got {a}")
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        k = a
        for _ in range(100000):
            k += 1.0
            term *= x / k
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 100000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)
