"""The SFT -> DPO chain on the bundled sample conversations, through
`ray job submit` on a local head: the SFT job stopped midway and resumed on
another worker count, the DPO job surviving a killed worker by itself."""

from __future__ import annotations

import argparse
import json
import os
import threading

import pytest

from conftest import ROOT
from test_resume import first_resumed_row, kill_a_worker_after

SFT_SETS = ["data.seq_len=512", "train.epochs=1", "checkpoint.every_steps=100", "run.log_every_steps=1"]
DPO_SETS = ["data.seq_len=192", "data.dataset.limit=96", "train.epochs=1", "checkpoint.every_steps=100",
            "run.log_every_steps=1"]


def _args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def _submit(head, job: str, recipe: str, sets: list[str], *extra: str) -> str:
    out = head.submit(["python", f"jobs/{job}.py", "--config", f"recipes/{recipe}.yaml", *_args(sets), *extra],
                      working_dir=str(ROOT), timeout=600, capture=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _in_process(cls, recipe: str, sets: list[str], dry_run: bool = False) -> None:
    from smolray.posttrain.job import run_job

    run_job(cls, argparse.Namespace(config=str(ROOT / "recipes" / f"{recipe}.yaml"), set=sets,
                                    dry_run=dry_run, stop_at_step=None, force_prepare=False,
                                    prompt="What does `len` do?"))


def _losses(out_dir) -> dict[int, float]:
    from smolray.train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out_dir, "logs", "metrics.jsonl"))}


@pytest.fixture(scope="module")
def sft(head, ray_cluster, init_model, tmp_path_factory):
    """The SFT job stopped at step 3 and rerun, and the same run uninterrupted."""
    from smolray.recipe.post import SFTRecipe

    root = tmp_path_factory.mktemp("sft")
    sets = SFT_SETS + [f"init={init_model}"]
    first = _submit(head, "sft", "tiny-sft", sets + [f"run.output_dir={root / 'job'}"], "--stop-at-step", "3")
    # Resumed on one worker instead of two: the ZeRO shards are resharded on load.
    _submit(head, "sft", "tiny-sft", sets + [f"run.output_dir={root / 'job'}", "train.num_workers=1"])
    # The same run without a stop (reusing the job's prepared rows).
    _in_process(SFTRecipe, "tiny-sft", sets + [f"run.output_dir={root / 'whole'}",
                                               f"data.prepared_dir={root / 'job' / 'data'}"])
    return {"job": root / "job", "whole": root / "whole", "first": first, "sets": sets}


@pytest.fixture(scope="module")
def dpo(head, sft, tmp_path_factory):
    """The DPO job from the SFT job's export, with a training worker killed mid-run.

    train.max_failures=1: Ray Train restarts the workers inside the same job
    from the step-4 (or step-8) checkpoint, and the job finishes by itself.
    """
    root = tmp_path_factory.mktemp("dpo")
    sets = DPO_SETS + [f"init={sft['job'] / 'export'}", f"run.output_dir={root / 'job'}",
                       "checkpoint.every_steps=4", "train.max_failures=1"]
    done = {}
    job = threading.Thread(target=lambda: done.update(out=head.submit(
        ["python", "jobs/dpo.py", "--config", "recipes/tiny-dpo.yaml", *_args(sets)],
        working_dir=str(ROOT), timeout=600, capture=True)))
    job.start()
    seen = kill_a_worker_after(root / "job" / "ray" / "tiny-dpo", 4)
    recovered = first_resumed_row(str(root / "job" / "logs" / "metrics.jsonl"))
    print(f"DPO: kill to the restarted group's first row: {recovered - seen.get('killed_at', recovered):.1f} s")
    job.join()
    out = done["out"]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"job": root / "job", "out": out.stdout, "killed": seen}


def _began(out_dir) -> list[tuple[int, int]]:
    """(step, the step its process started at) for every row as written."""
    from smolray.train.metrics import read_rows

    return [(r["step"], r["resumed_from"]) for r in read_rows(os.path.join(out_dir, "logs", "metrics.jsonl"))]


def test_sft_resumes_exactly_and_lowers_the_assistant_loss(sft):
    assert "stopped at step 3" in sft["first"]
    job, whole = _losses(sft["job"]), _losses(sft["whole"])
    # The rerun began at the step-3 checkpoint: steps 1-3 were logged once, by the first job.
    assert _began(sft["job"]) == [(s, 0 if s <= 3 else 3) for s in range(1, len(whole) + 1)]
    assert sorted(job) == sorted(whole) == list(range(1, len(whole) + 1))
    for step in whole:  # the resumed run trains on the same rows with the same state
        assert job[step] == pytest.approx(whole[step], rel=1e-4), step
    last = max(whole)
    assert whole[last] < whole[1] - 0.5  # nats per assistant token
    summary = json.loads((sft["job"] / "logs" / "summary.json").read_text())
    assert summary["data"]["skipped"] == {} and summary["data"]["rows"] > 0


