"""Train a byte-level BPE tokenizer on a sample of the recipe's sources.

    python jobs/train_tokenizer.py --config recipes/tiny.yaml [--sample-mb 32]

Writes a Hugging Face tokenizer (with special tokens and chat template) to
the recipe's `tokenizer` directory, with the recipe's model.vocab_size.
"""

import os
import sys

# This folder holds tokenize.py, which would shadow the standard library's
# `tokenize` (Python puts a script's folder first on sys.path): drop it.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

import itertools

from smolray.cli import load, recipe_parser, run
from smolray.data.raw import expand, iter_texts
from smolray.tokenizer import train_bpe


def main() -> None:
    p = recipe_parser(__doc__)
    p.add_argument("--sample-mb", type=float, default=32.0,
                   help="megabytes of text to read from each source")
    args = p.parse_args()
    recipe = load(args)
    per_source = int(args.sample_mb * 1e6)
    texts = itertools.chain.from_iterable(
        iter_texts(expand(s.raw, f"data.sources.{s.name}.raw"), s.text_field, per_source)
        for s in recipe.data.sources)
    tok = train_bpe(texts, recipe.model.vocab_size, recipe.tokenizer,
                    model_max_length=recipe.model.max_position_embeddings)
    print(f"tokenizer with {len(tok)} tokens written to {recipe.tokenizer}")


if __name__ == "__main__":
    run(main)
