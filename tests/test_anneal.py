"""Annealing ablations: branch a stable-phase checkpoint, decay on candidates, compare."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from conftest import ROOT, SAMPLE, TINY, recipe_overrides


@pytest.fixture(scope="module")
def base_run(ray_cluster, corpus, tmp_path_factory):
    """8-step base run stopped at step 4, inside its stable phase (warmup 1, decay from step 6).

    Trained in this process (what `jobs/pretrain.py --stop-at-step 4` runs):
    the ablation job below is the part under test.
    """
    from smolray.data.plan import build_plan
    from smolray.recipe import load_recipe
    from smolray.train.trainer import build_trainer

    out = tmp_path_factory.mktemp("anneal")
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], out / "base")
    sets += [f"data.sources.{n}.raw=[{SAMPLE / n}.jsonl]" for n in ("prose", "code", "math")]
    sets += ["train.num_workers=1", "train.total_tokens=32768", "checkpoint.every_steps=4",
             "run.log_every_steps=2", "schedule.warmup_steps=1", "eval.max_tokens=4096",
             "data.weights={prose: 0.6, code: 0.3, math: 0.1}"]
    recipe = load_recipe(TINY, sets)
    assert build_trainer(recipe, build_plan(recipe), stop_at_step=4).fit().metrics["step"] == 4
    return {"out": out, "sets": sets, "ckpt": out / "base" / "ray" / "tiny" / "step-00000004"}


def _config(base_run, **changes) -> dict:
    cfg = {"name": "abl", "recipe": str(TINY), "set": base_run["sets"], "checkpoint": str(base_run["ckpt"]),
           "decay_steps": 2,
           "candidates": [{"name": "control"}, {"name": "math", "source": "math", "share": 0.5}],
           "eval": {"target": {"code": 0.7, "prose": 0.3},
                    "tasks": [str(SAMPLE / "tasks" / "math_cloze.jsonl")], "limit": 10},
           "resources": {"cpus_per_trial": 0.5, "max_concurrent": 2},
           "output_dir": str(base_run["out"] / "anneals")}
    cfg.update(changes)
    return cfg


def test_candidate_recipes_branch_the_base_run(base_run, monkeypatch):
    from smolray.recipe import RecipeError, recipe_from_dict
    from smolray.tune.anneal import AnnealConfig, candidate_recipes, checkpoint_step

    cfg = recipe_from_dict(_config(base_run), cls=AnnealConfig)
    step = checkpoint_step(cfg.checkpoint)
    assert step == 4
    r = candidate_recipes(cfg, step)
    math_run = r["math"]
    # The trained stage is the base's own; the decay covers exactly the new stage.
    assert [s.name for s in math_run.stages] == ["main", "anneal"] and math_run.stages[1].start_step == 4
    assert math_run.total_steps == 6 and math_run.decay_steps == 2
    assert math_run.stages[1].shares == pytest.approx({"prose": 0.3, "code": 0.15, "math": 0.55})
    assert r["control"].stages[1].shares == pytest.approx({"prose": 0.6, "code": 0.3, "math": 0.1})
    assert math_run.run.init_from == str(base_run["ckpt"])
    # A 4-step base run decays from step 3: its step-4 checkpoint is no stable point to branch from.
    late = recipe_from_dict(_config(base_run, set=base_run["sets"] + ["train.total_tokens=16384"]),
                            cls=AnnealConfig)
    with pytest.raises(RecipeError, match=r"at step 4, outside the base run's stable phase \(steps 1 to 3\)"):
        candidate_recipes(late, step)
    bad = recipe_from_dict(_config(base_run, candidates=[{"name": "web", "source": "web", "share": 0.2}]),
                           cls=AnnealConfig)
    with pytest.raises(RecipeError, match=r"candidates.web.source='web': the recipe .* has no such source"):
        candidate_recipes(bad, step)


def test_anneal_ablation_runs_candidates_and_compares_them(head, base_run):
    path = base_run["out"] / "abl.yaml"
    path.write_text(yaml.safe_dump(_config(base_run)))
    res = head.submit(["python", "tune/anneal_ablation.py", "--config", str(path)], working_dir=str(ROOT),
                      timeout=900, capture=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    d = base_run["out"] / "anneals" / "abl"
    with open(d / "anneal.csv") as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"control", "math"}
    for r in rows.values():
        # Branched at step 4, decayed over steps 5 and 6: only the two new steps were trained here.
        assert r["status"] == "finished" and int(r["step"]) == 6 and int(r["tokens"]) == 6 * 4096
        # The suite's score is the library's on that candidate's export, same 10 examples.
        from smolray.eval.multiple_choice import evaluate, load_task
        from smolray.eval.suite import _load

        lm, tok = _load(r["export"])
        want = evaluate(lm, tok, load_task(str(SAMPLE / "tasks" / "math_cloze.jsonl"), limit=10)[1])
        assert float(r["math_cloze/acc_norm"]) == pytest.approx(want["acc_norm"])
    # More math in the decay, lower held-out math loss; the mixtures differ only there.
    assert float(rows["math"]["val/math/loss"]) < float(rows["control"]["val/math/loss"])
    assert float(rows["math"]["weight/math"]) == pytest.approx(0.55)
    summary = json.loads((d / "anneal.json").read_text())
    assert summary["step"] == 4 and summary["metric"] == "target_loss"
    assert (d / "anneal.png").read_bytes()[:4] == b"\x89PNG"
    ckpts = sorted(p.name for p in (d / "trials" / "math" / "ray" / "abl-math").glob("step-*"))
    assert ckpts == ["step-00000006"]
    # Started from the checkpoint, not from scratch: the run logged no step before 5.
    logged = [json.loads(line)["step"] for line in (d / "trials" / "math" / "logs" / "metrics.jsonl").open()]
    assert logged == [6]


def test_only_pretraining_branches_with_init_from(monkeypatch):
    from smolray.recipe import RecipeError, load_recipe
    from smolray.recipe.post import SFTRecipe

    monkeypatch.chdir(ROOT)
    assert load_recipe(TINY, ["run.init_from=/ckpt/step-00000004"]).run.init_from == "/ckpt/step-00000004"
    # Post-training starts from `init`; a stray init_from must not be silently ignored.
    with pytest.raises(RecipeError, match=r"run.init_from: unknown key"):
        load_recipe(ROOT / "recipes" / "tiny-sft.yaml", ["run.init_from=/ckpt"], cls=SFTRecipe)
