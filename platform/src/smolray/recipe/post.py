"""Typed recipes for post-training: SFT on conversations, DPO on preferences.

Both run on the pretraining engine (DeepSpeed ZeRO under Ray Train) and share
its optimizer, schedule, checkpoint and export sections; what differs is the
data they read and the objective. The step count depends on the dataset
(epochs x examples / batch), so it is resolved after the data is prepared.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from smolray.recipe.schema import (CheckpointConfig, EngineConfig, ExportConfig, OptimConfig, RunSettings,
                                   _Strict)


class DatasetConfig(_Strict):
    """Where examples come from: files (local, s3://, ...) or a Hugging Face dataset."""

    # parquet / jsonl files, directories or globs, local or any URI.
    files: list[str] = Field(default_factory=list)
    # A Hugging Face dataset id (or a local dataset folder) for datasets.load_dataset.
    hf: str | None = None
    hf_config: str | None = None
    split: str = "train"
    # Use only the first N examples (quick runs and smoke tests).
    limit: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> DatasetConfig:
        if bool(self.files) == bool(self.hf):
            raise ValueError("data.dataset: give either dataset.files (parquet/jsonl paths) or "
                             "dataset.hf (a Hugging Face dataset id), not both or neither")
        return self


class PostDataConfig(_Strict):
    dataset: DatasetConfig
    seq_len: int = Field(gt=0)
    # SFT: a list of {"role", "content"} messages per example.
    messages_field: str = "messages"
    # DPO: prompt (string or messages), chosen and rejected (string or messages).
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    # SFT: pack several conversations per sequence (attention and loss never
    # cross between them), or pad each conversation to seq_len.
    packing: bool = True
    # An example longer than seq_len: cut it to fit, or drop it. Both are counted.
    overlong: Literal["truncate", "drop"] = "truncate"
    # Refuse the run if more than this fraction of examples is skipped as
    # malformed (no assistant turn, unknown role, ...): a wrong field name or
    # format should fail loudly, not train on the few rows that happen to parse.
    max_skipped_fraction: float = Field(default=0.05, ge=0, le=1)
    # Where the prepared (tokenized, packed) examples go; default <output_dir>/data.
    prepared_dir: str | None = None


class PostTrainConfig(EngineConfig):
    epochs: float = Field(gt=0)


class PostScheduleConfig(_Strict):
    """Linear warmup, then linear decay to min_lr over decay_fraction of the run."""

    warmup_fraction: float = Field(default=0.1, ge=0, le=1)
    decay_fraction: float = Field(default=0.9, ge=0, le=1)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _fits(self) -> PostScheduleConfig:
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError(f"schedule.warmup_fraction={self.warmup_fraction} plus "
                             f"schedule.decay_fraction={self.decay_fraction} exceed the run; "
                             "make them sum to at most 1")
        return self


class DPOConfig(_Strict):
    # Strength of the KL anchor to the reference: SmolLM2 used 0.5.
    beta: float = Field(default=0.5, gt=0)


class PostRecipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    # The starting weights: a Hugging Face Llama folder (a smolray export is
    # one) or a smolray training checkpoint directory.
    init: str
    # Defaults to the tokenizer saved with `init`.
    tokenizer: str | None = None
    # "chatml" uses smolray's ChatML template; any other string is a Jinja
    # template; unset uses the tokenizer's own. It is saved with the export.
    chat_template: str | None = None
    data: PostDataConfig
    optim: OptimConfig
    schedule: PostScheduleConfig = PostScheduleConfig()
    train: PostTrainConfig
    checkpoint: CheckpointConfig = CheckpointConfig()
    export: ExportConfig = ExportConfig()
    run: RunSettings

    def total_steps(self, examples: int) -> int:
        """Optimizer steps for `epochs` passes over `examples` rows."""
        return max(1, round(self.train.epochs * examples / self.train.global_batch_size))

    @property
    def grad_accum(self) -> int:
        t = self.train
        return t.global_batch_size // (t.micro_batch_size * t.num_workers)


class SFTRecipe(PostRecipe):
    objective: Literal["sft"] = "sft"


class DPORecipe(PostRecipe):
    objective: Literal["dpo"] = "dpo"
    dpo: DPOConfig = DPOConfig()

    @model_validator(mode="after")
    def _no_packing(self) -> DPORecipe:
        if self.data.packing and "packing" in self.data.model_fields_set:
            raise ValueError("data.packing=true: DPO scores each response on its own; "
                             "remove data.packing (pairs are always padded)")
        return self
