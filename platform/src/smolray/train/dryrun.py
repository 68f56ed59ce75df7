"""`--dry-run`: the resolved recipe and what the run will do, starting nothing."""

from __future__ import annotations

import numpy as np
import yaml

from smolray.data import mixture
from smolray.data.plan import DataPlan
from smolray.recipe import Recipe
from smolray.redact import redact
from smolray.train.flops import TARGET_MFU, flops_per_token, peak_tflops
from smolray.train.schedule import from_recipe


def _flops_lines(recipe: Recipe) -> list[str]:
    """FLOPs per token at each sequence length the run trains, and the tokens/s per GPU
    that the target MFU needs on an H100 (the figure to compare a GPU run's log with)."""
    h100 = peak_tflops("H100")
    out = []
    for seq in dict.fromkeys(st.seq_len for st in recipe.stages):
        f = flops_per_token(recipe.model, seq)
        need = TARGET_MFU * h100 * 1e12 / f
        out.append(f"flops per token:   {f:,} at seq_len {seq} (6N + 12 L H Dh T); "
                   f"{TARGET_MFU:.0%} MFU on an H100 ({h100:g} TFLOP/s bf16) is {need:,.0f} tokens/s per GPU")
    return out


def describe(recipe: Recipe, plan: DataPlan | None, plan_error: str | None = None,
             unchecked: str | None = None) -> str:
    out = ["# resolved recipe", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False).rstrip(), ""]
    steps, per_step = recipe.total_steps, recipe.tokens_per_step
    out += [
        "# run",
        f"parameters:        {recipe.model.num_parameters:,}",
        f"tokens per step:   {per_step:,} ({recipe.train.global_batch_size} sequences x "
        f"{recipe.data.seq_len} tokens; micro batch {recipe.train.micro_batch_size} x "
        f"{recipe.train.num_workers} workers x {recipe.grad_accum} accumulation"
        + (f"; elastic down to {recipe.train.min_workers} workers" if recipe.train.min_workers else "") + ")",
        f"optimizer steps:   {steps:,}",
        f"total tokens:      {steps * per_step:,} (budget {recipe.train.total_tokens:,})",
        *_flops_lines(recipe),
        "",
        "# learning rate (WSD)",
    ]
    out += [f"{name:>15}: step {step:>10,}  lr {lr:.3e}" for name, step, lr in from_recipe(recipe).key_points()]
    out += ["", "# data plan (training tokens: seq_len per sequence)"]
    names = [src.name for src in recipe.data.sources]
    totals = np.zeros(len(names), dtype=np.int64)
    for st in recipe.stages:
        out.append(f"stage {st.name}: steps {st.start_step:,} to {st.stop_step:,} ({st.steps:,} steps), "
                   f"seq_len {st.seq_len}, {st.batch} sequences per step, rope theta {st.rope_theta:g}")
        draws = mixture.draws_before(mixture.quantize(list(st.shares.values())), st.sequences)
        out.append(f"  {'source':<16}{'target':>8}{'tokens to draw':>22}{'available':>20}{'epochs':>9}")
        for (name, share), n in zip(st.shares.items(), draws):
            avail, ep = "not tokenized", "-"
            if plan and name in plan.names:
                sp = plan.sources[plan.names.index(name)]
                avail, ep = f"{sp.tokens:,}", f"{int(n) / max(1, sp.chunks(st.seq_len)):.2f}"
            out.append(f"  {name:<16}{share:>8.1%}{int(n) * st.seq_len:>22,}{avail:>20}{ep:>9}")
            totals[names.index(name)] += int(n) * st.seq_len
    out += ["", f"{'source':<16}{'tokens to draw':>22}{'available':>20}{'epochs':>9}{'cap':>6}"]
    epochs = plan.epochs_through(recipe.total_steps) if plan else None
    for i, name in enumerate(names):
        if totals[i] == 0:
            continue
        cap = recipe.data.source(name).max_epochs
        if plan and name in plan.names:
            j = plan.names.index(name)
            avail, ep = f"{plan.sources[j].tokens:,}", f"{epochs[j]:.2f}"
        else:
            avail, ep = "not tokenized", "-"
        out.append(f"{name:<16}{int(totals[i]):>22,}{avail:>20}{ep:>9}{cap:>6g}")
    if plan:
        for name, e in zip(plan.names, epochs):
            if e > 1:
                out.append(f"warning: {name} repeats: {e:.2f} epochs")
    if unchecked:
        out += ["", unchecked]
    if plan_error:
        out += ["", "the plan cannot run yet (training would stop here):", plan_error]
    return redact("\n".join(out))  # the recipe and plan name URIs: no credentials in print
