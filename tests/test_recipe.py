"""Recipes: every shipped YAML validates, and every bad case names field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smolray.recipe import RecipeError, apply_overrides, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"


def tiny_dict() -> dict:
    return yaml.safe_load(TINY.read_text())


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    from smolray.recipe.post import DPORecipe, SFTRecipe

    raw = yaml.safe_load(path.read_text())
    if "mode" in raw:  # jobs/synth.py: generation or annotation
        from smolray.synth.config import SynthConfig

        cfg = load_recipe(path, cls=SynthConfig)
        assert getattr(cfg, cfg.mode) is not None
        return
    if "steps" in raw:  # jobs/curate.py
        from smolray.curate.config import CurateConfig
        from smolray.data.raw import expand

        cfg = load_recipe(path, cls=CurateConfig)
        assert expand(cfg.inputs.raw, "inputs.raw")  # the inputs it names ship with the repo
        return
    if "kind" in raw:  # jobs/train_classifier.py
        from smolray.curate.classifier import ClassifierConfig
        from smolray.data.raw import expand

        cfg = load_recipe(path, cls=ClassifierConfig)
        assert cfg.settings is not None and expand(cfg.data.raw, "data.raw")  # labelled data ships too
        return
    objective = raw.get("objective")
    if objective:  # post-training recipes: jobs/sft.py, jobs/dpo.py
        recipe = load_recipe(path, cls={"sft": SFTRecipe, "dpo": DPORecipe}[objective])
        assert recipe.total_steps(1000) >= 1 and recipe.grad_accum >= 1
        return
    recipe = load_recipe(path)
    assert recipe.total_steps >= 1
    assert abs(sum(recipe.data.mixture.values()) - 1) < 1e-9


def bad(sets: list[str]) -> str:
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(apply_overrides(tiny_dict(), sets))
    return str(e.value)


def test_unknown_key_names_the_key_and_lists_valid_ones():
    msg = bad(["train.zero_stag=3"])
    assert "train.zero_stag" in msg and "unknown key" in msg and "zero_stage" in msg


def test_wrong_type_names_field_and_value():
    msg = bad(["train.micro_batch_size=eight"])
    assert "train.micro_batch_size='eight'" in msg and "integer" in msg


def test_zero_stage_out_of_range():
    assert "train.zero_stage=4" in bad(["train.zero_stage=4"])


def test_negative_weight():
    msg = bad(["data.weights.code=-0.3"])
    assert "data.weights.code=-0.3" in msg and ">= 0" in msg


def test_weights_summing_to_zero():
    msg = bad(["data.weights={prose: 0, code: 0, math: 0}"])
    assert "sum to 0" in msg and "positive weight" in msg


def test_weight_for_unknown_source():
    msg = bad(["data.weights.wiki=0.5"])
    assert "data.weights.wiki" in msg and "prose" in msg


def test_two_sources_in_one_shards_dir_are_refused():
    # A typo'd --set that points one source at another's dir, spelled another way.
    msg = bad(["data.sources.code.shards=outputs/data/tiny/prose/"])
    assert "data.sources.code.shards='outputs/data/tiny/prose/' is also data.sources.prose.shards" in msg
    assert "a shards dir of its own" in msg
    msg = bad(["data.sources.code.shards=s3://b/x", "data.sources.math.shards=s3://b/./x?region=eu"])
    assert "data.sources.math.shards" in msg and "data.sources.code.shards" in msg


def test_weights_are_normalized():
    r = recipe_from_dict(apply_overrides(tiny_dict(), ["data.weights={prose: 6, code: 4, math: 0}"]))
    assert r.data.mixture == {"prose": 0.6, "code": 0.4}


def test_seq_len_above_max_positions():
    msg = bad(["data.seq_len=1024"])
    assert "data.seq_len=1024" in msg and "max_position_embeddings=512" in msg


def test_decay_longer_than_run():
    msg = bad(["schedule.decay_fraction=1.5"])
    assert "schedule.decay_fraction=1.5" in msg and "[0, 1]" in msg
    msg = bad(["schedule.warmup_steps=290", "schedule.decay_fraction=0.2"])
    assert "warmup_steps=290" in msg and "longer than the run" in msg


def test_budget_below_one_step():
    msg = bad(["train.total_tokens=100"])
    assert "train.total_tokens=100" in msg and "one optimizer step" in msg


def test_batch_not_divisible():
    msg = bad(["train.global_batch_size=20"])
    assert "global_batch_size=20" in msg and "multiple of 16" in msg


def test_an_elastic_worker_range_must_split_every_step_on_each_count():
    r = load_recipe(TINY, ["train.num_workers=[1,2]"])
    assert (r.train.min_workers, r.train.num_workers, list(r.train.worker_counts)) == (1, 2, [1, 2])
    # The recipe a checkpoint records reloads as the same range.
    again = recipe_from_dict(r.model_dump(mode="json"))
    assert (again.train.min_workers, again.train.num_workers) == (1, 2)
    with pytest.raises(RecipeError, match=r"micro_batch_size \* num_workers = 8 \* 3; use a multiple of 24 "
                                          r"\(an elastic range .* these do: \[1, 2\]\)"):
        load_recipe(TINY, ["train.num_workers=[1,3]"])
    with pytest.raises(RecipeError, match=r"train.num_workers=\[2, 1\]: a range is \[min, max\]"):
        load_recipe(TINY, ["train.num_workers=[2,1]"])
    assert load_recipe(TINY, ["train.num_workers=[2,2]"]).train.min_workers is None  # not elastic


def test_heads_must_divide():
    assert "num_kv_heads" in bad(["model.num_kv_heads=3"])


def test_missing_field():
    raw = tiny_dict()
    del raw["optim"]["lr"]
    with pytest.raises(RecipeError, match=r"optim.lr: required but missing"):
        recipe_from_dict(raw)


def test_several_problems_reported_at_once():
    msg = bad(["train.zero_stage=7", "optim.lr=-1"])
    assert "train.zero_stage" in msg and "optim.lr" in msg


def test_overrides_address_list_items_by_name_and_index():
    raw = apply_overrides(tiny_dict(), ["data.sources.code.shards=/x/code",
                                        "data.sources.0.shards=/x/prose", "optim.lr=1e-3"])
    r = recipe_from_dict(raw)
    assert r.data.source("code").shards == "/x/code"
    assert r.data.source("prose").shards == "/x/prose"
    assert r.optim.lr == 1e-3


def test_bad_override_syntax():
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_overrides(tiny_dict(), ["train.zero_stage"])
    with pytest.raises(RecipeError, match="one of the names"):
        apply_overrides(tiny_dict(), ["data.sources.wiki.shards=/x"])


def test_missing_config_file():
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(ROOT / "recipes" / "nope.yaml")


def test_post_training_recipes_name_the_field_and_fix():
    from smolray.recipe.post import DPORecipe, SFTRecipe

    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "tiny-sft.yaml", ["train.global_batch_size=6"], cls=SFTRecipe)
    assert "train.global_batch_size=6" in str(e.value) and "multiple of 8" in str(e.value)
    with pytest.raises(RecipeError) as e:  # an SFT recipe handed to the DPO job
        load_recipe(ROOT / "recipes" / "tiny-sft.yaml", cls=DPORecipe)
    assert "objective='sft'" in str(e.value) and "jobs/sft.py" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "tiny-dpo.yaml", ["data.packing=true"], cls=DPORecipe)
    assert "data.packing=true" in str(e.value) and "remove data.packing" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "tiny-sft.yaml", ["data.dataset.hf=org/name"], cls=SFTRecipe)
    assert "not both" in str(e.value)


@pytest.mark.parametrize("path", sorted((ROOT / "serving").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_serve_config_validates(path):
    """Each application's args are a valid ServeConfig (the model folders need not exist yet)."""
    from smolray.serve.config import ServeConfig

    cfg = yaml.safe_load(path.read_text())
    # Loopback unless a config brings its own TLS: the bearer key is in every request.
    http = cfg["http_options"]
    assert http["host"] == "127.0.0.1" or (http.get("ssl_certfile") and http.get("ssl_keyfile")), http
    assert cfg["applications"]
    for app in cfg["applications"]:
        assert app["import_path"] == "smolray.serve.app:build_app"
        serve = recipe_from_dict(app["args"], source=str(path), cls=ServeConfig)
        assert serve.models and serve.device in ("cpu", "gpu")
        # No key in the config or in what Ray logs of the app's runtime env.
        assert serve.api_key_env not in (app.get("runtime_env") or {}).get("env_vars", {})
