"""Shared command-line plumbing for the entry points in jobs/."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from smolray.curate import CurateError
from smolray.data.plan import DataPlanError
from smolray.data.raw import RawDataError
from smolray.data.shards import ShardError
from smolray.eval import TaskError
from smolray.posttrain.chat import TemplateError
from smolray.posttrain.prepare import PreparedDataError
from smolray.recipe import Recipe, RecipeError, load_recipe
from smolray.redact import redact
from smolray.train.recovery import CheckpointError, TrainingFailed

USER_ERRORS = (RecipeError, DataPlanError, ShardError, RawDataError, FileNotFoundError,
               PreparedDataError, TemplateError, TaskError, CurateError, CheckpointError)


def recipe_parser(description: str, example: str = "recipes/tiny.yaml",
                  override: str = "train.zero_stage=3") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help=f"YAML file, e.g. {example}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a field, e.g. --set {override} (repeatable)")
    return p


def load(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.config, args.set)


def run(main: Callable[[], None]) -> None:
    """Run an entry point; user errors print one clear message and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(2)
    except TrainingFailed as e:  # the run itself failed: not a usage error
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(1)
