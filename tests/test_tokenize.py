"""Per-file tokenization: a many-file source's token stream, its held-out parts, and resume."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from conftest import SAMPLE, heldout_texts


def split_sample(tmp_path, files=3, docs=60):
    """The first docs*files prose documents as `files` JSONL files, with an empty, a null and a short one."""
    lines = (SAMPLE / "prose.jsonl").read_text().splitlines(keepends=True)[:docs * files]
    lines[5:5] = ['{"text": ""}\n', '{"text": null}\n', '{"text": "Short."}\n']
    paths = []
    for i in range(files):
        p = tmp_path / f"part-{i}.jsonl"
        p.write_text("".join(lines[i * len(lines) // files:(i + 1) * len(lines) // files]))
        paths.append(p)
    return paths


def reference(paths, tok, fraction, min_doc_tokens):
    """Token stream, held-out texts per file and (empty, short) counts, from the tokenizer itself."""
    from smolray.data.tokenize import held_out

    stream, held, skipped = [], [], [0, 0]
    for p in paths:
        held.append([])
        for line in p.read_text().splitlines():
            text = json.loads(line)["text"] or ""
            if text and held_out(text, fraction):
                held[-1].append(text)
                continue
            ids = tok(text, add_special_tokens=False).input_ids
            if not ids or len(ids) + 1 < min_doc_tokens:
                skipped[bool(ids)] += 1
            else:
                stream += ids + [tok.eos_token_id]
    return np.array(stream), held, tuple(skipped)


def test_files_become_shards_in_file_order_and_a_rerun_redoes_only_the_lost_file(
        ray_cluster, tokenizer_dir, tok, tmp_path, caplog):
    import pyarrow.parquet as pq

    from smolray.data.shards import SourceReader
    from smolray.data.tokenize import tokenize_source
    from smolray.recipe import SourceConfig

    paths = split_sample(tmp_path)
    out = tmp_path / "shards"
    src = SourceConfig(name="prose", raw=[str(p) for p in paths], shards=str(out), heldout_fraction=0.1,
                       min_doc_tokens=10)
    first = tokenize_source(src, tokenizer_dir, 1024, shard_tokens=20_000)

    want, held, skipped = reference(paths, tok, 0.1, 10)
    r = SourceReader(str(out))
    assert np.array_equal(r.read(0, r.tokens), want)
    assert (first.skipped_empty, first.skipped_short) == skipped == (2, 1)
    # Shards are named by file and part, in stream order, each file's parts from 0.
    names = [tuple(map(int, re.fullmatch(r"shard-(\d{5})-(\d{5})", s.file).groups())) for s in first.shards]
    assert names == sorted(names) and {f for f, _ in names} == {0, 1, 2}
    assert all(part == 0 or (f, part - 1) in names for f, part in names) and len(names) > 3
    # Each file's held-out documents in its own part, listed in the manifest.
    assert first.heldout_files == [f"heldout-{i:05d}.parquet" for i in range(3) if held[i]]
    for name in first.heldout_files:
        i = int(name[8:13])
        assert pq.read_table(out / name).column("text").to_pylist() == held[i]
    assert heldout_texts(out) == sum(held, []) and first.heldout_docs == len(sum(held, []))

    # A crash while file 1 was being redone: no manifest, no done record, its shards gone.
    (out / "manifest.json").unlink()
    (out / "done-00001.json").unlink()
    for f in out.glob("shard-00001-*"):
        f.unlink()
    for name in ("shard-00000.tokens", "heldout.parquet", "done-00007.json"):  # an older layout's
        (out / name).write_bytes(b"x")
    stamps = {f.name: f.stat().st_mtime_ns for f in out.glob("shard-0000[02]-*")}
    caplog.set_level(logging.INFO, logger="smolray.data.tokenize")
    again = tokenize_source(src, tokenizer_dir, 1024, shard_tokens=20_000)
    assert "prose: tokenizing 1 of 3 input files (2 done before)" in caplog.messages
    assert again == first
    assert {f.name: f.stat().st_mtime_ns for f in out.glob("shard-0000[02]-*")} == stamps
    assert not any((out / n).exists() for n in ("shard-00000.tokens", "heldout.parquet", "done-00007.json"))
    r = SourceReader(str(out))
    assert np.array_equal(r.read(0, r.tokens), want)


def test_a_file_without_the_text_field_is_named_in_one_line(ray_cluster, tokenizer_dir, tmp_path):
    from smolray.data.raw import RawDataError
    from smolray.data.tokenize import tokenize_source
    from smolray.recipe import SourceConfig

    (tmp_path / "a.jsonl").write_text('{"body": "no text field here"}\n')
    src = SourceConfig(name="x", raw=[str(tmp_path / "a.jsonl")], shards=str(tmp_path / "s"))
    with pytest.raises(RawDataError, match=r"^data.sources.x.text_field='text': .*a.jsonl: no field 'text' "
                                           r"\(has \['body'\]\)"):
        tokenize_source(src, tokenizer_dir, 1024, shard_tokens=1000)


def test_a_manifest_from_before_heldout_files_reads_its_one_file():
    from smolray.data.shards import Manifest, heldout_names

    old = Manifest(source="s", dtype="uint16", eos_id=0, tokenizer="x", heldout_fraction=0.1, heldout_docs=3)
    d = json.loads(old.to_json())
    del d["heldout_files"]
    m = Manifest.from_json(json.dumps(d), "old")
    assert heldout_names(m) == ["heldout.parquet"]
    assert heldout_names(Manifest(source="s", dtype="uint16", eos_id=0, tokenizer="x")) == []
