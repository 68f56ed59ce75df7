"""A seeded permutation of [0, n) evaluated pointwise, with no table.

A source of a trillion tokens has half a billion chunks; storing a shuffled
index of them per epoch would cost gigabytes. A balanced Feistel network on
the next even power of two, with cycle walking back into [0, n), is a
bijection that maps any chunk number to its shuffled place in O(1) memory.
"""

from __future__ import annotations

import functools

import numpy as np

_ROUNDS = 4
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finalizer: cheap, well-spread bits.
    x = x ^ (x >> np.uint64(30))
    x = (x * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = x ^ (x >> np.uint64(27))
    x = (x * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=4096)
def key_for(*parts: int) -> int:
    """A 64-bit key from integers (seed, source index, epoch)."""
    h = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for p in parts:
            h = _mix(np.asarray(h ^ np.uint64(p & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))
    return int(h)


def permute(idx: np.ndarray, n, key) -> np.ndarray:
    """Image of each idx[i] in [0, n[i]) under the permutation named by key[i].

    `n` and `key` are scalars or arrays aligned with `idx`: one call serves
    the sequences of several sources and epochs, each under its own
    permutation, so a batch pays the numpy overhead once.
    """
    idx = np.asarray(idx, dtype=np.uint64)
    n = np.broadcast_to(np.asarray(n, dtype=np.uint64), idx.shape)
    k = np.broadcast_to(np.asarray(key, dtype=np.uint64), idx.shape)
    # Each element's Feistel half width: half the bits of n - 1, rounded up,
    # at least 1 (exact integers: a float log2 rounds above 2**53).
    sizes, which = np.unique(n, return_inverse=True)
    half = np.array([max(1, (max(int(v) - 1, 0).bit_length() + 1) // 2) for v in sizes],
                    dtype=np.uint64)[which.reshape(n.shape)]
    mask = (np.uint64(1) << half) - np.uint64(1)
    out = idx.copy()
    todo = n > np.uint64(1)  # a permutation of one element is the identity
    with np.errstate(over="ignore"):
        while todo.any():
            x, h, m, kk = out[todo], half[todo], mask[todo], k[todo]
            left, right = x >> h, x & m
            for r in range(_ROUNDS):
                f = _mix(right ^ (kk + np.uint64(r) * np.uint64(0x632BE59BD9B4E019))) & m
                left, right = right, left ^ f
            x = (left << h) | right
            out[todo] = x
            # Values that landed outside [0, n) walk again until they are inside.
            todo[todo] = x >= n[todo]
    return out.astype(np.int64)
