"""What the driver hands every training worker (the TorchTrainer's `train_loop_config`).

Its own module so the driver can build it without importing the loop,
which pulls in transformers' model stack and DeepSpeed (seconds per job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smolray.data.plan import DataPlan
    from smolray.eval.loss import Windows
    from smolray.recipe import Recipe


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
    # Held-out windows per source, scored every recipe.eval.every_steps.
    heldout: dict[str, Windows] = field(default_factory=dict)
