"""One raw input file -> its shards, held-out text and done record, on a worker.

data/tokenize.py runs `tokenize_file` once per input file, as a Ray Data
task. Every name it writes comes from the file's index in the source and
the part number within the file, and every file is written under a
temporary name and moved into place, so a retried task rewrites the same
files and a crash leaves nothing that looks complete. The done record goes
last: while it exists, the file's shards and held-out text are whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolray.data.raw import RawDataError, text_batches
from smolray.data.shards import Shard, filesystem, join, put, shard_name, write_shard
from smolray.tokenizer import cached_tokenizer

BATCH = 256  # texts per tokenizer call: bounds a worker's memory, not its output


def held_out(text: str, fraction: float) -> bool:
    """Whether a document is set aside for validation: a hash of its text.

    Hashing the text rather than drawing by position keeps the split stable
    when files are reordered or appended, and puts exact duplicates on the
    same side, so no validation document is also trained on.
    """
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2**64


def done_name(index: int) -> str:
    return f"done-{index:05d}.json"


def heldout_name(index: int) -> str:
    return f"heldout-{index:05d}.parquet"


@dataclass(frozen=True)
class Settings:
    """Everything a file's shards depend on besides its bytes."""

    tokenizer: str  # fingerprint (smolray.tokenizer.fingerprint)
    text_field: str
    dtype: str
    shard_tokens: int
    min_doc_tokens: int
    heldout_fraction: float


@dataclass(frozen=True)
class FileDone:
    """What tokenizing one input file produced: its done record."""

    index: int
    input: str  # the file's identity (data/raw.py:identities)
    settings: Settings
    shards: list[Shard] = field(default_factory=list)
    skipped_empty: int = 0
    skipped_short: int = 0
    heldout_docs: int = 0
    heldout_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @staticmethod
    def from_json(text: str) -> FileDone | None:
        """The record, or None for one that cannot be read (it is then redone)."""
        try:
            d = json.loads(text)
            d["settings"] = Settings(**d["settings"])
            d["shards"] = [Shard(**s) for s in d["shards"]]
            return FileDone(**d)
        except (ValueError, TypeError, KeyError):
            return None


def tokenize_file(batch: dict[str, np.ndarray], shards: str, tokenizer: str,
                  settings: Settings) -> dict[str, list[str]]:
    """Ray Data UDF over rows (index, path, input): each file's done record as JSON, or an error."""
    done, errors = [], []
    for i, p, ident in zip(batch["index"], batch["path"], batch["input"]):
        try:
            done.append(_one(int(i), str(p), str(ident), shards, tokenizer, settings).to_json())
            errors.append("")
        except RawDataError as e:
            # A file without the text field is the recipe's to fix: handed back,
            # the driver names the field in one line instead of a Ray traceback.
            done.append("")
            errors.append(str(e))
    return {"done": done, "error": errors}


def _encode(tok, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    rust = getattr(tok, "backend_tokenizer", None)
    if rust is not None:
        # The Rust tokenizer directly: transformers' wrapper around it would
        # also build attention masks nobody reads.
        return [e.ids for e in rust.encode_batch(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False, verbose=False)["input_ids"]  # a slow (Python) tokenizer


def _one(index: int, path: str, ident: str, shards: str, tokenizer: str, s: Settings) -> FileDone:
    tok = cached_tokenizer(tokenizer)
    eos = tok.eos_token_id
    fs, base = filesystem(shards)
    # The driver made it on its own machine; a local path here is this node's.
    fs.create_dir(base, recursive=True)
    parts: list[Shard] = []
    pending: list[np.ndarray] = []
    pending_tokens = empty = short = 0
    held: list[str] = []
    for rows in text_batches(path, s.text_field):
        for at in range(0, len(rows), BATCH):
            texts = [t or "" for t in rows[at:at + BATCH]]
            kept = []
            for t in texts:
                # Held-out documents stay text: validation scores bits per byte.
                if t and held_out(t, s.heldout_fraction):
                    held.append(t)
                else:
                    kept.append(t)
            ids = _encode(tok, kept)
            for x in ids:
                if not x:
                    empty += 1
                    continue
                if len(x) + 1 < s.min_doc_tokens:
                    short += 1
                    continue
                pending.append(np.asarray(x + [eos], dtype=np.int32))
                pending_tokens += len(x) + 1
                if pending_tokens >= s.shard_tokens:
                    parts.append(write_shard(fs, base, shard_name(index, len(parts)), pending, s.dtype))
                    pending, pending_tokens = [], 0
    if pending:
        parts.append(write_shard(fs, base, shard_name(index, len(parts)), pending, s.dtype))
    heldout = None
    if held:
        heldout = heldout_name(index)
        sink = pa.BufferOutputStream()
        # Under the source's own text field, so jobs/eval.py --heldout reads it as is.
        pq.write_table(pa.table({s.text_field: held}), sink)
        put(fs, join(base, heldout), sink.getvalue().to_pybytes())
    record = FileDone(index=index, input=ident, settings=s, shards=parts, skipped_empty=empty,
                      skipped_short=short, heldout_docs=len(held), heldout_file=heldout)
    put(fs, join(base, done_name(index)), record.to_json().encode())
    return record
