"""The per-worker loop for SFT and DPO, on the pretraining engine.

The same DeepSpeed engine, schedule, checkpoint layout and resume rules as
pretraining; only the rows and the loss differ. Row order is a pure function
of (seed, step): the global batch of step s is rows s*B .. s*B+B-1 of an
endless stream whose epoch e is a seeded permutation of the dataset. So a
resumed run (on any worker count) trains on exactly the rows it would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from smolray.data.permute import key_for, permute
from smolray.model.loss import DESCRIPTIONS, choose, use_loss_head
from smolray.posttrain.objective import Rows, dpo_step, sft_loss
from smolray.posttrain.reference import load_causal_lm
from smolray.recipe.post import DPORecipe, PostRecipe
from smolray.train.checkpoint import TrainerState, load_engine, save_checkpoint, verify
from smolray.train.engine import build_engine
from smolray.train.recovery import changed_data
from smolray.train.schedule import WSD


@dataclass(frozen=True)
class PostLoopConfig:
    """The `train_loop_config` of a post-training TorchTrainer."""

    recipe: PostRecipe
    data_dir: str  # the prepared rows (and reference log-probs for DPO)
    fingerprint: str  # of the prepared rows: a resume must see the same data
    init_dir: str  # the starting weights, a Hugging Face folder
    log_dir: str
    stop_at_step: int | None = None


def schedule(recipe: PostRecipe, rows: int) -> WSD:
    total = recipe.total_steps(rows)
    s = recipe.schedule
    return WSD(peak=recipe.optim.lr, total=total, warmup=round(s.warmup_fraction * total),
               decay=round(s.decay_fraction * total), min_ratio=s.min_lr_ratio)


def step_rows(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """Row ids of the global batch of `step`: epoch by epoch, each a fresh permutation."""
    g = np.arange(step * batch, (step + 1) * batch, dtype=np.int64)
    out = np.empty_like(g)
    for epoch in np.unique(g // n):
        sel = g // n == epoch
        out[sel] = permute(g[sel] % n, n, key_for(seed, int(epoch)))
    return out


def post_loop(cfg: PostLoopConfig) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    r, dpo = cfg.recipe, isinstance(cfg.recipe, DPORecipe)
    device = ray.train.torch.get_device()
    rows = Rows(cfg.data_dir)
    sched = schedule(r, len(rows))
    ckpt = ray.train.get_checkpoint()
    state = _resume_state(ckpt, cfg) if ckpt else None
    start = state.step if state else 0
    stop = min(sched.total, cfg.stop_at_step or sched.total)
    if start >= stop:
        return
    reshard = bool(state) and state.world_size != world and r.train.zero_stage > 0
    model = load_causal_lm(cfg.init_dir)
    loss_impl = use_loss_head(model, choose(r.train.lm_loss, device))
    if rank == 0:
        print(f"loss: {DESCRIPTIONS[loss_impl]}")
    engine = build_engine(model, r.optim, r.train, sched, world, load_universal=reshard)
    if ckpt:
        load_engine(engine, ckpt, reshard, r.train.zero_stage, r.run.trust_checkpoint)
    engine.train()

    B, mb, accum = r.train.global_batch_size, r.train.micro_batch_size, r.grad_accum
    tokens = state.source_tokens[0] if state else 0
    log = _metrics_log(cfg.log_dir) if rank == 0 else None
    window, t0 = {}, time.perf_counter()
    for step in range(start, stop):
        idx = step_rows(step, B, len(rows), r.seed)
        # The loss is a mean over the whole global batch: SFT's over its
        # trained tokens, DPO's over its pairs.
        norm = B if dpo else max(1, rows.trained_tokens(idx))
        for micro in range(accum):
            mine = idx[(micro * world + rank) * mb:(micro * world + rank + 1) * mb]
            batch = rows.take(mine)
            if device.type == "cuda":  # pinned: the objective's copies then do not block
                batch = {k: v.pin_memory() for k, v in batch.items()}
            if dpo:
                loss, stats = dpo_step(engine, batch, device, r.dpo.beta)
            else:
                loss, stats = sft_loss(engine, batch, device)
            engine.set_gradient_accumulation_boundary(micro == accum - 1)
            # DeepSpeed divides by the accumulation steps and averages over ranks.
            engine.backward(loss * (accum * world / norm))
            engine.step()
            for k, v in stats.items():
                window[k] = window.get(k, 0.0) + v
        done = step + 1
        save = done % r.checkpoint.every_steps == 0 or done == stop
        if not (save or done % r.run.log_every_steps == 0) and done != 1:
            continue
        sums = _all_sum(window, device)
        tokens += int(sums["tokens"])
        m = _metrics(sums, dpo)
        # resumed_from: the step this process started at, so a log proves where a rerun began.
        m.update(lr=float(engine.get_lr()[0]), epoch=done * B / len(rows), tokens=tokens,
                 tokens_per_s=sums["tokens"] / (time.perf_counter() - t0), resumed_from=start)
        norm_ = engine.get_global_grad_norm()
        m["grad_norm"] = float(norm_) if norm_ is not None else float("nan")
        if log:
            log.write(done, m)
        if save:
            new = TrainerState(step=done, sequences=done * B, world_size=world,
                               source_names=[r.name], source_tokens=[tokens],
                               source_sequences=[done * B], source_epochs=[done * B / len(rows)],
                               source_shares=[1.0], recipe_name=r.name,
                               stage_fingerprints=[cfg.fingerprint], extra={"objective": r.objective})
            save_checkpoint(engine, new, rank, m, recipe=r)
        else:
            ray.train.report({**m, "step": done})
        window, t0 = {}, time.perf_counter()
    if log:
        log.close()


def _resume_state(ckpt, cfg: PostLoopConfig) -> TrainerState:
    with ckpt.as_directory() as d:
        state = verify(d)
        if state.stage_fingerprints != [cfg.fingerprint]:
            raise changed_data(d, state.stage_fingerprints, cfg.fingerprint)
    return state


def _all_sum(window: dict, device) -> dict:
    """Sum the window's stats over ranks; the one place the host reads them."""
    keys = sorted(window)
    t = torch.stack([torch.as_tensor(window[k], dtype=torch.float64, device=device).reshape(())
                     for k in keys])
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _metrics(s: dict, dpo: bool) -> dict:
    if not dpo:
        return {"loss": s["nll"] / max(1, s["trained"]), "trained_tokens": int(s["trained"])}
    n = max(1, s["pairs"])
    return {"loss": s["loss"] / n, "rewards/chosen": s["reward_chosen"] / n,
            "rewards/rejected": s["reward_rejected"] / n,
            "rewards/margin": (s["reward_chosen"] - s["reward_rejected"]) / n,
            "rewards/accuracy": s["correct"] / n,
            "logps/chosen": s["logp_chosen"] / n, "logps/rejected": s["logp_rejected"] / n}


def _metrics_log(directory: str):
    from smolray.train.metrics import MetricsLog

    return MetricsLog(directory)
