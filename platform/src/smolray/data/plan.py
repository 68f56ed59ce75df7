"""The data plan: what every training sequence is, from the recipe alone.

Sequence i of the run (i = step * global_batch_size + position in the batch)
is fixed by four pure functions, applied in order:
  1. mixture.interleave: i -> (source s, draw k), k-th draw from s;
  2. epoch e = k // chunks(s), j = k % chunks(s), where chunks(s) is how
     many (seq_len + 1)-token chunks the source's token stream holds;
  3. permute.permute: chunk c = P(seed, s, e)(j), a fresh shuffle per epoch;
  4. the tokens at [c * (seq_len + 1), (c + 1) * (seq_len + 1)) of the stream.
So the plan depends on (recipe, manifests, seed, i) and on nothing else:
not the worker count, not timing. Resuming at step t means starting at
i = t * global_batch_size; nothing else needs saving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smolray.data import mixture
from smolray.data.permute import key_for, permute
from smolray.data.shards import Manifest, ShardError, cached_reader, read_manifest, token_dtype
from smolray.recipe import Recipe


class DataPlanError(ValueError):
    """The recipe and the tokenized data disagree."""


@dataclass(frozen=True)
class SourcePlan:
    name: str
    uri: str
    manifest_json: str
    share: float  # normalized target share
    tokens: int  # tokens available in one epoch of the source
    docs: int

    def chunks(self, seq_len: int) -> int:
        return self.tokens // (seq_len + 1)


@dataclass(frozen=True)
class DataPlan:
    sources: tuple[SourcePlan, ...]
    weights: tuple[int, ...]  # quantized shares, see mixture.quantize
    seq_len: int
    seed: int
    eos_id: int

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def fingerprint(self, global_batch: int) -> str:
        """Identity of everything that decides which sequence lands in which step."""
        import hashlib
        import json

        shards = [[sh["sha256"] for sh in json.loads(s.manifest_json)["shards"]] for s in self.sources]
        key = json.dumps([self.names, self.weights, self.seq_len, self.seed, global_batch, shards])
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]

    def draws(self, sequences: int) -> np.ndarray:
        """Sequences each source supplies among the first `sequences`."""
        return mixture.draws_before(np.asarray(self.weights), sequences)

    def epochs(self, sequences: int) -> np.ndarray:
        """Epochs of each source consumed by the first `sequences` sequences."""
        chunks = np.array([s.chunks(self.seq_len) for s in self.sources], dtype=np.float64)
        return self.draws(sequences) / chunks

    def locate(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Where sequences [start, stop) come from, without reading any tokens."""
        w = np.asarray(self.weights)
        src, draw = mixture.interleave(w, start, stop)
        chunks = np.array([s.chunks(self.seq_len) for s in self.sources], dtype=np.int64)
        epoch = draw // chunks[src]
        chunk = np.empty_like(draw)
        for s in np.unique(src):
            for e in np.unique(epoch[src == s]):
                sel = (src == s) & (epoch == e)
                key = key_for(self.seed, int(s), int(e))
                chunk[sel] = permute(draw[sel] % chunks[s], int(chunks[s]), key)
        return {"index": np.arange(start, stop, dtype=np.int64), "source": src,
                "epoch": epoch, "chunk": chunk}

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Tokens and identity (source, document, offset) of sequences [start, stop)."""
        where = self.locate(start, stop)
        span = self.seq_len + 1
        n = stop - start
        tokens = np.empty((n, span), dtype=np.int64)
        doc = np.empty(n, dtype=np.int64)
        offset = np.empty(n, dtype=np.int64)
        for row in range(n):
            sp = self.sources[where["source"][row]]
            reader = cached_reader(sp.uri, sp.manifest_json)
            pos = int(where["chunk"][row]) * span
            tokens[row] = reader.read(pos, span)
            doc[row], offset[row] = reader.locate(pos)
        return {**where, "tokens": tokens, "doc": doc, "offset": offset}


def build_plan(recipe: Recipe, manifests: dict[str, Manifest] | None = None,
               tokenizer_fingerprint: str | None = None) -> DataPlan:
    """Check the recipe against the tokenized sources and freeze the plan.

    Reads each drawn source's manifest (unless given); every problem is
    collected and raised together, before any cluster work.
    """
    d = recipe.data
    problems: list[str] = []
    plans: list[SourcePlan] = []
    eos_ids: set[int] = set()
    for name, share in d.mixture.items():
        src = d.source(name)
        try:
            m = manifests[name] if manifests and name in manifests else read_manifest(src.shards)
        except ShardError as e:
            problems.append(f"data.sources.{name}.shards={src.shards!r}: {e}")
            continue
        if m.tokens == 0:
            problems.append(
                f"data.sources.{name}.shards={src.shards!r}: the source has no tokens; check its "
                "raw files and text_field, or set data.weights.{name}=0"
            )
            continue
        if m.tokens < d.seq_len + 1:
            problems.append(
                f"data.sources.{name}: {m.tokens} tokens cannot fill one sequence of "
                f"data.seq_len+1={d.seq_len + 1}; lower data.seq_len or add data"
            )
        if tokenizer_fingerprint and m.tokenizer != tokenizer_fingerprint:
            problems.append(
                f"data.sources.{name}.shards={src.shards!r}: tokenized with a different tokenizer "
                f"({m.tokenizer}) than recipe.tokenizer ({tokenizer_fingerprint}); re-run "
                "jobs/tokenize.py with this recipe"
            )
        if m.dtype != token_dtype(recipe.model.vocab_size) and recipe.model.vocab_size > 1 << 16:
            problems.append(f"data.sources.{name}: {m.dtype} shards cannot hold vocab "
                            f"{recipe.model.vocab_size}; re-tokenize")
        eos_ids.add(m.eos_id)
        plans.append(SourcePlan(name=name, uri=src.shards, manifest_json=m.to_json(),
                                share=share, tokens=m.tokens, docs=m.docs))
    if len(eos_ids) > 1:
        problems.append(f"sources disagree on the EOS id ({sorted(eos_ids)}); tokenize all "
                        "sources with the recipe's tokenizer")
    if problems:
        raise DataPlanError("the recipe's data cannot be used:\n" +
                            "\n".join("  - " + p for p in problems))
    weights = mixture.quantize([p.share for p in plans])
    return DataPlan(sources=tuple(plans), weights=tuple(int(x) for x in weights),
                    seq_len=d.seq_len, seed=recipe.seed, eos_id=eos_ids.pop())
