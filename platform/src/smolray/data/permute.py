"""A seeded permutation of [0, n) evaluated pointwise, with no table.

A source of a trillion tokens has half a billion chunks; storing a shuffled
index of them per epoch would cost gigabytes. A balanced Feistel network on
the next even power of two, with cycle walking back into [0, n), is a
bijection that maps any chunk number to its shuffled place in O(1) memory.
"""

from __future__ import annotations

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


def key_for(*parts: int) -> int:
    """A 64-bit key from integers (seed, source index, epoch)."""
    h = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for p in parts:
            h = _mix(np.asarray(h ^ np.uint64(p & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))
    return int(h)


def permute(idx: np.ndarray, n: int, key: int) -> np.ndarray:
    """Image of each idx (all in [0, n)) under the permutation named by key."""
    idx = np.asarray(idx, dtype=np.uint64)
    if n <= 1:
        return idx.astype(np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    k = np.uint64(key)
    out = idx.copy()
    todo = np.ones(len(out), dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            x = out[todo]
            left, right = x >> np.uint64(half), x & mask
            for r in range(_ROUNDS):
                f = _mix(right ^ (k + np.uint64(r) * np.uint64(0x632BE59BD9B4E019))) & mask
                left, right = right, left ^ f
            x = (left << np.uint64(half)) | right
            out[todo] = x
            # Values that landed outside [0, n) walk again until they are inside.
            todo[todo] = x >= np.uint64(n)
    return out.astype(np.int64)
