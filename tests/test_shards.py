"""Token shards: spans read across shard boundaries, and damaged data named."""

import json

import numpy as np
import pytest

from smolray.data.shards import (Manifest, ShardError, SourceReader, filesystem, read_manifest,
                                 write_manifest, write_shard)

EOS = 0


def make_source(tmp_path, docs_per_shard=((5, 3), (4,), (2, 2, 6))):
    """Shards whose documents are runs of distinct ids ending in EOS."""
    fs, base = filesystem(str(tmp_path))
    shards, docs, next_id = [], [], 1
    for i, lengths in enumerate(docs_per_shard):
        group = []
        for n in lengths:
            doc = np.append(np.arange(next_id, next_id + n - 1), EOS)
            next_id += n - 1
            group.append(doc)
            docs.append(doc)
        shards.append(write_shard(fs, base, i, group, "uint16"))
    write_manifest(fs, base, Manifest(source="t", dtype="uint16", eos_id=EOS, tokenizer="x", shards=shards))
    return np.concatenate(docs), docs


def test_reads_any_span_across_shards(tmp_path):
    stream, _ = make_source(tmp_path)
    r = SourceReader(str(tmp_path))
    assert r.tokens == len(stream) == 22
    for a in range(len(stream)):
        for n in (1, 3, len(stream) - a):
            if a + n <= len(stream):
                assert np.array_equal(r.read(a, n), stream[a:a + n])


def test_locate_gives_document_and_offset(tmp_path):
    _, docs = make_source(tmp_path)
    r = SourceReader(str(tmp_path))
    pos = 0
    for d, doc in enumerate(docs):
        for off in range(len(doc)):
            assert r.locate(pos) == (d, off)
            pos += 1


def test_manifest_counts(tmp_path):
    make_source(tmp_path)
    m = read_manifest(str(tmp_path))
    assert (m.docs, m.tokens, len(m.shards)) == (6, 22, 3)
    assert json.loads((tmp_path / "manifest.json").read_text())["total_tokens"] == 22


def test_missing_manifest_says_how_to_fix(tmp_path):
    with pytest.raises(ShardError, match="tokenize this source first"):
        read_manifest(str(tmp_path / "nothing"))


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "..", "sub/shard-00000", ""])
def test_manifest_shard_names_with_a_path_are_refused(tmp_path, name):
    make_source(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["shards"][1]["file"] = name  # a tampered or foreign manifest
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"shard file name .* is not a plain file name"):
        SourceReader(str(tmp_path))


def test_malformed_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"source": "t"}')
    with pytest.raises(ShardError, match="not a smolray manifest"):
        read_manifest(str(tmp_path))


def test_missing_shard_is_named(tmp_path):
    make_source(tmp_path)
    (tmp_path / "shard-00001.tokens").unlink()
    r = SourceReader(str(tmp_path))
    assert np.array_equal(r.read(0, 3), [1, 2, 3])  # other shards still read
    with pytest.raises(ShardError, match=r"shard-00001\.tokens: missing"):
        r.read(9, 2)


def test_truncated_shard_is_named(tmp_path):
    make_source(tmp_path)
    path = tmp_path / "shard-00002.tokens"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ShardError, match=r"shard-00002\.tokens: .* bytes but the manifest says"):
        SourceReader(str(tmp_path)).read(13, 2)


def test_no_temporary_files_left(tmp_path):
    make_source(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_tokenization_leaves_a_source_that_says_not_tokenized(ray_cluster, tokenizer_dir, tmp_path):
    """The old manifest goes first: a run that dies midway never leaves one that lies."""
    from smolray.data.tokenize import tokenize_source
    from smolray.recipe import SourceConfig

    from conftest import SAMPLE

    lines = (SAMPLE / "code.jsonl").read_text().splitlines(keepends=True)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(lines[:40]))
    shards = str(tmp_path / "shards")
    first = tokenize_source(SourceConfig(name="code", raw=[str(a)], shards=shards), tokenizer_dir, 1024,
                            shard_tokens=20_000)
    assert len(first.shards) > 1
    # A new input whose second half is broken: the re-tokenization fails midway.
    b.write_text("".join(lines[40:60]) + "{this line is not json\n")
    both = SourceConfig(name="code", raw=[str(a), str(b)], shards=shards)
    with pytest.raises(Exception, match="(?i)json"):
        tokenize_source(both, tokenizer_dir, 1024, shard_tokens=20_000)
    with pytest.raises(ShardError, match="no manifest.json .* tokenize this source first"):
        read_manifest(shards)
    # Fixed input, the same call: a complete source with every document once.
    b.write_text("".join(lines[40:60]))
    again = tokenize_source(both, tokenizer_dir, 1024, shard_tokens=20_000)
    assert again.docs == first.docs + 20 and read_manifest(shards) == again


def test_batched_spans_equal_single_reads_across_shards(tmp_path):
    # gather (the sampler's batched read) against read/locate, for every
    # span start, including spans that cross one or two shard boundaries.
    stream, _ = make_source(tmp_path)
    r = SourceReader(str(tmp_path))
    for count in (1, 4, 9):
        pos = np.arange(0, len(stream) - count + 1)[::-1]  # out of order, as a shuffle gives them
        out = np.full((len(pos) + 2, count), -1, dtype=np.int64)
        rows = np.arange(len(pos)) + 2
        doc, offset = r.gather(pos, count, out, rows)
        for i, p in enumerate(pos):
            assert np.array_equal(out[rows[i]], stream[p:p + count])
            assert (doc[i], offset[i]) == r.locate(int(p))
        assert (out[:2] == -1).all()
    with pytest.raises(IndexError, match="outside 22 tokens"):
        r.gather(np.array([20]), 3, np.empty((1, 3), np.int64), np.array([0]))
