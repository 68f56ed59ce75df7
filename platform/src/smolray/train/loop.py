"""The per-worker training loop that Ray Train runs on every rank."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from smolray.data.plan import DataPlan
from smolray.data.stream import RankSlice, build_dataset
from smolray.model import build_model
from smolray.recipe import Recipe
from smolray.train.checkpoint import TAG, CheckpointError, TrainerState, mark_rank_done, verify
from smolray.train.engine import build_engine


@dataclass(frozen=True)
class LoopConfig:
    """Everything a worker needs; the `train_loop_config` of the TorchTrainer."""

    recipe: Recipe
    plan: DataPlan
    log_dir: str  # rank 0's metrics.jsonl and TensorBoard events
    bos_id: int
    eos_id: int
    # Stop cleanly after this step (with a checkpoint); a rerun continues.
    stop_at_step: int | None = None
    # If set, every rank appends the identity of each sequence it trains on.
    sample_log: str | None = None


def train_loop(cfg: LoopConfig) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    r, plan = cfg.recipe, cfg.plan
    device = ray.train.torch.get_device()
    names = plan.names
    ckpt = ray.train.get_checkpoint()
    state = _resume_state(ckpt, cfg, world) if ckpt else None
    start = state.step if state else 0
    base_seq = np.array(state.source_sequences if state else [0] * len(names), dtype=np.int64)
    total, B, L = r.total_steps, r.train.global_batch_size, r.data.seq_len
    stop = min(total, cfg.stop_at_step or total)
    if start >= stop:
        return

    ds = build_dataset(plan, RankSlice(rank, world, B, start, total),
                       position_ids=r.data.reset_position_ids)
    batches = iter(ds.iter_torch_batches(batch_size=r.train.micro_batch_size,
                                         prefetch_batches=r.train.prefetch_batches))
    # Pull the first batch before building the engine: the pipeline then
    # fills its prefetch buffer while DeepSpeed initializes.
    first = next(batches)
    engine = build_engine(build_model(r.model, r.seed, cfg.bos_id, cfg.eos_id), r, world)
    if ckpt:
        _load_engine(engine, ckpt)
    batches = itertools.chain([first], batches)
    log = _metrics_log(cfg.log_dir) if rank == 0 else None
    samples = _sample_log(cfg.sample_log, rank)
    local_seq = np.zeros(len(names), dtype=np.int64)  # sequences per source since `start`
    window = {"loss": 0.0, "micro": 0, "wait": 0.0, "t0": time.perf_counter(), "steps": 0}

    for step in range(start, stop):
        for _ in range(r.grad_accum):
            t_wait = time.perf_counter()
            batch = next(batches)
            window["wait"] += time.perf_counter() - t_wait
            x = batch["input_ids"].to(device)
            kwargs = {"position_ids": batch["position_ids"].to(device)} if "position_ids" in batch else {}
            logits = engine(input_ids=x, **kwargs).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].to(device).flatten())
            engine.backward(loss)
            engine.step()
            window["loss"] += loss.item()
            window["micro"] += 1
            src = batch["source"].numpy()
            local_seq += np.bincount(src, minlength=len(names))
            if samples:
                for row in zip(batch["index"].tolist(), src.tolist(), batch["epoch"].tolist(),
                               batch["doc"].tolist(), batch["offset"].tolist()):
                    samples.write(f"{step}\t{row[0]}\t{names[row[1]]}\t" + "\t".join(map(str, row[2:])) + "\n")
        window["steps"] += 1
        done = step + 1
        save = done % r.checkpoint.every_steps == 0 or done == stop
        if not (save or done % r.run.log_every_steps == 0):
            continue

        seq = base_seq + _all_sum(local_seq, device)
        planned = plan.draws(done * B)
        if not np.array_equal(seq, planned):
            raise RuntimeError(f"data accounting drifted at step {done}: trained {seq.tolist()} "
                               f"sequences per source, plan says {planned.tolist()}")
        metrics = _metrics(engine, window, seq, plan, r, device, world)
        if log:
            log.write(done, metrics)
        if samples:
            samples.flush()
        if save:
            new = TrainerState(step=done, sequences=done * B, world_size=world, source_names=names,
                               source_tokens=(seq * L).tolist(), source_sequences=seq.tolist(),
                               recipe_name=r.name, plan_fingerprint=plan.fingerprint(B))
            _save(engine, new, rank, metrics)
        else:
            ray.train.report({**metrics, "step": done})
        # Throughput windows exclude logging and checkpoint time.
        window = {"loss": 0.0, "micro": 0, "wait": 0.0, "t0": time.perf_counter(), "steps": 0}
    if log:
        log.close()
    if samples:
        samples.close()


def _resume_state(ckpt, cfg: LoopConfig, world: int) -> TrainerState:
    with ckpt.as_directory() as d:
        state = verify(d)
        want = cfg.plan.fingerprint(cfg.recipe.train.global_batch_size)
        if state.plan_fingerprint != want:
            raise CheckpointError(
                f"{d}: the checkpoint was trained on a different data plan (sources, weights, "
                "seq_len, seed, global batch or the shards changed). Resuming would silently change "
                "what the model has seen. Start a new run (new recipe name) from this checkpoint instead.")
        if state.world_size != world and cfg.recipe.train.zero_stage > 0:
            raise CheckpointError(
                f"{d}: written by {state.world_size} workers; ZeRO stage {cfg.recipe.train.zero_stage} "
                f"shards cannot be loaded by {world}. Set train.num_workers={state.world_size}.")
    return state


def _load_engine(engine, ckpt) -> None:
    with ckpt.as_directory() as d:
        path, _ = engine.load_checkpoint(d, tag=TAG)
        if path is None:
            raise CheckpointError(f"{d}: DeepSpeed found no checkpoint under tag {TAG!r}")


def _save(engine, state: TrainerState, rank: int, metrics: dict) -> None:
    tmp = tempfile.mkdtemp(prefix="smolray-ckpt-")
    try:
        engine.save_checkpoint(tmp, tag=TAG)
        if rank == 0:
            state.save(tmp)
        mark_rank_done(tmp, rank)
        ray.train.report({**metrics, "step": state.step},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step-{state.step:08d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _all_sum(counts: np.ndarray, device) -> np.ndarray:
    t = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def _metrics(engine, window: dict, seq: np.ndarray, plan: DataPlan, r: Recipe, device,
             world: int) -> dict:
    loss = torch.tensor([window["loss"], window["micro"], window["wait"]], device=device,
                        dtype=torch.float64)
    dist.all_reduce(loss)
    elapsed = time.perf_counter() - window["t0"]
    tokens = window["steps"] * r.tokens_per_step
    norm = engine.get_global_grad_norm()
    share = seq / max(1, seq.sum())
    m = {
        "loss": float(loss[0] / loss[1]),
        "lr": float(engine.get_lr()[0]),
        "grad_norm": float(norm) if norm is not None else float("nan"),
        "tokens_per_s": tokens / elapsed,
        # Mean over ranks of the time spent waiting for the next batch.
        "data_wait_frac": float(loss[2] / world) / elapsed,
        "tokens": int(seq.sum() * r.data.seq_len),
    }
    epochs = seq / np.array([s.chunks(plan.seq_len) for s in plan.sources])
    for i, s in enumerate(plan.sources):
        m[f"tokens/{s.name}"] = int(seq[i] * r.data.seq_len)
        m[f"share/{s.name}"] = float(share[i])
        m[f"epochs/{s.name}"] = float(epochs[i])
    return m


def _metrics_log(directory: str):
    from smolray.train.metrics import MetricsLog

    return MetricsLog(directory)


def _sample_log(directory: str | None, rank: int):
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    return open(os.path.join(directory, f"rank-{rank}.tsv"), "a")
