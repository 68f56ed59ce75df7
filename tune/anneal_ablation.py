"""Annealing ablation: decay a stable-phase checkpoint on candidate sources, compare them.

    python tune/anneal_ablation.py --config tune/tiny-anneal.yaml
    ray job submit --working-dir . -- python tune/anneal_ablation.py --config tune/tiny-anneal.yaml

From the base run's checkpoint, each candidate decays the learning rate to
its minimum over `decay_steps` on the base mixture plus the candidate source
at its share (the control adds nothing). The candidates train in parallel
as Tune trials; each annealed model is then exported and scored on the
evaluation suite (held-out loss per source, the target mixture, and the
multiple-choice tasks). Results land in <output_dir>/<name>/: anneal.csv,
anneal.png and anneal.json. Running the same command again resumes.
"""

import json
import os

from smolray.cli import recipe_parser, run
from smolray.recipe import load_recipe
from smolray.tune.anneal import AnnealConfig, anneal_dir, candidate_recipes, checkpoint_step


def main() -> None:
    p = recipe_parser(__doc__, "tune/tiny-anneal.yaml", "decay_steps=40")
    p.add_argument("--dry-run", action="store_true", help="print the candidates and start nothing")
    args = p.parse_args()

    # 1. The candidates' recipes: every check before any cluster work.
    cfg = load_recipe(args.config, args.set, cls=AnnealConfig)
    step = checkpoint_step(cfg.checkpoint)
    recipes = candidate_recipes(cfg, step)
    for name, r in recipes.items():
        mix = ", ".join(f"{s} {w:.3f}" for s, w in r.stages[-1].shares.items())
        print(f"{name:<12} steps {step} -> {r.total_steps}, decaying on {mix}")
    if args.dry_run:
        return

    from smolray.cluster import connect
    from smolray.eval.suite import EvalConfig, format_results, run_suite
    from smolray.train.export import export_hf
    from smolray.train.validate import heldout_uri
    from smolray.tune.report import plot_bars, write_table
    from smolray.tune.sweep import Trial, run_trials, trial_rows, write_trials

    # 2. The decays, in parallel on Tune.
    connect()
    out = anneal_dir(cfg)
    trials = [Trial(name, r.stages[-1].shares, r) for name, r in recipes.items()]
    write_trials(out, trials)
    metric = "target_loss" if cfg.eval.target else "loss"
    sources = [s.name for s in next(iter(recipes.values())).data.sources]
    grid = run_trials(out, trials, "anneal", metric, "min", cfg.resources.max_concurrent)
    rows = trial_rows(sources, metric, trials, grid)

    # 3. Each annealed model on the evaluation suite.
    for row in rows:
        if row["status"] != "finished":
            continue
        r = recipes[row["trial"]]
        export = os.path.join(r.run.output_dir, "export")
        if not os.path.exists(os.path.join(export, "config.json")):
            export_hf(row["checkpoint"], r, export)
        suite = EvalConfig(tasks=cfg.eval.tasks, limit=cfg.eval.limit, target=cfg.eval.target,
                           heldout={s: heldout_uri(r.data.source(s).shards) for s in r.heldout_sources},
                           seq_len=r.data.seq_len, max_tokens=r.eval.max_tokens)
        res = run_suite(export, suite)
        print(f"== {row['trial']}\n{format_results(res)}")
        for task, m in res["tasks"].items():
            row[f"{task}/acc_norm"] = m["acc_norm"]
        row["export"] = export

    write_table(rows, os.path.join(out, "anneal.csv"))
    cols = [metric] + sorted({k for r in rows for k in r if k.endswith("/acc_norm")})
    plot_bars(rows, cols, os.path.join(out, "anneal.png"))
    with open(os.path.join(out, "anneal.json"), "w") as f:
        json.dump({"checkpoint": os.path.abspath(cfg.checkpoint), "step": step, "metric": metric,
                   "candidates": rows}, f, indent=2)
    print(f"{'candidate':<12}{metric:>14}" + "".join(f"{c:>22}" for c in cols[1:]))
    for row in rows:
        print(f"{row['trial']:<12}{float(row[metric]):>14.4f}"
              + "".join(f"{float(row.get(c, float('nan'))):>22.3f}" for c in cols[1:]))
    print(f"results in {out}: anneal.csv, anneal.png, anneal.json")


if __name__ == "__main__":
    run(main)
