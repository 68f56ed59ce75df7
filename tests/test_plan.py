"""The data plan on the tokenized sample corpus: packing, epochs, proportions."""

import json

import numpy as np
import pytest

from smolray.data.plan import DataPlanError, build_plan
from smolray.data.shards import SourceReader
from smolray.tokenizer import fingerprint


def test_sequences_are_contiguous_stream_spans(make_recipe):
    recipe = make_recipe()
    plan = build_plan(recipe)
    got = plan.read(0, 0, 64)
    L = recipe.data.seq_len
    assert got["tokens"].shape == (64, L + 1)
    for row in range(64):
        sp = plan.sources[got["source"][row]]
        reader = SourceReader(sp.uri)
        start = int(got["chunk"][row]) * (L + 1)
        assert np.array_equal(got["tokens"][row], reader.read(start, L + 1))
        assert reader.locate(start) == (got["doc"][row], got["offset"][row])


def test_every_document_ends_with_eos(corpus):
    for name, m in corpus["manifests"].items():
        r = SourceReader(str(corpus["root"] / name))
        stream = r.read(0, r.tokens)
        assert (stream == m.eos_id).sum() == m.docs
        assert stream[-1] == m.eos_id


def test_read_is_a_pure_function_of_the_index(make_recipe):
    plan = build_plan(make_recipe())
    whole = plan.read(0, 100, 180)
    part = plan.read(0, 150, 160)
    for key in ("tokens", "source", "epoch", "chunk", "doc", "offset"):
        assert np.array_equal(whole[key][50:60], part[key])
    # Any rows in any order, in one batch (a stream task's rows of several steps).
    idx = np.array([175, 101, 150, 151, 120, 179, 100])
    rows = plan.read_rows(0, idx)
    for key in ("index", "tokens", "source", "epoch", "chunk", "doc", "offset"):
        assert np.array_equal(rows[key], whole[key][idx - 100]), key


def test_one_epoch_visits_every_chunk_once_then_reshuffles(make_recipe):
    plan = build_plan(make_recipe("data.weights={prose: 0, code: 1, math: 0}"))
    chunks = plan.sources[0].chunks(plan.stages[0].stage.seq_len)
    got = plan.locate(0, 0, 2 * chunks)
    first, second = got["chunk"][:chunks], got["chunk"][chunks:]
    assert np.array_equal(np.sort(first), np.arange(chunks))
    assert np.array_equal(np.sort(second), np.arange(chunks))
    assert not np.array_equal(first, second)
    assert got["epoch"][chunks - 1] == 0 and got["epoch"][chunks] == 1


def test_realized_proportions_track_the_recipe(make_recipe):
    recipe = make_recipe()
    plan = build_plan(recipe)
    n = recipe.total_steps * recipe.train.global_batch_size
    src = plan.locate(0, 0, n)["source"]
    realized = np.bincount(src) / n
    target = np.array(list(recipe.data.mixture.values()))
    assert np.abs(realized - target).max() < 0.005
    assert np.array_equal(np.bincount(src), plan.draws_through(recipe.total_steps))


def test_missing_shards_fail_before_training(make_recipe, tmp_path):
    recipe = make_recipe(f"data.sources.math.shards={tmp_path / 'nowhere'}")
    with pytest.raises(DataPlanError) as e:
        build_plan(recipe)
    assert "data.sources.math.shards" in str(e.value) and "jobs/tokenize.py" in str(e.value)


def test_source_with_zero_weight_needs_no_shards(make_recipe, tmp_path):
    recipe = make_recipe(f"data.sources.math.shards={tmp_path / 'nowhere'}", "data.weights.math=0")
    assert build_plan(recipe).names == ["prose", "code"]


def test_other_tokenizer_is_refused(make_recipe):
    with pytest.raises(DataPlanError, match="different tokenizer"):
        build_plan(make_recipe(), tokenizer_fingerprint="sha256:0000")


def test_shards_cut_with_another_heldout_fraction_are_refused(make_recipe):
    # Otherwise the shards could hold documents the recipe now means to validate on.
    with pytest.raises(DataPlanError, match=r"data\.sources\.code\.heldout_fraction=0\.2, but its shards "
                                            r"were cut with 0\.1; re-run jobs/tokenize\.py"):
        build_plan(make_recipe("data.sources.code.heldout_fraction=0.2"))
    build_plan(make_recipe("data.sources.code.heldout_fraction=0.1"))  # the fraction they were cut with


def test_stage_fingerprint_covers_weights(make_recipe, corpus):
    a = build_plan(make_recipe(), tokenizer_fingerprint=fingerprint(corpus["tokenizer"]))
    b = build_plan(make_recipe("data.weights.code=0.31"))
    assert a.fingerprints(1) != b.fingerprints(1)
    assert a.fingerprints(0) == []  # nothing trained yet: anything may change
    assert json.loads(a.sources[0].manifest_json)["source"] == "prose"


def test_long_document_source_keeps_only_long_documents(corpus, tmp_path):
    from smolray.data.raw import iter_texts
    from smolray.data.shards import SourceReader
    from smolray.data.tokenize import tokenize_source
    from smolray.recipe import SourceConfig
    from smolray.tokenizer import load_tokenizer

    from conftest import SAMPLE

    raw = str(SAMPLE / "math.jsonl")
    src = SourceConfig(name="long-math", raw=[raw], shards=str(tmp_path / "long"), min_doc_tokens=1500)
    m = tokenize_source(src, corpus["tokenizer"], vocab_size=1024, shard_tokens=1 << 20)
    tok = load_tokenizer(corpus["tokenizer"])
    lengths = [len(tok(t, add_special_tokens=False).input_ids) + 1 for t in iter_texts([raw], "text")]
    assert m.docs == sum(n >= 1500 for n in lengths) > 0
    assert m.skipped_short == sum(n < 1500 for n in lengths) > 0
    assert m.tokens == sum(n for n in lengths if n >= 1500)
    r = SourceReader(str(tmp_path / "long"))
    ends = np.flatnonzero(r.read(0, r.tokens) == m.eos_id)
    assert np.diff(np.concatenate([[-1], ends])).min() >= 1500  # every kept document is long


def test_unchanged_source_is_not_tokenized_again(corpus, tmp_path):
    from smolray.data.tokenize import tokenize_source
    from smolray.recipe import SourceConfig

    from conftest import SAMPLE

    src = SourceConfig(name="math", raw=[str(SAMPLE / "math.jsonl")], shards=str(tmp_path / "math"))
    first = tokenize_source(src, corpus["tokenizer"], vocab_size=1024, shard_tokens=1 << 18)
    files = sorted((tmp_path / "math").glob("shard-*"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert tokenize_source(src, corpus["tokenizer"], 1024, 1 << 18) == first
    assert [f.stat().st_mtime_ns for f in files] == stamps  # skipped: nothing rewritten
    tokenize_source(src, corpus["tokenizer"], 1024, 1 << 18, force=True)
    assert [f.stat().st_mtime_ns for f in files] != stamps
