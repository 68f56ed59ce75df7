"""A mixture sweep on Ray Tune: one proxy pretraining run per mixture.

Each trial is a Tune function trainable that builds and fits the same
Ray Train + DeepSpeed TorchTrainer as jobs/pretrain.py, from a recipe
written to <sweep>/trials/<id>/recipe.yaml before launch (rerun any trial
alone with `jobs/pretrain.py --config` on that file). The training loop
scores held-out loss every eval.every_steps, and a TuneReportCallback hands
those reports to Tune, where ASHA stops the mixtures that fall behind.

Layout of <output_dir>/<name>/:
  trials.json            the planned trials (id -> mixture and recipe): a rerun must match
  trials/<id>/           each trial's recipe.yaml and its Ray Train run
  tune/                  Tune's experiment state (what a rerun resumes from)
  results.csv, *.png, recommendation.json   written by smolray.tune.analysis
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import yaml

from smolray.recipe import Recipe, RecipeError, load_recipe
from smolray.redact import redact_obj
from smolray.tune.config import SchedulerConfig, SweepConfig
from smolray.tune.space import mixtures, trial_recipe


@dataclass(frozen=True)
class Trial:
    id: str  # the mixture's id, then -s<r> for replicate r when the sweep has replicates
    mixture: dict[str, float]
    recipe: Recipe
    group: str = ""  # the mixture's id, shared by its replicates (and by its larger-proxy trials)
    replicate: int = 0

    @property
    def recipe_path(self) -> str:
        return os.path.join(self.recipe.run.output_dir, "recipe.yaml")


def sweep_dir(cfg: SweepConfig) -> str:
    return os.path.abspath(os.path.join(cfg.output_dir, cfg.name))


def plan_trials(cfg: SweepConfig, tokens: dict[str, int]) -> list[Trial]:
    """Every trial of the sweep: the space's mixtures, then the named baselines."""
    out = sweep_dir(cfg)
    named = [(f"t{i:02d}", m) for i, m in enumerate(mixtures(cfg, tokens))]
    free = 1.0 - sum(cfg.fixed.values())
    for name, m in cfg.baselines.items():
        total = sum(m.values())
        mix = {**cfg.fixed, **{s: free * m.get(s, 0.0) / total for s in cfg.search}}
        named.append((name, {s: w for s, w in mix.items() if w > 0}))
    return [one_trial(cfg, tid, mix, out, r) for tid, mix in named for r in range(cfg.replicates)]


def one_trial(cfg: SweepConfig, group: str, mixture: dict[str, float], out: str, replicate: int = 0,
              larger: bool = False) -> Trial:
    """Replicate `replicate` of mixture `group` (plain `group` when the sweep has no replicates).

    `larger`: the same mixture at the transfer's larger proxy, as trial larger-<id>.
    """
    tid = group if cfg.replicates == 1 else f"{group}-s{replicate}"
    if larger:
        tid = f"larger-{tid}"
    return Trial(tid, mixture, trial_recipe(cfg, mixture, f"{cfg.name}-{tid}", os.path.join(out, "trials", tid),
                                            replicate, larger), group, replicate)


def transfer_trials(cfg: SweepConfig, chosen: list[str], trials: list[Trial], out: str) -> list[Trial]:
    """The `chosen` mixtures (analysis.transfer_choice) under every seed at the larger proxy."""
    mixture = {t.group: t.mixture for t in trials}
    return [one_trial(cfg, g, mixture[g], out, r, larger=True) for g in chosen for r in range(cfg.replicates)]


