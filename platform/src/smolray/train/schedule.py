"""Warmup-stable-decay (WSD) learning rate, as a pure function of the step.

Linear warmup from 0 to the peak over `warmup` steps, constant at the peak,
then a linear decay that reaches `min_lr` on the last step. Unlike cosine,
the stable phase can be extended or branched (annealing ablations decay
from any stable checkpoint) without knowing the end in advance.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WSD:
    peak: float
    total: int
    warmup: int
    decay: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        """Learning rate used by optimizer step `step` (0-based)."""
        lo = self.peak * self.min_ratio
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        decay_start = self.total - self.decay
        if self.decay > 0 and step >= decay_start:
            done = min(step - decay_start + 1, self.decay) / self.decay
            return self.peak - (self.peak - lo) * done
        return self.peak

    def factor(self, step: int) -> float:
        """Multiplier on the peak, for torch's LambdaLR."""
        return self(step) / self.peak

    def key_points(self) -> list[tuple[str, int, float]]:
        pts = [("first step", 0, self(0))]
        if self.warmup:
            pts.append(("end of warmup", self.warmup - 1, self(self.warmup - 1)))
        if self.decay:
            pts.append(("start of decay", self.total - self.decay, self(self.total - self.decay)))
        pts.append(("last step", self.total - 1, self(self.total - 1)))
        return pts


def from_recipe(recipe) -> WSD:
    s = recipe.schedule
    return WSD(peak=recipe.optim.lr, total=recipe.total_steps, warmup=s.warmup_steps,
               decay=recipe.decay_steps, min_ratio=s.min_lr_ratio)
