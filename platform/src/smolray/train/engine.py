"""The DeepSpeed engine every smolray objective trains with.

Pretraining, SFT and DPO build the same engine from the same recipe sections
(`optim`, `train`) and a WSD schedule; only the loss differs.
"""

from __future__ import annotations

import os
import sys

import torch

from smolray.recipe import OptimConfig
from smolray.train.schedule import WSD


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


def ds_config(train, optim: OptimConfig, world: int, load_universal: bool = False) -> dict:
    extra = {"checkpoint": {"load_universal": True}} if load_universal else {}
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


def build_engine(model: torch.nn.Module, optim: OptimConfig, train, schedule: WSD, world: int,
                 load_universal: bool = False):
    """deepspeed.initialize with a torch AdamW and the WSD schedule.

    A torch optimizer (not DeepSpeed's fused Adam) avoids a 100 s JIT build
    on CPU machines and behaves the same on GPUs.
    """
    use_environment_op_cache()
    import deepspeed

    opt = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr,
                            betas=optim.betas, eps=optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(train, optim, world, load_universal),
                                           dist_init_required=False)
    return engine
