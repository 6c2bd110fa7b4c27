"""Seed statistics and the arithmetic of the report: mean +- std with a t-based 95% confidence
interval, Welch's t-test against the baseline, Holm's adjustment of the p-values of the rows compared with
one baseline, and steps-to-match by log-linear interpolation.

Why these: seeds are few (2-5), so the interval uses Student's t with n - 1 degrees of freedom, not
a normal approximation, and a bootstrap over 3 values would be meaningless. Two configurations need
not share a variance (a larger kernel can be noisier), so comparisons use Welch's unequal-variance
t-test (two-sided) with Welch-Satterthwaite degrees of freedom; "larger than seed noise" means
p < ALPHA. With one seed on either side nothing is claimed, nor with no spread on either side (every seed
the same value: no noise estimate, so no test; never p = 0). Several rows compared with one baseline are
several tests: their p-values are adjusted with Holm's step-down method (family-wise error ALPHA), which
assumes nothing about how the tests depend on each other (they share the baseline's seeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special

CONFIDENCE = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof 1) and the t-interval of the mean over n seeds (std and CI NaN for n = 1)."""
    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


@lru_cache(maxsize=1024)
def t_critical(df: float) -> float:
    """The two-sided CONFIDENCE quantile of Student's t with df degrees of freedom (= scipy.stats.t.ppf;
    scipy.special, not scipy.stats, whose import alone costs about a second)."""
    return float(special.stdtrit(df, 0.5 + CONFIDENCE / 2))


def summarize(values) -> Summary:
    """Summary of the finite values (NaN and inf dropped: a diverged seed has no FID to average)."""
    x = np.asarray([v for v in np.asarray(values, dtype=float).ravel() if np.isfinite(v)])
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = t_critical(n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def summarize_ratios(values) -> Summary:
    """Ratios (speed-ups) summarised on the log scale, where they are symmetric: the geometric mean, and the
    t-interval of the mean log ratio mapped back (so it is never below 0 and 2x and 0.5x are equally far
    from 1); std is the multiplicative one, exp(std of the logs). Non-positive and non-finite values are
    dropped."""
    logs = [math.log(v) for v in np.asarray(values, dtype=float).ravel() if np.isfinite(v) and v > 0]
    s = summarize(logs)
    if s.n == 0:
        return s
    return Summary(math.exp(s.mean), math.exp(s.std) if s.n > 1 else math.nan, s.n,
                   math.exp(s.ci_low) if s.n > 1 else math.nan, math.exp(s.ci_high) if s.n > 1 else math.nan)


@dataclass(frozen=True)
class Comparison:
    """a - b with Welch's t-test; t, df, p and the CI of the difference are NaN when either n < 2 or neither
    side has any spread (`why` then says which)."""
    diff: float
    t: float
    df: float
    p: float
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int
    why: str = ""  # why it was not tested ('' when tested)

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)

    @property
    def significant(self) -> bool:
        """The difference is larger than the seed noise (Welch, two-sided, p < ALPHA)."""
        return self.tested and self.p < ALPHA


def welch(a, b) -> Comparison:
    """Welch's two-sided t-test of mean(a) - mean(b), as scipy.stats.ttest_ind(a, b, equal_var=False)."""
    sa, sb = summarize(a), summarize(b)
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan, math.nan, sa.n, sb.n,
                          f"n={sa.n} vs {sb.n}")
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n
    se = math.sqrt(va + vb)
    if se == 0:  # identical values within both groups: no noise estimate, so no test (not p = 0)
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan, math.nan, sa.n, sb.n, "no seed spread")
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    t = diff / se
    # = scipy.stats.ttest_ind(a, b, equal_var=False).pvalue (tested), without its per-call overhead
    # (milliseconds; a 100-configuration report makes hundreds of comparisons)
    p = float(2 * special.stdtr(df, -abs(t)))
    half = t_critical(df) * se
    return Comparison(diff, t, df, p, diff - half, diff + half, sa.n, sb.n)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN: not tested, left out of the family and
    returned as NaN); = statsmodels' multipletests(p, method='holm')[1]."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # monotone: never below an earlier one
        out[i] = running
    return out


# -- steps-to-match -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Crossing:
    """Where a curve first reaches a target: `step` (interpolated) or None when it never does.
    `at_first` is True when the first evaluation already reached it (the step is then an upper bound)."""
    step: float | None
    at_first: bool = False

    @property
    def reached(self) -> bool:
        return self.step is not None


def first_crossing(steps, values, target: float, higher_better: bool = False) -> Crossing:
    """The training step at which the curve (steps ascending) first reaches `target` (<= for FID).

    Between the evaluations (s0, v0) and (s1, v1) that bracket the target the metric is taken as
    linear in log(step), as the paper's log-x curves are drawn:
        log s* = log s0 + (v0 - target) / (v0 - v1) * (log s1 - log s0).
    NaN values (a failed evaluation) are skipped.
    """
    pts = [(float(s), float(v)) for s, v in zip(steps, values) if np.isfinite(v) and s > 0]
    pts.sort()
    reached = (lambda v: v >= target) if higher_better else (lambda v: v <= target)
    for i, (s, v) in enumerate(pts):
        if not reached(v):
            continue
        if i == 0:
            return Crossing(s, at_first=True)
        s0, v0 = pts[i - 1]
        frac = (v0 - target) / (v0 - v)
        return Crossing(float(math.exp(math.log(s0) + frac * (math.log(s) - math.log(s0)))))
    return Crossing(None)
