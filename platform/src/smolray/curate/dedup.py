"""Exact and MinHash deduplication as Ray Data shuffles; no worker holds the corpus.

Every step here is a hash shuffle into `partitions` groups followed by a
vectorized pass inside each group (sort, find runs of equal keys), so a
worker holds one group: about rows / partitions rows of 16-24 bytes, which
the caller sizes (`partitions_for`). One Python call per group, not per key,
keeps the shuffle at numpy speed when most keys are singletons.

The result of either dedup is a dataset of (idx, dup_of): each dropped
document and the document kept in its place, the smallest idx (the first
in input order) of its exact group or near-duplicate cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from smolray.curate.minhash import band_keys, signatures
from smolray.curate.text import exact_key, fold

if TYPE_CHECKING:
    import pyarrow as pa

    from smolray.curate.config import MinHashDedup

# Rows one shuffle group should hold at most: 8M rows of (uint64, int64) are 128 MB.
ROWS_PER_PARTITION = 8_000_000


def partitions_for(rows: int, cpus: int) -> int:
    """Enough groups to bound each worker's rows, and at least one per CPU."""
    return max(cpus, -(-rows // ROWS_PER_PARTITION), 1)


def _pair(a: np.ndarray, b: np.ndarray) -> dict:
    return {"idx": a.astype(np.int64), "dup_of": b.astype(np.int64)}


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For keys sorted ascending: (index where each run starts, length of each run)."""
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(first)
    return starts, np.diff(np.append(starts, len(keys)))


def _read(batch: dict) -> "pa.Table":
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(f, columns=["idx", "text"]) for f in batch["file"]])


def read_parts(files: list[str]):
    """The (idx, text) rows of the part files, one part per task, read with pyarrow inside the task.

    Not ray.data.read_parquet: its reader (Ray 2.60) keeps memory in each
    long-lived read worker in proportion to what it has read (a worker went
    from 560 MB to 930 MB between 16 and 64 parts of 1,000 pages). Read here,
    a worker stays at about 160 MB however many parts pass through it
    (bench/curate_throughput.py measures it).
    """
    import ray

    paths = ray.data.from_items([{"file": f} for f in files], override_num_blocks=max(len(files), 1))
    return paths.map_batches(_read, batch_size=1, batch_format="numpy")


# ---- exact ---------------------------------------------------------------------------------------

def _exact_keys(batch: dict, partitions: int) -> dict:
    keys = np.frombuffer(b"".join(exact_key(t) for t in batch["text"]), dtype=np.uint64).reshape(-1, 2)
    return {"k1": keys[:, 0], "k2": keys[:, 1], "idx": batch["idx"],
            "group": (keys[:, 0] % np.uint64(partitions)).astype(np.int64)}


def _exact_group(g: dict) -> dict:
    order = np.lexsort((g["idx"], g["k2"], g["k1"]))
    k1, k2, idx = g["k1"][order], g["k2"][order], g["idx"][order]
    later = np.zeros(len(idx), dtype=bool)
    later[1:] = (k1[1:] == k1[:-1]) & (k2[1:] == k2[:-1])
    starts = np.flatnonzero(~later)
    first = np.repeat(starts, np.diff(np.append(starts, len(idx))))
    return _pair(idx[later], idx[first][later])


def exact_duplicates(docs, partitions: int):
    """(idx, dup_of) for every document whose normalized text an earlier one has."""
    keyed = docs.map_batches(_exact_keys, fn_kwargs={"partitions": partitions}, batch_format="numpy")
    return keyed.groupby("group", num_partitions=partitions).map_groups(_exact_group, batch_format="numpy")


# ---- MinHash -------------------------------------------------------------------------------------

def _bands(batch: dict, cfg: MinHashDedup, partitions: int) -> dict:
    sigs, has = signatures(list(batch["text"]), cfg)
    # A text with no words after normalization has no n-grams to compare.
    keys = band_keys(sigs[has], cfg)
    idx = np.repeat(batch["idx"][has], cfg.bands)
    flat = keys.reshape(-1)
    return {"bucket": flat, "idx": idx, "group": (flat % np.uint64(partitions)).astype(np.int64)}


def _bucket_edges(g: dict) -> dict:
    """A star per bucket: each member to the bucket's smallest idx."""
    order = np.lexsort((g["idx"], g["bucket"]))
    bucket, idx = g["bucket"][order], g["idx"][order]
    starts, lengths = _runs(bucket)
    later = np.ones(len(idx), dtype=bool)
    later[starts] = False
    first = np.repeat(idx[starts], lengths)
    return {"src": idx[later], "dst": first[later]}


def minhash_duplicates(docs, cfg: MinHashDedup, partitions: int):
    """(idx, dup_of) for every document in a near-duplicate cluster but its smallest idx."""
    bands = docs.map_batches(_bands, fn_kwargs={"cfg": cfg, "partitions": partitions}, batch_format="numpy")
    edges = bands.groupby("group", num_partitions=partitions).map_groups(_bucket_edges, batch_format="numpy")
    return components(edges.materialize(), partitions)


# ---- connected components ------------------------------------------------------------------------
# Up to LOCAL_EDGES edges (the near-duplicate pairs, not the corpus: 16 bytes
# each, 128 MB at the limit), one task finds the components with a
# vectorized union-find: a shuffle round costs seconds, a few dozen rounds
# would dominate a small job. Above the limit, every round is distributed.
LOCAL_EDGES = 8_000_000


def _union_find(src: np.ndarray, dst: np.ndarray) -> dict:
    """(idx, dup_of) for every non-root node; each root is its component's smallest node."""
    nodes = np.unique(np.concatenate([src, dst]))
    u, v = np.searchsorted(nodes, src), np.searchsorted(nodes, dst)
    parent = np.arange(len(nodes))
    while True:
        pu, pv = parent[u], parent[v]
        if (pu == pv).all():
            break
        # Hook the larger root under the smaller one, then jump pointers to the roots.
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            jumped = parent[parent]
            if (jumped == parent).all():
                break
            parent = jumped
    moved = parent != np.arange(len(nodes))
    return _pair(nodes[moved], nodes[parent[moved]])


def _local_components(*blocks) -> "pa.Table":
    """Union-find over the edge blocks, which Ray hands to the task as Arrow tables."""
    import pyarrow as pa

    empty = np.empty(0, dtype=np.int64)
    blocks = [b for b in blocks if b.num_rows]
    src = np.concatenate([b["src"].to_numpy() for b in blocks] or [empty]).astype(np.int64)
    dst = np.concatenate([b["dst"].to_numpy() for b in blocks] or [empty]).astype(np.int64)
    return pa.table(_union_find(src, dst))


# Large-star / small-star alternation (Kiveris et al., "Connected Components
# in MapReduce and Beyond", 2014): each round is two shuffles, the number of
# rounds grows with the log of the component size, and at the end every
# node points straight at its component's smallest node.

def _grouped(src: np.ndarray, dst: np.ndarray, partitions: int) -> dict:
    return {"src": src, "dst": dst, "group": (src % partitions).astype(np.int64)}


def _both_ways(batch: dict, partitions: int) -> dict:
    return _grouped(np.concatenate([batch["src"], batch["dst"]]), np.concatenate([batch["dst"], batch["src"]]),
                    partitions)


def _larger_first(batch: dict, partitions: int) -> dict:
    return _grouped(np.maximum(batch["src"], batch["dst"]), np.minimum(batch["src"], batch["dst"]), partitions)


def _unique(g: dict) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.unique(np.stack([g["src"], g["dst"]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _large_star(g: dict) -> dict:
    """Each node's larger neighbours move to the smallest node it sees (itself included)."""
    u, v = _unique(g)
    starts, lengths = _runs(u)
    m = np.repeat(np.minimum(np.minimum.reduceat(v, starts), u[starts]), lengths)
    keep = v > u
    return {"src": v[keep], "dst": m[keep]}


def _small_star(g: dict) -> dict:
    """Each node and its smaller neighbours move to the smallest of them."""
    u, v = _unique(g)  # v < u for every edge here
    starts, lengths = _runs(u)
    m = np.minimum.reduceat(v, starts)
    src = np.concatenate([v, u[starts]])
    dst = np.concatenate([np.repeat(m, lengths), m])
    keep = src != dst
    return {"src": src[keep], "dst": dst[keep]}


def _fingerprint(edges) -> tuple[int, int]:
    """(edges, a sum of edge hashes): equal before and after a round only when nothing moved."""
    def hashed(b):
        h = fold(np.stack([b["src"], b["dst"]], axis=1).astype(np.uint64)).sum(dtype=np.uint64)
        return {"n": np.array([len(b["src"])]), "h": np.array([h], dtype=np.uint64)}

    n, h = 0, 0
    for r in edges.map_batches(hashed, batch_format="numpy").iter_rows():
        n, h = n + int(r["n"]), (h + int(r["h"])) % 2**64
    return n, h


def _root_of(g: dict) -> dict:
    return _pair(*_unique(g))


def components(edges, partitions: int, local_edges: int = LOCAL_EDGES, max_rounds: int = 64):
    """(idx, dup_of) for every non-root node: its component's smallest node."""
    import ray

    if edges.count() <= local_edges:
        # The blocks themselves, not the dataset: iterating a dataset inside a task starts a
        # second Ray Data execution that waits for CPUs this task holds (minutes on a full node).
        task = ray.remote(num_cpus=1)(_local_components)
        return ray.data.from_arrow(ray.get(task.remote(*edges.to_arrow_refs())))

    def shuffle(ds, prepare, step):
        ds = ds.map_batches(prepare, fn_kwargs={"partitions": partitions}, batch_format="numpy")
        return ds.groupby("group", num_partitions=partitions).map_groups(step, batch_format="numpy")

    before = None
    for _ in range(max_rounds):
        edges = shuffle(shuffle(edges, _both_ways, _large_star), _larger_first, _small_star).materialize()
        now = _fingerprint(edges)
        if now == before:
            # A star: each node's one edge points at its root, once per group that saw it.
            return shuffle(edges, _larger_first, _root_of)
        before = now
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
