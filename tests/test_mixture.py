"""The interleave: exact, windowed-accurate, and a pure function of the index."""

import numpy as np
import pytest

from smolray.data import mixture
from smolray.data.permute import key_for, permute

CASES = [[0.5, 0.3, 0.2], [0.6, 0.4], [0.58, 0.24, 0.14, 0.04], [1 / 3, 1 / 3, 1 / 3],
         [0.9, 0.075, 0.025], [0.997, 0.003]]


@pytest.mark.parametrize("shares", CASES)
def test_every_index_assigned_once_and_draws_are_consecutive(shares):
    w = mixture.quantize(shares)
    src, draw = mixture.interleave(w, 0, 30_000)
    for s in range(len(w)):
        assert np.array_equal(draw[src == s], np.arange((src == s).sum()))


@pytest.mark.parametrize("shares", CASES)
def test_every_window_of_1000_within_half_a_point(shares):
    w = mixture.quantize(shares)
    src, _ = mixture.interleave(w, 0, 50_000)
    onehot = np.eye(len(w), dtype=np.int64)[src]
    csum = np.vstack([np.zeros(len(w), dtype=np.int64), np.cumsum(onehot, axis=0)])
    window = (csum[1000:] - csum[:-1000]) / 1000  # every window, every offset
    assert np.abs(window - np.asarray(w) / mixture.SCALE).max() <= 0.005


@pytest.mark.parametrize("shares", CASES)
def test_prefix_counts_are_rounded_targets(shares):
    w = mixture.quantize(shares)
    for n in (1, 7, 999, 12_345, 10**9 + 7):
        counts = mixture.draws_before(w, n)
        assert counts.sum() == n
        assert np.abs(counts - n * np.asarray(w) / mixture.SCALE).max() < 1.5


def test_any_range_equals_the_same_slice_of_a_longer_run():
    w = mixture.quantize([0.5, 0.3, 0.2])
    src, draw = mixture.interleave(w, 0, 10_000)
    for a, b in [(0, 1), (1, 2), (4321, 4400), (9_999, 10_000)]:
        s2, d2 = mixture.interleave(w, a, b)
        assert np.array_equal(s2, src[a:b]) and np.array_equal(d2, draw[a:b])


def test_far_positions_are_cheap_and_consistent():
    w = mixture.quantize([0.58, 0.24, 0.14, 0.04])
    n = 5_000_000_000  # about the 1.7B run's sequence count
    src, draw = mixture.interleave(w, n, n + 100)
    before = mixture.draws_before(w, n)
    for s in range(4):
        assert np.array_equal(draw[src == s], before[s] + np.arange((src == s).sum()))


def test_quantize_sums_to_scale_and_keeps_tiny_sources():
    w = mixture.quantize([1.0, 1e-9])
    assert w.sum() == mixture.SCALE and w[1] >= 1


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 65_537, 1_234_567])
def test_permutation_is_a_bijection(n):
    idx = np.arange(n)
    p = permute(idx, n, key_for(7, 1, 0))
    assert np.array_equal(np.sort(p), idx)
    if n >= 1000:
        assert not np.array_equal(p, idx)
        assert not np.array_equal(p, permute(idx, n, key_for(7, 1, 1)))  # new epoch, new order


def _draws_by_bisection(w, i):
    out = []
    for s in range(len(w)):
        lo, hi = 0, i
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if mixture._rank(w, s, np.array([mid]))[0] >= i else (mid + 1, hi)
        out.append(lo)
    return np.array(out)


@pytest.mark.parametrize("shares", CASES + [[1.0], [0.999999, 1e-6]])
def test_draws_before_window_agrees_with_bisection(shares):
    # draws_before ranks a few draws around each source's share instead of
    # bisecting; it must give the bisection's answer everywhere.
    w = mixture.quantize(shares)
    rng = np.random.default_rng(0)
    for i in [0, 1, 2, 3, 17, 1000, *rng.integers(0, 10**12, 40).tolist()]:
        assert np.array_equal(mixture.draws_before(w, int(i)), _draws_by_bisection(w, int(i))), i


def test_one_permute_call_serves_many_sources_and_epochs():
    rng = np.random.default_rng(1)
    groups = [(n, key_for(5, s, e)) for s, n in enumerate((1, 2, 7, 1000, 2**20 + 3)) for e in (0, 3)]
    idx = np.concatenate([rng.integers(0, n, 50) for n, _ in groups])
    n = np.repeat([g[0] for g in groups], 50)
    key = np.repeat(np.array([g[1] for g in groups], dtype=np.uint64), 50)
    want = np.concatenate([permute(idx[j * 50:(j + 1) * 50], g[0], g[1]) for j, g in enumerate(groups)])
    assert np.array_equal(permute(idx, n, key), want)
