"""The statistical judge (`analysis.mode: compare | sequential`): canary vs stable on exact counts.

Pure (no I/O, no clock). Each analysis hands over one window of exact counts (`WindowCounts`: requests,
errors and latency buckets of the canary and the stable revision over the same seconds) and the
`Evidence` so far; the judge adds the window to the evidence and returns the verdict and the new
evidence, which the engine stores in the ModelRollout status so a restart judges on with the same
numbers.

The two modes differ in what they accumulate and how they test errors (latency is tested alike):

* `sequential`: everything accumulates over the whole rollout. Errors: Wald's SPRT of "canary error
  rate = toleratedErrorRatio x stable's" against "= errorRatio x stable's", on the canary's share of the
  errors (the baseline rate cancels, see `stats.canary_error_share`). Its rejection boundary is valid at
  any sample size and any number of looks, so a clear regression fails within seconds. Beside it, one
  planned look (`_planned_look`): an exact test of the canary's errors once LOOK_EXPECTED of them are
  expected, which catches a doubled error rate sooner than any boundary valid at every look can.
* `compare`: counts restart at every step (weights change, so each step is judged on its own traffic)
  and errors are tested with the exact conditional binomial test at a spent level.

Rules that hold in both modes:

* A `fail` needs evidence whose error probability is bounded over the whole rollout: the SPRT
  boundary, the planned look at its own level, or a repeated test at its spent level
  `alpha_k = alpha' 6/(pi^2 k^2)` (k = look). The rollout-wide budget `alpha` is split between the two
  built-in checks (ERROR_ALPHA_SHARE), so a good canary is rolled back by this judge's tests with
  probability <= about alpha in total.
* Repeated tests fail only when the difference is also big enough to matter (minimum effect): at high
  traffic, a significant but tiny difference is not a regression.
* A `pass` needs `minRequests` requests of the canary *and* of the stable revision in the judged scope
  (the step for `compare`, the rollout for `sequential`) and complete data in this window; in
  `sequential` mode also errors that do not lean towards a regression (`PASS_LLR`). Low traffic
  is honest: inconclusive, never pass. Only the SPRT can fail below minRequests, because its boundary
  is valid at any sample size; repeated tests are not run (no look is spent) until the gate is met.
* Missing data (a `None` count, no stable revision, no histogram) never passes and is never added to the
  evidence. A window with a counter reset is still exact (the adapter differences per series).

Latency quantiles are Prometheus's `histogram_quantile`: a quantile beyond the highest finite bucket is
reported as that bound, so the canary/stable ratio is then underestimated (conservative); the rank and
tail tests still see the whole shift.

Latency is tested window by window (`stats.rank_stratum`, `stats.tail_stratum`): the canary's share of
the traffic changes at every step, so histograms pooled over a rollout compare the stable's early
windows with the canary's late ones, and a load trend both revisions share reads as a regression. The
pooled histograms serve only the quantiles shown and the minimum-effect ratio.

`analysis.metrics` (custom PromQL, absolute guards) are not judged here: the engine judges them with
the threshold judge and keeps the worst of both verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from canaryd.analysis import stats
from canaryd.analysis.judge import REQUESTS_CHECK, fmt, worst
from canaryd.analysis.samples import MetricVerdict, Outcome, RevisionCounts, Verdict, WindowCounts
from canaryd.policy import Analysis, JudgeMode, Statistics

ERROR_CHECK = "error-rate"
LATENCY_CHECK = "latency"

ERROR_ALPHA_SHARE = 0.8
"""The error check's share of `Statistics.alpha`; latency gets the rest (Bonferroni). Most of it goes to
errors because that is where it buys most: a latency regression big enough to matter (minLatencyRatio)
shows in thousands of observations within a minute and hardly needs a looser level, while a doubled error
rate shows only in a few dozen errors, and a looser level is what makes it conclusive sooner
(bench/decisions.py: with an even split the planned look could not reach its even-odds level). The
statistical fails of a good canary are bounded by the latency share (spent levels) plus, for errors, the
planned look's share plus the SPRT's share / (1 - beta) (Ville's bound for Wald's boundary): about
1.01 alpha at beta = 0.05. Rollbacks through maxHold come on top and are not bounded by alpha:
bench/decisions.py measures them with the rest (README, "Which judge")."""

LOOK_ALPHA_SHARE = 0.7
"""`sequential`: the planned look's share of the error check's alpha; the SPRT gets the rest. The look
decides the median time to catch a doubled error rate (the SPRT's boundary, valid at every look, needs
ln((1 - beta)/alpha) nats whatever the data); the SPRT catches what the look missed, and anything that
starts failing later. At the defaults the look tests at 0.0056, the SPRT at 0.0024."""

LOOK_EXPECTED = 9.0
"""`sequential`: the planned look comes at the first analysis where this many canary errors are expected
under "no regression" (the stratified sum of each window's errors times the canary's share). At 9, a
doubled error rate (18 expected) is about even odds to be significant at the look's default level (an
exact Poisson tail: P(X >= 18 | 9) = 0.0053): fewer make the look weaker than it is early, more make it
later (at 10 req/s on a 1 % baseline: 90 s from the canary's first request). Traffic too low to expect 9
errors within the rollout never gets the look, and the SPRT judges alone."""


TAIL_MIN_EXPECTED = 5.0
"""The tail test runs once this many canary observations would be expected above the windows' pooled
quantile if the canary were no slower: below it the count is too small for its approximation (and for
any useful power), and the rank test alone judges."""


TAIL_HOLD_Z = 2.0
"""`sequential`: while the tail test leans towards a regression (z at least this, and the quantile ratio
at least minLatencyRatio) without being significant yet, the latency check is inconclusive, which holds
the step, as PASS_LLR does for errors: a canary whose p99 is up by half would otherwise walk through a
5-minute rollout before its few slow requests add up to significance at a spent level. A good canary's
tail z drifts back below it (it is a normalised random walk under H0), so this costs time, rarely a
maxHold rollback (bench/decisions.py counts those as false rollbacks)."""


PASS_LLR = 1.0
"""`sequential`: the error-rate check passes only while the SPRT's llr is at most this, i.e. while a regression
is at most e (2.7) times as likely as a tolerated canary. Between this and the rejection boundary the check
is inconclusive, which holds the step: the SPRT keeps collecting at the current (low) weight, where the
stable revision's traffic makes it learn fastest, instead of letting a leaning-bad canary advance on the
clock and be promoted before the evidence is in. Holding does not raise the SPRT's own error (the boundary
is valid at any stopping time), but it is not free: a hold past maxHold rolls the canary back, a false
rollback that alpha does not bound (the bench counts it). 0 would hold good canaries at low error rates for
a long time after a single canary error (one error moves the llr by ~ln(errorRatio)), a larger value lets
more bad canaries through (bench/decisions.py, 2x errors at 10 req/s and a 1 % baseline: 6.5 % promoted
with 1, 26 % with no hold, while 0 rolled back 11 % of good canaries at 1 req/s and 0.1 % errors through
maxHold)."""


class Evidence(BaseModel):
    """What the statistical judge has seen so far in a rollout; stored in the ModelRollout status.

    JSON-safe (no inf/nan: the status is JSON), camelCase in JSON like the rest of the CRD. Counts are
    floats because Prometheus counters are, but they are whole numbers in practice.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel, allow_inf_nan=False
    )

    #: Repeated tests performed so far in this rollout (all steps): look k is tested at alpha_k.
    looks: int = Field(default=0, ge=0)
    #: SPRT log-likelihood ratio of the error counts (sum over windows; `sequential` keeps it all rollout).
    llr: float = 0.0
    canary_requests: float = Field(default=0.0, ge=0)
    canary_errors: float = Field(default=0.0, ge=0)
    stable_requests: float = Field(default=0.0, ge=0)
    stable_errors: float = Field(default=0.0, ge=0)
    #: Windows added to the counts (and windows skipped for missing data), in the judged scope.
    windows: int = Field(default=0, ge=0)
    skipped_windows: int = Field(default=0, ge=0)
    #: Histogram upper bounds (ms, finite, ascending) of the accumulated latency buckets below.
    latency_bounds_ms: list[float] = Field(default_factory=list)
    #: Non-cumulative bucket counts, one more than the bounds (the last one is +Inf); empty = none yet.
    canary_latency: list[float] = Field(default_factory=list)
    stable_latency: list[float] = Field(default_factory=list)
    #: Stratified latency tests (`stats.rank_stratum`, `stats.tail_stratum`): sums over windows, each
    #: window comparing canary and stable on the same seconds, so a trend both share cancels.
    rank_excess: float = 0.0
    rank_variance: float = Field(default=0.0, ge=0)
    tail_excess: float = 0.0
    tail_variance: float = Field(default=0.0, ge=0)
    tail_third: float = 0.0
    #: Canary observations expected above the windows' pooled quantile if it were no slower.
    tail_expected: float = Field(default=0.0, ge=0)
    #: Canary errors expected if its error rate were toleratedErrorRatio x stable's, given each window's
    #: errors and traffic split (the planned look's information).
    error_expected: float = Field(default=0.0, ge=0)
    #: Whether the planned look happened (it happens once per rollout; `sequential` only).
    planned_look: bool = False

    @model_validator(mode="after")
    def _buckets(self) -> Evidence:
        for name, counts in (("canaryLatency", self.canary_latency), ("stableLatency", self.stable_latency)):
            if counts and len(counts) != len(self.latency_bounds_ms) + 1:
                raise ValueError(f"{name} needs {len(self.latency_bounds_ms) + 1} buckets, has {len(counts)}")
            if any(c < 0 for c in counts):
                raise ValueError(f"{name} has a negative bucket count")
        return self

    def next_step(self, mode: JudgeMode) -> Evidence:
        """The evidence a new step starts with.

        `sequential` keeps everything: the SPRT and the accumulated buckets stay valid across steps (the
        conditional test adjusts to each window's traffic split). `compare` judges each step on its own
        window, because the weights changed, so counts, buckets and LLR restart; `looks` carries on in
        both, because alpha is spent over the whole rollout, not per step.
        """
        if mode == "sequential":
            return self
        return Evidence(looks=self.looks)


