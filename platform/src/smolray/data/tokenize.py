"""Raw documents -> tokenized shards, one Ray Data task per input file.

Each task (data/tokenize_file.py) reads its file, holds documents out by a
hash of their text, tokenizes the rest and writes the file's shards
(shard-<file>-<part>), its held-out text (heldout-<file>.parquet) and last a
done record (done-<file>.json); it hands back only that record. The driver
lays the records out in file order and writes the manifest, so the token
stream is the source's documents in the order of its input files and rows,
the same on every run, and no token or text passes through the driver.

A rerun reuses the done record of every file whose identity and settings
are unchanged and runs tasks for the others only: a crash costs the files
that were in flight, and appending a file tokenizes that file alone.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.fs as pafs
import ray

from smolray.cluster import check_role, role_args
from smolray.data.raw import RawDataError, expand, identities
from smolray.data.shards import (MANIFEST, Manifest, ShardError, filesystem, join, read_manifest,
                                 token_dtype, write_manifest)
from smolray.data.tokenize_file import FileDone, Settings, done_name, held_out, tokenize_file
from smolray.recipe import Recipe, SourceConfig
from smolray.tokenizer import cached_tokenizer, fingerprint

__all__ = ["held_out", "tokenize_recipe", "tokenize_source"]

log = logging.getLogger(__name__)


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

    settings = Settings(tokenizer=fp, text_field=src.text_field, dtype=token_dtype(vocab_size),
                        shard_tokens=shard_tokens, min_doc_tokens=src.min_doc_tokens,
                        heldout_fraction=src.heldout_fraction)
    done = {} if force else _reusable(fs, base, inputs, settings)
    todo = [i for i in range(len(files)) if i not in done]
    log.info("%s: tokenizing %d of %d input files (%d done before)", src.name, len(todo), len(files),
             len(done))
    if todo:
        # Reads and encoding run on the data nodes (data.node_role), if set.
        # One block per file, so each file is its own task: retried alone
        # if its worker dies, and spread over the cluster.
        ds = ray.data.from_items([{"index": i, "path": files[i], "input": inputs[i]} for i in todo],
                                 override_num_blocks=len(todo))
        ds = ds.map_batches(tokenize_file, batch_size=1,
                            fn_kwargs={"shards": src.shards, "tokenizer": str(tokenizer),
                                       "settings": settings}, **role_args(node_role))
        errors = []
        for row in ds.iter_rows():
            if row["error"]:
                errors.append(row["error"])
                continue
            rec = FileDone.from_json(row["done"])
            done[rec.index] = rec
        if errors:
            raise RawDataError(f"data.sources.{src.name}.text_field={src.text_field!r}: {errors[0]}"
                               + (f" (and {len(errors) - 1} more files)" if len(errors) > 1 else ""))
    records = [done[i] for i in range(len(files))]

    shards = [s for r in records for s in r.shards]
    held = [r.heldout_file for r in records if r.heldout_file]
    keep = {done_name(r.index) for r in records} | set(held)
    keep |= {s.file + suffix for s in shards for suffix in (".tokens", ".docs.npy")}
    _remove_stale(fs, base, keep)
    heldout_docs = sum(r.heldout_docs for r in records)
    if src.heldout_fraction > 0 and not heldout_docs:
        raise ShardError(f"data.sources.{src.name}.heldout_fraction={src.heldout_fraction} held out no "
                         "documents (the source is too small); raise it or set it to 0")
    eos = cached_tokenizer(str(tokenizer)).eos_token_id
    manifest = Manifest(source=src.name, dtype=settings.dtype, eos_id=eos, tokenizer=fp,
                        shards=shards, inputs=inputs,
                        skipped_empty=sum(r.skipped_empty for r in records),
                        skipped_short=sum(r.skipped_short for r in records),
                        min_doc_tokens=src.min_doc_tokens, heldout_fraction=src.heldout_fraction,
                        heldout_docs=heldout_docs, heldout_files=held)
    write_manifest(fs, base, manifest)
    if manifest.docs == 0:
        raise ShardError(f"data.sources.{src.name}: no non-empty documents in {src.raw}")
    return manifest


def _reusable(fs: pafs.FileSystem, base: str, inputs: list[str], settings: Settings) -> dict[int, FileDone]:
    """Done records of a previous run that still hold: same file, same settings, files all there."""
    found = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))}

    def read(index: int) -> FileDone | None:
        if done_name(index) not in found:
            return None
        try:
            with fs.open_input_stream(join(base, done_name(index))) as f:
                return FileDone.from_json(f.read().decode())
        except (OSError, UnicodeDecodeError):
            return None

    def whole(r: FileDone | None, index: int) -> bool:
        if r is None or (r.index, r.input, r.settings) != (index, inputs[index], settings):
            return False
        # Someone may have removed or cut a shard since: then the file is redone.
        width = np.dtype(settings.dtype).itemsize
        sizes = {s.file + ".tokens": s.tokens * width for s in r.shards}
        return (all(name in found and found[name].size == size for name, size in sizes.items())
                and all(s.file + ".docs.npy" in found for s in r.shards)
                and (r.heldout_file is None or r.heldout_file in found))

    # Records are small; reading them a few at a time hides a bucket's latency.
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(read, range(len(inputs))))
    return {i: r for i, r in enumerate(records) if whole(r, i)}


def _remove_stale(fs: pafs.FileSystem, base: str, keep: set[str]) -> None:
    """Files of an earlier layout or run that the new manifest does not list."""
    for info in fs.get_file_info(pafs.FileSelector(base)):
        name = info.base_name
        if name.startswith(("shard-", "heldout", "done-")) and name not in keep:
            fs.delete_file(info.path)


def tokenize_recipe(recipe: Recipe, force: bool = False) -> dict[str, Manifest]:
    missing = [s.name for s in recipe.data.sources if not s.raw]
    if missing:
        raise ValueError(f"data.sources.{missing[0]}.raw is empty; list the raw files to tokenize")
    check_role(recipe.data.node_role, "data.node_role")
    return {s.name: tokenize_source(s, recipe.tokenizer, recipe.model.vocab_size,
                                    recipe.data.shard_tokens, force, recipe.data.node_role)
            for s in recipe.data.sources}
