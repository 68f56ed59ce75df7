"""Supervised fine-tuning on conversations, on the pretraining engine.

    ray job submit --working-dir . -- python jobs/sft.py --config recipes/smollm2-sft.yaml
    python jobs/sft.py --config recipes/tiny-sft.yaml --dry-run

Loss on assistant replies only; conversations packed without attention or
loss crossing between them (or padded: data.packing=false). Running the same
command again resumes from the latest checkpoint.
"""

import os
import sys

# jobs/tokenize.py would shadow the standard library's `tokenize`: drop this folder.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import run
from smolray.posttrain.job import parser, run_job
from smolray.recipe.post import SFTRecipe


def main() -> None:
    run_job(SFTRecipe, parser(__doc__).parse_args())


if __name__ == "__main__":
    run(main)
