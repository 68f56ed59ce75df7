"""The DeepSpeed engine a worker trains with, built from the recipe."""

from __future__ import annotations

import torch

from smolray.recipe import Recipe
from smolray.train.schedule import from_recipe


def resolve_precision(recipe: Recipe) -> str:
    p = recipe.train.precision
    if p != "auto":
        return p
    if recipe.train.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    # bf16 matmuls on CPU are emulated on most cores and slower than fp32.
    return "fp32"


def ds_config(recipe: Recipe, world: int, load_universal: bool = False) -> dict:
    t = recipe.train
    extra = {"checkpoint": {"load_universal": True}} if load_universal else {}
    return {**extra,
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * world),
        "gradient_clipping": recipe.optim.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": resolve_precision(recipe) == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Norm gains (the only 1-D parameters in Llama) are not decayed.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, recipe: Recipe, world: int, load_universal: bool = False):
    """deepspeed.initialize with a torch AdamW and the WSD schedule.

    A torch optimizer (not DeepSpeed's fused Adam) avoids a 100 s JIT build
    on CPU machines and behaves the same on GPUs.
    """
    import deepspeed

    o = recipe.optim
    opt = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr,
                            betas=o.betas, eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, from_recipe(recipe).factor)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(recipe, world, load_universal),
                                           dist_init_required=False)
    return engine
