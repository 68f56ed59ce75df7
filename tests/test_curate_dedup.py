"""Curation's dedup: exact and MinHash duplicates against the sample's planted ones, the LSH
catch rate against the band formula, and the distributed connected components.

data/sample/raw/web_truth.json says which sample documents are copies of which,
with their measured Jaccard similarity.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from conftest import SAMPLE

TRUTH = json.loads((SAMPLE / "raw" / "web_truth.json").read_text())


@pytest.fixture(scope="module")
def web_docs(ray_cluster):
    rows = [json.loads(line) for line in (SAMPLE / "raw" / "web.jsonl").open()]
    ids = {r["id"]: i for i, r in enumerate(rows)}
    ds = ray_cluster.data.from_items([{"idx": i, "text": r["text"]} for i, r in enumerate(rows)])
    return ds, ids


def _clusters(pairs) -> dict[int, int]:
    return {int(a): int(b) for a, b in zip(pairs["idx"], pairs["dup_of"])}


def test_exact_dedup_finds_every_copy_and_keeps_the_first(web_docs):
    from smolray.curate.dedup import exact_duplicates

    ds, ids = web_docs
    dup = _clusters(exact_duplicates(ds, 3).to_pandas())
    for pair in TRUTH["exact_duplicates"]:
        a, b = ids[pair["id"]], ids[pair["of"]]
        assert dup.get(max(a, b)) == min(a, b), pair
    assert len(dup) == len(TRUTH["exact_duplicates"])


def test_minhash_finds_planted_near_duplicates_at_the_lsh_rate(web_docs):
    from smolray.curate.config import MinHashDedup
    from smolray.curate.dedup import minhash_duplicates

    ds, ids = web_docs
    cfg = MinHashDedup(step="minhash_dedup")
    root = _clusters(minhash_duplicates(ds, cfg, 3).to_pandas())
    find = lambda i: root.get(i, i)  # noqa: E731
    for target in (0.9, 0.8, 0.7):
        pairs = [p for p in TRUTH["near_duplicates"] if p["target"] == target]
        found = sum(find(ids[p["id"]]) == find(ids[p["of"]]) for p in pairs)
        expect = sum(cfg.probability(p["jaccard"]) for p in pairs)
        # Poisson-binomial: within 3 standard deviations (a 0.3% chance to fail by luck).
        sd = math.sqrt(sum(cfg.probability(p["jaccard"]) * (1 - cfg.probability(p["jaccard"])) for p in pairs))
        assert abs(found - expect) <= max(3 * sd, 1), (target, found, expect)
    # Exact copies are Jaccard 1: always in one cluster.
    for pair in TRUTH["exact_duplicates"]:
        assert find(ids[pair["id"]]) == find(ids[pair["of"]]), pair


@pytest.mark.parametrize("jaccard", [0.9, 0.8, 0.7, 0.5])
def test_lsh_catches_pairs_as_often_as_the_band_formula_says(jaccard):
    """300 word-set pairs at an exact Jaccard: the share caught matches 1-(1-J^8)^14 within 4 sd."""
    from smolray.curate.config import MinHashDedup
    from smolray.curate.minhash import band_keys, signatures

    cfg = MinHashDedup(step="minhash_dedup", ngram=1)
    rng = random.Random(int(jaccard * 100))
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(7)) for _ in range(60000)})
    n, texts, js = 300, [], []
    for _ in range(300):
        common = round(2 * n * jaccard / (1 + jaccard))
        words = rng.sample(vocab, 2 * n - common)
        texts += [" ".join(words[:n]), " ".join(words[:common] + words[n:])]
        js.append(common / (2 * n - common))
    keys = band_keys(signatures(texts, cfg)[0], cfg)
    caught = (keys[0::2] == keys[1::2]).any(axis=1).mean()
    p = float(np.mean([cfg.probability(j) for j in js]))
    assert abs(caught - p) <= 4 * math.sqrt(p * (1 - p) / 300) + 1e-9, (caught, p)


def test_components_distributed_rounds_equal_union_find(ray_cluster):
    """The shuffle rounds (used above LOCAL_EDGES) and the one-task union-find agree on a chain and stars."""
    from smolray.curate.dedup import _union_find, components

    rng = np.random.default_rng(0)
    src = np.concatenate([rng.integers(0, 400, 150), np.arange(501, 540)])
    dst = np.concatenate([rng.integers(0, 400, 150), np.arange(500, 539)])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    want = _union_find(src, dst)
    want = dict(zip(want["idx"].tolist(), want["dup_of"].tolist()))
    assert want[539] == 500  # the chain's end points at its smallest node
    edges = ray_cluster.data.from_items([{"src": int(a), "dst": int(b)} for a, b in zip(src, dst)])
    got = components(edges.materialize(), 3, local_edges=0).to_pandas()
    assert len(got) == len(want) and dict(zip(got["idx"], got["dup_of"])) == want