# --- reading one window --------------------------------------------------------------------------


def _count(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True)
class _Window:
    """What of one window can be used; `missing` says what could not, in words."""

    counts: tuple[float, float, float, float] | None  # canary n, canary e, stable n, stable e
    latency: tuple[list[float], list[float], list[float]] | None  # bounds, canary, stable
    missing: list[str] = field(default_factory=list)
    latency_missing: list[str] = field(default_factory=list)


def _read_counts(window: WindowCounts) -> tuple[tuple[float, float, float, float] | None, list[str]]:
    missing: list[str] = []
    canary, stable = window.canary, window.stable
    n_c, e_c = _count(canary.requests), _count(canary.errors)
    if n_c is None:
        missing.append(f"canary request count ({canary.error})" if canary.error else "canary request count")
    if e_c is None:
        missing.append("canary error count")
    if stable is None:
        missing.append("stable revision")
        return None, missing
    n_s, e_s = _count(stable.requests), _count(stable.errors)
    if n_s is None:
        missing.append(f"stable request count ({stable.error})" if stable.error else "stable request count")
    if e_s is None:
        missing.append("stable error count")
    if n_c is None or e_c is None or n_s is None or e_s is None:
        return None, missing
    return (n_c, e_c, n_s, e_s), missing


def _histogram(rev: RevisionCounts, who: str) -> tuple[list[float] | None, str | None]:
    if not rev.latency_counts:
        return None, f"{who} latency histogram"
    if len(rev.latency_counts) != len(rev.latency_bounds_ms) + 1 or not rev.latency_bounds_ms:
        return None, (f"{who} latency histogram (malformed: {len(rev.latency_counts)} counts for "
                      f"{len(rev.latency_bounds_ms)} bounds)")
    counts = [_count(c) for c in rev.latency_counts]
    if any(c is None for c in counts):
        return None, f"{who} latency bucket counts"
    return [c for c in counts if c is not None], None


