"""Mixer throughput: the data plan's sampler against plain shard reads.

    python bench/mixer_throughput.py

On the tiny recipe's tokenized sample corpus (prepared as in
bench/train_throughput.py), one run measures tokens/s of:
  plain      pyarrow reads every shard whole and cuts it into seq_len+1 chunks
             in order: no mixing, no shuffling (the floor on reading cost)
  plan-1     DataPlan.read in this process, one core: interleave, per-epoch
             permutation, a ranged read per sequence, document lookup
  ray-data   the training stream itself (build_dataset), all cores
and the rate at which the tiny model's trainer consumes tokens (the bare
PyTorch loop of bench/train_throughput.py), which the mixer must outrun.
"""

import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"


def plain_read(plan) -> float:
    import json

    from smolray.data.shards import filesystem

    span = plan.stages[0].stage.seq_len + 1
    t0, tokens = time.perf_counter(), 0
    for sp in plan.sources:
        fs, base = filesystem(sp.uri)
        for shard in json.loads(sp.manifest_json)["shards"]:
            with fs.open_input_file(f"{base}/{shard['file']}.tokens") as f:
                arr = np.frombuffer(f.read(), dtype="<u2").astype(np.int64)
            n = len(arr) // span
            chunks = arr[: n * span].reshape(n, span)
            tokens += chunks[:, :-1].size
    return tokens / (time.perf_counter() - t0)


def plan_read(plan, sequences: int) -> float:
    L = plan.stages[0].stage.seq_len
    t0 = time.perf_counter()
    for a in range(0, sequences, 64):
        plan.read(0, a, min(a + 64, sequences))
    return sequences * L / (time.perf_counter() - t0)


def ray_stream(plan, steps: int, batch: int) -> float:
    from smolray.data.stream import build_dataset, rank_slice

    ds = build_dataset(plan, rank_slice(plan, 0, 1, 0, steps))
    t0, tokens = time.perf_counter(), 0
    for b in ds.iter_batches(batch_size=batch, batch_format="numpy"):
        tokens += b["input_ids"].size
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    from train_throughput import bare_loop, prepare

    from smolray.cluster import connect
    from smolray.data.plan import build_plan

    sets = [f"tokenizer={OUT / 'tokenizer'}", "train.total_tokens=4096000"]  # 1000 steps planned
    for n in ("prose", "code", "math"):
        sets += [f"data.sources.{n}.shards={OUT / 'data' / n}",
                 f"data.sources.{n}.raw=[{ROOT / 'data' / 'sample' / n}.jsonl]",
                 f"data.sources.{n}.max_epochs=10"]
    connect()
    recipe = prepare(sets)
    plan = build_plan(recipe)
    cores = os.cpu_count()
    plain = max(plain_read(plan) for _ in range(3))
    one = plan_read(plan, 4096)
    stream = ray_stream(plan, steps=400, batch=16)
    train = bare_loop(recipe, plan, 30)
    rows = [("plain pyarrow read, 1 core", plain, 1), ("DataPlan.read, 1 core", one, 1),
            (f"Ray Data stream, {cores} cores", stream, cores), ("trainer consumption (bare loop)", train, cores)]
    print(f"\n{'':<34}{'tokens/s':>14}{'per core':>14}{'vs trainer':>12}")
    for name, rate, c in rows:
        print(f"{name:<34}{rate:>14,.0f}{rate / c:>14,.0f}{rate / train:>12.1f}")
    print(f"mixing overhead (plain / plan, one core): {plain / one:.1f}x")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main()
