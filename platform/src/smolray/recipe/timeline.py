"""The run's stages resolved to optimizer steps, batch shapes and mixtures.

Tokens per optimizer step are fixed for the whole run (global_batch_size x
data.seq_len). A stage with longer sequences takes proportionally fewer of
them per step, so the LR schedule and the token budget read the same in
every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smolray.recipe.schema import Recipe


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    start_step: int
    stop_step: int  # exclusive
    seq_len: int
    batch: int  # sequences per optimizer step, all workers
    micro_batch: int  # sequences per forward pass on one worker
    rope_theta: float
    shares: dict[str, float]  # normalized, drawn sources only, in source order

    @property
    def steps(self) -> int:
        return self.stop_step - self.start_step

    @property
    def sequences(self) -> int:
        return self.steps * self.batch

    def grad_accum(self, workers: int) -> int:
        return self.batch // (self.micro_batch * workers)


def timeline(recipe: Recipe) -> list[Stage]:
    """Stages in order; raises ValueError naming the field and the fix."""
    d, t, m = recipe.data, recipe.train, recipe.model
    total, per_step = recipe.total_steps, recipe.tokens_per_step
    configs = d.stage_list
    starts = []
    for st in configs:
        tokens = st.start * recipe.train.total_tokens if st.start <= 1 else st.start
        starts.append(int(tokens // per_step))
    out = []
    for i, st in enumerate(configs):
        field = f"data.stages.{st.name}" if d.stages is not None else "data"
        stop = starts[i + 1] if i + 1 < len(configs) else total
        if stop <= starts[i]:
            # Blame the start that comes too early: the next stage's, or this
            # (last) stage's own when it begins at or after the end of the run.
            j = i + 1 if i + 1 < len(configs) else i
            raise ValueError(
                f"data.stages.{configs[j].name}.start={configs[j].start} (step {starts[j]}) leaves "
                f"stage {st.name} (from step {starts[i]}) no steps before step {stop} of {total}; "
                "stages need increasing starts, at least one step apart, before the end of the run")
        seq = st.seq_len or d.seq_len
        if seq > m.max_position_embeddings:
            raise ValueError(
                f"{field}.seq_len={seq} is above model.max_position_embeddings="
                f"{m.max_position_embeddings}; lower it or raise max_position_embeddings")
        if per_step % seq:
            raise ValueError(
                f"{field}.seq_len={seq} does not divide the {per_step} tokens of an optimizer "
                "step (global_batch_size x data.seq_len); use a divisor")
        batch = per_step // seq
        micro = st.micro_batch_size or max(1, t.micro_batch_size * d.seq_len // seq)
        for w in t.worker_counts:  # every count an elastic run may train on
            if batch % (micro * w):
                raise ValueError(
                    f"{field}: {batch} sequences of {seq} tokens per step do not split into micro "
                    f"batches of {micro} on {w} workers; set {field}.micro_batch_size "
                    f"to a divisor of {batch // w}")
        out.append(Stage(index=i, name=st.name, start_step=starts[i], stop_step=stop,
                         seq_len=seq, batch=batch, micro_batch=micro,
                         rope_theta=st.rope_theta or (out[-1].rope_theta if out else m.rope_theta),
                         shares=d.shares(st.weights)))
    return out
