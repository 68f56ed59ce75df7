"""`--dry-run`: the resolved recipe and what the run will do, starting nothing."""

from __future__ import annotations

import numpy as np
import yaml

from smolray.data import mixture
from smolray.data.plan import DataPlan
from smolray.model import count_parameters
from smolray.recipe import Recipe
from smolray.train.schedule import from_recipe


def describe(recipe: Recipe, plan: DataPlan | None, plan_error: str | None = None) -> str:
    out = ["# resolved recipe", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False).rstrip(), ""]
    steps, per_step = recipe.total_steps, recipe.tokens_per_step
    out += [
        "# run",
        f"parameters:        {count_parameters(recipe.model):,}",
        f"tokens per step:   {per_step:,} ({recipe.train.global_batch_size} sequences x "
        f"{recipe.data.seq_len} tokens; micro batch {recipe.train.micro_batch_size} x "
        f"{recipe.train.num_workers} workers x {recipe.grad_accum} accumulation)",
        f"optimizer steps:   {steps:,}",
        f"total tokens:      {steps * per_step:,} (budget {recipe.train.total_tokens:,})",
        "",
        "# learning rate (WSD)",
    ]
    out += [f"{name:>15}: step {step:>10,}  lr {lr:.3e}" for name, step, lr in from_recipe(recipe).key_points()]
    out += ["", "# data plan (tokens are trained input tokens, seq_len per sequence)"]
    sequences = steps * recipe.train.global_batch_size
    shares = recipe.data.mixture
    draws = (plan.draws(sequences) if plan else
             mixture.draws_before(mixture.quantize(list(shares.values())), sequences))
    head = f"{'source':<16}{'target':>8}{'tokens to draw':>20}{'available':>18}{'epochs':>9}"
    out.append(head)
    for i, (name, share) in enumerate(shares.items()):
        tokens = int(draws[i]) * recipe.data.seq_len
        if plan:
            sp = plan.sources[i]
            epochs = draws[i] / sp.chunks(plan.seq_len)
            avail, ep = f"{sp.tokens:,}", f"{epochs:.2f}"
        else:
            avail, ep = "not tokenized", "-"
        out.append(f"{name:<16}{share:>8.1%}{tokens:>20,}{avail:>18}{ep:>9}")
    if plan:
        ep = plan.epochs(sequences)
        for name, e in zip(plan.names, ep):
            if e > 1:
                out.append(f"note: {name} repeats ({e:.2f} epochs)")
    if plan_error:
        out += ["", "data not ready (training would stop here):", plan_error]
    return "\n".join(out)


def realized(seq: np.ndarray, names: list[str]) -> dict[str, float]:
    total = max(1, int(seq.sum()))
    return {n: int(s) / total for n, s in zip(names, seq)}
