"""Mixture sweep: proxy pretraining runs on Ray Tune, a regression, a recommended mixture.

    python tune/mixture_sweep.py --config tune/tiny-mixture.yaml
    ray job submit --working-dir . -- python tune/mixture_sweep.py --config tune/tiny-mixture.yaml
    python tune/mixture_sweep.py --config tune/tiny-ratio.yaml --dry-run

Trains one run of the sweep's base recipe per mixture at a fixed token
budget, as many at once as the cluster and resources.max_concurrent allow,
stops poor mixtures early (ASHA on the held-out target loss), fits the
metric against the mixture weights, and trains the recommended mixture as
a confirmation trial. With `transfer`, the best mixtures and the baselines
are trained again at a larger proxy and the two rankings compared. Results
land in <output_dir>/<name>/: results.csv, metric.png, fit.png,
transfer.png and recommendation.json. Running the same command again
resumes an interrupted sweep.
"""


from smolray.cli import recipe_parser, run
from smolray.recipe import load_recipe
from smolray.tune.config import SweepConfig
from smolray.tune.space import check


def main() -> None:
    p = recipe_parser(__doc__, "tune/tiny-mixture.yaml", "space.trials=24")
    p.add_argument("--dry-run", action="store_true", help="print the trials and start nothing")
    args = p.parse_args()

    # 1. The sweep and its base recipe: every check before any cluster work.
    cfg = load_recipe(args.config, args.set, cls=SweepConfig)
    base = check(cfg)
    if args.dry_run:
        from smolray.data.shards import read_manifest
        from smolray.tune.sweep import plan_trials

        tokens = {s: read_manifest(base.data.source(s).shards).tokens for s in cfg.search}
        for t in plan_trials(cfg, tokens):
            mix = ", ".join(f"{s} {w:.3f}" for s, w in t.mixture.items())
            print(f"{t.id:<10} {t.recipe.total_steps} steps  {mix}")
        if cfg.transfer:
            from smolray.tune.space import trial_recipe

            small = trial_recipe(cfg, base.data.weights, "proxy", cfg.output_dir)
            big = trial_recipe(cfg, base.data.weights, "larger", cfg.output_dir, larger=True)
            print(f"then the top {cfg.transfer.top_k} mixtures and the baselines x {cfg.replicates} seed(s) at "
                  f"the larger proxy: {big.model.num_parameters:,} parameters, {big.total_steps} steps "
                  f"(the proxy: {small.model.num_parameters:,}, {small.total_steps} steps)")
        return

    from smolray.cluster import connect
    from smolray.data.tokenize import tokenize_recipe
    from smolray.tune.analysis import fit_rows, format_summary, full_mixture, transfer_choice, write_report
    from smolray.tune.sweep import (one_trial, plan_trials, run_trials, sweep_dir, transfer_trials, trial_rows,
                                    write_trials)

    # 2. Shards (up-to-date sources are skipped) and the trials' recipes.
    connect()
    manifests = tokenize_recipe(base)
    tokens = {s: manifests[s].tokens for s in cfg.search}
    trials = plan_trials(cfg, tokens)
    write_trials(sweep_dir(cfg), trials)

    # 3. The sweep on Tune, then the regression over the finished trials.
    out, sources = sweep_dir(cfg), list(cfg.search) + list(cfg.fixed)
    asha = cfg.scheduler if cfg.scheduler.kind == "asha" else None
    grid = run_trials(out, trials, "trials", cfg.metric, cfg.mode, cfg.resources.max_concurrent, asha)
    rows = trial_rows(sources, cfg.metric, trials, grid)
    fitted = fit_rows(cfg, rows, tokens)

    # 4. The recommended mixture, trained like any trial.
    # With replicates, under each seed: its verdicts compare means with their errors.
    confirm = []
    if fitted and cfg.recommend.confirm:
        mix = full_mixture(cfg, fitted[0].mixture)
        ts = [one_trial(cfg, "confirm", mix, out, r) for r in range(cfg.replicates)]
        write_trials(out, ts, record=False)
        grid = run_trials(out, ts, "confirm", cfg.metric, cfg.mode)
        confirm = trial_rows(sources, cfg.metric, ts, grid)
    # 5. Rank transfer: the best mixtures and the baselines again, at the larger proxy.
    larger = []
    if cfg.transfer:
        ts = transfer_trials(cfg, transfer_choice(cfg, rows), trials, out)
        write_trials(out, ts, record=False)
        grid = run_trials(out, ts, "transfer", cfg.metric, cfg.mode, cfg.resources.max_concurrent)
        larger = trial_rows(sources, cfg.metric, ts, grid)
    summary = write_report(cfg, out, rows, fitted, confirm, larger)
    print(format_summary(cfg, rows + confirm, summary))
    print(f"results in {out}: results.csv, metric.png, fit.png, {'transfer.png, ' if larger else ''}"
          "recommendation.json")


if __name__ == "__main__":
    run(main)
