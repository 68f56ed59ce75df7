"""Benchmark decontamination: drop documents that share a word n-gram with an evaluation example.

The index holds a hash of every n-gram of every example's query followed by
its gold answer (so a passage spanning the two still matches), mapped to
the examples it came from: about 16 bytes per n-gram, bounded by the
benchmarks' size, not the corpus's, and shipped once to each worker.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from smolray.curate.config import Decontaminate
from smolray.curate.text import ngram_hashes


_BUILT: dict[str, tuple] = {}


def build_index(cfg: Decontaminate) -> tuple[dict[int, list[str]], dict]:
    """({n-gram hash: [example ids]}, per-task counts) for the configured task files.

    Built once per process: the job checks the tasks before any cluster
    work, ships the index to the workers and reports on it at the end.
    """
    key = cfg.model_dump_json()
    if key not in _BUILT:
        _BUILT[key] = _build(cfg)
    index, tasks = _BUILT[key]
    return index, {name: dict(info) for name, info in tasks.items()}


def _build(cfg: Decontaminate) -> tuple[dict[int, list[str]], dict]:
    from smolray.eval.multiple_choice import load_task

    index: dict[int, list[str]] = defaultdict(list)
    tasks = {}
    for spec in cfg.tasks:
        name, examples = load_task(spec)
        short = 0
        for ex in examples:
            context, answer = ex.pairs[ex.gold]
            grams = ngram_hashes(context + answer, cfg.ngram, whole=False)
            # Shorter than one n-gram: matching it whole would flag every page with a common phrase.
            short += len(grams) == 0
            for h in set(grams.tolist()):
                index[h].append(f"{name}/{ex.id}")
        tasks[name] = {"examples": len(examples), "shorter_than_ngram": short}
    return dict(index), tasks


def matches(text: str, index: dict[int, list[str]], n: int) -> list[str]:
    """Sorted example ids whose n-grams appear in the text."""
    grams = ngram_hashes(text, n, whole=False)
    hit = {e for h in np.unique(grams).tolist() if h in index for e in index[h]}
    return sorted(hit)
