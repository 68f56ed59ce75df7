"""Multi-stage mixtures: timeline, continuity across stages, caps, resume."""

from __future__ import annotations

import os

import numpy as np
import pytest

from smolray.data.plan import DataPlanError, build_plan
from smolray.recipe import RecipeError
from smolray.train.metrics import read_metrics, read_rows
from smolray.train.trainer import log_dir

from test_train import SHORT, fit, sample_log

# 12 steps: a (steps 0-3) prose+code; b (4-7) 512-token sequences, new RoPE
# theta, code+math; c (8-11) prose+math, back on 256-token sequences.
STAGES = ("data.stages=[{name: a, start: 0, weights: {prose: 1, code: 1}},"
          " {name: b, start: 0.34, seq_len: 512, rope_theta: 100000, weights: {code: 1, math: 1}},"
          " {name: c, start: 32768, weights: {prose: 3, math: 1}}]")
STAGED = [*SHORT, "data.weights=null", STAGES]


def test_timeline(make_recipe):
    a, b, c = make_recipe(*STAGED).stages
    assert [(s.start_step, s.stop_step) for s in (a, b, c)] == [(0, 4), (4, 8), (8, 12)]
    assert (b.seq_len, b.batch, b.micro_batch, b.rope_theta) == (512, 8, 4, 100000.0)
    assert (c.seq_len, c.batch, c.rope_theta) == (256, 16, 100000.0)  # theta stays extended
    assert c.shares == {"prose": 0.75, "math": 0.25}


@pytest.mark.parametrize("sets,expect", [
    (["data.stages=[{name: a, start: 0.1, weights: {prose: 1}}]"], "first stage must start at 0"),
    (["data.stages=[{name: a, start: 0, weights: {prose: 1}}, {name: b, start: 0.01, weights: {code: 1}}]"],
     "data.stages.b.start=0.01"),
    (["data.stages=[{name: a, start: 0, weights: {prose: 1}}, {name: b, start: 0.5, seq_len: 300, weights: {code: 1}}]"],
     "data.stages.b.seq_len=300 does not divide"),
    (["data.stages=[{name: a, start: 0, weights: {wiki: 1}}]"], "data.stages.a.weights.wiki"),
])
def test_bad_stages_name_the_field(make_recipe, sets, expect):
    with pytest.raises(RecipeError, match=expect.replace(".", r"\.")):
        make_recipe(*SHORT, "data.weights=null", *sets)


def test_weights_and_stages_are_exclusive(make_recipe):
    with pytest.raises(RecipeError, match="either data.weights"):
        make_recipe(*SHORT, STAGES)


def test_sources_continue_across_stages_on_the_same_grid(make_recipe):
    plan = build_plan(make_recipe(*STAGED))
    prose = plan.names.index("prose")
    a, b, c = plan.stages
    stage_a = a.draws(a.stage.sequences, len(plan.sources))
    assert c.offsets[prose] == stage_a[prose]  # c picks up where a stopped
    assert b.offsets[prose] == 0  # b's 513-token chunks are another grid
    rows_a, rows_c = plan.locate(0, 0, a.stage.sequences), plan.locate(2, 0, c.stage.sequences)
    chunks = np.concatenate([rows_a["chunk"][rows_a["source"] == prose],
                             rows_c["chunk"][rows_c["source"] == prose]])
    assert len(np.unique(chunks)) == len(chunks)  # nothing repeats within the epoch
    total = sum(sp.draws(sp.stage.sequences, len(plan.sources)) for sp in plan.stages)
    assert np.array_equal(plan.draws_through(12), total)
    tokens = plan.tokens_through(12)
    assert tokens[prose] == stage_a[prose] * 256 + (total - stage_a)[prose] * 256
    assert plan.read(1, 0, 2)["tokens"].shape == (2, 513)


def test_epoch_cap_refuses_then_allows(make_recipe):
    with pytest.raises(DataPlanError, match=r"data\.sources\.math: the plan draws .* max_epochs=0\.01"):
        build_plan(make_recipe(*STAGED, "data.sources.math.max_epochs=0.01"))
    build_plan(make_recipe(*STAGED, "data.sources.math.max_epochs=0.01", "data.allow_over_epochs=true"))


def test_only_started_stages_are_frozen(make_recipe):
    plan = build_plan(make_recipe(*STAGED))
    edited = build_plan(make_recipe(*SHORT, "data.weights=null", STAGES.replace("{prose: 3, math: 1}",
                                                                                "{prose: 1, math: 1}")))
    assert edited.fingerprints(8) == plan.fingerprints(8)  # c not begun at step 8: editable
    assert edited.fingerprints(9) != plan.fingerprints(9)


def test_training_crosses_stages_and_resumes_mid_stage_exactly(make_recipe, tmp_path):
    from transformers import AutoConfig

    base = make_recipe(*STAGED, out=tmp_path / "base")
    fit(base, sample_log=str(tmp_path / "base-samples"))
    rows = read_metrics(os.path.join(log_dir(base), "metrics.jsonl"))
    assert [r["stage"] for r in rows] == [0, 0, 1, 1, 2, 2]
    for r, target in ((rows[1], {"prose": 0.5, "code": 0.5}), (rows[5], {"prose": 0.75, "math": 0.25})):
        for name, share in target.items():
            assert r[f"stage_share/{name}"] == pytest.approx(share, abs=0.05)

    recipe = make_recipe(*STAGED, out=tmp_path / "run")
    samples = str(tmp_path / "samples")
    assert fit(recipe, stop_at_step=6, sample_log=samples).metrics["step"] == 6  # inside stage b
    past = make_recipe(*SHORT, "data.weights=null", STAGES.replace("{prose: 1, code: 1}", "{prose: 2, code: 1}"),
                       out=tmp_path / "run")
    with pytest.raises(Exception, match="changed stages the checkpoint has already trained"):
        fit(past)
    # The same command again, on one worker instead of two: the ZeRO-2 shards are
    # converted to DeepSpeed's universal format and re-cut on load, mid-stage.
    one = make_recipe(*STAGED, "train.num_workers=1", out=tmp_path / "run")
    result = fit(one, sample_log=samples)
    assert result.metrics["step"] == 12
    assert sample_log(samples) == sample_log(tmp_path / "base-samples")
    resumed = read_metrics(os.path.join(log_dir(recipe), "metrics.jsonl"))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in rows], rel=1e-4)
    # The rerun began at the step-6 checkpoint, inside stage b (rows as written, none repeated).
    raw = read_rows(os.path.join(log_dir(recipe), "metrics.jsonl"))
    assert [(r["step"], r["resumed_from"]) for r in raw] == [(2, 0), (4, 0), (6, 0), (8, 6), (10, 6), (12, 6)]

    from smolray.train.export import export_hf

    with result.checkpoint.as_directory() as d:
        out = export_hf(d, recipe, str(tmp_path / "export"))
    assert AutoConfig.from_pretrained(out).rope_parameters["rope_theta"] == 100000.0