def test_sft_resume_with_changed_data_is_refused(sft, tmp_path):
    from smolray.recipe.post import SFTRecipe

    # The finished job's checkpoint, but 100 conversations instead of all of them.
    sets = sft["sets"] + [f"run.output_dir={sft['job']}", "data.dataset.limit=100",
                          f"data.prepared_dir={tmp_path / 'data'}"]
    with pytest.raises(Exception, match="the prepared data changed since this checkpoint"):
        _in_process(SFTRecipe, "tiny-sft", sets)
    assert json.loads((sft["job"] / "logs" / "summary.json").read_text())["steps"] == max(_losses(sft["job"]))


def test_dpo_learns_the_planted_preference_and_resumes(dpo):
    from smolray.train.metrics import read_metrics

    rows = read_metrics(os.path.join(dpo["job"], "logs", "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 13))
    # One job: a worker was killed after a checkpoint and the restarted
    # workers went on from it, logging every later step once more.
    assert len(dpo["killed"]["pids"]) == 2 and "stopped at step" not in dpo["out"], dpo["killed"]
    began = _began(dpo["job"])
    resumed = sorted({b for _, b in began} - {0})
    assert len(resumed) == 1 and resumed[0] in (4, 8), began
    first = [s for s, b in began if b == 0]
    assert first == list(range(1, len(first) + 1)) and resumed[0] <= max(first) < 12, began
    assert [s for s, b in began if b] == list(range(resumed[0] + 1, 13))
    # At step 1 the policy is the reference: every pair costs log 2.
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert rows[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-3)
    assert rows[-1]["rewards/margin"] > 0
    summary = json.loads((dpo["job"] / "logs" / "summary.json").read_text())
    assert summary["reward_accuracy_all_pairs"] > 0.9


def test_the_exported_chat_model_answers_in_its_training_template(dpo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smolray.tokenizer.bpe import CHAT_TEMPLATE

    export = str(dpo["job"] / "export")
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    assert tok.chat_template == CHAT_TEMPLATE  # the template travelled with the model
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in model.generation_config.eos_token_id  # generation stops at end of turn
    chat = [{"role": "user", "content": "What does `len` do?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nWhat does `len` do?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    reply = out[0, ids.shape[1]:].tolist()
    assert reply and end not in reply[:-1]  # nothing after an end of turn
    assert tok.decode(reply, skip_special_tokens=True).strip()


def test_dry_run_reports_skips_and_refuses_a_mostly_bad_dataset(ray_cluster, init_model, tmp_path, capsys):
    from smolray.posttrain.prepare import PreparedDataError
    from smolray.recipe.post import SFTRecipe

    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    bad = [{"messages": [{"role": "user", "content": "Hi"}]},
           {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "x"}]},
           {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
           {"conversation": []}]
    long = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [good] * 6 + bad + [long]) + "{not json\n")
    sets = [f"init={init_model}", f"data.dataset.files=[{data}]", "data.seq_len=128",
            "data.overlong=drop", f"run.output_dir={tmp_path / 'out'}", "data.max_skipped_fraction=0.5"]
    _in_process(SFTRecipe, "tiny-sft", sets, dry_run=True)
    text = capsys.readouterr().out
    assert "examples read: 12; kept 6" in text
    for reason in ("no_assistant 1", "unknown_role 1", "empty_message 1", "missing_field:messages 1",
                   "overlong_dropped 1", "invalid_json 1"):
        assert reason in text
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    with pytest.raises(PreparedDataError, match="5 of 12 examples were skipped"):
        _in_process(SFTRecipe, "tiny-sft", sets[:-1], dry_run=True)


def test_hugging_face_datasets_and_padding(ray_cluster, init_model, tmp_path, capsys):
    """`dataset.hf` goes through datasets.load_dataset (here a local dataset folder)."""
    import shutil

    from conftest import SAMPLE
    from smolray.recipe.post import SFTRecipe

    folder = tmp_path / "smoltalk-like"
    folder.mkdir()
    shutil.copy(SAMPLE / "chat" / "sft.jsonl", folder / "train.jsonl")
    sets = [f"init={init_model}", "data.dataset.files=[]", f"data.dataset.hf={folder}",
            "data.dataset.limit=50", "data.packing=false", f"run.output_dir={tmp_path / 'out'}"]
    _in_process(SFTRecipe, "tiny-sft", sets, dry_run=True)
    text = capsys.readouterr().out
    assert "examples read: 50; kept 50" in text
    assert "sequences: 50 of 512 tokens (padded;" in text  # one conversation per row
