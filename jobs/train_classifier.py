"""Train a quality classifier (FineWeb-Edu / DCLM style) on labelled documents.

    python jobs/train_classifier.py --config recipes/classifier-edu-tiny.yaml
    python jobs/train_classifier.py --config recipes/classifier-ngram-tiny.yaml

Training runs here, on the driver, without Ray: the labelled rows fit in one
process, and the frozen encoder runs over them once. A GPU is used when torch
sees one (the recipe's `device: cpu` turns that off). The classifier lands in
<output_dir>/<name>/ (model, classifier.json, metrics.json, confusion.png);
the curate pipeline scores documents with it through
`smolray.curate.classifier.load_scorer(<that folder>)`.
"""

import os
import sys

# jobs/tokenize.py would shadow the standard library's `tokenize`.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import recipe_parser, run
from smolray.curate.classifier import ClassifierConfig
from smolray.recipe import load_recipe


def main() -> None:
    p = recipe_parser(__doc__, "recipes/classifier-ngram-tiny.yaml", "ngram.epochs=10")
    args = p.parse_args()

    cfg = load_recipe(args.config, args.set, cls=ClassifierConfig)
    from smolray.curate.classifier_report import format_report
    from smolray.curate.classifier_train import train

    m = train(cfg)
    print(format_report(m))
    print(f"classifier ({cfg.kind}, {m['seconds']:.1f} s on {m['device']}): "
          f"{os.path.abspath(os.path.join(cfg.output_dir, cfg.name))}")


if __name__ == "__main__":
    run(main)