def _read_latency(window: WindowCounts) -> tuple[tuple[list[float], list[float], list[float]] | None, list[str]]:
    canary, stable = window.canary, window.stable
    c_counts, c_missing = _histogram(canary, "canary")
    if stable is None:
        return None, [m for m in (c_missing, "stable revision") if m]
    s_counts, s_missing = _histogram(stable, "stable")
    missing = [m for m in (c_missing, s_missing) if m]
    if missing or c_counts is None or s_counts is None:
        return None, missing
    if list(canary.latency_bounds_ms) != list(stable.latency_bounds_ms):
        return None, ["matching latency buckets (canary and stable histograms have different bounds)"]
    return (list(canary.latency_bounds_ms), c_counts, s_counts), []


def _add(evidence: Evidence, window: WindowCounts, statistics: Statistics) -> tuple[Evidence, _Window]:
    counts, missing = _read_counts(window)
    latency, latency_missing = _read_latency(window)
    update: dict[str, object] = {}
    if counts is None:
        update["skipped_windows"] = evidence.skipped_windows + 1
    else:
        n_c, e_c, n_s, e_s = counts
        update.update(
            llr=evidence.llr
            + stats.error_llr_increment(
                e_c, e_s, n_c, n_s, statistics.tolerated_error_ratio, statistics.error_ratio
            ),
            canary_requests=evidence.canary_requests + n_c,
            canary_errors=evidence.canary_errors + e_c,
            stable_requests=evidence.stable_requests + n_s,
            stable_errors=evidence.stable_errors + e_s,
            windows=evidence.windows + 1,
            error_expected=evidence.error_expected + _expected_canary_errors(counts, statistics),
        )
    if latency is not None:
        bounds, c_counts, s_counts = latency
        rank = stats.rank_stratum(c_counts, s_counts)
        tail = stats.tail_stratum(c_counts, s_counts, statistics.latency_quantile)
        same_layout = not evidence.canary_latency or evidence.latency_bounds_ms == bounds
        base = evidence if same_layout else Evidence()
        update.update(
            rank_excess=base.rank_excess + rank.excess, rank_variance=base.rank_variance + rank.variance,
            tail_excess=base.tail_excess + tail.excess, tail_variance=base.tail_variance + tail.variance,
            tail_third=base.tail_third + tail.third, tail_expected=base.tail_expected + tail.expected,
        )
        if evidence.canary_latency and evidence.latency_bounds_ms == bounds:
            c_counts = [a + b for a, b in zip(evidence.canary_latency, c_counts, strict=True)]
            s_counts = [a + b for a, b in zip(evidence.stable_latency, s_counts, strict=True)]
        # else: first histogram, or the buckets changed (new metric layout): the old buckets cannot be
        # merged with the new ones, so latency evidence restarts from this window.
        update.update(latency_bounds_ms=bounds, canary_latency=c_counts, stable_latency=s_counts)
    new = Evidence.model_validate({**evidence.model_dump(), **update})
    return new, _Window(counts=counts, latency=latency, missing=missing, latency_missing=latency_missing)


