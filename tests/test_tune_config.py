"""Sweep files: validated before any trial, and the mixtures they draw."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import ROOT

TOKENS = {"prose": 600_000, "code": 300_000, "math": 100_000}


def sweep(**changes):
    from smolray.recipe import recipe_from_dict
    from smolray.tune.config import SweepConfig

    raw = yaml.safe_load((ROOT / "tune" / "tiny-mixture.yaml").read_text())
    raw.update(changes)
    if "search" in changes and "baselines" not in changes:
        raw["baselines"] = {}  # the shipped uniform baseline names all three sources
    return recipe_from_dict(raw, source="sweep", cls=SweepConfig)


SHIPPED = sorted((ROOT / "tune").glob("*.yaml"))
SWEEPS = [p for p in SHIPPED if "candidates" not in yaml.safe_load(p.read_text())]
ANNEALS = [p for p in SHIPPED if p not in SWEEPS]


@pytest.mark.parametrize("path", ANNEALS, ids=lambda p: p.name)
def test_every_shipped_anneal_validates(path, monkeypatch):
    from smolray.recipe import load_recipe
    from smolray.tune.anneal import AnnealConfig, candidate_recipes

    monkeypatch.chdir(ROOT)
    cfg = load_recipe(path, cls=AnnealConfig)
    # The checkpoint exists only after `make demo`; its step is in the file name.
    step = int(cfg.checkpoint.rsplit("-", 1)[1])
    recipes = candidate_recipes(cfg, step)
    assert set(recipes) == {c.name for c in cfg.candidates}
    for r in recipes.values():
        assert r.total_steps == step + cfg.decay_steps and r.stages[-1].start_step == step


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_validates(path, monkeypatch):
    from smolray.recipe import load_recipe
    from smolray.tune.config import SweepConfig
    from smolray.tune.space import check, mixtures, trial_recipe

    monkeypatch.chdir(ROOT)
    cfg = load_recipe(path, cls=SweepConfig)
    check(cfg)
    mixes = mixtures(cfg, TOKENS)
    assert mixes and all(abs(sum(m.values()) - 1) < 1e-9 for m in mixes)
    r = trial_recipe(cfg, mixes[0], "t0", "/tmp/unused")
    assert r.train.total_tokens == cfg.budget_tokens and r.data.mixture == pytest.approx(
        {k: v for k, v in mixes[0].items()})


def test_grid_is_the_two_source_ratio_ablation_with_a_fixed_source():
    from smolray.tune.space import mixtures

    cfg = sweep(search=["prose", "code"], fixed={"math": 0.1},
                space={"kind": "grid", "values": [1.0, 0.6, 0.0]})
    assert mixtures(cfg, TOKENS) == [
        {"math": 0.1, "prose": 0.9}, pytest.approx({"math": 0.1, "prose": 0.54, "code": 0.36}),
        {"math": 0.1, "code": 0.9}]


def test_dirichlet_mixtures_centre_on_the_prior_and_repeat_with_the_seed():
    from smolray.tune.space import mixtures

    cfg = sweep(space={"kind": "dirichlet", "prior": "tokens", "concentration": 1.0, "trials": 4000, "seed": 7})
    mixes = mixtures(cfg, TOKENS)
    mean = {s: np.mean([m.get(s, 0) for m in mixes]) for s in TOKENS}
    assert mean == pytest.approx({"prose": 0.6, "code": 0.3, "math": 0.1}, abs=0.02)
    assert mixes[:5] == mixtures(cfg, TOKENS)[:5]
    fixed = mixtures(sweep(search=["prose", "code"], fixed={"math": 0.25},
                           space={"kind": "dirichlet", "trials": 20}), TOKENS)
    assert all(m["math"] == 0.25 and abs(sum(m.values()) - 1) < 1e-9 for m in fixed)


@pytest.mark.parametrize("changes,message", [
    ({"space": {"kind": "list", "mixtures": []}}, "space.mixtures is empty"),
    ({"space": {"kind": "grid", "values": []}}, "space.values is empty"),
    ({"fixed": {"math": 1.5}, "search": ["prose", "code"]}, "fixed.math=1.5: a fixed share must be in [0, 1]"),
    ({"space": {"kind": "dirichlet", "trials": 0}}, "space.trials=0"),
    ({"eval": {"target": {}}}, "metric=target_loss needs eval.target"),
    ({"search": []}, "search"),
])
def test_bad_sweep_files_fail_with_the_field(changes, message):
    from smolray.recipe import RecipeError

    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sweep(**changes)


def test_bad_sweeps_against_the_recipe_fail_before_launching(monkeypatch):
    from smolray.recipe import RecipeError
    from smolray.tune.space import check

    monkeypatch.chdir(ROOT)
    with pytest.raises(RecipeError, match=r"search names \['web'\], which the recipe"):
        check(sweep(search=["prose", "web"]))
    with pytest.raises(RecipeError, match=r"eval.target.wiki: no source named 'wiki'"):
        check(sweep(eval={"target": {"wiki": 1.0}, "every_steps": 10}))
    with pytest.raises(RecipeError, match="budget_tokens=1000 is less than one optimizer step"):
        check(sweep(budget_tokens=1000))
