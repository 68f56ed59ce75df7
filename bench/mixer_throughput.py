"""Mixer throughput at SmolLM2-360M settings: the data plan against plain shard reads.

    python bench/mixer_throughput.py [--tokens 32000000] [--s3-tokens 4000000]

recipes/smollm2-360m.yaml's data (three sources mixed 54/36/10, 2048-token
sequences, 49,152-token vocabulary, so uint16 shards), over a synthetic
corpus the script writes once: random token ids in documents of
log-normal length (median about 660 tokens), each ending in EOS, cut into
8M-token shards. One run measures, on the same machine:
  plain     pyarrow reads every shard whole and cuts it into 2049-token
            chunks in order: no mixing, no shuffling (the floor on reading cost)
  plan      DataPlan.read_rows in this process, one core, over the rows of
            rank 0 of 8 (96 of each 768-sequence step), as many a call as
            one task of the stream reads: interleave, per-epoch
            permutation, a span per sequence, document lookup
  stream    that rank's training stream (build_dataset), all cores
each from local disk and from a local S3 server (moto on 127.0.0.1), and
sets them against what one 8-GPU node consumes training SmolLM2-360M at
45% MFU (docs/benchmarks.md derives the 1.2M tokens/s), giving the data
cores such a node needs.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench" / "mixer"
SOURCES = ("fineweb-edu", "dclm", "starcoderdata")
VOCAB, EOS, SHARD_TOKENS = 49152, 0, 8 << 20
NODE_TOKENS_S = 1.2e6  # 8 H100s at 45% MFU on SmolLM2-360M


def write_corpus(root: str, tokens: int, seed: int) -> None:
    """`tokens` random tokens per source in documents ending in EOS, as jobs/tokenize.py lays them out."""
    from smolray.data.shards import Manifest, filesystem, read_manifest, write_manifest, write_shard

    rng = np.random.default_rng(seed)
    for name in SOURCES:
        uri = f"{root}/{name}"
        try:
            if read_manifest(uri).tokens >= tokens:
                continue
        except Exception:
            pass
        fs, base = filesystem(uri)
        fs.create_dir(base, recursive=True)
        shards, docs, held = [], [], 0
        while sum(s.tokens for s in shards) + held < tokens:
            n = max(2, int(rng.lognormal(6.5, 1.0)))
            doc = rng.integers(1, VOCAB, n, dtype=np.uint16)
            doc[-1] = EOS
            docs.append(doc)
            held += n
            if held >= SHARD_TOKENS:
                shards.append(write_shard(fs, base, len(shards), docs, "uint16"))
                docs, held = [], 0
        if docs:
            shards.append(write_shard(fs, base, len(shards), docs, "uint16"))
        write_manifest(fs, base, Manifest(source=name, dtype="uint16", eos_id=EOS,
                                          tokenizer="synthetic", shards=shards))


def build(root: str):
    from smolray.data.plan import build_plan
    from smolray.recipe import load_recipe

    sets = ["data.allow_over_epochs=true"] + [f"data.sources.{n}.shards={root}/{n}" for n in SOURCES]
    return build_plan(load_recipe(ROOT / "recipes" / "smollm2-360m.yaml", sets))


def plain_read(plan) -> float:
    from smolray.data.shards import filesystem

    span = plan.stages[0].stage.seq_len + 1
    t0, tokens = time.perf_counter(), 0
    for sp in plan.sources:
        fs, base = filesystem(sp.uri)
        for shard in json.loads(sp.manifest_json)["shards"]:
            with fs.open_input_file(f"{base}/{shard['file']}.tokens") as f:
                arr = np.frombuffer(f.read(), dtype="<u2").astype(np.int64)
            n = len(arr) // span
            tokens += arr[: n * span].reshape(n, span)[:, :-1].size
    return tokens / (time.perf_counter() - t0)


def plan_read(plan, steps: int) -> tuple[float, int]:
    """DataPlan.read_rows over rank 0 of 8's rows, one stream task's worth a call."""
    from smolray.data.stream import rank_slice, task_rows

    part = rank_slice(plan, 0, 8, 0, steps)
    per_task = task_rows(plan, part)
    idx = part.indices(np.arange(part.rows))
    t0 = time.perf_counter()
    for a in range(0, len(idx), per_task):
        plan.read_rows(0, idx[a:a + per_task])
    return part.rows * plan.stages[0].stage.seq_len / (time.perf_counter() - t0), per_task


def stream(plan, steps: int) -> float:
    """Rank 0 of 8's training stream, consumed as the training loop does (torch, micro batch 16)."""
    from smolray.data.stream import build_dataset, rank_slice

    ds = build_dataset(plan, rank_slice(plan, 0, 8, 0, steps))
    t0, tokens = None, 0
    for b in ds.iter_torch_batches(batch_size=16, device="cpu"):
        if t0 is None:  # the clock starts at the first batch: pipeline start-up is not throughput
            t0 = time.perf_counter()
        else:
            tokens += b["input_ids"].numel()
    return tokens / (time.perf_counter() - t0)


