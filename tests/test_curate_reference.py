"""MinHash dedup against datatrove, the pipeline that made FineWeb, on the raw web sample.

datatrove is a dev extra; without it (or spaCy, its word splitter) these
tests skip. The same documents go through datatrove's four MinHash stages
(signatures, buckets, clusters) and through ours with the same parameters:
the signatures must be bit-identical and the clusters the same sets of
documents. Filter agreement is in test_curate_filters.py.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict

import numpy as np
import pytest

from conftest import SAMPLE

TEXTS = [json.loads(line)["text"] for line in (SAMPLE / "raw" / "web.jsonl").open()]


def _reference_step(step, bits: int):
    """datatrove hashes each n-gram string with xxhash, which took str before xxhash 4.0 and
    encoded it as UTF-8; the lock has xxhash 4, so hand it the same UTF-8 bytes."""
    import xxhash

    h = xxhash.xxh64_intdigest if bits == 64 else xxhash.xxh32_intdigest
    step._hash_func = lambda s: h(s.encode())
    return step


def _drain(result):
    # Some datatrove steps are generators (they yield documents on), some return None.
    if result is not None:
        for _ in result:
            pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """datatrove's signatures and clusters for the sample at FineWeb's defaults."""
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy")
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupSignature)

    tmp = tmp_path_factory.mktemp("datatrove")
    cfg = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes, 64 bits, seed 1
    sig = _reference_step(MinhashDedupSignature(str(tmp / "sigs"), config=cfg), 64)
    _drain(sig.run(iter(Document(text=t, id=str(i)) for i, t in enumerate(TEXTS)), rank=0, world_size=1))
    for bucket in range(cfg.num_buckets):
        _drain(MinhashDedupBuckets(str(tmp / "sigs"), str(tmp / "dups"), config=cfg).run(
            rank=bucket, world_size=cfg.num_buckets))
    _drain(MinhashDedupCluster(str(tmp / "dups"), str(tmp / "clusters"), config=cfg, save_cluster_id=True).run())

    sigs = {}  # doc -> its 112 hashes, in bucket order
    for bucket in range(cfg.num_buckets):
        raw = (tmp / "sigs" / f"bucket_{bucket:03d}" / "00000.minhash.sig").read_bytes()
        for *hashes, doc in struct.iter_unpack("<8QI", raw):
            sigs.setdefault(doc, []).extend(hashes)
    clusters = defaultdict(set)
    raw = (tmp / "clusters" / "000000.clusters").read_bytes()
    for doc, cluster in struct.iter_unpack("<2I", raw):
        clusters[cluster].add(doc)
    removed = len((tmp / "clusters" / "000000.remove").read_bytes()) // 4
    return {"sigs": sigs, "clusters": {frozenset(c) for c in clusters.values()}, "removed": removed}


def test_signatures_are_bit_identical_to_datatrove(reference):
    from smolray.curate.config import MinHashDedup
    from smolray.curate.minhash import signatures

    ours, has = signatures(TEXTS, MinHashDedup(step="minhash_dedup"))
    # datatrove writes no signature for a text with fewer than 5 words after normalization; neither do we.
    assert set(reference["sigs"]) == set(np.flatnonzero(has).tolist())
    for doc, hashes in reference["sigs"].items():
        assert ours[doc].tolist() == hashes, TEXTS[doc][:200]


def test_32_bit_signatures_are_bit_identical_to_datatrove():
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy")
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    from smolray.curate.config import MinHashDedup
    from smolray.curate.minhash import signatures

    ref = _reference_step(MinhashDedupSignature("unused", config=MinhashConfig(
        hash_config=HashConfig(precision=32), seed=7)), 32)
    texts = TEXTS[::8]
    ours, has = signatures(texts, MinHashDedup(step="minhash_dedup", hash_bits=32, seed=7))
    for text, sig, ok in zip(texts, ours, has):
        shingles = ref.get_shingles(text)
        assert ok == (shingles.size > 0)
        if ok:
            assert sig.tolist() == [h for band in ref.get_signature(shingles) for h in band]


def test_clusters_are_the_same_documents_as_datatrove(reference, ray_cluster):
    """Same duplicate pairs: every cluster datatrove finds, we find, and no other."""
    from smolray.curate.config import MinHashDedup
    from smolray.curate.dedup import minhash_duplicates

    ds = ray_cluster.data.from_items([{"idx": i, "text": t} for i, t in enumerate(TEXTS)])
    pairs = minhash_duplicates(ds, MinHashDedup(step="minhash_dedup"), 3).to_pandas()
    ours = defaultdict(set)
    for idx, root in zip(pairs["idx"], pairs["dup_of"]):
        ours[int(root)] |= {int(idx), int(root)}
    assert len(reference["clusters"]) >= 40  # 44: the sample's planted near-duplicates and copies
    assert {frozenset(c) for c in ours.values()} == reference["clusters"]
    # One document kept per cluster in both (datatrove keeps its union-find root, we keep the first).
    assert len(pairs) == reference["removed"]
