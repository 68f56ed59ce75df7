"""Pretrain a Llama model from a recipe with Ray Train + DeepSpeed ZeRO.

    ray job submit --working-dir . -- python jobs/pretrain.py --config recipes/smollm2-135m.yaml
    python jobs/pretrain.py --config recipes/tiny.yaml --dry-run

Running the same command again resumes from the latest complete checkpoint.
"""

import os
import sys

# This folder holds tokenize.py, which would shadow the standard library's
# `tokenize` (Python puts a script's folder first on sys.path): drop it.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import load, recipe_parser, run
from smolray.data.plan import DataPlanError, build_plan
from smolray.tokenizer import fingerprint, offline_fingerprint


def main() -> None:
    p = recipe_parser(__doc__)
    p.add_argument("--dry-run", action="store_true", help="print the plan and start nothing")
    p.add_argument("--stop-at-step", type=int, help="checkpoint and stop after this step")
    p.add_argument("--sample-log", help="directory to log every trained sequence's identity")
    p.add_argument("--prompt", default="She could not help thinking that",
                   help="prompt for the closing sampled completion")
    args = p.parse_args()

    # 1. The recipe and its data plan: every check before any cluster work.
    recipe = load(args)
    # A dry run never waits on the network: a hub tokenizer it cannot find
    # locally is reported as unchecked, and the rest of the plan still prints.
    unchecked = None
    try:
        if args.dry_run:
            fp, unchecked = offline_fingerprint(recipe.tokenizer)
        else:
            fp = fingerprint(recipe.tokenizer)
        plan, error = build_plan(recipe, tokenizer_fingerprint=fp), None
    except (DataPlanError, FileNotFoundError) as e:
        plan, error = None, str(e)
    if args.dry_run:
        from smolray.train.dryrun import describe

        print(describe(recipe, plan, error, unchecked))  # credentials in URIs masked
        return
    if error:
        raise DataPlanError(error)

    # Imported only now: torch, DeepSpeed and transformers take seconds, and
    # a bad recipe should fail before paying for them.
    from smolray.cluster import connect
    from smolray.train.trainer import build_trainer, fit, log_dir, output_dir

    # 2. Train (or resume) on the cluster.
    connect()
    result = fit(build_trainer(recipe, plan, args.stop_at_step, args.sample_log), recipe)
    step = result.metrics["step"]
    if step < recipe.total_steps:
        print(f"stopped at step {step} of {recipe.total_steps}; checkpoint {result.checkpoint.path}. "
              "Run the same command again to continue.")
        return

    # 3. Export a Hugging Face model and report (transformers' model stack
    # is imported only now: a stopped run never needs it).
    from smolray.train.export import export_hf, publish
    from smolray.train.summary import build_summary, format_summary, write_summary

    out = output_dir(recipe)
    with result.checkpoint.as_directory() as ckpt:
        export = export_hf(ckpt, recipe, out.rstrip("/") + "/export")
        # The closing sample needs a local copy when the export went to a bucket.
        local = export if "://" not in export else export_hf(ckpt, recipe, log_dir(recipe) + "/export")
    summary = build_summary(recipe, plan, log_dir(recipe), result.checkpoint.path, export, args.prompt,
                            sample_from=local)
    write_summary(summary, os.path.join(log_dir(recipe), "summary.json"))
    if "://" in out:
        publish(log_dir(recipe), out.rstrip("/") + "/logs")
    print(format_summary(summary))


if __name__ == "__main__":
    run(main)
