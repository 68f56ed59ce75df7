"""Seed noise in mixture sweeps: replicate spreads, and verdicts that respect them.

A proxy run's metric moves with its seed (the initialisation and the data
order) by about as much as good mixtures differ from each other, so a sweep
that trains each mixture once cannot tell a better mixture from a lucky
seed. With several replicates per mixture, each mixture gets a mean and a
standard error; a claim "A beats B" is made only when the difference is
larger than two standard errors of the difference, and otherwise reported
as not resolved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smolray.tune.regress import spearman

SIGMAS = 2.0  # a difference counts when it exceeds this many standard errors


@dataclass(frozen=True)
class Spread:
    """One mixture's metric over its replicates."""

    mean: float
    std: float  # sample standard deviation (n - 1); nan with one replicate
    sem: float  # standard error of the mean; nan with one replicate
    n: int


def spread(values) -> Spread:
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Spread(math.nan, math.nan, math.nan, 0)
    std = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return Spread(float(v.mean()), std, std / math.sqrt(v.size) if v.size > 1 else math.nan, int(v.size))


def pooled_variance(spreads: list[Spread]) -> float:
    """The seed variance shared by all mixtures: within-mixture variances pooled by degrees of freedom."""
    df = sum(s.n - 1 for s in spreads if s.n > 1)
    if df == 0:
        return math.nan
    return sum((s.n - 1) * s.std ** 2 for s in spreads if s.n > 1) / df


def fit_weights(spreads: list[Spread], prior_df: float = 2.0) -> np.ndarray:
    """Weights for a regression on replicate means: 1 / (estimated variance of each mean).

    With two or three replicates a mixture's own variance is itself very
    noisy (one lucky pair of seeds would make its mean look exact and let it
    dominate the fit), so each is shrunk toward the pooled variance with
    `prior_df` pseudo degrees of freedom. Without replicates anywhere, every
    mean is weighted alike. Normalised to mean 1.
    """
    pooled = pooled_variance(spreads)
    if not math.isfinite(pooled) or pooled <= 0:
        return np.ones(len(spreads))
    var = np.array([((s.n - 1) * s.std ** 2 + prior_df * pooled) / (s.n - 1 + prior_df) if s.n > 1 else pooled
                    for s in spreads])
    w = np.array([s.n for s in spreads], dtype=float) / var
    return w / w.mean()


@dataclass(frozen=True)
class Comparison:
    """How much better `a` is than `b` (positive: better, in the metric's direction)."""

    a: str
    b: str
    better_by: float
    se: float  # standard error of the difference; nan without replicates on both sides

    @property
    def resolved(self) -> bool:
        return math.isfinite(self.se) and abs(self.better_by) > SIGMAS * self.se

    def words(self) -> str:
        if not math.isfinite(self.se):
            return (f"{self.a} vs {self.b}: difference {self.better_by:+.4f}, no standard error "
                    "(train with replicates >= 2 to tell it from seed noise)")
        if self.resolved:
            side = "beats" if self.better_by > 0 else "is worse than"
            return (f"{self.a} {side} {self.b} by more than two standard errors "
                    f"({self.better_by:+.4f} +/- {self.se:.4f})")
        return (f"{self.a} does not differ from {self.b} by more than two standard errors "
                f"({self.better_by:+.4f} +/- {self.se:.4f}): not resolved")


def compare(a_name: str, a: Spread, b_name: str, b: Spread, mode: str = "min") -> Comparison:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    better = (b.mean - a.mean) if mode == "min" else (a.mean - b.mean)
    se = math.sqrt(a.sem ** 2 + b.sem ** 2)  # nan unless both have replicates
    return Comparison(a_name, b_name, float(better), float(se))


def spearman_interval(a, b, level: float = 0.9, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A bootstrap percentile interval for Spearman's rank correlation of paired values.

    Pairs are resampled with replacement; resamples whose ranks are all tied
    carry no correlation and are skipped. (nan, nan) with fewer than 3 pairs.
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman_interval needs equal lengths, got {a.size} and {b.size}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if a.size < 3:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(draws, a.size))
    rhos = np.array([spearman(a[i], b[i]) for i in idx])
    rhos = rhos[np.isfinite(rhos)]
    if rhos.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    lo, hi = np.quantile(rhos, [tail, 1 - tail])
    return float(lo), float(hi)
