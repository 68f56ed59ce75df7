"""Mixtures drawn from a sweep's space, and the trial recipes that train them."""

from __future__ import annotations

import os

import numpy as np

from smolray.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from smolray.recipe.schema import ModelConfig
from smolray.tune.config import SweepConfig


def prior(cfg: SweepConfig, tokens: dict[str, int]) -> np.ndarray:
    """Relative weight of each searched source, summing to 1."""
    p = cfg.space.prior
    if p == "uniform":
        w = np.ones(len(cfg.search))
    elif p == "tokens":
        w = np.array([float(tokens[s]) for s in cfg.search])
    else:
        w = np.array([float(p[s]) for s in cfg.search])
    return w / w.sum()


def mixtures(cfg: SweepConfig, tokens: dict[str, int]) -> list[dict[str, float]]:
    """Every trial's full mixture: fixed shares plus the searched sources' shares of the rest."""
    sp, search = cfg.space, cfg.search
    base = prior(cfg, tokens)
    if sp.kind == "list":
        rows = [np.array([m.get(s, 0.0) for s in search], dtype=float) for m in sp.mixtures]
    elif sp.kind == "grid":
        rows = []
        rest = base[1:] / base[1:].sum() if len(search) > 1 else base[1:]
        for v in sp.values:
            rows.append(np.concatenate([[v], (1 - v) * rest]))
    else:
        rng = np.random.default_rng(sp.seed)
        rows = list(rng.dirichlet(sp.concentration * len(search) * base, size=sp.trials))
    free = 1.0 - sum(cfg.fixed.values())
    out = []
    for r in rows:
        r = r / r.sum()
        mix = {**cfg.fixed, **{s: float(free * x) for s, x in zip(search, r)}}
        out.append({s: w for s, w in mix.items() if w > 0})
    return out


def _flow(d: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in d.items()) + "}"


def _sets(cfg: SweepConfig, budget: int | None = None) -> list[str]:
    """The sweep's overrides, then its evaluation, on every trial."""
    sets = list(cfg.set)
    if cfg.eval.target:
        sets.append(f"eval.target={_flow(cfg.eval.target)}")
    # every_steps=0 means "only at the end": any period of at least the run's
    # length scores exactly once, at the last step.
    sets.append(f"eval.every_steps={cfg.eval.every_steps or budget or cfg.budget_tokens}")
    return sets


def scaled_model(m: ModelConfig, scale: float) -> list[str]:
    """Overrides for a model `scale` times as wide and as deep, keeping head_dim and the GQA group.

    Width grows by whole groups of query heads, so hidden_size stays a
    multiple of the heads; the MLP keeps its ratio to hidden_size.
    """
    group = m.num_heads // m.num_kv_heads
    kv = max(1, round(m.num_kv_heads * scale))
    hidden = kv * group * m.head_dim
    return [f"model.num_kv_heads={kv}", f"model.num_heads={kv * group}", f"model.hidden_size={hidden}",
            f"model.intermediate_size={round(m.intermediate_size * hidden / m.hidden_size)}",
            f"model.num_layers={max(1, round(m.num_layers * scale))}"]


def larger_budget(cfg: SweepConfig) -> int:
    t = cfg.transfer
    return t.budget_tokens or round(cfg.budget_tokens * (t.scale or 1.0))


