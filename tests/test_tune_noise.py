"""Seed noise: replicate spreads, two-standard-error verdicts, weights and rank-correlation intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smolray.tune.noise import compare, fit_weights, pooled_variance, spearman_interval, spread


def test_spread_is_mean_sample_std_and_standard_error():
    s = spread([6.0, 7.0, 8.0, float("nan")])  # an unfinished replicate is left out
    assert (s.mean, s.std, s.n) == (7.0, 1.0, 3) and s.sem == pytest.approx(1 / math.sqrt(3))
    one = spread([6.5])
    assert one.mean == 6.5 and math.isnan(one.std) and math.isnan(one.sem) and one.n == 1


def _seeds(mean: float, noise: float, n: int, rng) -> list[float]:
    return list(mean + noise * rng.standard_normal(n))


def test_an_effect_larger_than_the_seed_noise_is_resolved_and_a_smaller_one_is_not():
    rng = np.random.default_rng(7)
    uniform = spread(_seeds(6.70, 0.02, 3, rng))
    planted = spread(_seeds(6.60, 0.02, 3, rng))  # 0.10 better, five times the noise
    tiny = spread(_seeds(6.695, 0.02, 3, rng))  # 0.005 better, a quarter of the noise
    big = compare("planted", planted, "uniform", uniform, mode="min")
    assert big.resolved and big.better_by == pytest.approx(uniform.mean - planted.mean)
    assert big.words().startswith("planted beats uniform by more than two standard errors (+0.")
    small = compare("tiny", tiny, "uniform", uniform, mode="min")
    assert not small.resolved and small.words().endswith("not resolved")
    # Higher-is-better metrics flip the sign; the verdict is the same.
    assert compare("uniform", uniform, "planted", planted, mode="max").resolved
    assert compare("planted", planted, "uniform", uniform, mode="max").better_by < 0


def test_without_replicates_there_is_no_verdict():
    c = compare("a", spread([6.6]), "b", spread([6.7]))
    assert not c.resolved and math.isnan(c.se) and "replicates >= 2" in c.words()
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        compare("a", spread([1, 2]), "b", spread([1, 2]), mode="lowest")


def test_fit_weights_trust_more_replicates_and_never_an_accidentally_exact_mean():
    spreads = [spread([1.0, 1.2]), spread([1.0, 1.2, 0.8, 1.0]), spread([2.0, 2.0]), spread([3.0])]
    w = fit_weights(spreads)
    assert w.mean() == pytest.approx(1.0)
    # Four replicates weigh more than two with the same spread.
    assert w[1] > w[0]
    # Two seeds that happened to agree exactly get a finite weight: their
    # variance is shrunk toward the pooled one, not taken as zero.
    assert math.isfinite(w[2]) and w[2] < 3 * w[0]
    # One replicate: the pooled variance stands in for its own.
    pooled = pooled_variance(spreads)
    assert pooled == pytest.approx((0.02 + 3 * spreads[1].std ** 2 + 0.0) / (1 + 3 + 1))
    shrunk = (1 * 0.02 + 2 * pooled) / (1 + 2)  # the first mixture's variance, shrunk toward the pool
    assert w[3] / w[0] == pytest.approx((1 / pooled) / (2 / shrunk))
    assert np.array_equal(fit_weights([spread([1.0]), spread([2.0])]), [1.0, 1.0])  # no replicates: equal


def test_spearman_interval_is_tight_for_a_clean_ranking_and_spans_zero_for_noise():
    x = np.arange(12, dtype=float)
    assert spearman_interval(x, 2 * x + 1) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    lo, hi = spearman_interval(rng.standard_normal(12), rng.standard_normal(12))
    assert lo < 0 < hi
    assert all(math.isnan(v) for v in spearman_interval([1, 2], [2, 1]))  # too few pairs
    # The same data and seed give the same interval.
    a, b = rng.standard_normal(10), rng.standard_normal(10)
    assert spearman_interval(a, b) == spearman_interval(a, b)


def test_a_weighted_fit_follows_the_means_it_trusts():
    from smolray.tune.regress import fit, loo_predictions

    names = ["a", "b"]
    w = np.array([[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]])
    truth = w @ np.array([6.0, 7.0])
    y = truth.copy()
    y[2] += 0.5  # one mean thrown off by a lucky seed
    plain = fit(w, y, names, kind="linear")
    trusted = fit(w, y, names, kind="linear", weights=[4, 4, 0.1, 4, 4])
    assert np.abs(trusted.predict(w) - truth).max() < np.abs(plain.predict(w) - truth).max() / 5
    # Held out, each trusted trial is predicted from the others; the thrown-off mean pulls those fits less.
    loo_plain = loo_predictions(w, y, names, kind="linear")
    loo_trusted = loo_predictions(w, y, names, kind="linear", weights=[4, 4, 0.1, 4, 4])
    for i in (0, 1, 3, 4):
        assert abs(loo_trusted[i] - truth[i]) < abs(loo_plain[i] - truth[i]) / 5
    with pytest.raises(ValueError, match=r"fit weights must be 5 finite positive numbers, got \[1.0, 0.0"):
        fit(w, y, names, kind="linear", weights=[1, 0, 1, 1, 1])
