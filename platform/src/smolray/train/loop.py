"""The per-worker training loop that Ray Train runs on every rank."""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from smolray.data.plan import DataPlan
from smolray.data.stream import RankSlice, build_dataset, rank_slice
from smolray.model import attention, build_model, set_rope_theta
from smolray.model.loss import DESCRIPTIONS, choose, lm_loss, use_loss_head
from smolray.recipe import Recipe
from smolray.recipe.timeline import Stage
from smolray.train.checkpoint import TrainerState, load_engine, save_checkpoint, verify
from smolray.train.engine import build_engine
from smolray.train.flops import device_name, flops_per_token, peak_tflops, utilization
from smolray.train.loop_config import LoopConfig
from smolray.train.recovery import changed_stages
from smolray.train.schedule import from_recipe
from smolray.train.validate import validate


def train_loop(cfg: LoopConfig) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    r, plan = cfg.recipe, cfg.plan
    device = ray.train.torch.get_device()
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and r.run.init_from:
        ckpt = ray.train.Checkpoint(r.run.init_from)
    state = _resume_state(ckpt, cfg, world) if ckpt else None
    start = state.step if state else 0
    stop = min(r.total_steps, cfg.stop_at_step or r.total_steps)
    if start >= stop:
        return

    parts = _stage_parts(plan, rank, world, start, stop)
    batches = _open(plan, parts[0], r, device)
    # Pull the first batch before building the engine: the pipeline then
    # fills its prefetch buffer while DeepSpeed initializes.
    first = next(batches)
    # ZeRO shards are cut per worker: another worker count loads a universal copy.
    reshard = bool(state) and state.world_size != world and r.train.zero_stage > 0
    model = build_model(r.model, r.seed, cfg.bos_id, cfg.eos_id)
    if r.data.reset_position_ids:
        attention.use_varlen(model)  # documents packed with position resets: no 4D mask
    loss_impl = use_loss_head(model, choose(r.train.lm_loss, device))
    engine = build_engine(model, r.optim, r.train, from_recipe(r), world, load_universal=reshard)
    if ckpt:
        load_engine(engine, ckpt, reshard, r.train.zero_stage, r.run.trust_checkpoint)

    names = plan.names
    base_seq = np.array(state.source_sequences if state else [0] * len(names), dtype=np.int64)
    local_seq = np.zeros(len(names), dtype=np.int64)  # sequences per source since `start`
    log = _metrics_log(cfg.log_dir) if rank == 0 else None
    samples = _sample_log(cfg.sample_log, rank, start)
    peak = peak_tflops(device_name(device))
    if rank == 0:
        print(f"loss: {DESCRIPTIONS[loss_impl]}")
    if rank == 0 and peak is None:
        print(f"no MFU: {device_name(device)} has no known bf16 peak (smolray.train.flops); "
              "logging tflops_per_gpu only")
    window = _Window(device)
    for n, part in enumerate(parts):
        st = plan.stages[part.stage].stage
        if n:
            batches = _open(plan, part, r, device)
        else:
            batches = itertools.chain([first], batches)
        _enter_stage(engine, st, world)
        if n == 0 and start == 0 and r.eval.at_start and cfg.heldout:
            base = validate(engine, cfg.heldout, r.eval.target, rank, world, device, st.micro_batch)
            if log:
                log.write(0, base)
        accum = st.grad_accum(world)
        for step in range(part.start_step, part.stop_step):
            for micro in range(accum):
                t_wait = time.perf_counter()
                batch = next(batches)
                window.wait += time.perf_counter() - t_wait
                micro_step(engine, batch, device, window, boundary=micro == accum - 1)
                local_seq += host_counts(batch, len(names))
                if samples:
                    _log_samples(samples, step, batch, names)
            window.steps += 1
            done = step + 1
            save = done % r.checkpoint.every_steps == 0 or done == stop
            every = r.eval.every_steps
            score = bool(every and cfg.heldout) and (done % every == 0 or done == r.total_steps)
            if not (save or score or done % r.run.log_every_steps == 0):
                continue
            seq = base_seq + _all_sum(local_seq, device)
            planned = plan.draws_through(done)
            if not np.array_equal(seq, planned):
                raise RuntimeError(f"data accounting drifted at step {done}: trained {seq.tolist()} "
                                   f"sequences per source, the plan says {planned.tolist()}")
            metrics = _metrics(engine, window, plan, st, done, r, device, world, peak)
            metrics["resumed_from"] = start  # where this process began: logs prove where a rerun did
            if score:
                metrics.update(validate(engine, cfg.heldout, r.eval.target, rank, world, device,
                                        st.micro_batch))
            if log:
                log.write(done, metrics)
            if samples:
                samples.flush()
            if save:
                tokens = plan.tokens_through(done)
                new = TrainerState(step=done, sequences=int(seq.sum()), world_size=world,
                                   source_names=names, source_sequences=seq.tolist(),
                                   source_tokens=tokens.tolist(),
                                   source_epochs=plan.epochs_through(done).tolist(),
                                   source_shares=(tokens / max(1, tokens.sum())).tolist(),
                                   recipe_name=r.name, stage_fingerprints=plan.fingerprints(done))
                save_checkpoint(engine, new, rank, metrics, recipe=r)
            else:
                ray.train.report({**metrics, "step": done})
            window = _Window(device)  # throughput windows exclude logging and checkpoint time
    if log:
        log.close()
    if samples:
        samples.close()


# What the model reads; every other column (source, stage, index, epoch,
# doc, offset) is bookkeeping that stays on the host.
MODEL_INPUTS = ("input_ids", "labels", "position_ids")


