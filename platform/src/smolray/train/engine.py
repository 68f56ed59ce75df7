"""The DeepSpeed engine every smolray objective trains with.

Pretraining, SFT and DPO build the same engine from the same recipe sections
(`optim`, `train`) and a WSD schedule; only the loss differs.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import torch

from smolray.train.schedule import WSD

if TYPE_CHECKING:  # the recipe (pydantic) is not needed to build or time a model
    from smolray.recipe import OptimConfig


def use_environment_op_cache() -> None:
    """Cache DeepSpeed's just-in-time ops with the Python environment, not in ~/.cache.

    The ops are built against this environment's torch, so they belong to
    it: every process that uses it (drivers, Ray workers, the install step)
    then finds the same build, whatever HOME it runs with. A read-only
    environment keeps torch's default (~/.cache/torch_extensions).
    """
    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch-extensions")


def prebuild_cpu_ops() -> None:
    """Build DeepSpeed's CPU shared-memory all-reduce now (`make install`), not in the first run."""
    use_environment_op_cache()
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    ShareMemCommBuilder().load()


def resolve_precision(train) -> str:
    """`train` is a TrainConfig or PostTrainConfig (precision, use_gpu)."""
    p = train.precision
    if p != "auto":
        return p
    if train.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    # bf16 matmuls on CPU are emulated on most cores and slower than fp32.
    return "fp32"


def grad_accum_dtype(train) -> str | None:
    """Where micro-batch gradients are summed: fp32 under bf16 (DeepSpeed's default keeps bf16).

    Summing 16 or more bf16 gradients loses the low bits of each (8 bits of
    mantissa); DeepSpeed keeps an fp32 sum with ZeRO stages 1-3 only.
    """
    if resolve_precision(train) != "bf16":
        return None
    want = train.grad_accum_dtype
    if want == "auto":
        return "fp32" if train.zero_stage > 0 else None
    if want == "fp32" and train.zero_stage == 0:
        raise ValueError("train.grad_accum_dtype=fp32 with bf16 needs train.zero_stage >= 1 "
                         "(DeepSpeed sums bf16 gradients in fp32 only in its ZeRO optimizers); "
                         "set zero_stage=1 or grad_accum_dtype=auto")
    return "bf16" if want == "bf16" else "fp32"


def ds_config(train, optim: OptimConfig, world: int, load_universal: bool = False) -> dict:
    extra = {"checkpoint": {"load_universal": True}} if load_universal else {}
    accum = grad_accum_dtype(train)
    if accum:
        extra["data_types"] = {"grad_accum_dtype": accum}
    return {**extra,
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.global_batch_size // (train.micro_batch_size * world),
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": resolve_precision(train) == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Norm gains (the only 1-D parameters in Llama) are not decayed.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]


def fused_adamw(train) -> bool:
    """AdamW's fused kernel: all parameters in one launch instead of a few per tensor."""
    if train.fused_adamw == "auto":
        return bool(train.use_gpu and torch.cuda.is_available())
    return train.fused_adamw == "on"


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, train) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas,
                             eps=optim.eps, fused=fused_adamw(train) or None)


def prepare_model(model: torch.nn.Module, train) -> list[str]:
    """The model-side levers, applied before DeepSpeed wraps the model; what was applied."""
    done = []
    if train.activation_checkpointing:
        # Non-reentrant: works with ZeRO-3's gather hooks and inputs that need no grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        done.append("activation checkpointing per decoder layer")
    if train.compile:
        # Per layer, in place: the parameter names (and so checkpoints) stay
        # the same, and the attention mask is built once per step outside the
        # compiled code (a whole-model compile rebuilds it on torch 2.13).
        for layer in model.model.layers:
            layer.compile()
        done.append("torch.compile per decoder layer")
    return done


def describe(train, extras: list[str]) -> str:
    p = resolve_precision(train)
    accum = grad_accum_dtype(train)
    parts = [f"ZeRO-{train.zero_stage}", p + (f" (gradients summed in {accum})" if accum else ""),
             "fused AdamW" if fused_adamw(train) else "AdamW", *extras]
    return "engine: " + ", ".join(parts)


def build_engine(model: torch.nn.Module, optim: OptimConfig, train, schedule: WSD, world: int,
                 load_universal: bool = False):
    """deepspeed.initialize with a torch AdamW and the WSD schedule.

    A torch optimizer (not DeepSpeed's fused Adam) avoids a 100 s JIT build
    on CPU machines; torch's own fused kernel serves GPUs (train.fused_adamw).
    """
    use_environment_op_cache()
    import deepspeed
    import torch.distributed as dist

    extras = prepare_model(model, train)
    opt = build_optimizer(model, optim, train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(train, optim, world, load_universal),
                                           dist_init_required=False)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(describe(train, extras))
    return engine
