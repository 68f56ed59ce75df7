"""Tokenize the recipe's raw sources into shards, as a Ray Data pipeline.

    ray job submit --working-dir . -- python jobs/tokenize.py --config recipes/tiny.yaml

Each source's raw files (parquet or jsonl, local or s3://...) become
token shards plus a manifest in its `shards` directory, one task per file.
A source whose inputs and tokenizer are unchanged is skipped, and a rerun
after a crash tokenizes only the files not yet done; --force redoes it all.
"""

import os
import sys

# This folder holds tokenize.py, which would shadow the standard library's
# `tokenize` (Python puts a script's folder first on sys.path): drop it.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import load, recipe_parser, run
from smolray.cluster import connect
from smolray.data.tokenize import tokenize_recipe


def main() -> None:
    p = recipe_parser(__doc__)
    p.add_argument("--force", action="store_true", help="re-tokenize sources that are up to date")
    args = p.parse_args()
    recipe = load(args)
    connect()
    for name, m in tokenize_recipe(recipe, force=args.force).items():
        print(f"{name:<12} {m.docs:>9,} docs {m.tokens:>13,} tokens in {len(m.shards)} shards "
              f"({m.heldout_docs} held out, {m.skipped_empty} empty, "
              f"{m.skipped_short} under min_doc_tokens left out)")


if __name__ == "__main__":
    run(main)
