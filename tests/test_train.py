"""Pretraining on a real local Ray cluster with real DeepSpeed, tiny and short."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smolray.data.plan import build_plan
from smolray.train.flops import flops_per_token
from smolray.train.metrics import read_metrics
from smolray.train.trainer import build_trainer, log_dir

from conftest import recipe_factory

# 12 steps of 16 x 256 tokens, checkpoints every 4 steps.
SHORT = ["train.total_tokens=49152", "schedule.warmup_steps=2", "schedule.decay_fraction=0.25",
         "optim.lr=1e-2", "run.log_every_steps=2", "checkpoint.every_steps=4", "checkpoint.keep=2"]


def fit(recipe, **kw):
    return build_trainer(recipe, build_plan(recipe), **kw).fit()


def sample_log(directory) -> list[str]:
    lines = []
    for f in sorted(os.listdir(directory)):
        with open(os.path.join(directory, f)) as fh:
            lines += fh.read().splitlines()
    return sorted(lines, key=lambda line: int(line.split("\t")[1]))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """One uninterrupted run each for ZeRO-1 and ZeRO-3, shared by the tests below.

    The ZeRO-1 run also recomputes activations and compiles its layers: the
    stages must still agree (test_zero_stages_agree), so the levers change
    how the model trains on a real engine, not what it learns.
    """
    out = {}
    levers = {1: ["train.activation_checkpointing=true", "train.compile=true"]}
    # ZeRO-2 is the tiny recipe's default, which every other training test runs.
    for stage in (1, 3):
        base = tmp_path_factory.mktemp(f"zero{stage}")
        recipe = recipe_factory(corpus, base / "run")(*SHORT, f"train.zero_stage={stage}",
                                                       *levers.get(stage, []))
        result = fit(recipe)
        out[stage] = (recipe, result, base)
    return out


@pytest.mark.parametrize("stage", [1, 3])
def test_zero_stage_trains_and_loss_falls(runs, stage):
    recipe, result, _ = runs[stage]
    rows = read_metrics(os.path.join(log_dir(recipe), "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, rows
    assert result.metrics["step"] == 12
    # Per-source accounting equals the plan, and the realized shares the target.
    for name, share in recipe.data.mixture.items():
        assert abs(rows[-1][f"share/{name}"] - share) < 0.02
    assert rows[-1]["lr"] == 0.0  # WSD reached its minimum on the last step
    # Throughput per worker and achieved FLOP/s; no MFU on a CPU (no known peak).
    for r in rows:
        assert r["tokens_per_s_per_gpu"] == pytest.approx(r["tokens_per_s"] / 2)
        assert r["tflops_per_gpu"] == pytest.approx(
            r["tokens_per_s_per_gpu"] * flops_per_token(recipe.model, 256) / 1e12)
        assert "mfu" not in r
    assert all(np.isfinite(r["grad_norm"]) for r in rows)
    events = os.listdir(os.path.join(log_dir(recipe), "tensorboard"))
    assert any(f.startswith("events.out.tfevents") for f in events)
    # checkpoint.keep=2: of the checkpoints at steps 4, 8 and 12, the oldest was pruned.
    kept = sorted(p for p in os.listdir(os.path.dirname(result.checkpoint.path)) if p.startswith("step-"))
    assert kept == ["step-00000008", "step-00000012"]


def test_zero_stages_agree(runs):
    # Sharding is a memory layout, not a different optimizer: the same losses
    # up to float summation order (which a few steps amplify to ~1e-4).
    losses = {stage: [r["loss"] for r in read_metrics(os.path.join(log_dir(rec), "metrics.jsonl"))]
              for stage, (rec, _, _) in runs.items()}
    assert losses[1] == pytest.approx(losses[3], rel=2e-3)


@pytest.mark.parametrize("stage", [1, 3])
def test_checkpoint_holds_every_ranks_shard(runs, stage):
    _, result, _ = runs[stage]
    with result.checkpoint.as_directory() as d:
        files = set(os.listdir(os.path.join(d, "ds")))
        assert {"rank-0.done", "rank-1.done", "trainer_state.json"} <= set(os.listdir(d))
    for rank in (0, 1):
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files, files


def test_export_loads_in_transformers_and_generates(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smolray.train.export import export_hf

    recipe, result, _ = runs[3]  # ZeRO-3: parameters were partitioned
    with result.checkpoint.as_directory() as d:
        out = export_hf(d, recipe, str(tmp_path / "export"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == recipe.model.num_layers
    assert tok.chat_template and tok.eos_token == "<|endoftext|>"
    # The trained weights, not a fresh init: on training data the export's
    # loss is far below that of the same architecture untrained.
    from smolray.model import build_model

    batch = torch.tensor(build_plan(recipe).read(0, 0, 8)["tokens"])
    with torch.no_grad():
        trained = model(input_ids=batch, labels=batch).loss.item()
        fresh = build_model(recipe.model, seed=1).eval()(input_ids=batch, labels=batch).loss.item()
    assert trained < fresh - 0.5, (trained, fresh)
    ids = tok("The ", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1]


def test_a_checkpoint_whose_data_position_disagrees_with_the_plan_stops_the_run(runs, corpus, tmp_path):
    """The accounting guard: trained sequences per source must equal the plan's at every log step."""
    import json
    import shutil

    recipe, result, base = runs[3]
    ckpt = tmp_path / "step-00000008"
    shutil.copytree(os.path.join(os.path.dirname(result.checkpoint.path), "step-00000008"), ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["source_sequences"][0] += 1  # one prose sequence the plan never drew
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    # No restarts: the guard's error is the point, and each restart would meet it again.
    branch = recipe_factory(corpus, tmp_path / "run")(*SHORT, "train.zero_stage=3", f"run.init_from={ckpt}",
                                                      "train.max_failures=0")
    with pytest.raises(Exception, match=r"data accounting drifted at step 10: trained \["):
        fit(branch)


def _loss_of_each_document_alone(model, tokens: np.ndarray, eos: int) -> float:
    """Mean next-token loss of packed rows, every document run through the model by itself."""
    x, y = torch.tensor(tokens[:, :-1]), torch.tensor(tokens[:, 1:])
    nll, count = 0.0, 0
    with torch.no_grad():
        for row, labels in zip(x, y):
            cuts = [0] + [i + 1 for i in torch.nonzero(row == eos).flatten().tolist() if i + 1 < len(row)]
            for a, b in zip(cuts, cuts[1:] + [len(row)]):
                logits = model(input_ids=row[None, a:b]).logits[0]
                nll += F.cross_entropy(logits, labels[a:b], reduction="sum").item()
                count += b - a
    return nll / count


def test_reset_position_ids_trains_each_document_on_its_own(corpus, tok, tmp_path):
    """With reset_position_ids, the loss the loop trains on is that of every document alone.

    A wide init (std 0.4) makes attention peaky, so whether a token sees the
    documents packed before it changes its loss measurably.
    """
    from smolray.model import build_model

    recipe = recipe_factory(corpus, tmp_path / "run")(
        "train.total_tokens=4096", "run.log_every_steps=1", "schedule.warmup_steps=1",
        "eval.every_steps=0", "model.init_std=0.4", "data.reset_position_ids=true")
    fit(recipe)  # one step: its loss is the untrained model's on step 0's sequences
    logged = read_metrics(os.path.join(log_dir(recipe), "metrics.jsonl"))[0]
    assert logged["step"] == 1
    model = build_model(recipe.model, recipe.seed, tok.bos_token_id, tok.eos_token_id).eval()
    plan = build_plan(recipe)
    tokens = plan.read(0, 0, 16)["tokens"]
    alone = _loss_of_each_document_alone(model, tokens, plan.eos_id)
    assert logged["loss"] == pytest.approx(alone, rel=1e-5)
    # And that is not the loss with documents attending across their boundaries.
    with torch.no_grad():
        x = torch.tensor(tokens)
        packed = F.cross_entropy(model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()).item()
    assert abs(packed - alone) > 10 * 1e-5 * alone, (packed, alone)  # ~100x the tolerance above


def test_post_training_starts_from_a_pretraining_checkpoint(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from conftest import ROOT
    from smolray.model import count_parameters
    from smolray.posttrain.job import resolve_init
    from smolray.recipe import load_recipe
    from smolray.recipe.post import SFTRecipe

    recipe, result, _ = runs[3]  # ZeRO-3 shards: the hardest to consolidate
    post = load_recipe(ROOT / "recipes" / "tiny-sft.yaml",
                       [f"init={result.checkpoint.path}", f"run.output_dir={tmp_path}"], cls=SFTRecipe)
    init = resolve_init(post, str(tmp_path))  # the checkpoint's recipe.json rebuilds the model
    model = AutoModelForCausalLM.from_pretrained(init)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(recipe.model)
    stamp = os.path.getmtime(os.path.join(init, "model.safetensors"))
    assert resolve_init(post, str(tmp_path)) == init  # exported once, then reused
    assert os.path.getmtime(os.path.join(init, "model.safetensors")) == stamp