def _expected_canary_errors(counts: tuple[float, float, float, float], st: Statistics) -> float:
    """The window's errors times the canary's share of them under H0: the canary's expected errors given
    the window's total (a side that served nothing takes none, or all)."""
    n_c, e_c, n_s, e_s = counts
    if n_c <= 0:
        return 0.0
    if n_s <= 0:
        return e_c
    return (e_c + e_s) * stats.canary_error_share(st.tolerated_error_ratio, n_c, n_s)


# --- checks --------------------------------------------------------------------------------------


def _pct(errors: float, requests: float) -> str:
    if requests <= 0:
        return f"{fmt(errors)}/0 errors"
    return f"{fmt(errors)}/{fmt(requests)} errors ({100 * errors / requests:.2f}%)"


def _rate(errors: float, requests: float) -> float | None:
    return errors / requests if requests > 0 else None


def error_ratio_estimate(canary_errors: float, canary_requests: float, stable_errors: float,
                         stable_requests: float) -> float:
    """Estimated canary/stable error-rate ratio, finite and JSON-safe.

    One pseudo-error is shared between the revisions in proportion to their traffic (a prior centred on
    "no difference"): the estimate is 1 when nobody erred, finite when the stable had no errors, and
    the plain ratio of rates once there are a few errors. 1.0 when a side served nothing.
    """
    if canary_requests <= 0 or stable_requests <= 0:
        return 1.0
    share = canary_requests / (canary_requests + stable_requests)
    return ((canary_errors + share) / canary_requests) / ((stable_errors + 1.0 - share) / stable_requests)


