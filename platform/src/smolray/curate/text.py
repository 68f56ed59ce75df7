"""Text keys and hashes for exact dedup and decontamination, and the hash mixers MinHash uses.

Benchmark matching compares words, not bytes: case, accents, punctuation
and digits are dropped first, so a reformatted copy of an example still
matches. (MinHash normalizes as FineWeb did, in curate/minhash.py.)
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

_NOT_LETTERS = re.compile(r"[\W\d_]+")
# Odd 64-bit constants: one per position in an n-gram, so "a b" and "b a" differ.
_POSITION = np.array([(0x9E3779B97F4A7C15 ^ (i * 0xD6E8FEB86659FD93)) & (2**64 - 1) | 1 for i in range(64)],
                     dtype=np.uint64)


def normalize(text: str) -> str:
    """Lower case, accents, punctuation and digits removed, single spaces."""
    text = text.lower()
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _NOT_LETTERS.sub(" ", text).strip()


def exact_key(text: str) -> bytes:
    """Exact-duplicate key: a 128-bit hash (XXH3) of the lower-cased text with whitespace runs collapsed."""
    return xxhash.xxh3_128_digest(" ".join(text.lower().split()).encode())


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array: a cheap bijection that spreads every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def fold(rows: np.ndarray) -> np.ndarray:
    """One uint64 per row of a (..., k) uint64 array, order-sensitive (a hash of the tuple)."""
    return mix((rows * _POSITION[: rows.shape[-1]]).sum(axis=-1, dtype=np.uint64))


def ngram_hashes(text: str, n: int, cache: dict[str, int] | None = None, whole: bool = True) -> np.ndarray:
    """Hashes of the word n-grams of the normalized text.

    A text of fewer than n words is one n-gram of all of them with `whole`,
    none without.

    Each word is hashed once and an n-gram's hash folds its words' hashes,
    which is several times faster than hashing every joined n-gram string.
    """
    words = normalize(text).split()
    if not words or (not whole and len(words) < n):
        return np.empty(0, dtype=np.uint64)
    cache = {} if cache is None else cache
    h = np.fromiter((cache[w] if w in cache else cache.setdefault(w, xxhash.xxh64_intdigest(w.encode())) for w in words),
                    dtype=np.uint64, count=len(words))
    k = min(n, len(h))
    windows = np.lib.stride_tricks.sliding_window_view(h, k)
    return fold(windows)
