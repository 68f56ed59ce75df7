"""Raw documents -> tokenized shards, as a Ray Data pipeline.

Reading and tokenizing run as Ray Data tasks spread over the cluster; the
driver consumes the stream in input order and cuts it into shards, so the
document order in a source is the order of its input files and rows, the
same on every run.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from smolray.cluster import check_role, role_args
from smolray.data.raw import expand, file_format, identities
from smolray.data.shards import (HELDOUT, MANIFEST, Manifest, ShardError, filesystem, join,
                                 read_manifest, token_dtype, write_manifest, write_shard)
from smolray.recipe import Recipe, SourceConfig
from smolray.tokenizer import cached_tokenizer, fingerprint

log = logging.getLogger(__name__)


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


def _encode(batch: dict[str, np.ndarray], tokenizer: str, text_field: str,
            heldout_fraction: float) -> dict[str, list]:
    tok = cached_tokenizer(tokenizer)
    texts = [t or "" for t in batch[text_field].tolist()]
    held = [bool(t) and held_out(t, heldout_fraction) for t in texts]
    # Held-out documents go back as text (validation scores bits per byte);
    # only trained ones are tokenized here.
    ids = tok([t if not h else "" for t, h in zip(texts, held)], add_special_tokens=False,
              verbose=False)["input_ids"]
    # An empty text stays an empty row so the driver can count it.
    return {"ids": [np.asarray(x + [tok.eos_token_id] if x else [], dtype=np.int32) for x in ids],
            "held": [t if h else "" for t, h in zip(texts, held)]}


def tokenize_source(src: SourceConfig, tokenizer: str, vocab_size: int,
                    shard_tokens: int, force: bool = False, node_role: str | None = None) -> Manifest:
    """Tokenize one source into its shards directory; skip if already up to date."""
    files = expand(src.raw, f"data.sources.{src.name}.raw")
    inputs, fp = identities(files), fingerprint(tokenizer)
    fs, base = filesystem(src.shards)
    if not force:
        try:
            old = read_manifest(src.shards)
            if ((old.tokenizer, old.inputs, old.min_doc_tokens, old.heldout_fraction)
                    == (fp, inputs, src.min_doc_tokens, src.heldout_fraction)):
                log.info("%s: up to date (%d docs, %d tokens)", src.name, old.docs, old.tokens)
                return old
        except ShardError:
            pass
    fs.create_dir(base, recursive=True)
    # The old manifest goes first: a crash mid-way leaves a source that says
    # "not tokenized", never one whose manifest points at half-new shards.
    if fs.get_file_info(join(base, MANIFEST)).type != pafs.FileType.NotFound:
        fs.delete_file(join(base, MANIFEST))

    by_format: dict[str, list[str]] = {}
    for f in files:
        by_format.setdefault(file_format(f), []).append(f)
    parts = []
    for fmt, group in by_format.items():
        # Resolve the filesystem ourselves: the same rules (and fsspec
        # schemes such as hf://) as every other smolray read.
        read_fs = filesystem(group[0])[0]
        paths = [filesystem(f)[1] for f in group]
        # Reads and encoding run on the data nodes (data.node_role), if set.
        role = role_args(node_role)
        if fmt == "parquet":
            parts.append(ray.data.read_parquet(paths, filesystem=read_fs, columns=[src.text_field],
                                               ray_remote_args=role))
        else:
            parts.append(ray.data.read_json(paths, filesystem=read_fs, ray_remote_args=role)
                         .select_columns([src.text_field], **role))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(_encode, batch_size=256, batch_format="numpy",
                        fn_kwargs={"tokenizer": str(tokenizer), "text_field": src.text_field,
                                   "heldout_fraction": src.heldout_fraction}, **role)

    dtype = token_dtype(vocab_size)
    shards, pending, pending_tokens, skipped, short, held = [], [], 0, 0, 0, []
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        for ids, text in zip(batch["ids"], batch["held"]):
            if text:
                held.append(text)
                continue
            if len(ids) == 0:
                skipped += 1
                continue
            if len(ids) < src.min_doc_tokens:
                short += 1
                continue
            pending.append(ids)
            pending_tokens += len(ids)
            if pending_tokens >= shard_tokens:
                shards.append(write_shard(fs, base, len(shards), pending, dtype))
                pending, pending_tokens = [], 0
    if pending:
        shards.append(write_shard(fs, base, len(shards), pending, dtype))
    _remove_stale(fs, base, keep={s.file for s in shards})
    _write_heldout(fs, base, held, src)
    eos = cached_tokenizer(str(tokenizer)).eos_token_id
    manifest = Manifest(source=src.name, dtype=dtype, eos_id=eos, tokenizer=fp,
                        shards=shards, inputs=inputs, skipped_empty=skipped, skipped_short=short,
                        min_doc_tokens=src.min_doc_tokens, heldout_fraction=src.heldout_fraction,
                        heldout_docs=len(held))
    write_manifest(fs, base, manifest)
    if manifest.docs == 0:
        raise ShardError(f"data.sources.{src.name}: no non-empty documents in {src.raw}")
    return manifest


def _write_heldout(fs: pafs.FileSystem, base: str, texts: list[str], src: SourceConfig) -> None:
    path = join(base, HELDOUT)
    if src.heldout_fraction <= 0:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
        return
    if not texts:
        raise ShardError(f"data.sources.{src.name}.heldout_fraction={src.heldout_fraction} held out no "
                         "documents (the source is too small); raise it or set it to 0")
    # The raw text, under the source's own text field, so jobs/eval.py --heldout reads it as is.
    pq.write_table(pa.table({src.text_field: texts}), path, filesystem=fs)


def _remove_stale(fs: pafs.FileSystem, base: str, keep: set[str]) -> None:
    for info in fs.get_file_info(pafs.FileSelector(base)):
        name = info.base_name
        if name.startswith("shard-") and name.split(".")[0] not in keep:
            fs.delete_file(info.path)


def tokenize_recipe(recipe: Recipe, force: bool = False) -> dict[str, Manifest]:
    missing = [s.name for s in recipe.data.sources if not s.raw]
    if missing:
        raise ValueError(f"data.sources.{missing[0]}.raw is empty; list the raw files to tokenize")
    check_role(recipe.data.node_role, "data.node_role")
    return {s.name: tokenize_source(s, recipe.tokenizer, recipe.model.vocab_size,
                                    recipe.data.shard_tokens, force, recipe.data.node_role)
            for s in recipe.data.sources}
