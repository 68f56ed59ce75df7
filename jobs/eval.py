"""Evaluate an exported model: multiple-choice tasks and held-out loss.

    ray job submit --working-dir . -- python jobs/eval.py --model outputs/demo/run/export \
        --tasks data/sample/tasks/*.jsonl --heldout prose=held/prose.jsonl --heldout code=held/code.jsonl \
        --target prose=0.3,code=0.7
    python jobs/eval.py --model outputs/demo/run/export --tasks hf:hellaswag hf:arc_easy --limit 500

Tasks are scored by log-likelihood in cloze form (acc and length-normalised
acc_norm); held-out text gives loss per token and bits per byte per source,
and --target the weighted mixture of them. Each task runs as a Ray task.
"""

import argparse
import json
import os
import sys

# jobs/tokenize.py would shadow the standard library's `tokenize`: drop this folder.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import run


def _pairs(items: list[str], flag: str, cast=str) -> dict:
    out = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key or not value:
                raise ValueError(f"{flag} {item!r}: expected NAME=VALUE, e.g. {flag} code=held/code.jsonl")
            out[key] = cast(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a Hugging Face model folder, e.g. outputs/demo/run/export")
    p.add_argument("--tasks", nargs="*", default=[], help="JSONL task files or hf:<name>")
    p.add_argument("--heldout", action="append", default=[], metavar="SOURCE=PATH")
    p.add_argument("--target", action="append", default=[], metavar="SOURCE=WEIGHT,...")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--limit", type=int, help="examples per task")
    p.add_argument("--max-tokens", type=int, help="held-out tokens per source")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()

    # 1. Check everything before any cluster work.
    from smolray.eval import TaskError

    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise TaskError(f"--model {args.model}: no config.json; give an exported model folder")
    if not args.tasks and not args.heldout:
        raise TaskError("nothing to evaluate: give --tasks and/or --heldout")
    try:
        heldout = {k: os.path.abspath(v) if "://" not in v else v
                   for k, v in _pairs(args.heldout, "--heldout").items()}
        target = _pairs(args.target, "--target", float)
    except ValueError as e:
        raise TaskError(str(e)) from None
    unknown = sorted(set(target) - set(heldout))
    if unknown:
        raise TaskError(f"--target names {unknown} with no --heldout text; add --heldout {unknown[0]}=PATH")
    tasks = [t if t.startswith("hf:") or "://" in t else os.path.abspath(t) for t in args.tasks]

    # 2. Run the suite as Ray tasks and report.
    from smolray.cluster import connect
    from smolray.eval.suite import EvalConfig, format_results, run_suite

    connect()
    res = run_suite(os.path.abspath(args.model), EvalConfig(tasks=tasks, heldout=heldout, target=target,
                                                            seq_len=args.seq_len, limit=args.limit,
                                                            max_tokens=args.max_tokens))
    print(format_results(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    run(main)
