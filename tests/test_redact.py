"""Credentials in URIs never reach a file smolray writes or a line it prints."""

from __future__ import annotations

import json
import os

import pytest

from smolray.redact import redact, redact_obj

SECRET = "wJalrXUtnFEMI-K7MDENG"
KEYED = f"s3://AKIDSMOLRAY:{SECRET}@runs/tiny?endpoint_override=127.0.0.1:9000&secret_key={SECRET}"


def test_redact_masks_key_pairs_and_secret_options_and_keeps_the_rest():
    text = f"reading {KEYED} and gs://plain/bucket/x and s3://bucket/p?session_token={SECRET}&region=eu"
    out = redact(text)
    assert SECRET not in out and "AKIDSMOLRAY" not in out
    assert "s3://***@runs/tiny?endpoint_override=127.0.0.1:9000&secret_key=***" in out
    assert "gs://plain/bucket/x" in out and "session_token=***&region=eu" in out
    assert redact("outputs/demo/run and https://example.org/a?b=1") == "outputs/demo/run and https://example.org/a?b=1"
    assert redact_obj({"files": [KEYED], "n": 3}) == {"files": [redact(KEYED)], "n": 3}


@pytest.fixture()
def keyed_recipe(tmp_path):
    from smolray.recipe import load_recipe

    from conftest import TINY

    return load_recipe(TINY, [f"run.output_dir={KEYED}", f"data.sources.code.shards={KEYED}/code"])


def test_checkpoint_recipe_json_has_no_credentials(keyed_recipe, tmp_path):
    from smolray.train.checkpoint import RECIPE, write_recipe

    write_recipe(str(tmp_path), keyed_recipe)
    text = (tmp_path / RECIPE).read_text()
    assert SECRET not in text and "AKIDSMOLRAY" not in text
    assert json.loads(text)["run"]["output_dir"] == redact(KEYED)
    assert keyed_recipe.run.output_dir == KEYED  # the run itself still has them


def test_dry_run_prints_no_credentials(keyed_recipe):
    from smolray.train.dryrun import describe

    out = describe(keyed_recipe, None, plan_error=f"{KEYED}/code: not tokenized")
    assert SECRET not in out and "AKIDSMOLRAY" not in out and "s3://***@runs/tiny" in out


def test_job_errors_print_no_credentials(capsys):
    from smolray.cli import run
    from smolray.data.shards import ShardError

    def fails():
        raise ShardError(f"{KEYED}/manifest.json: tokenize this source first")

    with pytest.raises(SystemExit):
        run(fails)
    err = capsys.readouterr().err
    assert SECRET not in err and "s3://***@runs/tiny" in err


def test_prepared_data_key_has_no_credentials(tokenizer_dir):
    from smolray.posttrain.job import data_key
    from smolray.recipe import load_recipe
    from smolray.recipe.post import SFTRecipe

    from conftest import ROOT

    # meta.json keeps this key beside the prepared rows: every string in it is masked.
    recipe = load_recipe(ROOT / "recipes" / "tiny-sft.yaml", ["data.dataset.files=[]", f"data.dataset.hf={KEYED}"], cls=SFTRecipe)
    key = data_key(recipe, tokenizer_dir, "template", "init")
    assert SECRET not in json.dumps(key)


def test_a_sweeps_plan_has_no_credentials_and_its_trial_recipes_are_private(keyed_recipe, tmp_path):
    import stat

    from smolray.tune.sweep import Trial, write_trials

    recipe = keyed_recipe.model_copy(update={"run": keyed_recipe.run.model_copy(
        update={"output_dir": str(tmp_path / "trials" / "t00")})})
    trial = Trial("t00", {"prose": 0.5, "code": 0.5}, recipe)
    write_trials(str(tmp_path), [trial])
    plan = (tmp_path / "trials.json").read_text()
    assert SECRET not in plan and "AKIDSMOLRAY" not in plan and redact(f"{KEYED}/code") in plan
    # The trial loads its recipe.yaml and needs the credentials there: only this user reads it.
    assert SECRET in open(trial.recipe_path).read()
    assert stat.S_IMODE(os.stat(trial.recipe_path).st_mode) == 0o600
    write_trials(str(tmp_path), [trial])  # a rerun of the same plan is still recognised
