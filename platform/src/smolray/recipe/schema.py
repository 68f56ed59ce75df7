"""The typed recipe: one config object per component, validated up front.

Every check that can be made without touching data or a cluster lives here,
so a bad recipe fails in the first second with a message that names the
field, the value and the fix. Checks that need the tokenized shards (does a
source have any?) live in `smolray.data.plan`.
"""

from __future__ import annotations

import math
import os
import posixpath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from smolray.recipe.base import _ROLE, _Strict
from smolray.recipe.engine import EngineConfig  # noqa: F401 - part of this module's API


class ModelConfig(_Strict):
    """Llama architecture (as in transformers' LlamaConfig)."""

    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    tie_embeddings: bool = True
    init_std: float = Field(default=0.02, gt=0)

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_heads={self.num_heads}; pick heads that divide the hidden size"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} is not a multiple of "
                f"model.num_kv_heads={self.num_kv_heads}; grouped-query attention needs "
                "num_kv_heads to divide num_heads"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_parameters(self) -> int:
        """Unique parameters, by arithmetic (no torch): tied embeddings count once.

        Per layer: q and o (hidden x heads*head_dim each), k and v (hidden x
        kv_heads*head_dim each), the SwiGLU MLP (3 x hidden x intermediate)
        and two RMSNorm gains; plus the embedding, the final norm and an
        untied output head. `model.count_parameters` checks it on the real module.
        """
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        layer = 2 * h * q + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + embed + h


class SourceConfig(_Strict):
    """One pretraining source: raw documents in, tokenized shards out."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    # Directory (local or any pyarrow/fsspec URI) holding manifest.json and shards.
    shards: str
    # Raw documents for jobs/tokenize.py: parquet or jsonl paths, globs or URIs.
    raw: list[str] = Field(default_factory=list)
    text_field: str = "text"
    # The plan refuses to draw more epochs of this source than this (SmolLM2
    # kept every source within 4 to 5), unless data.allow_over_epochs.
    max_epochs: float = Field(default=5.0, gt=0)
    # Keep only documents of at least this many tokens (EOS included): a
    # long-document view of a corpus, for context-extension stages.
    min_doc_tokens: int = Field(default=0, ge=0)
    # Documents set aside at tokenization for validation: chosen by a hash of
    # their text (so duplicates land on the same side), written as raw text to
    # <shards>/heldout-*.parquet and never put in a shard the plan can draw.
    heldout_fraction: float = Field(default=0.0, ge=0, lt=1)


def _shards_key(uri: str) -> str:
    """A shards location as a comparable string: the same dir however it is spelled."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme.lower() + "://" + posixpath.normpath(rest.split("?", 1)[0])
    return os.path.normpath(os.path.abspath(uri))


def _check_weights(weights: dict[str, float], names: set[str], field: str) -> None:
    for name, w in weights.items():
        if name not in names:
            raise ValueError(
                f"{field}.{name}: no source named {name!r}; known sources are "
                f"{sorted(names)} (add it under data.sources or fix the name)"
            )
        if not math.isfinite(w) or w < 0:
            raise ValueError(
                f"{field}.{name}={w}: weights must be finite and >= 0 (use 0 to leave a source out)"
            )
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"{field} sum to {total}: at least one source needs a positive weight")