def to_device(batch: dict, device) -> dict:
    """The model's columns on its device (from pinned host memory on GPUs, without blocking)."""
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS if k in batch}


def host_counts(batch: dict, sources: int) -> np.ndarray:
    """Sequences per source in a batch, from its host-side metadata."""
    return np.bincount(batch["source"].numpy(), minlength=sources)


class _Window:
    """One logging window: its loss summed on the device, its counts and times on the host."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.micro = 0
        self.wait = 0.0
        self.steps = 0
        self.t0 = time.perf_counter()


def micro_step(engine, batch: dict, device, window: _Window, boundary: bool) -> None:
    """Forward and backward of one micro batch, with no host sync: the loss is summed on the device."""
    inputs = to_device(batch, device)
    labels = inputs["labels"]
    # Packed documents (reset_position_ids) are described on the host and run
    # as separate sequences by the variable-length attention.
    docs = attention.to_device(attention.packed_documents(batch["position_ids"]), device) \
        if "position_ids" in batch else {}
    # A sum over the micro batch's tokens over their count: the mean, without
    # the logits (the head computes the loss, smolray.model.loss).
    loss = lm_loss(engine, inputs["input_ids"], labels, inputs.get("position_ids"), "sum", **docs) / labels.numel()
    # Explicit boundaries: the accumulation count changes between stages.
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss)
    engine.step()
    window.loss += loss.detach()
    window.micro += 1


def _stage_parts(plan: DataPlan, rank: int, world: int, start: int, stop: int) -> list[RankSlice]:
    parts, step = [], start
    while step < stop:
        parts.append(rank_slice(plan, rank, world, step, stop))
        step = parts[-1].stop_step
    return parts


def _open(plan: DataPlan, part: RankSlice, r: Recipe, device):
    ds = build_dataset(plan, part, position_ids=r.data.reset_position_ids, node_role=r.data.node_role)
    st = plan.stages[part.stage].stage
    # Batches land on the host: Ray's default ("auto") is the worker's GPU,
    # which would put the metadata there too. Pinned memory lets the model's
    # columns then cross without blocking.
    return iter(ds.iter_torch_batches(batch_size=st.micro_batch, prefetch_batches=r.train.prefetch_batches,
                                      device="cpu", pin_memory=getattr(device, "type", "") == "cuda"))


def _enter_stage(engine, st: Stage, world: int) -> None:
    engine.set_train_micro_batch_size(st.micro_batch)
    engine.set_train_batch_size(st.batch)
    set_rope_theta(engine.module, st.rope_theta)


def _resume_state(ckpt, cfg: LoopConfig, world: int) -> TrainerState:
    with ckpt.as_directory() as d:
        state = verify(d)
        want = cfg.plan.fingerprints(state.step)
        if state.stage_fingerprints != want:
            raise changed_stages(d, state.step, state.stage_fingerprints, want)
    return state


def _all_sum(counts: np.ndarray, device) -> np.ndarray:
    t = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def _metrics(engine, window: _Window, plan: DataPlan, st: Stage, done: int, r: Recipe, device,
             world: int, peak: float | None) -> dict:
    agg = torch.cat([window.loss.reshape(1),
                     torch.tensor([window.micro, window.wait], device=device, dtype=torch.float64)])
    dist.all_reduce(agg)
    elapsed = time.perf_counter() - window.t0
    tokens_per_s = window.steps * r.tokens_per_step / elapsed
    norm = engine.get_global_grad_norm()
    tokens = plan.tokens_through(done)
    # Realized shares within the current stage, against its target.
    in_stage = plan.draws_through(done) - plan.draws_through(st.start_step)
    epochs = plan.epochs_through(done)
    m = {
        "loss": float(agg[0] / agg[1]),
        "lr": float(engine.get_lr()[0]),
        "grad_norm": float(norm) if norm is not None else float("nan"),
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / world,
        **utilization(tokens_per_s / world, flops_per_token(r.model, st.seq_len), peak),
        # Mean over ranks of the time spent waiting for the next batch.
        "data_wait_frac": float(agg[2] / world) / elapsed,
        "tokens": int(tokens.sum()),
        "stage": st.index,
    }
    for i, s in enumerate(plan.sources):
        m[f"tokens/{s.name}"] = int(tokens[i])
        m[f"share/{s.name}"] = float(tokens[i] / max(1, tokens.sum()))
        m[f"stage_share/{s.name}"] = float(in_stage[i] / max(1, in_stage.sum()))
        m[f"stage_target/{s.name}"] = float(st.shares.get(s.name, 0.0))
        m[f"epochs/{s.name}"] = float(epochs[i])
    return m


def _log_samples(f, step: int, batch: dict, names: list[str]) -> None:
    cols = [batch[k].tolist() for k in ("index", "stage", "source", "epoch", "doc", "offset")]
    for index, stage, src, epoch, doc, offset in zip(*cols):
        f.write(f"{step}\t{index}\t{stage}\t{names[src]}\t{epoch}\t{doc}\t{offset}\n")


def _metrics_log(directory: str):
    from smolray.train.metrics import MetricsLog

    return MetricsLog(directory)


def _sample_log(directory: str | None, rank: int, start: int):
    """Append-only log of trained sequences, cut back to the resumed step.

    A run killed after its last checkpoint logged steps whose updates were
    lost; rank 0 drops them from every rank's file (the worker count may have
    changed) so the log holds exactly what the final model trained on.
    """
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    if rank == 0:
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            with open(path) as f:
                keep = [line for line in f if int(line.split("\t", 1)[0]) < start]
            with open(path, "w") as f:
                f.writelines(keep)
    dist.barrier()
    return open(os.path.join(directory, f"rank-{rank}.tsv"), "a")
