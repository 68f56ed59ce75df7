"""Validation during pretraining: loss on each source's held-out documents.

The driver tokenizes the held-out text once into fixed windows (a few tens
of thousands of tokens per source) and ships them in the loop config; every
rank scores its share and the sums are all-reduced, so the figure does not
depend on the worker count. These are the numbers mixture sweeps compare
trials on (`target_loss`), and ASHA stops trials on.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from smolray.data.plan import heldout_mismatch
from smolray.data.raw import iter_texts
from smolray.data.shards import ShardError, heldout_uris, join_uri, read_manifest
from smolray.eval.loss import Windows, mixture_loss, summarize, window_nll, windows
from smolray.recipe import Recipe


def heldout_uri(shards: str) -> str:
    """One --heldout value for a source: a glob over its held-out files (jobs/eval.py expands it)."""
    return join_uri(shards, "heldout*.parquet")


def load_heldout(recipe: Recipe, tok) -> dict[str, Windows]:
    """Held-out windows per source, for every source that holds documents out."""
    out = {}
    for name in recipe.heldout_sources:
        src = recipe.data.source(name)
        try:
            m = read_manifest(src.shards)
        except ShardError as e:
            raise ShardError(f"data.sources.{name}.shards={src.shards!r}: {e}") from None
        if (wrong := heldout_mismatch(src, m)):
            raise ShardError(wrong)
        # A byte bound keeps a large validation file from being read whole.
        texts = iter_texts(heldout_uris(src.shards, m), src.text_field, max_bytes=64 * recipe.eval.max_tokens)
        out[name] = windows(tok, texts, recipe.data.seq_len, recipe.eval.max_tokens)
    return out


def validate(engine, sets: dict[str, Windows], target: dict[str, float], rank: int, world: int,
             device, batch_size: int) -> dict:
    """val/<source>/{loss,bpb} for each set, and target_loss/target_bpb."""
    was_training = engine.module.training
    engine.module.eval()
    per: dict[str, dict] = {}
    for name, w in sets.items():
        mine = w.ids[rank::world]
        # Same number of forwards on every rank: ZeRO-3 gathers parameters
        # collectively, so a rank with nothing left scores a zero-weight window.
        per_rank = -(-len(w.ids) // world)
        nll = 0.0
        for b in range(0, per_rank, batch_size):
            x = mine[b:b + batch_size]
            if len(x):
                nll += window_nll(engine, x, batch_size, device)
            else:
                window_nll(engine, w.ids[:1], 1, device)
        t = torch.tensor([nll], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        per[name] = summarize(float(t[0]), w)
    if was_training:
        engine.module.train()
    m = {}
    for name, r in per.items():
        m[f"val/{name}/loss"], m[f"val/{name}/bpb"] = r["loss"], r["bpb"]
    if target:
        mix = mixture_loss(per, target)
        m["target_loss"], m["target_bpb"] = mix["loss"], mix["bpb"]
    return m