class StageConfig(_Strict):
    """One stage of a multi-stage mixture, from `start` to the next stage's start."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    # Where the stage starts: up to 1, a fraction of the run's tokens; above 1,
    # an absolute token count. Rounded down to a whole optimizer step.
    start: float = Field(ge=0)
    weights: dict[str, float]
    # Optional per stage (context extension): longer sequences, a new RoPE
    # theta, and the micro batch that fits them. Tokens per step stay fixed.
    seq_len: int | None = Field(default=None, gt=0)
    rope_theta: float | None = Field(default=None, gt=0)
    micro_batch_size: int | None = Field(default=None, gt=0)


class DataConfig(_Strict):
    seq_len: int = Field(gt=0)
    sources: list[SourceConfig] = Field(min_length=1)
    # A single mixture: relative weights per source name, normalized to sum
    # to 1 (a source absent here is not drawn from). Or `stages` instead.
    weights: dict[str, float] | None = None
    stages: list[StageConfig] | None = None
    # Draw past a source's max_epochs instead of refusing the plan.
    allow_over_epochs: bool = False
    # Restart position ids after every EOS, so RoPE positions count from each
    # document's start rather than the packed sequence's.
    reset_position_ids: bool = False
    # Tokenized shards are split into this many tokens per file.
    shard_tokens: int = Field(default=1 << 24, gt=0)
    # The node role (a custom resource, cluster.yaml's data_node) that
    # tokenizing and the training stream's read tasks run on, so the trainer
    # nodes' cores stay with the trainers. null: any node (one machine).
    node_role: str | None = Field(default=None, pattern=_ROLE)

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; {dup} appear more than once")
        # Tokenizing a source rewrites its shards dir: two sources in one dir
        # would silently delete each other's shards.
        seen: dict[str, str] = {}
        for s in sources:
            where = _shards_key(s.shards)
            if where in seen:
                raise ValueError(f"data.sources.{s.name}.shards={s.shards!r} is also data.sources."
                                 f"{seen[where]}.shards: tokenizing one would delete the other's "
                                 "shards; give each source a shards dir of its own")
            seen[where] = s.name
        return sources

    @model_validator(mode="after")
    def _weights(self) -> DataConfig:
        if (self.weights is None) == (self.stages is None):
            raise ValueError("data: give either data.weights (one mixture) or data.stages "
                             "(a schedule of mixtures), not both or neither")
        names = {s.name for s in self.sources}
        if self.weights is not None:
            _check_weights(self.weights, names, "data.weights")
            return self
        stage_names = [st.name for st in self.stages]
        if len(set(stage_names)) != len(stage_names):
            raise ValueError(f"data.stages: stage names must be unique, got {stage_names}")
        if self.stages[0].start != 0:
            raise ValueError(f"data.stages.{stage_names[0]}.start={self.stages[0].start}: the "
                             "first stage must start at 0")
        for st in self.stages:
            _check_weights(st.weights, names, f"data.stages.{st.name}.weights")
        return self

    @property
    def stage_list(self) -> list[StageConfig]:
        """The stages; a single mixture is one stage named `main`."""
        if self.stages is not None:
            return list(self.stages)
        return [StageConfig(name="main", start=0, weights=self.weights)]

    def shares(self, weights: dict[str, float]) -> dict[str, float]:
        """Normalized shares of the drawn sources, in source order."""
        total = sum(weights.values())
        return {s.name: weights[s.name] / total for s in self.sources if weights.get(s.name, 0) > 0}

    @property
    def mixture(self) -> dict[str, float]:
        """Shares of the first stage (the only one, for a single mixture)."""
        return self.shares(self.stage_list[0].weights)

    def source(self, name: str) -> SourceConfig:
        return next(s for s in self.sources if s.name == name)


class OptimConfig(_Strict):
    lr: float = Field(gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)


class ScheduleConfig(_Strict):
    """Warmup-stable-decay: linear warmup, constant, linear decay to min_lr."""

    warmup_steps: int = Field(default=0, ge=0)
    # Fraction of all steps spent decaying at the end of the run.
    decay_fraction: float = Field(default=0.2, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)


class TrainConfig(EngineConfig):
    # The token budget; steps = total_tokens // (global_batch_size * seq_len).
    total_tokens: int = Field(gt=0)
    # Sequences each worker prefetches from the data pipeline.
    prefetch_batches: int = Field(default=4, ge=0)


class CheckpointConfig(_Strict):
    every_steps: int = Field(default=1000, gt=0)
    # Complete checkpoints kept; older ones are deleted by Ray Train.
    keep: int = Field(default=2, gt=0)


class ExportConfig(_Strict):
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


class RunSettings(_Strict):
    # Where checkpoints, metrics, TensorBoard events and the export go. A
    # local path (absolute, or relative to the working directory) or a URI.
    output_dir: str
    log_every_steps: int = Field(default=10, gt=0)
    # Checkpoints load weights-only: a file that would run code when
    # unpickled is refused. true lifts that for checkpoints this user wrote
    # with a DeepSpeed whose files hold other objects; never for a shared bucket.
    trust_checkpoint: bool = False


class PretrainRunSettings(RunSettings):
    # Branch from another run: with no checkpoint of its own yet, the run
    # starts from this one (weights, optimizer, data position). The stages that
    # checkpoint has trained must be unchanged; later ones may differ (an
    # annealing ablation adds a decay stage on a new mixture). Post-training
    # starts from `init` instead, so only pretraining has this field.
    init_from: str | None = None


class EvalSettings(_Strict):
    """Validation loss during pretraining, on the sources' held-out documents."""

    # Score every this many steps and at the run's last step; 0: never.
    every_steps: int = Field(default=0, ge=0)
    # A named mixture over held-out sources; its weighted loss is `target_loss`.
    target: dict[str, float] = Field(default_factory=dict)
    # Held-out tokens scored per source: enough for a stable mean, cheap in-loop.
    max_tokens: int = Field(default=32768, gt=0)
    # Also score the untrained model, before step 1 (logged as step 0): the
    # point every held-out curve starts from.
    at_start: bool = False


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    tokenizer: str
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig
    checkpoint: CheckpointConfig = CheckpointConfig()
    export: ExportConfig = ExportConfig()
    eval: EvalSettings = EvalSettings()
    run: PretrainRunSettings

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        m, d, t, s = self.model, self.data, self.train, self.schedule
        if d.seq_len > m.max_position_embeddings:
            raise ValueError(
                f"data.seq_len={d.seq_len} is above model.max_position_embeddings="
                f"{m.max_position_embeddings}; lower data.seq_len or raise max_position_embeddings"
            )
        steps = self.total_steps
        if steps < 1:
            raise ValueError(
                f"train.total_tokens={t.total_tokens} is less than one optimizer step "
                f"({self.tokens_per_step} tokens); raise total_tokens"
            )
        if s.decay_fraction > 1:
            raise ValueError(
                f"schedule.decay_fraction={s.decay_fraction} makes the decay longer than "
                "the run; use a fraction in [0, 1]"
            )
        from smolray.recipe.timeline import timeline

        timeline(self)  # stage boundaries and shapes; raises with field and fix
        self._check_eval()
        if s.warmup_steps + self.decay_steps > steps:
            raise ValueError(
                f"schedule.warmup_steps={s.warmup_steps} plus the decay "
                f"({self.decay_steps} steps = decay_fraction {s.decay_fraction} of {steps}) "
                f"is longer than the run's {steps} steps; shorten warmup or decay, or raise "
                "train.total_tokens"
            )
        return self

    def _check_eval(self) -> None:
        held, ev = self.heldout_sources, self.eval
        if ev.target:
            _check_weights(ev.target, {src.name for src in self.data.sources}, "eval.target")
            missing = sorted(set(ev.target) - set(held))
            if missing:
                raise ValueError(f"eval.target names {missing}, which hold out no documents; set "
                                 f"data.sources.{missing[0]}.heldout_fraction (e.g. 0.05) and re-run "
                                 "jobs/tokenize.py")
        if ev.every_steps and not held:
            raise ValueError(f"eval.every_steps={ev.every_steps} but no source holds out documents; "
                             "set data.sources.<name>.heldout_fraction (e.g. 0.05) or eval.every_steps=0")

    @property
    def heldout_sources(self) -> list[str]:
        return [src.name for src in self.data.sources if src.heldout_fraction > 0]

    @property
    def tokens_per_step(self) -> int:
        return self.train.global_batch_size * self.data.seq_len

    @property
    def total_steps(self) -> int:
        return self.train.total_tokens // self.tokens_per_step

    @property
    def decay_steps(self) -> int:
        return round(self.schedule.decay_fraction * self.total_steps)

    @property
    def stages(self):
        """The resolved stages (see smolray.recipe.timeline)."""
        from smolray.recipe.timeline import timeline

        return timeline(self)

    @property
    def grad_accum(self) -> int:
        t = self.train
        return t.global_batch_size // (t.micro_batch_size * t.num_workers)
