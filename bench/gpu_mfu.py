"""Training speed of the SmolLM2 presets on one device: tokens/s, MFU, peak memory.

    python bench/gpu_mfu.py --preset 135m 360m 1.7b --steps 20
    python bench/gpu_mfu.py --preset tiny --steps 3 --device cpu   (what the suite runs)

The training step of smolray's engine, without Ray or the data pipeline, so
that it runs on a GPU box that has only torch and transformers: the model
from the recipe's `model:` section (random weights, bf16 on CUDA), the
loss smolray picks (smolray.model.loss), the recipe's levers (compile,
activation checkpointing, fused AdamW) and random tokens. With
`--engine deepspeed` (when DeepSpeed is importable) the step runs through
the same DeepSpeed engine as a training job, on one process.

Prints one JSON line per preset and a table. MFU counts 6N + 12 L H Dh T
FLOPs per token (smolray.train.flops) against the device's dense bf16 peak;
the first `--warmup` steps (compilation, allocator growth) are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform" / "src"))

PRESETS = {"tiny": "tiny.yaml", "135m": "smollm2-135m.yaml", "360m": "smollm2-360m.yaml",
           "1.7b": "smollm2-1.7b.yaml"}
# ModelConfig's defaults, for fields a recipe leaves out (the recipe schema
# needs pydantic, which a bare GPU box may lack).
MODEL_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_embeddings": True, "init_std": 0.02}


def load_preset(name: str) -> tuple[SimpleNamespace, dict]:
    """The recipe's model section and its train section (for the levers)."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / PRESETS[name]).read_text())
    m = {**MODEL_DEFAULTS, **recipe["model"]}
    model = SimpleNamespace(**m, head_dim=m["hidden_size"] // m["num_heads"])
    return model, {"seq_len": recipe["data"]["seq_len"], **recipe["train"]}


def run(name: str, args) -> dict:
    import torch

    from smolray.model import attention, build_model
    from smolray.model.loss import DESCRIPTIONS, choose, lm_loss, use_loss_head
    from smolray.train.engine import fused_adamw, prepare_model
    from smolray.train.flops import device_name, flops_per_token, peak_tflops, utilization

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    spec, train_section = load_preset(name)
    seq = args.seq_len or train_section["seq_len"]
    mb = args.micro_batch or train_section["micro_batch_size"]
    levers = SimpleNamespace(
        activation_checkpointing=args.activation_checkpointing if args.activation_checkpointing is not None
        else train_section.get("activation_checkpointing", False),
        compile=args.compile if args.compile is not None else train_section.get("compile", False),
        fused_adamw=train_section.get("fused_adamw", "auto"), use_gpu=cuda,
        precision="bf16" if cuda else "fp32", grad_accum_dtype="auto", zero_stage=0,
        global_batch_size=mb, micro_batch_size=mb)

    model = build_model(spec, seed=0)
    spec.num_parameters = sum(p.numel() for p in model.parameters())  # unique: tied counted once
    loss_impl = use_loss_head(model, choose(args.loss, device))
    applied = prepare_model(model, levers)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = model.to(device=device, dtype=dtype)
    step = _deepspeed_step(model, levers) if args.engine == "deepspeed" else _torch_step(model, levers)

    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, spec.vocab_size, (mb, seq + 1), generator=g)
    ids, targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    docs = {}
    if args.packed:  # documents of --packed tokens, with position resets, as reset_position_ids makes
        attention.use_varlen(model)
        pos = torch.arange(seq).remainder(args.packed).repeat(mb, 1)
        docs = {"position_ids": pos.to(device), **attention.to_device(attention.packed_documents(pos), device)}
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step(lambda m: lm_loss(m, ids, targets, reduction="sum", **docs) / targets.numel())
        if cuda:
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)

    tokens_per_s = mb * seq * len(times) / sum(times)
    flops = flops_per_token(spec, seq)
    peak_mem = (torch.cuda.max_memory_allocated(device) if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"preset": name, "device": device_name(device), "engine": args.engine, "params": spec.num_parameters,
            "seq_len": seq, "micro_batch": mb, "packed": args.packed, "loss": loss_impl, "levers": applied,
            "fused_adamw": fused_adamw(levers), "steps": len(times), "tokens_per_s": tokens_per_s,
            "gflops_per_token": flops / 1e9, **utilization(tokens_per_s, flops, peak_tflops(device_name(device))),
            "peak_memory_gb": peak_mem / 1e9, "peak_memory_kind": "allocated" if cuda else "process RSS",
            "loss_path": DESCRIPTIONS[loss_impl]}


def _torch_step(model, levers):
    """AdamW on the model's own (bf16 on CUDA) parameters; no gradient accumulation."""
    import torch

    from smolray.train.engine import fused_adamw, param_groups

    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, fused=fused_adamw(levers) or None)

    def step(loss_of):
        loss_of(model).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _deepspeed_step(model, levers):
    """smolray's DeepSpeed engine (ds_config, ZeRO-0, bf16 on CUDA) on a one-process group."""
    import torch
    import torch.distributed as dist

    os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29511"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    import deepspeed

    from smolray.train.engine import build_optimizer, ds_config

    optim = SimpleNamespace(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, grad_clip=1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, optim, levers),
                                           config=ds_config(levers, optim, 1), dist_init_required=False)

    def step(loss_of):
        engine.backward(loss_of(engine))
        engine.step()

    return step


def _row(r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
    return (f"| {r['preset']} | {r['device']} | {r['micro_batch']} x {r['seq_len']} | {r['loss']} | "
            f"{', '.join(r['levers']) or '-'} | {r['tokens_per_s']:,.0f} | {r['tflops_per_gpu']:.3g} | "
            f"{mfu} | {r['peak_memory_gb']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", nargs="+", default=["135m", "360m", "1.7b"], choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--micro-batch", type=int, help="default: the recipe's train.micro_batch_size")
    ap.add_argument("--seq-len", type=int, help="default: the recipe's data.seq_len")
    ap.add_argument("--loss", default="auto", choices=["auto", "chunked", "liger", "plain"])
    ap.add_argument("--engine", default="torch", choices=["torch", "deepspeed"])
    ap.add_argument("--packed", type=int, default=0, metavar="N",
                    help="documents of N tokens with position resets (variable-length attention)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="default: the recipe's train.compile")
    ap.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                    help="default: the recipe's train.activation_checkpointing")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rows = []
    for name in args.preset:
        r = run(name, args)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print("| preset | device | micro batch x seq | loss | levers | tokens/s | TFLOP/s | MFU | peak GB |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(_row(r))


if __name__ == "__main__":
    main()