def _count_details(ev: Evidence, ratio: float) -> dict[str, float]:
    details = {
        "canary_requests": ev.canary_requests,
        "canary_errors": ev.canary_errors,
        "stable_requests": ev.stable_requests,
        "stable_errors": ev.stable_errors,
        "ratio_estimate": ratio,
    }
    for key, e, n in (("canary_error_rate", ev.canary_errors, ev.canary_requests),
                      ("stable_error_rate", ev.stable_errors, ev.stable_requests)):
        r = _rate(e, n)
        if r is not None:
            details[key] = r
    return details


@dataclass(frozen=True)
class _Gate:
    verdict: MetricVerdict
    passed: bool


def _gate(ev: Evidence, win: _Window, min_requests: int, scope: str) -> _Gate:
    details = {"canary_requests": ev.canary_requests, "stable_requests": ev.stable_requests,
               "min_requests": float(min_requests)}
    if win.counts is None:
        reason = (f"no data for {', '.join(win.missing)} in this window; {scope} so far: "
                  f"canary n={fmt(ev.canary_requests)}")
        return _Gate(MetricVerdict(name=REQUESTS_CHECK, outcome="inconclusive", value=ev.canary_requests,
                                   reason=reason, details=details), False)
    short = [f"{who} n={fmt(n)} < minRequests {min_requests}"
             for who, n in (("canary", ev.canary_requests), ("stable", ev.stable_requests)) if n < min_requests]
    if short:
        return _Gate(MetricVerdict(name=REQUESTS_CHECK, outcome="inconclusive", value=ev.canary_requests,
                                   reason=f"{'; '.join(short)} ({scope})", details=details), False)
    reason = (f"canary n={fmt(ev.canary_requests)}, stable n={fmt(ev.stable_requests)} >= minRequests "
              f"{min_requests} ({scope})")
    return _Gate(MetricVerdict(name=REQUESTS_CHECK, outcome="pass", value=ev.canary_requests, reason=reason,
                               details=details), True)


@dataclass(frozen=True)
class _Look:
    failed: bool
    text: str
    details: dict[str, float]


def _planned_look(ev: Evidence, st: Statistics) -> _Look:
    """The one planned look of `sequential` mode: are the canary's errors so far beyond H0's expectation?

    Under H0 each window's errors fall to the canary independently with the window's share pi_w
    (`stats.canary_error_share`), so the canary's total is a sum of binomials (Poisson-binomial) with mean
    `error_expected`. Its tail is bounded by that of one binomial with the same mean over all M errors
    (Hoeffding 1956, Theorem 4, for counts at least the mean + 2), so the p-value below is exact or
    conservative. When the look comes depends only on the errors' totals and the traffic, never on
    their split, so the test keeps its level; a fail also needs the minimum effect of `compare`. (The
    traffic split itself may follow earlier errors, since a step advances on a pass: the bound's slack
    covers that, and `test_error_false_fails_on_good_canaries_stay_within_alpha` runs that rule.)
    """
    alpha = st.alpha * ERROR_ALPHA_SHARE * LOOK_ALPHA_SHARE
    e_c = round(ev.canary_errors)
    m = e_c + round(ev.stable_errors)
    expected = ev.error_expected
    p = stats.binomial_sf(e_c, m, min(1.0, expected / m)) if m > 0 and e_c >= expected + 2 else 1.0
    ratio = error_ratio_estimate(ev.canary_errors, ev.canary_requests, ev.stable_errors, ev.stable_requests)
    need = min_error_ratio(st)
    failed = p <= alpha and ratio >= need
    text = (f"planned look at {fmt(expected)} expected canary errors: {e_c} observed, p {p:.2g} "
            f"{'<=' if p <= alpha else '>'} {alpha:.2g} (exact binomial bound), ratio {fmt(ratio)} "
            f"{'>=' if ratio >= need else '<'} {fmt(need)}")
    return _Look(failed, text, {"look_p": p, "look_alpha": alpha, "look_expected": expected})


