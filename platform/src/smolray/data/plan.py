"""The data plan: what every training sequence is, from the recipe alone.

A run is a list of stages (`smolray.recipe.timeline`). Sequence j of stage k
(j = (step - stage start) * stage batch + position in the batch) is fixed by
four pure functions, applied in order:
  1. mixture.interleave over the stage's weights: j -> (source s, draw k'),
     and k = k' + the draws of s in earlier stages of the same seq_len, so a
     source's stream continues across stages instead of restarting;
  2. epoch e = k // chunks(s), place j' = k % chunks(s), where chunks(s) is
     how many (seq_len + 1)-token chunks the source's token stream holds;
  3. permute.permute: chunk c = P(seed, s, e, seq_len)(j'), a fresh shuffle
     per epoch;
  4. the tokens at [c * (seq_len + 1), (c + 1) * (seq_len + 1)) of the stream.
So the plan depends on (recipe, manifests, seed, step) and nothing else:
not the worker count, not timing. Resuming at step t needs nothing but t.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from smolray.data import mixture
from smolray.data.permute import key_for, permute
from smolray.data.shards import Manifest, ShardError, cached_reader, read_manifest, token_dtype
from smolray.recipe import Recipe
from smolray.recipe.timeline import Stage


class DataPlanError(ValueError):
    """The recipe and the tokenized data disagree."""


@dataclass(frozen=True)
class SourcePlan:
    name: str
    uri: str
    manifest_json: str
    tokens: int  # tokens available in one epoch of the source
    docs: int
    max_epochs: float

    def chunks(self, seq_len: int) -> int:
        return self.tokens // (seq_len + 1)


@dataclass(frozen=True)
class StagePlan:
    stage: Stage
    sources: tuple[int, ...]  # indices into DataPlan.sources drawn in this stage
    weights: tuple[int, ...]  # quantized shares, aligned with `sources`
    offsets: tuple[int, ...]  # per DataPlan source: earlier draws on this seq_len's chunk grid
    first_sequence: int  # run-wide number of the stage's first sequence

    def draws(self, j: int, n_sources: int) -> np.ndarray:
        """Sequences each (plan) source supplies among this stage's first j."""
        out = np.zeros(n_sources, dtype=np.int64)
        out[list(self.sources)] = mixture.draws_before(np.asarray(self.weights), j)
        return out