def write_trials(out: str, trials: list[Trial], record: bool = True) -> None:
    """Write each trial's recipe; with `record`, the plan, refusing to mix two sweeps in one directory.

    The plan holds every trial's whole recipe, so a rerun whose space, seed,
    budget or base recipe changed is refused, naming the fields that differ.
    It is a record, so credentials in its URIs are masked; each trial's
    recipe.yaml is what the trial loads, so it keeps them and only this
    user can read it (as the recipe the sweep came from).
    """
    path = os.path.join(out, "trials.json")
    planned = redact_obj({t.id: {"mixture": t.mixture, "recipe": t.recipe.model_dump(mode="json")}
                          for t in trials})
    if record and os.path.exists(path):
        with open(path) as f:
            old = redact_obj(json.load(f))  # a plan an older version wrote unmasked compares alike
        if old != planned:
            raise RecipeError(f"{out} holds a sweep planned differently ({_plan_change(old, planned)}). "
                              "Give the sweep a new name to keep both, restore the old settings to "
                              "resume it, or move that directory away to start over")
    for t in trials:
        os.makedirs(os.path.dirname(t.recipe_path), exist_ok=True)
        fd = os.open(t.recipe_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when an older run left it readable
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(t.recipe.model_dump(mode="json"), f, sort_keys=False)
    if record:
        with open(path, "w") as f:
            json.dump(planned, f, indent=2)


def _plan_change(old: dict, new: dict) -> str:
    if set(old) != set(new):
        return f"trials {sorted(old)} there, {sorted(new)} here"
    for tid in sorted(new):
        if old[tid].get("mixture") != new[tid]["mixture"]:
            return f"trial {tid}'s mixture was {old[tid].get('mixture')}, now {new[tid]['mixture']}"
        fields = _changed(old[tid].get("recipe", {}), new[tid]["recipe"])
        if fields:
            return f"trial {tid}'s recipe changed in {', '.join(fields[:6])}"
    return "unreadable plan"


def _changed(a, b, prefix: str = "") -> list[str]:
    """Dotted paths where two recipe dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b))
                for p in _changed(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _fit_trial(config: dict) -> None:
    """One trial, inside a Tune session: fit (or resume) its TorchTrainer."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from smolray.data.plan import build_plan
    from smolray.tokenizer import fingerprint
    from smolray.train.trainer import build_trainer

    recipe = load_recipe(os.path.join(config["dir"], "trials", config["trial"], "recipe.yaml"))
    plan = build_plan(recipe, tokenizer_fingerprint=fingerprint(recipe.tokenizer))
    # Same name and storage as before: an interrupted trial resumes from its
    # latest checkpoint (Ray Train restores it).
    build_trainer(recipe, plan, callbacks=[TuneReportCallback()]).fit()


def run_trials(out: str, trials: list[Trial], experiment: str, metric: str, mode: str,
               max_concurrent: int = 0, asha: SchedulerConfig | None = None):
    """Fit the trials on Tune (resuming the experiment if it exists); the ResultGrid.

    `out` holds trials/<id>/recipe.yaml for each trial and Tune's state under tune/.
    """
    from ray import tune

    # Reports between evaluations carry no target metric; ASHA skips them,
    # but Tune's strict check would fail the trial on the first one.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # The trial actor only waits on its TorchTrainer, whose workers book the CPUs.
    trainable = tune.with_resources(_fit_trial, {"CPU": 0.01})
    path = os.path.join(out, "tune", experiment)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()
    scheduler = None
    if asha:
        scheduler = tune.schedulers.ASHAScheduler(time_attr="step", max_t=trials[0].recipe.total_steps,
                                                  grace_period=asha.grace_period_steps,
                                                  reduction_factor=asha.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.id for t in trials]), "dir": out},
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, scheduler=scheduler, max_concurrent_trials=max_concurrent or None,
            trial_name_creator=lambda t: t.config["trial"],
            trial_dirname_creator=lambda t: t.config["trial"]),
        run_config=tune.RunConfig(name=experiment, storage_path=os.path.join(out, "tune")),
    )
    return tuner.fit()


def trial_rows(sources: list[str], metric: str, trials: list[Trial], grid) -> list[dict]:
    """One row per trial: its mixture, its last evaluation, tokens, wall time, status."""
    by_id = {t.id: t for t in trials}
    rows = []
    for res in grid:
        t = by_id[res.config["trial"]]
        last = res.metrics or {}
        row = {"trial": t.id, "mixture": t.group or t.id, "seed": t.recipe.seed,
               **{f"weight/{s}": round(t.mixture.get(s, 0.0), 6) for s in sources}}
        evals = _last_eval(res, metric)
        row[metric] = evals.get(metric, float("nan"))
        row.update({k: v for k, v in evals.items() if k.startswith(("val/", "target_")) and k not in row})
        row["eval_step"] = evals.get("step", 0)
        row["step"] = last.get("step", 0)
        row["tokens"] = last.get("tokens", 0)
        row["wall_s"] = round(last.get("time_total_s", 0.0), 1)
        if res.error is not None:
            row["status"] = "error"
        elif row["step"] < t.recipe.total_steps:
            row["status"] = f"stopped at step {row['step']}"
        else:
            row["status"] = "finished"
        row["recipe"] = t.recipe_path
        row["checkpoint"] = last.get("checkpoint_path", "")
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _last_eval(res, metric: str) -> dict:
    """The trial's last report that carries the metric (ASHA may stop between evaluations)."""
    df = res.metrics_dataframe
    if df is None or metric not in df.columns:
        return {}
    df = df[df[metric].notna()]
    return {} if df.empty else df.iloc[-1].to_dict()