def _sprt(ev: Evidence, gate: _Gate, st: Statistics, look: _Look | None = None) -> MetricVerdict:
    alpha = st.alpha * ERROR_ALPHA_SHARE * (1.0 - LOOK_ALPHA_SHARE)
    lower, upper = stats.sprt_bounds(alpha, st.beta)
    ratio = error_ratio_estimate(ev.canary_errors, ev.canary_requests, ev.stable_errors, ev.stable_requests)
    details = _count_details(ev, ratio) | {
        "llr": ev.llr, "sprt_upper": upper, "sprt_lower": lower, "alpha": alpha, "beta": st.beta,
        "h0_ratio": st.tolerated_error_ratio, "h1_ratio": st.error_ratio,
    }
    counts = (f"canary {_pct(ev.canary_errors, ev.canary_requests)} vs stable "
              f"{_pct(ev.stable_errors, ev.stable_requests)}; ratio {fmt(ratio)} vs H0 "
              f"{fmt(st.tolerated_error_ratio)}, H1 {fmt(st.error_ratio)}")
    if look is not None:
        details |= look.details
    outcome: Outcome
    if look is not None and look.failed:
        outcome = "fail"
        reason = f"{look.text}; SPRT llr {ev.llr:.2f} (boundary {upper:.2f}); {counts}"
    elif ev.llr >= upper:
        outcome = "fail"
        reason = f"SPRT llr {ev.llr:.2f} >= {upper:.2f} (ln((1-beta)/alpha), alpha={fmt(alpha)}); {counts}"
    else:
        where = "H0 accepted, " if ev.llr <= lower else ""
        head = f"SPRT llr {ev.llr:.2f} < {upper:.2f} ({where}lower {lower:.2f}); {counts}"
        if not gate.passed:
            outcome, reason = "inconclusive", f"not passed ({gate.verdict.reason}): {head}"
        elif ev.llr > PASS_LLR:
            outcome = "inconclusive"
            reason = (f"holding: errors favour a regression (SPRT llr {ev.llr:.2f} > {PASS_LLR:g}) but not yet "
                      f"beyond {upper:.2f}; {counts}")
        else:
            outcome, reason = "pass", head
    return MetricVerdict(
        name=ERROR_CHECK, outcome=outcome, value=_rate(ev.canary_errors, ev.canary_requests),
        baseline=_rate(ev.stable_errors, ev.stable_requests), reason=reason,
        # the test that decided: the planned look's p-value against its level, else the llr against the boundary
        statistic=look.details["look_p"] if look is not None and look.failed else ev.llr,
        threshold=look.details["look_alpha"] if look is not None and look.failed else upper,
        details=details,
    )


def min_error_ratio(st: Statistics) -> float:
    """Minimum effect of the `compare` error test: sqrt(toleratedErrorRatio x errorRatio).

    The geometric midpoint between "tolerated" and "regression": a significant difference that is
    closer (on the ratio scale errors live on) to what is tolerated than to what is a regression is not
    worth a rollback. It is also where a likelihood-ratio test between the two would put its boundary.
    """
    return math.sqrt(st.tolerated_error_ratio * st.error_ratio)


