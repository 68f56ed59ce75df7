"""Ray Data workers killed inside a batch job: the job finishes, no row lost or repeated.

Ray Data retries a task whose worker died (its tasks run with unlimited
retries for system failures), and a retried tokenize task rewrites the same
shard names from the start of its file, so the result must be byte for byte
the uninterrupted one: the session corpus, tokenized from the same file with
the same settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np

from conftest import SAMPLE


def kill_tasks(pattern: str, stop: threading.Event, killed: list[int], most: int = 2) -> None:
    """SIGKILL the Ray worker running a task whose title matches `pattern`, up to `most` times."""
    while not stop.is_set() and len(killed) < most:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        if found:
            pid = int(found[0])
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:  # finished between the lookup and the kill
                pass
            time.sleep(0.5)  # let the retry start before the next kill
        time.sleep(0.02)


def test_tokenizing_survives_killed_data_workers(corpus, tmp_path):
    from smolray.data.shards import SourceReader
    from smolray.data.tokenize import tokenize_source
    from smolray.recipe import SourceConfig, load_recipe

    from conftest import TINY, recipe_overrides

    recipe = load_recipe(TINY, recipe_overrides(corpus["tokenizer"], corpus["root"], tmp_path))
    src = SourceConfig(**{**recipe.data.source("prose").model_dump(), "raw": [str(SAMPLE / "prose.jsonl")],
                          "shards": str(tmp_path / "prose")})
    stop, killed = threading.Event(), []
    # The per-file tasks' process title is ray::MapBatches(tokenize_file).
    chaos = threading.Thread(target=kill_tasks, args=(r"^ray::.*tokenize_file", stop, killed))
    chaos.start()
    try:
        got = tokenize_source(src, corpus["tokenizer"], recipe.model.vocab_size, recipe.data.shard_tokens)
    finally:
        stop.set()
        chaos.join()
    assert killed, "no encode task was running to kill"
    want = corpus["manifests"]["prose"]
    assert (got.docs, got.tokens, got.heldout_docs, got.skipped_empty) == \
           (want.docs, want.tokens, want.heldout_docs, want.skipped_empty)
    assert [s.sha256 for s in got.shards] == [s.sha256 for s in want.shards]
    a, b = SourceReader(str(tmp_path / "prose"), got), SourceReader(str(corpus["root"] / "prose"), want)
    assert np.array_equal(a.read(0, a.tokens), b.read(0, b.tokens))
    assert not list((tmp_path / "prose").glob("*.tmp"))  # a killed task's half-written files are gone
