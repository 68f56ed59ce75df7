"""Remote sources: raw documents and shards in a real S3-compatible server.

moto runs in server mode on 127.0.0.1 and is spoken to over HTTP by
pyarrow's own S3 client, exactly as a bucket would be; nothing is patched.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pyarrow.fs as pafs
import pytest

from conftest import SAMPLE, TINY, recipe_overrides, s3_client


def uri(port: int, key: str) -> str:
    # Credentials and endpoint ride in the URI, so Ray workers that never saw
    # this test's environment open the bucket the same way.
    return (f"s3://test:test@corpus/{key}?endpoint_override=127.0.0.1:{port}"
            "&scheme=http&region=us-east-1")


def test_tokenize_from_s3_to_s3_matches_local(s3_server, corpus, tmp_path, caplog):
    from smolray.data.plan import build_plan
    from smolray.data.shards import read_manifest
    from smolray.data.tokenize import tokenize_recipe
    from smolray.recipe import load_recipe

    sets = recipe_overrides(corpus["tokenizer"], tmp_path, tmp_path / "run")
    for name in ("prose", "code", "math"):
        sets += [f"data.sources.{name}.raw=['{uri(s3_server, f'raw/{name}/*.jsonl')}']",
                 f"data.sources.{name}.shards={uri(s3_server, f'shards/{name}')}"]
    recipe = load_recipe(TINY, sets)
    remote = tokenize_recipe(recipe)
    for name, m in remote.items():
        local = corpus["manifests"][name]
        assert (m.docs, m.tokens) == (local.docs, local.tokens)
        assert [s.sha256 for s in m.shards] == [s.sha256 for s in local.shards]
        assert read_manifest(recipe.data.source(name).shards).tokens == m.tokens
        assert not any("test:test" in i for i in m.inputs)  # no credentials on disk

    # Training reads the bucket with ranged reads; same sequences as on disk.
    local_recipe = load_recipe(TINY, recipe_overrides(corpus["tokenizer"], corpus["root"], tmp_path))
    a, b = build_plan(recipe).read(0, 0, 24), build_plan(local_recipe).read(0, 0, 24)
    assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["doc"], b["doc"])

    # An unchanged source is not tokenized twice: the rerun takes the up-to-date
    # branch for every source and leaves the bucket's files as they were.
    from smolray.data.shards import filesystem

    fs, base = filesystem(uri(s3_server, "shards"))
    before = {i.path: (i.mtime, i.size) for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))}
    caplog.set_level(logging.INFO, logger="smolray.data.tokenize")
    again = tokenize_recipe(recipe)
    assert again == remote
    assert sorted(r.getMessage().split(":")[0] for r in caplog.records if "up to date" in r.getMessage()) == [
        "code", "math", "prose"]
    after = {i.path: (i.mtime, i.size) for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))}
    assert after == before


def test_missing_remote_source_is_named(s3_server, corpus, tmp_path):
    from smolray.data.raw import RawDataError, expand

    with pytest.raises(RawDataError, match="matches no files"):
        expand([uri(s3_server, "raw/nothing/*.jsonl")], "data.sources.x.raw")


def test_publish_copies_a_folder_to_the_bucket(s3_server, tmp_path):
    from smolray.data.shards import filesystem
    from smolray.train.export import publish

    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "sub" / "x.bin").write_bytes(b"\0" * 1000)
    publish(str(tmp_path), uri(s3_server, "runs/export"))
    fs, base = filesystem(uri(s3_server, "runs/export"))
    with fs.open_input_stream(base + "/config.json") as f:
        assert f.read() == b'{"a": 1}'
    assert fs.get_file_info(base + "/sub/x.bin").size == 1000


def test_sft_and_dpo_read_conversations_from_s3(s3_server, ray_cluster, init_model, tmp_path, capsys):
    from conftest import ROOT
    from smolray.posttrain.job import run_job
    from smolray.recipe.post import DPORecipe, SFTRecipe

    client = s3_client(s3_server)
    for kind, cls in (("sft", SFTRecipe), ("dpo", DPORecipe)):
        client.upload_file(str(SAMPLE / "chat" / f"{kind}.jsonl"), "corpus", f"chat/{kind}.jsonl")
        run_job(cls, argparse.Namespace(
            config=str(ROOT / "recipes" / f"tiny-{kind}.yaml"), dry_run=True, stop_at_step=None,
            force_prepare=False, prompt="", set=[f"init={init_model}", f"run.output_dir={tmp_path}",
                                                f'data.dataset.files=["{uri(s3_server, f"chat/{kind}.jsonl")}"]']))
        rows = sum(1 for _ in open(SAMPLE / "chat" / f"{kind}.jsonl"))
        assert f"examples read: {rows}; kept {rows}" in capsys.readouterr().out
