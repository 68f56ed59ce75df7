"""`make demo`: the main job, end to end, on a private local Ray head.

1. trains the demo tokenizer on the bundled sample corpus (once);
2. starts a Ray head of its own (own temp dir, own ports);
3. submits jobs/tokenize.py and jobs/pretrain.py with `ray job submit`;
4. prints the run's summary and stops the head it started.
Everything lands under outputs/demo/.
"""

import os
import sys

# This folder holds tokenize.py, which would shadow the standard library's
# `tokenize` (Python puts a script's folder first on sys.path): drop it.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

import json
import shutil
import time
from pathlib import Path

from smolray.cli import run
from smolray.cluster import LocalHead
from smolray.data.raw import iter_texts
from smolray.recipe import load_recipe
from smolray.tokenizer import train_bpe
from smolray.train.summary import format_summary

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/tiny.yaml"
OUT = ROOT / "outputs" / "demo"


def overrides() -> list[str]:
    # The job runs in a copy of the repo (--working-dir), so every path it
    # writes or reads outside the repo is absolute.
    sets = [f"tokenizer={OUT / 'tokenizer'}", f"run.output_dir={OUT / 'run'}"]
    for name in ("prose", "code", "math"):
        sets += [f"data.sources.{name}.shards={OUT / 'data' / name}",
                 f"data.sources.{name}.raw=[{ROOT / 'data' / 'sample' / name}.jsonl]"]
    return sets


def main() -> None:
    sets = overrides()
    recipe = load_recipe(ROOT / RECIPE, sets)
    if not (OUT / "tokenizer" / "tokenizer.json").is_file():
        print(f"training a {recipe.model.vocab_size}-token BPE tokenizer on data/sample ...")
        texts = (t for s in recipe.data.sources for t in iter_texts(s.raw, s.text_field))
        train_bpe(texts, recipe.model.vocab_size, OUT / "tokenizer",
                  model_max_length=recipe.model.max_position_embeddings)
    shutil.rmtree(OUT / "run", ignore_errors=True)  # a fresh run every demo

    set_args = [arg for s in sets for arg in ("--set", s)]
    venv_bin = os.path.dirname(sys.executable)
    env = {"PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    t0 = time.time()
    with LocalHead(num_cpus=8, env=env) as head:
        print(f"ray head up at {head.address} (dashboard {head.dashboard_url})")
        for script in ("jobs/tokenize.py", "jobs/pretrain.py"):
            rc = head.submit(["python", script, "--config", RECIPE, *set_args],
                             working_dir=str(ROOT)).returncode
            if rc != 0:
                raise SystemExit(f"{script} failed (exit {rc}); see the job log above")
    summary = json.loads((OUT / "run" / "logs" / "summary.json").read_text())
    print("\n" + "=" * 72 + "\n" + format_summary(summary))
    print(f"demo finished in {time.time() - t0:.0f} s; the head it started is stopped")


if __name__ == "__main__":
    run(main)