def _compare_errors(ev: Evidence, gate: _Gate, st: Statistics, look: int | None) -> MetricVerdict:
    alpha = st.alpha * ERROR_ALPHA_SHARE
    ratio = error_ratio_estimate(ev.canary_errors, ev.canary_requests, ev.stable_errors, ev.stable_requests)
    need = min_error_ratio(st)
    details = _count_details(ev, ratio) | {"min_ratio": need, "h0_ratio": st.tolerated_error_ratio}
    counts = (f"canary {_pct(ev.canary_errors, ev.canary_requests)} vs stable "
              f"{_pct(ev.stable_errors, ev.stable_requests)}")
    value = _rate(ev.canary_errors, ev.canary_requests)
    baseline = _rate(ev.stable_errors, ev.stable_requests)
    if look is None or not gate.passed:
        return MetricVerdict(name=ERROR_CHECK, outcome="inconclusive", value=value, baseline=baseline,
                             reason=f"not tested ({gate.verdict.reason}): {counts}", details=details)
    level = stats.spent_alpha(alpha, look)
    e_c, e_s = round(ev.canary_errors), round(ev.stable_errors)
    pi0 = stats.canary_error_share(st.tolerated_error_ratio, ev.canary_requests, ev.stable_requests)
    p = stats.binomial_sf(e_c, e_c + e_s, pi0)
    details |= {"p_value": p, "alpha_look": level, "look": float(look), "h0_share": pi0}
    significant = p <= level
    big = ratio >= need
    test = (f"p {p:.2g} {'<=' if significant else '>'} alpha_{look} {level:.2g} (exact conditional binomial, "
            f"H0 ratio {fmt(st.tolerated_error_ratio)})")
    effect = f"ratio {fmt(ratio)} {'>=' if big else '<'} {fmt(need)} (sqrt(toleratedErrorRatio*errorRatio))"
    outcome: Outcome = "fail" if significant and big else "pass"
    return MetricVerdict(name=ERROR_CHECK, outcome=outcome, value=value, baseline=baseline,
                         reason=f"{test}; {effect}; {counts}", statistic=p, threshold=level, details=details)


def _quantile_label(q: float) -> str:
    return f"p{q * 100:g}"


def _latency(ev: Evidence, win: _Window, gate: _Gate, st: Statistics, min_requests: int,
             look: int | None, *, hold: bool = False) -> MetricVerdict:
    label = _quantile_label(st.latency_quantile)
    n_c, n_s = sum(ev.canary_latency), sum(ev.stable_latency)
    c_q = stats.histogram_quantile(ev.latency_bounds_ms, ev.canary_latency, st.latency_quantile) if n_c else None
    s_q = stats.histogram_quantile(ev.latency_bounds_ms, ev.stable_latency, st.latency_quantile) if n_s else None
    details: dict[str, float] = {"canary_observations": n_c, "stable_observations": n_s,
                                 "min_ratio": st.min_latency_ratio, "quantile": st.latency_quantile}
    if c_q is not None:
        details[f"canary_{label}_ms"] = c_q
    if s_q is not None:
        details[f"stable_{label}_ms"] = s_q
    quantiles = (f"{label} {fmt(c_q) if c_q is not None else '?'}ms vs stable "
                 f"{fmt(s_q) if s_q is not None else '?'}ms")
    if look is None:
        why = _latency_missing(win, gate, n_c, n_s, min_requests)
        return MetricVerdict(name=LATENCY_CHECK, outcome="inconclusive", value=c_q, baseline=s_q,
                             reason=f"not tested ({why}): {quantiles}", details=details)
    # Two stratified tests share the latency check's level: the rank test sees a shift of the whole
    # distribution, the tail test a regression of the quantile the policy names (a few percent of requests
    # much slower, which a rank test hardly sees). Either may fail the check.
    level = stats.spent_alpha(st.alpha * (1.0 - ERROR_ALPHA_SHARE), look) / 2.0
    mw = stats.mann_whitney_buckets(ev.canary_latency, ev.stable_latency)  # shown: P(canary slower)
    z_rank, p_rank = stats.stratified_sf(ev.rank_excess, ev.rank_variance)
    tail_ready = ev.tail_expected >= TAIL_MIN_EXPECTED
    z_tail, p_tail = (stats.stratified_sf(ev.tail_excess, ev.tail_variance, ev.tail_third, continuity=0.5)
                      if tail_ready else (0.0, 1.0))
    ratio = c_q / s_q if c_q is not None and s_q is not None and s_q > 0 else 1.0
    details |= {"p_value": min(p_rank, p_tail), "alpha_look": level, "look": float(look), "z": z_rank,
                "p_rank": p_rank, "z_tail": z_tail, "p_tail": p_tail, "u": mw.u, "effect": mw.effect,
                "ratio": ratio, "tail_observed": ev.tail_excess + ev.tail_expected,
                "tail_expected": ev.tail_expected}
    significant = p_rank <= level or p_tail <= level
    big = ratio >= st.min_latency_ratio
    outcome: Outcome = "fail" if significant and big else "pass"
    leaning = hold and outcome == "pass" and tail_ready and z_tail >= TAIL_HOLD_Z and big
    if leaning:
        outcome = "inconclusive"  # hold the step: see TAIL_HOLD_Z
    tail = (f"tail above each window's pooled {label}: canary {fmt(ev.tail_excess + ev.tail_expected)} vs "
            f"{fmt(ev.tail_expected)} expected, z {z_tail:.2f}, p {p_tail:.2g}" if tail_ready else
            f"tail test waits for {TAIL_MIN_EXPECTED:g} expected canary observations above the {label} "
            f"(has {fmt(ev.tail_expected)})")
    reason = ((f"tail leans slower (z {z_tail:.2f} >= {TAIL_HOLD_Z:g}): holding the step for more evidence; "
               if leaning else "") +
              f"{quantiles}: ratio {fmt(ratio)} {'>=' if big else '<'} minLatencyRatio "
              f"{fmt(st.min_latency_ratio)}; stratified rank test z {z_rank:.2f}, p {p_rank:.2g}; {tail}; "
              f"{'significant' if significant else 'not significant'} at alpha_{look}/2 {level:.2g}; "
              f"P(canary slower) {mw.effect:.2f}; n {fmt(n_c)} vs {fmt(n_s)}")
    return MetricVerdict(name=LATENCY_CHECK, outcome=outcome, value=c_q, baseline=s_q, reason=reason,
                         statistic=min(p_rank, p_tail), threshold=level, details=details)