@dataclass(frozen=True)
class DataPlan:
    sources: tuple[SourcePlan, ...]
    stages: tuple[StagePlan, ...]
    seed: int
    eos_id: int

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def stage_at(self, step: int) -> StagePlan:
        """The stage that optimizer step `step` (0-based) belongs to."""
        for sp in self.stages:
            if step < sp.stage.stop_step:
                return sp
        return self.stages[-1]

    def _stage_draws(self, step: int):
        """(stage, draws per source in it) for every stage, over the first `step` steps."""
        for sp in self.stages:
            st = sp.stage
            done = min(max(step - st.start_step, 0), st.steps)
            yield st, sp.draws(done * st.batch, len(self.sources))

    def draws_through(self, step: int) -> np.ndarray:
        """Sequences each source supplied to the first `step` optimizer steps."""
        return sum((d for _, d in self._stage_draws(step)), np.zeros(len(self.sources), np.int64))

    def tokens_through(self, step: int) -> np.ndarray:
        """Training (input) tokens each source supplied to the first `step` steps."""
        return sum((d * st.seq_len for st, d in self._stage_draws(step)),
                   np.zeros(len(self.sources), np.int64))

    def epochs_through(self, step: int) -> np.ndarray:
        """Epochs of each source consumed by the first `step` steps (summed over chunk grids)."""
        return sum((d / np.maximum([s.chunks(st.seq_len) for s in self.sources], 1)
                    for st, d in self._stage_draws(step)), np.zeros(len(self.sources)))

    def fingerprints(self, step: int) -> list[str]:
        """Identity of each stage begun before `step`: what a resume must not change.

        Later stages may be edited freely between a stop and a resume.
        """
        out = []
        for sp in self.stages:
            if sp.stage.start_step >= step:
                break
            shards = {self.sources[i].name: [sh["sha256"] for sh in
                                             json.loads(self.sources[i].manifest_json)["shards"]]
                      for i in sp.sources}
            st = sp.stage
            key = json.dumps([st.name, st.start_step, st.seq_len, st.batch, st.rope_theta,
                              [self.sources[i].name for i in sp.sources], sp.weights,
                              sp.offsets, self.seed, shards])
            out.append(f"{st.name}:sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16])
        return out

    def locate(self, k: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Where sequences [start, stop) of stage k come from, without reading tokens."""
        return self.locate_rows(k, np.arange(start, stop, dtype=np.int64))

    def locate_rows(self, k: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Where stage k's sequences `idx` (any stage-local numbers) come from."""
        sp = self.stages[k]
        L = sp.stage.seq_len
        idx = np.asarray(idx, dtype=np.int64)
        lo = int(idx.min()) if len(idx) else 0
        hi = int(idx.max()) + 1 if len(idx) else 0
        # The interleave is computed over the whole span the rows lie in: a
        # rank's rows of a few steps are a few runs close together.
        local, draw = mixture.interleave(np.asarray(sp.weights), lo, hi)
        local, draw = local[idx - lo], draw[idx - lo]
        src = np.asarray(sp.sources, dtype=np.int64)[local]
        draw = draw + np.asarray(sp.offsets, dtype=np.int64)[src]
        chunks = np.array([s.chunks(L) for s in self.sources], dtype=np.int64)
        n = np.maximum(chunks[src], 1)
        epoch = draw // n
        # One shuffle per (source, epoch, chunk grid), all applied in one call.
        pairs, which = np.unique(epoch * len(self.sources) + src, return_inverse=True)
        keys = np.array([key_for(self.seed, int(p % len(self.sources)), int(p // len(self.sources)), L + 1)
                         for p in pairs], dtype=np.uint64)
        chunk = permute(draw % n, n, keys[which.reshape(-1)])
        return {"index": sp.first_sequence + idx,
                "stage": np.full(len(idx), k, dtype=np.int64),
                "source": src, "epoch": epoch, "chunk": chunk}

    def read(self, k: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Tokens and identity (source, document, offset) of sequences [start, stop) of stage k."""
        return self.read_rows(k, np.arange(start, stop, dtype=np.int64))

    def read_rows(self, k: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        """`read` for stage k's sequences `idx`, in that order, in one batch."""
        where = self.locate_rows(k, idx)
        span = self.stages[k].stage.seq_len + 1
        n = len(where["index"])
        tokens = np.empty((n, span), dtype=np.int64)
        doc = np.empty(n, dtype=np.int64)
        offset = np.empty(n, dtype=np.int64)
        for s in np.unique(where["source"]).tolist():
            rows = np.flatnonzero(where["source"] == s)
            sp = self.sources[s]
            reader = cached_reader(sp.uri, sp.manifest_json)
            doc[rows], offset[rows] = reader.gather(where["chunk"][rows] * span, span, tokens, rows)
        return {**where, "tokens": tokens, "doc": doc, "offset": offset}


def heldout_mismatch(src, m: Manifest) -> str | None:
    """Why a source's shards do not match its recipe's held-out split, if they do not."""
    if m.heldout_fraction == src.heldout_fraction:
        return None
    return (f"data.sources.{src.name}.heldout_fraction={src.heldout_fraction}, but its shards were "
            f"cut with {m.heldout_fraction}; re-run jobs/tokenize.py with this recipe")


def build_plan(recipe: Recipe, manifests: dict[str, Manifest] | None = None,
               tokenizer_fingerprint: str | None = None) -> DataPlan:
    """Check the recipe against the tokenized sources and freeze the plan.

    Reads each drawn source's manifest (unless given); every problem is
    collected and raised together, before any cluster work.
    """
    d = recipe.data
    stages = recipe.stages
    drawn = [s.name for s in d.sources if any(s.name in st.shares for st in stages)]
    problems: list[str] = []
    plans: list[SourcePlan] = []
    eos_ids: set[int] = set()
    found = _read_manifests({n: d.source(n).shards for n in drawn if not (manifests and n in manifests)})
    for name in drawn:
        src = d.source(name)
        m = manifests[name] if manifests and name in manifests else found[name]
        if isinstance(m, ShardError):
            problems.append(f"data.sources.{name}.shards={src.shards!r}: {m}")
            continue
        longest = max(st.seq_len for st in stages if name in st.shares)
        if m.tokens < longest + 1:
            problems.append(
                f"data.sources.{name}.shards={src.shards!r}: {m.tokens} tokens cannot fill one "
                f"sequence of {longest + 1}; check its raw files and text_field, add data, or "
                f"give it weight 0")
            continue
        if tokenizer_fingerprint and m.tokenizer != tokenizer_fingerprint:
            problems.append(
                f"data.sources.{name}.shards={src.shards!r}: tokenized with a different tokenizer "
                f"({m.tokenizer}) than recipe.tokenizer ({tokenizer_fingerprint}); re-run "
                "jobs/tokenize.py with this recipe")
        if (wrong := heldout_mismatch(src, m)):
            # Otherwise the shards may hold documents the recipe means to validate on.
            problems.append(wrong)
        if m.dtype != token_dtype(recipe.model.vocab_size) and recipe.model.vocab_size > 1 << 16:
            problems.append(f"data.sources.{name}: {m.dtype} shards cannot hold vocab "
                            f"{recipe.model.vocab_size}; re-tokenize")
        eos_ids.add(m.eos_id)
        plans.append(SourcePlan(name=name, uri=src.shards, manifest_json=m.to_json(),
                                tokens=m.tokens, docs=m.docs, max_epochs=src.max_epochs))
    if len(eos_ids) > 1:
        problems.append(f"sources disagree on the EOS id ({sorted(eos_ids)}); tokenize all "
                        "sources with the recipe's tokenizer")
    if problems:
        raise DataPlanError("the recipe's data cannot be used:\n" +
                            "\n".join("  - " + p for p in problems))

    index = {p.name: i for i, p in enumerate(plans)}
    stage_plans: list[StagePlan] = []
    used: dict[int, np.ndarray] = {}  # seq_len -> draws so far per source on that chunk grid
    first = 0
    for st in stages:
        srcs = tuple(index[n] for n in st.shares)
        weights = tuple(int(w) for w in mixture.quantize(list(st.shares.values())))
        offsets = used.setdefault(st.seq_len, np.zeros(len(plans), dtype=np.int64))
        sp = StagePlan(stage=st, sources=srcs, weights=weights,
                       offsets=tuple(int(x) for x in offsets), first_sequence=first)
        used[st.seq_len] = offsets + sp.draws(st.sequences, len(plans))
        stage_plans.append(sp)
        first += st.sequences
    plan = DataPlan(sources=tuple(plans), stages=tuple(stage_plans), seed=recipe.seed,
                    eos_id=eos_ids.pop())
    _check_epochs(plan, recipe)
    return plan


def _read_manifests(uris: dict[str, str]) -> dict[str, Manifest | ShardError]:
    """Every source's manifest at once: a recipe may name many buckets, each a round trip
    (or, offline, seconds of failed lookups) away."""
    if not uris:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(uris))) as pool:
        futures = {name: pool.submit(read_manifest, uri) for name, uri in uris.items()}
    out: dict[str, Manifest | ShardError] = {}
    for name, f in futures.items():
        try:
            out[name] = f.result()
        except ShardError as e:
            out[name] = e
    return out


def _check_epochs(plan: DataPlan, recipe: Recipe) -> None:
    if recipe.data.allow_over_epochs:
        return
    epochs = plan.epochs_through(recipe.total_steps)
    over = [f"data.sources.{s.name}: the plan draws {e:.2f} epochs, above max_epochs="
            f"{s.max_epochs:g}" for s, e in zip(plan.sources, epochs) if e > s.max_epochs]
    if over:
        raise DataPlanError(
            "the plan repeats sources past their epoch caps:\n" + "\n".join("  - " + o for o in over)
            + "\nlower their weights, add data, raise data.sources.<name>.max_epochs, or set "
            "data.allow_over_epochs=true")
