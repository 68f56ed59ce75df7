"""MinHash signatures and LSH band keys, vectorized over a batch of documents.

A document's signature is, for each of bands x rows_per_band hash
functions, the minimum over its word n-grams. Two documents share a band
(all rows_per_band minima equal) with probability J^r per band, so a pair
at Jaccard J is caught with probability 1 - (1 - J^r)^b: 92% at 0.8 and 56%
at 0.7 for FineWeb's 14 bands of 8 (MinHashDedup.probability).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from smolray.curate.text import fold, mix, ngram_hashes

if TYPE_CHECKING:
    from smolray.curate.config import MinHashDedup

# n-gram x hash-function cells hashed at once (8 bytes each): 2 MB stays in
# a core's cache, which makes the hashing 5x faster than one large array.
_CELLS = 256_000


def _seeds(cfg: MinHashDedup) -> np.ndarray:
    k = np.arange(cfg.bands * cfg.rows_per_band, dtype=np.uint64)
    return mix(k + np.uint64(cfg.seed) * np.uint64(0x100000001B3))


def signatures(texts: list[str], cfg: MinHashDedup) -> tuple[np.ndarray, np.ndarray]:
    """(signatures (docs, bands*rows) uint64, has_words (docs,) bool) for a batch of texts."""
    seeds = _seeds(cfg)
    hashes_per_doc = len(seeds)
    out = np.full((len(texts), hashes_per_doc), np.iinfo(np.uint64).max, dtype=np.uint64)
    cache: dict[str, int] = {}
    grams = [ngram_hashes(t, cfg.ngram, cache) for t in texts]
    has = np.array([len(g) > 0 for g in grams], dtype=bool)
    start = 0
    while start < len(texts):
        # Take documents until the chunk's cells reach the bound (at least one).
        end, cells = start, 0
        while end < len(texts) and (end == start or cells + len(grams[end]) * hashes_per_doc <= _CELLS):
            cells += len(grams[end]) * hashes_per_doc
            end += 1
        chunk = grams[start:end]
        lengths = np.array([len(g) for g in chunk])
        flat = np.concatenate(chunk) if chunk else np.empty(0, dtype=np.uint64)
        if len(flat):
            # Hash function k is mix(gram ^ seed_k): a different bijection per k.
            table = mix(flat[None, :] ^ seeds[:, None])
            nz = lengths > 0
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nz]
            out[start:end][nz] = np.minimum.reduceat(table, offsets, axis=1).T
        start = end
    if cfg.hash_bits == 32:
        out &= np.uint64(0xFFFFFFFF)
    return out, has


def band_keys(sigs: np.ndarray, cfg: MinHashDedup) -> np.ndarray:
    """(docs, bands) uint64: one bucket key per band, with the band number folded in.

    Folding the band number into the key lets one shuffle on a single column
    group all bands at once; a false match across bands needs a 64-bit collision.
    """
    rows = sigs.reshape(len(sigs), cfg.bands, cfg.rows_per_band)
    keys = fold(rows)
    band = np.arange(cfg.bands, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D)
    return mix(keys ^ band[None, :])
