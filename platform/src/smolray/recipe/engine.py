"""The training engine's typed config: batch, ZeRO, precision, workers and recovery.

Pretraining (`schema.TrainConfig`) and post-training (`post.PostTrainConfig`)
extend it; `train/engine.py` and `train/trainer.py` are built from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from smolray.recipe.base import _ROLE, _Strict


class EngineConfig(_Strict):
    """Batch, ZeRO, precision and workers: what every objective's engine needs."""

    # Sequences (DPO: pairs) per optimizer step, across all workers.
    global_batch_size: int = Field(gt=0)
    # Sequences per forward pass on one worker.
    micro_batch_size: int = Field(gt=0)
    zero_stage: Literal[0, 1, 2, 3] = 2
    # auto: bf16 where the accelerator supports it, else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Training workers (one per GPU on GPU nodes). A range [min, max] makes
    # the run elastic (Ray Train v2): it starts once `min` fit, goes on with
    # fewer after a node is lost and grows back to `max` when nodes return,
    # each time from the latest checkpoint, re-cut for the new count. Read
    # as num_workers = max, min_workers = min.
    num_workers: int = Field(default=1, gt=0)
    min_workers: int | None = Field(default=None, gt=0)
    # Elastic runs: how often Ray Train looks for room to grow (seconds).
    resize_check_s: float = Field(default=60.0, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    # Worker-group failures (a crashed or killed worker, a lost node) that Ray
    # Train recovers from inside the same job: the workers restart from the
    # latest registered checkpoint. -1: no limit. A bug that recurs still ends
    # the run after this many restarts; node drains (preemptions) are not
    # counted against it.
    max_failures: int = Field(default=5, ge=-1)
    # How often Ray Train's controller polls the workers (seconds). Ray Train
    # holds one report per worker until the next poll, so a logged step waits
    # up to this long, and a dead worker is noticed within it. Ray's own 2 s
    # would stretch every logged step shorter than that to 2 s.
    poll_s: float = Field(default=0.25, gt=0, le=10)
    # The node role (a custom resource, cluster.yaml's train_node) every
    # training worker requests. null: any node with the CPUs/GPUs (one machine).
    node_role: str | None = Field(default=None, pattern=_ROLE)
    # The next-token loss (smolray.model.loss). auto: torch's chunked linear
    # cross-entropy where torch has it, else Liger's kernel on CUDA if
    # installed, else plain (full logits). The run's log names the choice.
    lm_loss: Literal["auto", "chunked", "liger", "plain"] = "auto"
    # Recompute each decoder layer's activations in the backward instead of
    # keeping them: activation memory of one layer, for about a third more compute.
    activation_checkpointing: bool = False
    # torch.compile each decoder layer before DeepSpeed wraps the model (GPU
    # runs: fused kernels; the first steps pay the compile). ZeRO stages 0-2.
    compile: bool = False
    # AdamW's fused kernel. auto: on CUDA workers; CPU keeps the per-tensor path.
    fused_adamw: Literal["auto", "on", "off"] = "auto"
    # Where bf16 gradients are summed over micro batches. auto: fp32 (ZeRO >= 1).
    grad_accum_dtype: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _range(cls, data):
        n = data.get("num_workers") if isinstance(data, dict) else None
        if isinstance(n, (list, tuple)):
            if len(n) != 2 or not all(isinstance(x, int) and x > 0 for x in n) or n[0] > n[1]:
                raise ValueError(f"train.num_workers={list(n)}: a range is [min, max] with 1 <= min <= max "
                                 "(e.g. [2, 8]); or give one count")
            if data.get("min_workers") is not None:
                raise ValueError("train.num_workers is a range and train.min_workers is set too; give one")
            data = {**data, "num_workers": n[1], "min_workers": n[0] if n[0] < n[1] else None}
        return data

    @property
    def worker_counts(self) -> range:
        """Every worker count the run may train on (one, unless elastic)."""
        return range(self.min_workers or self.num_workers, self.num_workers + 1)

    @model_validator(mode="after")
    def _batch(self) -> EngineConfig:
        if self.compile and self.zero_stage == 3:
            raise ValueError("train.compile=true with train.zero_stage=3: ZeRO-3 gathers each layer's "
                             "weights in hooks the per-layer compile cannot trace; use zero_stage 2 "
                             "(or 1) with compile, or compile=false")
        if self.grad_accum_dtype == "fp32" and self.zero_stage == 0 and self.precision == "bf16":
            raise ValueError("train.grad_accum_dtype=fp32 with precision bf16 needs zero_stage >= 1 "
                             "(DeepSpeed sums bf16 gradients in fp32 only in its ZeRO optimizers); "
                             "set zero_stage=1 or grad_accum_dtype=auto")
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"train.min_workers={self.min_workers} is above num_workers={self.num_workers}; "
                             "give num_workers as a range [min, max]")
        # An elastic run may train on any count in its range: each must split a step evenly.
        bad = [w for w in self.worker_counts if self.global_batch_size % (self.micro_batch_size * w)]
        if bad:
            w = bad[0]
            fits = [c for c in self.worker_counts if c not in bad]
            raise ValueError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size * num_workers = {self.micro_batch_size} * {w}; "
                f"use a multiple of {self.micro_batch_size * w}"
                + (f" (an elastic range must split every step on each count in it; of "
                   f"{self.worker_counts.start}-{self.num_workers} these do: {fits})" if self.min_workers else ""))
        return self