def trial_recipe(cfg: SweepConfig, mixture: dict[str, float], name: str, output_dir: str,
                 replicate: int = 0, larger: bool = False) -> Recipe:
    """The base recipe with the sweep's overrides, the budget and this mixture.

    Replicate r trains under the base recipe's seed + r: the seed sets the
    initialisation and the data plan's shuffles alike. `larger`: the
    transfer's proxy (cfg.transfer) instead of the sweep's.
    """
    path, budget, model = cfg.recipe, cfg.budget_tokens, []
    if larger:
        budget = larger_budget(cfg)
        if cfg.transfer.recipe:
            path = cfg.transfer.recipe
        else:
            model = scaled_model(load_recipe(cfg.recipe, _sets(cfg)).model, cfg.transfer.scale)
    sets = _sets(cfg, budget) + model + [f"name={name}", f"train.total_tokens={budget}",
                                         f"data.weights={_flow(mixture)}", f"run.output_dir={output_dir}"]
    cpus = cfg.resources.cpus_per_trial
    base = load_recipe(path, sets)
    if replicate:
        sets.append(f"seed={base.seed + replicate}")
    # The trial's CPUs are split over its workers (fractions let tiny trials share a core).
    sets.append(f"train.cpus_per_worker={cpus / base.train.num_workers!r}")
    return absolute(load_recipe(path, sets))


def absolute(recipe: Recipe) -> Recipe:
    """The recipe with every local path made absolute.

    Tune runs each trial in its own directory, and a recorded trial recipe
    must mean the same files when rerun from anywhere with jobs/pretrain.py.
    """
    def fix(p: str) -> str:
        return p if "://" in p or os.path.isabs(p) else os.path.abspath(p)

    raw = recipe.model_dump(mode="json")
    if os.path.exists(raw["tokenizer"]):  # else a hub name
        raw["tokenizer"] = fix(raw["tokenizer"])
    raw["run"]["output_dir"] = fix(raw["run"]["output_dir"])
    for src in raw["data"]["sources"]:
        src["shards"] = fix(src["shards"])
        src["raw"] = [fix(p) for p in src["raw"]]
    return recipe_from_dict(raw, source=f"recipe {recipe.name}")


def check(cfg: SweepConfig, tokens: dict[str, int] | None = None) -> Recipe:
    """Everything about the sweep that needs the base recipe; returns it.

    Fails before launching on unknown sources and a budget below one step.
    """
    base = load_recipe(cfg.recipe, _sets(cfg))
    if base.data.stages is not None:
        raise RecipeError(f"recipe {cfg.recipe}: a sweep searches one mixture; give a base recipe "
                          "with data.weights (set: ['data.stages=null', 'data.weights={...}'])")
    known = {s.name for s in base.data.sources}
    # eval.target was checked by the recipe itself, which _sets carries it into.
    for field, names in (("search", cfg.search), ("fixed", list(cfg.fixed))):
        unknown = sorted(set(names) - known)
        if unknown:
            raise RecipeError(f"{field} names {unknown}, which the recipe {cfg.recipe} does not have; "
                              f"its sources are {sorted(known)}")
    step = base.tokens_per_step
    if cfg.budget_tokens < step:
        raise RecipeError(f"budget_tokens={cfg.budget_tokens} is less than one optimizer step of "
                          f"{cfg.recipe} ({step} tokens = global_batch_size x seq_len); raise it to at "
                          f"least {step}")
    if cfg.transfer:
        # The larger proxy, built as its trials will be: it must load and see the same sources.
        t = cfg.transfer
        if t.recipe:
            missing = sorted((set(cfg.search) | set(cfg.fixed) | set(cfg.eval.target))
                             - {s.name for s in load_recipe(t.recipe).data.sources})
            if missing:
                raise RecipeError(f"transfer.recipe={t.recipe} lacks the sources {missing} that the sweep "
                                  f"mixes or scores; give it the sweep's sources (those of {cfg.recipe})")
        step = load_recipe(t.recipe, cfg.set).tokens_per_step if t.recipe else step
        if larger_budget(cfg) < step:
            raise RecipeError(f"transfer: {larger_budget(cfg)} tokens per larger trial is less than one "
                              f"optimizer step ({step} tokens); raise transfer.budget_tokens")
        # The larger proxy, built as its trials will be: every override must hold there too.
        trial_recipe(cfg, {**cfg.fixed, **{s: 1.0 for s in cfg.search}}, "transfer-check", cfg.output_dir,
                     larger=True)
    return base
