"""Rank 0's metric log: JSON lines and TensorBoard events, side by side."""

from __future__ import annotations

import json
import os


class MetricsLog:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        self.path = os.path.join(directory, "metrics.jsonl")
        self._jsonl = open(self.path, "a")
        self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def read_rows(path: str) -> list[dict]:
    """Every row as written, in order: a resumed run's rows follow the first run's."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_metrics(path: str) -> list[dict]:
    """All rows of a metrics.jsonl; a resumed run appends, so keep the last row per step."""
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]
