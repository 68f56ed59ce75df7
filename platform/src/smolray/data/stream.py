"""Packed training sequences streamed by Ray Data into one trainer worker.

Each worker builds its own pipeline over exactly the sequence indices it
owns: in global step t, rank r of W takes indices
  t * B + r * (B / W) ... t * B + (r + 1) * (B / W) - 1     (B = global batch)
so the set of sequences in a step never depends on W or on timing. The
pipeline's read tasks run wherever Ray finds CPUs (CPU-only nodes on a real
cluster) and prefetch ahead of the trainer.

Why not a single dataset split with `streaming_split`: that hands blocks to
whichever worker asks first, so which sequence lands in which step would
depend on timing, and a restarted worker group would start the stream over.
Building the stream from the step a worker resumes at keeps both exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from smolray.data.plan import DataPlan


@dataclass(frozen=True)
class RankSlice:
    """The sequences one rank consumes from `start_step` to `stop_step`."""

    rank: int
    world: int
    global_batch: int
    start_step: int
    stop_step: int

    @property
    def per_step(self) -> int:
        return self.global_batch // self.world

    @property
    def rows(self) -> int:
        return (self.stop_step - self.start_step) * self.per_step

    def indices(self, rows: np.ndarray) -> np.ndarray:
        """Global sequence index of each local row number."""
        step = self.start_step + rows // self.per_step
        return step * self.global_batch + self.rank * self.per_step + rows % self.per_step


def read_indices(plan: DataPlan, idx: np.ndarray) -> dict[str, np.ndarray]:
    """plan.read over an ascending index array, one contiguous run at a time."""
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    parts = [plan.read(int(run[0]), int(run[-1]) + 1) for run in np.split(idx, breaks) if len(run)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assemble(batch: dict[str, np.ndarray], plan: DataPlan, part: RankSlice,
              position_ids: bool) -> dict[str, np.ndarray]:
    got = read_indices(plan, part.indices(batch["id"].astype(np.int64)))
    tokens = got.pop("tokens")
    out = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], **got}
    if position_ids:
        out["position_ids"] = document_positions(tokens[:, :-1], plan.eos_id)
    return out


def document_positions(ids: np.ndarray, eos: int) -> np.ndarray:
    """Position ids that restart after every EOS (intra-document attention)."""
    n, length = ids.shape
    pos = np.tile(np.arange(length, dtype=np.int64), (n, 1))
    # Index of the token that starts the current document, per position.
    start = np.where(np.roll(ids == eos, 1, axis=1), pos, 0)
    start[:, 0] = 0
    return pos - np.maximum.accumulate(start, axis=1)


def build_dataset(plan: DataPlan, part: RankSlice, position_ids: bool = False,
                  rows_per_task: int = 64) -> ray.data.Dataset:
    blocks = max(1, -(-part.rows // rows_per_task))
    ds = ray.data.range(part.rows, override_num_blocks=blocks).map_batches(
        _assemble,
        batch_size=rows_per_task,
        batch_format="numpy",
        fn_kwargs={"plan": plan, "part": part, "position_ids": position_ids},
    )
    # Order is the contract: step t's rows must arrive in step t.
    ds.context.execution_options.preserve_order = True
    # One progress bar per worker per operator floods the job log.
    ds.context.enable_progress_bars = False
    return ds
