"""Synthetic documents (Cosmopedia-style) or educational-value labels (FineWeb-Edu-style) with vLLM.

    ray job submit --working-dir . -- python jobs/synth.py --config recipes/synth-tiny.yaml
    ray job submit --working-dir . -- python jobs/synth.py --config recipes/annotate-tiny.yaml

Rows land in <output_dir>/<name>/data/ as parquet with a `text` column and
their provenance; point a source's `raw` at that folder and
jobs/tokenize.py turns it into shards the mixer draws from. Rerunning the
same command after a crash generates only the rows no part holds yet.
"""

import os
import sys

# jobs/tokenize.py would shadow the standard library's `tokenize`.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import recipe_parser, run
from smolray.recipe import RecipeError, load_recipe
from smolray.synth.config import SynthConfig


def main() -> None:
    p = recipe_parser(__doc__, "recipes/synth-tiny.yaml", "generate.prompts=48")
    p.add_argument("--dry-run", action="store_true", help="print the first prompts and start nothing")
    p.add_argument("--stop-after-parts", type=int, metavar="N",
                   help="stop once N parts of results are written; the same command again continues")
    args = p.parse_args()

    # 1. Config, model, topics, corpus and the planned rows: every check before any engine starts.
    cfg = load_recipe(args.config, args.set, cls=SynthConfig)
    from smolray.serve.config import resolve_source
    from smolray.synth.run import check_same_run, out_dir, plan, run as synth

    try:
        source = resolve_source(cfg.model.source, "model.source")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": source})})
        planned = plan(cfg)
        rows = planned[0]
        check_same_run(cfg, out_dir(cfg), record=False)  # a rerun with other settings: refused now
    except ValueError as e:
        raise RecipeError(str(e)) from None
    if args.dry_run:
        for r in rows[:3]:
            print(f"--- {r['id']}\n{r['instruction']}\n")
        print(f"{len(rows)} rows planned; output in {out_dir(cfg)}")
        return

    # 2. The engine on the cluster, results streamed into parquet parts.
    from smolray.cluster import connect

    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(out_dir(cfg), ".vllm-cache"))
    connect()
    m = synth(cfg, planned, stop_after_parts=args.stop_after_parts)
    print(f"{m['rows']} rows in {m['data']} ({len(m['parts'])} parts); dropped {m['dropped'] or 'none'}; "
          f"{m['failed_this_run']} failed this run, {m['missing']} still missing")
    if cfg.mode == "annotate":
        print("scores: " + ", ".join(f"{k}: {v}" for k, v in m["scores"].items()))


if __name__ == "__main__":
    run(main)
