"""Tokenization throughput: jobs/tokenize.py's pipeline against a bare tokenizer, and its scaling.

    python bench/tokenize_throughput.py [--copies 16] [--nodes 1 2 4]

The bundled sample corpus (prose, code and math JSONL) written --copies
times as that many input files of one source, tokenized with the demo's
BPE tokenizer (4,096 ids), held-out fraction 0. One run measures:
  bare      `tokenizers`' encode_batch (256 texts a call) of the same
            documents, in this process, on one core, the texts already in
            memory: the floor on tokenizing cost
  smolray   data/tokenize.py's tokenize_source (one Ray Data task per file:
            read, encode, write shards, done record) on a local cluster of
            N one-CPU worker nodes (ray.cluster_utils.Cluster: a raylet each)
            for each N in --nodes, from the call to the manifest
and the driver's peak memory above its start during each smolray run,
which must not grow with the corpus. Every side encodes with one thread
(RAYON_NUM_THREADS=1): tokenizers would otherwise use every core from one
process, and per-core figures would mean nothing.
"""

import argparse
import os
import shutil
import threading
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers is imported, here and in every Ray worker

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench" / "tokenize"
SAMPLE = ROOT / "data" / "sample"


def corpus(copies: int) -> list[str]:
    """The sample's three files, concatenated, written `copies` times."""
    text = "".join((SAMPLE / f"{n}.jsonl").read_text() for n in ("prose", "code", "math"))
    raw = OUT / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(copies):
        p = raw / f"part-{i:03d}.jsonl"
        if not p.is_file() or p.stat().st_size != len(text.encode()):
            p.write_text(text)
        paths.append(str(p))
    return paths


def tokenizer() -> str:
    """The demo's tokenizer (bench/train_throughput.py trains the same one)."""
    from smolray.data.raw import iter_texts
    from smolray.tokenizer import train_bpe

    out = ROOT / "outputs" / "bench" / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        texts = (t for n in ("prose", "code", "math") for t in iter_texts([str(SAMPLE / f"{n}.jsonl")], "text"))
        train_bpe(texts, 4096, out)
    return str(out)


def bare(paths: list[str], tok_dir: str) -> float:
    """Tokens/s of a batch encode on one core, texts in memory, EOS counted as smolray counts it."""
    from smolray.data.raw import iter_texts
    from smolray.tokenizer import cached_tokenizer

    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        tok = cached_tokenizer(tok_dir)
        texts = [t for t in iter_texts(paths, "text") if t]
        t0, tokens = time.perf_counter(), 0
        for a in range(0, len(texts), 256):
            encs = tok.backend_tokenizer.encode_batch(texts[a:a + 256], add_special_tokens=False)
            tokens += sum(len(e.ids) + 1 for e in encs if e.ids)
        return tokens / (time.perf_counter() - t0)
    finally:
        os.sched_setaffinity(0, cores)


def peak_rss(stop: threading.Event, out: list[int]) -> None:
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        out.append(me.memory_info().rss)
        time.sleep(0.05)


def on_cluster(paths: list[str], tok_dir: str, nodes: int) -> tuple[float, int, float]:
    """(tokens/s, tokens, driver's peak RSS growth in MiB) of tokenize_source on `nodes` 1-CPU nodes."""
    import ray
    from ray.cluster_utils import Cluster

    from smolray.data.tokenize import tokenize_source
    from smolray.recipe import SourceConfig

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    shards = OUT / f"shards-{nodes}"
    shutil.rmtree(shards, ignore_errors=True)
    src = SourceConfig(name="sample", raw=paths, shards=str(shards))
    rss, stop = [], threading.Event()
    watcher = threading.Thread(target=peak_rss, args=(stop, rss), daemon=True)
    try:
        import psutil

        base = psutil.Process().memory_info().rss
        watcher.start()
        t0 = time.perf_counter()
        m = tokenize_source(src, tok_dir, 4096, 1 << 24, force=True)
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        watcher.join()
        ray.shutdown()
        cluster.shutdown()
    return m.tokens / wall, m.tokens, (max(rss) - base) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=16, help="input files, each the whole sample corpus")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4], help="one-CPU worker nodes per run")
    args = p.parse_args()
    paths, tok_dir = corpus(args.copies), tokenizer()
    one = bare(paths, tok_dir)
    rows = [(n, *on_cluster(paths, tok_dir, n)) for n in args.nodes]
    print(f"\n{args.copies} files, {rows[0][2]:,} tokens; {os.cpu_count()} cores on this machine")
    print(f"{'':<34}{'tokens/s':>12}{'per CPU':>12}{'vs bare/core':>14}{'driver peak':>13}")
    print(f"{'bare tokenizers, 1 core':<34}{one:>12,.0f}{one:>12,.0f}{1:>14.2f}{'':>13}")
    for n, rate, _, grew in rows:
        print(f"{f'tokenize_source, {n} x 1-CPU nodes':<34}{rate:>12,.0f}{rate / n:>12,.0f}"
              f"{rate / n / one:>14.2f}{grew:>10.0f} MiB")


if __name__ == "__main__":
    main()