def _latency_ready(win: _Window, gate: _Gate, ev: Evidence, min_requests: int) -> bool:
    return (gate.passed and win.latency is not None
            and sum(ev.canary_latency) >= min_requests and sum(ev.stable_latency) >= min_requests)


def _latency_missing(win: _Window, gate: _Gate, n_c: float, n_s: float, min_requests: int) -> str:
    if win.latency is None:
        return f"no data for {', '.join(win.latency_missing)} in this window"
    if not gate.passed:
        return gate.verdict.reason
    return f"latency observations canary {fmt(n_c)}, stable {fmt(n_s)}, need minRequests {min_requests} each"


# --- the judge -----------------------------------------------------------------------------------


def judge_statistical(evidence: Evidence, window: WindowCounts, analysis: Analysis) -> tuple[Verdict, Evidence]:
    """Add one window to the evidence and judge it: (verdict, new evidence to store).

    Metric verdicts: the minRequests gate (`judge.REQUESTS_CHECK`), `error-rate` and `latency`. The
    verdict is the worst of them: any fail -> fail; else anything short of a pass (too few requests,
    missing data) -> inconclusive; else pass. Raises ValueError for `mode: threshold`.
    """
    mode = analysis.mode
    if mode not in ("compare", "sequential"):
        raise ValueError(f"judge_statistical judges modes compare and sequential, not {mode!r}")
    st = analysis.statistics
    ev, win = _add(evidence, window, st)
    scope = "this step" if mode == "compare" else "this rollout"
    gate = _gate(ev, win, analysis.min_requests, scope)
    latency_ready = _latency_ready(win, gate, ev, analysis.min_requests)
    spends = latency_ready or (mode == "compare" and gate.passed)
    look = ev.looks + 1 if spends else None
    if look is not None:
        ev = ev.model_copy(update={"looks": look})
    planned = None
    if (mode == "sequential" and win.counts is not None and not ev.planned_look
            and ev.error_expected >= LOOK_EXPECTED):
        ev = ev.model_copy(update={"planned_look": True})
        planned = _planned_look(ev, st)
    errors = _sprt(ev, gate, st, planned) if mode == "sequential" else _compare_errors(ev, gate, st, look)
    latency = _latency(ev, win, gate, st, analysis.min_requests, look if latency_ready else None,
                       hold=mode == "sequential")
    metrics = [gate.verdict, errors, latency]
    verdict = Verdict(
        outcome=worst(m.outcome for m in metrics),
        requests=_count(window.canary.requests),
        window_s=window.window_s,
        metrics=metrics,
    )
    return verdict, ev
