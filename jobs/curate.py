"""Curation: raw web or code documents to a filtered, deduplicated, decontaminated source.

    ray job submit --working-dir . -- python jobs/curate.py --config recipes/curate-sample.yaml

Steps run in the order the recipe lists them (language ID, the Gopher, C4
and FineWeb filters, exact and MinHash dedup, decontamination). Kept
documents land in <output_dir>/<name>/data/ as parquet with a `text`
column: point a source's `raw` there and jobs/tokenize.py makes its shards.
Rerunning the same command after a crash reuses every finished part.
"""

import os
import sys

# jobs/tokenize.py would shadow the standard library's `tokenize`.
_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

from smolray.cli import recipe_parser, run
from smolray.curate.config import CurateConfig
from smolray.recipe import load_recipe


def main() -> None:
    p = recipe_parser(__doc__, "recipes/curate-sample.yaml", "inputs.rows_per_part=500")
    p.add_argument("--dry-run", action="store_true",
                   help="print the steps, the inputs and what a run would reuse; start nothing")
    args = p.parse_args()

    # 1. Recipe, inputs and task files: every check before any cluster work.
    cfg = load_recipe(args.config, args.set, cls=CurateConfig)
    from smolray.curate.run import done, out_dir, plan, run_phases
    from smolray.data.raw import expand, identities

    files = expand(cfg.inputs.raw, "inputs.raw")
    ids = identities(files)
    for s in cfg.steps:
        if s.step == "decontaminate":
            from smolray.curate.decontam import build_index

            index, tasks = build_index(s)
            print(f"decontaminate: {len(index)} {s.ngram}-grams from "
                  + ", ".join(f"{n} ({t['examples']} examples)" for n, t in tasks.items()))
    phases = plan(cfg, files, ids)
    if args.dry_run:
        print(f"{len(files)} input files: " + ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""))
        for ph in phases:
            print(f"phase {ph.number} {ph.name}: {len(done(ph))} work items already done in {ph.dir}")
            for s in ph.steps:
                print("    " + s.model_dump_json())
        print(f"output: {out_dir(cfg)}")
        return

    # 2. The phases on the cluster, then the output folder, manifest and funnel.
    from smolray.cluster import connect
    from smolray.curate.report import finish

    connect()
    run_phases(cfg, files, phases)
    m = finish(cfg, phases, ids)
    print(f"{m['output']['docs']} documents kept in {m['output']['data']} ({m['output']['parts']} parts); "
          f"funnel: {os.path.join(out_dir(cfg), 'funnel.png')}")


if __name__ == "__main__":
    run(main)
