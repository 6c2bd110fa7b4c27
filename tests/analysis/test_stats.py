"""Seed statistics and steps-to-match arithmetic, checked against scipy and by hand."""
import math

import numpy as np
import pytest
from scipy import stats as st

from analysis.stats import first_crossing, holm, summarize, summarize_ratios, welch


def test_summary_matches_scipy_t_interval():
    x = [10.0, 12.0, 11.0, 15.5]
    s = summarize(x)
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
    assert (s.n, s.mean, s.std) == (4, pytest.approx(12.125), pytest.approx(np.std(x, ddof=1)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_summary_of_one_seed_has_no_interval_and_nan_seeds_are_dropped():
    s = summarize([3.0, float("nan"), float("inf")])
    assert s.n == 1 and s.mean == 3.0 and math.isnan(s.std) and math.isnan(s.ci_low)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_welch_matches_scipy_and_its_interval():
    a, b = [8.0, 9.0, 10.0], [10.0, 12.0, 11.0, 13.5]
    c = welch(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert c.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (c.t, c.p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    half = st.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert c.df == pytest.approx(df)
    assert (c.ci_low, c.ci_high) == (pytest.approx(c.diff - half), pytest.approx(c.diff + half))
    assert c.significant == (ref.pvalue < 0.05)


def test_welch_says_nothing_with_one_seed():
    c = welch([5.0], [6.0, 7.0])
    assert not c.tested and not c.significant and c.diff == pytest.approx(-1.5) and c.why == "n=1 vs 2"


def test_welch_with_no_spread_on_either_side_is_not_tested_never_p_zero():
    """Issue 15: three identical values against three identical values gave p = 0 ('beyond seed noise')."""
    c = welch([2.0, 2.0, 2.0], [3.0, 3.0, 3.0])
    assert not c.tested and not c.significant and math.isnan(c.p) and c.diff == -1.0 and c.why == "no seed spread"
    assert welch([2.0, 2.0], [2.0, 2.0]).why == "no seed spread"
    assert welch([2.0, 2.0, 2.0], [3.0, 3.5, 3.0]).tested  # spread on one side is a noise estimate


def test_holm_matches_the_step_down_definition():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, 2 x 0.02, 1 x 0.04, kept monotone; NaN stays out of the family
    assert holm([0.04, 0.01, float("nan"), 0.02]) == [pytest.approx(0.04), pytest.approx(0.03), pytest.approx(float("nan"),
                                                      nan_ok=True), pytest.approx(0.04)]
    assert holm([0.5, 0.01]) == [pytest.approx(0.5), pytest.approx(0.02)]
    assert holm([0.6, 0.6, 0.6]) == [1.0, 1.0, 1.0]
    assert holm([]) == []


def test_welch_large_gap_is_beyond_seed_noise_small_gap_is_not():
    assert welch([33.0, 34.0], [10.0, 12.0, 11.0]).significant
    assert not welch([8.0, 9.0, 10.0], [10.0, 12.0, 11.0]).significant  # p = 0.07


def test_crossing_is_log_linear_between_the_bracketing_evaluations():
    # 13 at step 200, 9 at step 300, target 11: halfway in log(step) -> sqrt(200 * 300)
    c = first_crossing([100, 200, 300], [26, 13, 9], 11)
    assert c.reached and not c.at_first and c.step == pytest.approx(math.sqrt(200 * 300))
    c = first_crossing([100, 200, 300], [25, 12, 8], 11)  # a quarter of the way
    assert c.step == pytest.approx(200 * 1.5 ** 0.25)


def test_crossing_never_reached_at_first_and_higher_is_better():
    assert not first_crossing([100, 200], [40, 35], 11).reached
    first = first_crossing([100, 200], [9, 8], 11)
    assert first.step == 100 and first.at_first
    up = first_crossing([10, 100], [50, 70], 60, higher_better=True)
    assert up.step == pytest.approx(10 ** 1.5)
    # a NaN evaluation is skipped, the crossing is interpolated over the remaining points
    assert first_crossing([100, 200, 400], [20, float("nan"), 10], 15).step == pytest.approx(200)


def test_ratios_are_summarised_on_the_log_scale_never_below_zero():
    r = summarize_ratios([1.0, 4.0, 16.0])
    logs = np.log([1.0, 4.0, 16.0])
    lo, hi = st.t.interval(0.95, 2, loc=logs.mean(), scale=st.sem(logs))
    assert r.mean == pytest.approx(4.0) and (r.ci_low, r.ci_high) == (pytest.approx(math.exp(lo)), pytest.approx(math.exp(hi)))
    assert r.ci_low > 0 and summarize([1.0, 4.0, 16.0]).ci_low < 0  # the arithmetic interval would say a negative speed-up
    assert summarize_ratios([2.0, 0.5]).mean == pytest.approx(1.0)  # 2x faster and 2x slower: even
    one = summarize_ratios([3.0])
    assert one.n == 1 and one.mean == pytest.approx(3.0) and math.isnan(one.ci_low)
