"""Direct preference optimization (sigmoid DPO), on the pretraining engine.

    ray job submit --working-dir . -- python jobs/dpo.py --config recipes/smollm2-dpo.yaml
    python jobs/dpo.py --config recipes/tiny-dpo.yaml --dry-run

The reference (the starting model) scores every pair once, up front, as a
Ray Data pass; training reports rewards, margin and accuracy. Running the same
command again resumes from the latest checkpoint.
"""

import os
import sys

# jobs/tokenize.py would shadow the standard library's `tokenize`: drop this folder.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import run
from smolray.posttrain.job import parser, run_job
from smolray.recipe.post import DPORecipe


def main() -> None:
    run_job(DPORecipe, parser(__doc__).parse_args())


if __name__ == "__main__":
    run(main)