def s3_server(root: Path, tokens: int):
    """moto on 127.0.0.1, in its own process, holding a corpus of `tokens` per source.

    Its own process so that this one's CPU time is the client's alone: that,
    not moto's speed, is what a data node spends per token on a real bucket.
    Returns (server process, uri root).
    """
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    client = boto3.client("s3")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="corpus")
            break
        except Exception:  # not listening yet
            time.sleep(0.2)
    write_corpus(str(root), tokens, seed=1)  # locally, then uploaded as is
    for f in sorted(root.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), "corpus", str(f.relative_to(root)))
    return server, "s3://corpus"


def client_cpu(fn, *args):
    """fn(*args)'s result, and the CPU seconds this process spent on it."""
    c0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=32_000_000, help="tokens per source on local disk")
    p.add_argument("--s3-tokens", type=int, default=4_000_000,
                   help="tokens per source on the S3 server (0: no S3 rows)")
    p.add_argument("--steps", type=int, default=200, help="steps of rank 0 of 8 read (96 sequences each)")
    args = p.parse_args()
    from smolray.cluster import connect

    write_corpus(str(OUT / "local"), args.tokens, seed=0)
    local = build(str(OUT / "local"))
    plain = max(plain_read(local) for _ in range(3))
    one, per_task = max(plan_read(local, args.steps) for _ in range(3))
    rows = [("local disk: plain pyarrow read", plain, 1),
            (f"local disk: DataPlan.read_rows, {per_task} rows a call", one, 1)]
    # Before Ray starts: its workers inherit the S3 server's address from this process.
    server, uri = s3_server(OUT / "s3", args.s3_tokens) if args.s3_tokens else (None, None)
    connect()
    cores = os.cpu_count()
    rows.append((f"local disk: Ray Data stream, {cores} cores", stream(local, args.steps), cores))
    if server:
        try:
            remote = build(uri)
            rows.append(("S3 server: plain pyarrow read", max(plain_read(remote) for _ in range(2)), 1))
            steps = args.steps // 5
            (rate, _), cpu = client_cpu(plan_read, remote, steps)
            rows.append((f"S3 server: DataPlan.read_rows, {per_task} rows a call", rate, 1))
            # Tokens per second of this process's own CPU: moto's share excluded.
            rows.append(("S3 server: DataPlan.read_rows, per client CPU s", steps * 96 * 2048 / cpu, 1))
            rows.append((f"S3 server: Ray Data stream, {cores} cores", stream(remote, steps), cores))
        finally:
            server.kill()
    print(f"\n{'':<48}{'tokens/s':>14}{'per core':>14}{'cores per 8-GPU node':>22}")
    for name, rate, c in rows:
        print(f"{name:<48}{rate:>14,.0f}{rate / c:>14,.0f}{NODE_TOKENS_S / (rate / c):>22.3f}")
    print(f"plain / DataPlan.read_rows, one core, local disk: {plain / one:.2f}x")


if __name__ == "__main__":
    main()
