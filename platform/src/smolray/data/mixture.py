"""Which source the i-th training sequence comes from, as a pure function of i.

Each source s with integer weight W_s (the shares scaled to sum to
`SCALE`) owns a stream of events at times (2k + 1) / (2 W_s), k = 0, 1, ...
-- its k-th draw is due half a period after the last one. Merging all
sources' events by (time, source index) gives the training order: the i-th
event in that order is sequence i, and its k is the source's draw index.
This is the Webster (Sainte-Lague) apportionment spread over time, so after
any prefix of n sequences every source has round(share * n) draws give or
take one; over any window the count is off by at most about two.

Everything is integer arithmetic: two machines, or a run and its resume,
agree on every assignment bit for bit, and the position of any sequence is
computed in O(sources^2 * log n) without replaying the ones before it.
"""

from __future__ import annotations

import numpy as np

# Shares are quantized to integers summing to SCALE (resolution 1e-6).
SCALE = 1_000_000
# Draws of a source within any prefix are its exact share give or take one;
# draws_before looks this far either side of the share before bisecting.
_WINDOW = 4


def quantize(shares: list[float]) -> np.ndarray:
    """Integer weights summing to SCALE, by largest remainder; no positive share becomes 0."""
    shares_a = np.asarray(shares, dtype=np.float64)
    if (shares_a <= 0).any():
        raise ValueError(f"shares must be positive, got {shares}")
    exact = shares_a / shares_a.sum() * SCALE
    w = np.maximum(np.floor(exact).astype(np.int64), 1)
    short = SCALE - int(w.sum())
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for j in range(abs(short)):
        w[order[j % len(w)]] += 1 if short > 0 else -1
    return w


def _rank(w: np.ndarray, s: int, k: np.ndarray) -> np.ndarray:
    """Position in the merged order of source s's k-th event (vectorized over k)."""
    k = np.asarray(k, dtype=np.int64)
    x = 2 * k + 1  # event time of (s, k) is x / (2 w[s])
    rank = k.copy()  # s's own earlier events
    for t in range(len(w)):
        if t == s:
            continue
        # t's events (2m+1)/(2 w[t]) strictly before x/(2 w[s]), or tied with t < s.
        num = x * w[t]
        if t < s:
            rank += (num // w[s] + 1) // 2  # 2m+1 <= num / w[s]
        else:
            rank += -(-num // w[s]) // 2  # 2m+1 <  num / w[s]
    return rank


def draws_before(w: np.ndarray, i: int) -> np.ndarray:
    """Number of sequences each source supplies among sequences [0, i)."""
    out = np.zeros(len(w), dtype=np.int64)
    for s in range(len(w)):
        # The answer is the smallest k whose rank is >= i. It lies within a
        # few draws of the source's exact share of i, so rank a small window
        # around that in one call; bisect only if it is not in the window.
        near = int(i) * int(w[s]) // int(w.sum())
        k = np.arange(max(near - _WINDOW, 0), min(near + _WINDOW, i) + 1, dtype=np.int64)
        below = int((_rank(w, s, k) < i).sum())
        if (k[0] == 0 or below > 0) and below < len(k):
            out[s] = k[0] + below
            continue
        lo, hi = 0, i
        while lo < hi:
            mid = (lo + hi) // 2
            if _rank(w, s, np.array([mid]))[0] >= i:
                hi = mid
            else:
                lo = mid + 1
        out[s] = lo
    return out


def interleave(w: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index and per-source draw index of sequences [start, stop)."""
    n = stop - start
    source = np.full(n, -1, dtype=np.int64)
    draw = np.zeros(n, dtype=np.int64)
    lo, hi = draws_before(w, start), draws_before(w, stop)
    for s in range(len(w)):
        k = np.arange(lo[s], hi[s], dtype=np.int64)
        pos = _rank(w, s, k) - start
        source[pos] = s
        draw[pos] = k
    assert (source >= 0).all(), "interleave left a gap: ranks are not a permutation"
    return source, draw
