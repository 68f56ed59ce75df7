"""Curation: the job on the raw web sample through `ray job submit`, the planted
duplicates, decontamination, bad input, and a SIGKILLed job that resumes to the same output.

data/sample/raw/web_truth.json says which sample document is which (exact
and near duplicates with their measured Jaccard, non-English, low quality,
contaminated), so the tests check decisions, not just counts.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, SAMPLE, one_source_recipe

RECIPE = ROOT / "recipes" / "curate-sample.yaml"
TRUTH = json.loads((SAMPLE / "raw" / "web_truth.json").read_text())
PY = sys.executable


def _recipe(tmp: Path, **changes) -> Path:
    r = yaml.safe_load(RECIPE.read_text())
    r["output_dir"] = str(tmp)
    r.update(changes)
    path = tmp / "curate.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(r))
    return path


def _rows(folder: Path) -> list[dict]:
    files = sorted(folder.glob("part-*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def curated(head, tmp_path_factory):
    """The sample recipe, uninterrupted, as a user submits it."""
    tmp = tmp_path_factory.mktemp("curate")
    path = _recipe(tmp)
    res = head.submit(["python", "jobs/curate.py", "--config", str(path)], working_dir=str(ROOT), timeout=900,
                      capture=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp / "web-sample"
    return {"out": out, "stdout": res.stdout, "manifest": json.loads((out / "manifest.json").read_text()),
            "kept": _rows(out / "data"), "dropped": _rows(out / "dropped"), "recipe": path}


def test_funnel_counts_every_document_once(curated):
    m, kept, dropped = curated["manifest"], curated["kept"], curated["dropped"]
    steps = m["steps"]
    assert [s["step"] for s in steps] == ["read", "langid", "decontaminate", "gopher_repetition", "gopher_quality",
                                          "c4_quality", "fineweb_quality", "exact_dedup", "minhash_dedup"]
    assert steps[0]["in"] == sum(1 for line in (SAMPLE / "raw" / "web.jsonl").open() if line.strip())
    for a, b in zip(steps, steps[1:]):
        assert b["in"] == a["kept"]
    for s in steps:
        assert s["in"] == s["kept"] + sum(s["dropped"].values())
        assert all(r.startswith(s["step"]) for r in s["dropped"])
    assert m["output"]["docs"] == steps[-1]["kept"] == len(kept)
    assert len(kept) + len(dropped) == steps[0]["in"]
    assert len({d["id"] for d in kept + dropped}) == steps[0]["in"]
    assert (curated["out"] / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table on stdout names each step with its counts.
    assert "minhash_dedup" in curated["stdout"] and f"{len(kept)} documents kept" in curated["stdout"]


def test_each_planted_document_is_decided_as_planted(curated):
    kept = {d["id"]: d for d in curated["kept"]}
    why = {d["id"]: d["reason"] for d in curated["dropped"]}
    for ids in TRUTH["non_english"].values():
        assert all(why.get(i, "").startswith("langid") for i in ids), ids
    for kind, ids in TRUTH["low_quality"].items():
        assert not set(ids) & set(kept), (kind, set(ids) & set(kept))
    assert all(d["language"] == "en" and d["language_score"] >= 0.65 for d in kept.values())
    # Of an exact pair both kept never happens; a kept copy's twin was dropped as its duplicate.
    for pair in TRUTH["exact_duplicates"]:
        assert not (pair["id"] in kept and pair["of"] in kept), pair
    for pair in TRUTH["near_duplicates"]:
        if pair["target"] >= 0.9:
            assert not (pair["id"] in kept and pair["of"] in kept), pair
    dedup = [d for d in curated["dropped"] if d["reason"].endswith("_dedup")]
    assert dedup and all(d["detail"].startswith("duplicate of web.jsonl:") for d in dedup)
    assert all(d["url"].startswith("http") for d in kept.values())  # inputs.keep_fields carried


def test_contaminated_documents_are_dropped_and_reported(curated):
    why = {d["id"]: d for d in curated["dropped"]}
    report = json.loads((curated["out"] / "decontamination.json").read_text())
    assert report["ngram"] == 13 and set(report["tasks"]) == {"prose_cloze", "math_cloze", "code_cloze"}
    for planted in TRUTH["contaminated"]:
        d = why[planted["id"]]
        task = Path(planted["task_file"]).stem
        example = f"{task}/{planted['task_id']}"
        assert d["reason"] == "decontaminate" and example in d["detail"].split(","), d
        assert planted["id"] in report["tasks"][task]["matched"][example]
    # Only the planted pages quote a benchmark (the builder left out every text that did).
    assert sum(len(t["matched"]) for t in report["tasks"].values()) == len(TRUTH["contaminated"])


def test_curated_source_tokenizes_and_trains(curated, head, tokenizer_dir, tmp_path):
    """The curated data/ folder is a source's `raw`: jobs/tokenize.py and jobs/pretrain.py, submitted
    as a user would, tokenize it and train on it (2 steps)."""
    from smolray.data.shards import read_manifest
    from smolray.recipe.load import recipe_from_dict
    from smolray.train.metrics import read_metrics
    from smolray.train.trainer import log_dir

    r = one_source_recipe(tokenizer_dir, "web", curated["out"] / "data", tmp_path)
    r["train"].update(total_tokens=2 * 16 * 256, num_workers=1)
    r["schedule"]["warmup_steps"] = 1
    r["run"]["log_every_steps"] = 1
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump(r))
    for job in ("tokenize", "pretrain"):
        res = head.submit(["python", f"jobs/{job}.py", "--config", str(path)], working_dir=str(ROOT), timeout=600,
                          capture=True)
        assert res.returncode == 0, job + res.stdout[-3000:] + res.stderr[-3000:]
    m = read_manifest(str(tmp_path / "web"))
    assert m.docs + m.skipped_empty + m.skipped_short == len(curated["kept"]) and m.tokens > 0
    rows = read_metrics(os.path.join(log_dir(recipe_from_dict(r)), "metrics.jsonl"))
    assert [row["step"] for row in rows] == [1, 2] and all(math.isfinite(row["loss"]) for row in rows)
    assert rows[-1]["tokens/web"] == rows[-1]["tokens"] > 0  # every token came from the curated source


def test_killed_job_resumes_to_the_same_output(curated, ray_cluster, tmp_path):
    """SIGKILL mid-run (some parts of the filter phase on disk), rerun: the uninterrupted output.

    The rerun loses two of its Ray Data workers mid-part as well: Ray retries
    the task, the part is rewritten whole (every file lands by rename), and
    no document is lost or kept twice.
    """
    from test_data_faults import kill_tasks

    path = _recipe(tmp_path, inputs={**yaml.safe_load(RECIPE.read_text())["inputs"], "rows_per_part": 25})
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    cmd = [PY, "jobs/curate.py", "--config", str(path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "web-sample" / "work"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        marks = list(work.glob("01-*/stats/*.json"))
        if len(marks) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    marks = list(work.glob("01-*/stats/*.json"))
    assert 3 <= len(marks) < 20, "the kill must land inside the filter phase"
    assert not (tmp_path / "web-sample" / "manifest.json").exists()

    stop, killed = threading.Event(), []
    # The per-part tasks' process title is ray::MapBatches(_run_jobs).
    chaos = threading.Thread(target=kill_tasks, args=(r"^ray::.*_run_jobs", stop, killed))
    chaos.start()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        chaos.join()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(killed) == 2, "no curation task was running to kill"
    out = tmp_path / "web-sample"
    strip = lambda rows: sorted((r["id"], r["text"]) for r in rows)  # noqa: E731
    assert strip(_rows(out / "data")) == strip(curated["kept"])
    assert sorted((r["id"], r["reason"]) for r in _rows(out / "dropped")) == sorted(
        (r["id"], r["reason"]) for r in curated["dropped"])
    # Finished parts were reused, not redone.
    line = next(x for x in res.stdout.splitlines() if x.startswith("langid+"))
    todo, reused = (int(w) for w in re.match(r".*: (\d+) to run, (\d+) already done", line).groups())
    assert todo + reused == 20 and reused >= len(marks), line


# ---- language ID, decontamination and bad input, without a cluster ------------------------------

def test_language_id_uses_the_bundled_model_offline():
    from smolray.curate.config import LangId
    from smolray.curate.langid import Detector, LanguageError

    det = Detector(LangId(step="langid"))
    lang, score = det("It is a truth universally acknowledged, that a single man in possession of a "
                      "good fortune, must be in want of a wife.")
    assert lang == "en" and score > 0.9 and det.reason(lang, score) is None
    lang, score = det("Il était une fois une petite fille qui vivait dans un village près de la forêt.")
    assert lang == "fr" and det.reason(lang, score) == "langid.languages"
    with pytest.raises(LanguageError, match="langid.model='nope.bin'"):
        Detector(LangId(step="langid", model="nope.bin"))


def test_decontamination_matches_query_and_answer_across_the_seam(tmp_path):
    from smolray.curate.config import Decontaminate
    from smolray.curate.decontam import build_index, matches

    task = tmp_path / "quiz.jsonl"
    query = "In which year did the small committee of seven gardeners first agree to plant"
    task.write_text(json.dumps({"id": "q1", "query": query, "choices": [" the old oak tree", " roses"],
                                "gold": 0}) + "\n" + json.dumps({"id": "q2", "query": "Too short",
                                                                  "choices": [" a", " b"], "gold": 1}) + "\n")
    index, tasks = build_index(Decontaminate(step="decontaminate", tasks=[str(task)]))
    assert tasks == {"quiz": {"examples": 2, "shorter_than_ngram": 1}}
    seam = "Notes. The small committee of Seven gardeners first agree to plant the old oak tree, they said."
    assert matches(seam, index, 13) == ["quiz/q1"]
    assert matches("the small committee of seven gardeners first agree to plant roses", index, 13) == []
    assert matches("Too short a", index, 13) == []


def test_bad_input_is_counted_by_reason_or_refused_naming_file_and_field(tmp_path):
    from smolray.curate import CurateError
    from smolray.curate.config import Inputs
    from smolray.curate.parts import read_file

    f = tmp_path / "mixed.jsonl.gz"
    lines = [json.dumps({"id": "a", "text": "fine text"}).encode(), b'{"text": "broken',
             json.dumps({"text": "   "}).encode(), json.dumps({"body": "no text field"}).encode(),
             b'{"text": "caf\xe9 latin-1"}', json.dumps({"text": 7}).encode()]
    f.write_bytes(gzip.compress(b"\n".join(lines)))
    docs, dropped, _ = read_file(str(f), 3, Inputs(raw=[str(f)]))
    assert [(d["id"], d["text"], d["idx"]) for d in docs] == [("a", "fine text", 3 << 32)]
    assert [d["reason"] for d in dropped] == ["read.bad_json", "read.empty", "read.no_text", "read.not_utf8",
                                              "read.no_text"]
    assert [d["id"] for d in dropped][:2] == ["mixed.jsonl.gz:2", "mixed.jsonl.gz:3"]

    p = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["x"]}), p)
    with pytest.raises(CurateError, match=r"docs.parquet: no record has the field inputs.text_field='text'.*"
                                          r"\['content'\]"):
        read_file(str(p), 0, Inputs(raw=[str(p)]))
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(CurateError, match="broken.parquet: cannot be read"):
        read_file(str(bad), 0, Inputs(raw=[str(bad)]))


def test_bad_recipes_fail_before_any_cluster_work(tmp_path):
    def run(**changes):
        path = _recipe(tmp_path, **changes)
        return subprocess.run([PY, "jobs/curate.py", "--config", str(path), "--dry-run"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    steps = yaml.safe_load(RECIPE.read_text())["steps"]
    res = run(steps=steps + [{"step": "langid"}])
    assert res.returncode == 2 and "appears twice" in res.stderr
    res = run(steps=[{"step": "minhash_dedup", "bands": 0}])
    assert res.returncode == 2 and "bands" in res.stderr
    res = run(steps=[{"step": "decontaminate", "tasks": [str(tmp_path / "none.jsonl")]}])
    assert res.returncode == 2 and "none.jsonl" in res.stderr
    res = run(inputs={"raw": [str(tmp_path / "nothing-*.jsonl")]})
    assert res.returncode == 2 and "inputs.raw" in res.stderr
    res = run()
    assert res.returncode == 0 and "phase 3 minhash_dedup: 0 work items already done" in res.stdout


def test_quality_classifier_step_scores_and_keeps_at_the_threshold(ray_cluster, tmp_path):
    """A classifier trained on labelled rows scores a curation run (an actor pool); kept >= threshold."""
    from smolray.curate.classifier import ClassifierConfig, load_scorer
    from smolray.curate.classifier_train import train
    from smolray.curate.config import CurateConfig
    from smolray.curate.report import finish
    from smolray.curate.run import plan, run_phases
    from smolray.data.raw import expand, identities
    from smolray.recipe.load import recipe_from_dict

    labelled = str(SAMPLE / "labelled" / "edu_scores.jsonl")
    clf = recipe_from_dict({"name": "edu", "kind": "ngram", "data": {"raw": [labelled]}, "device": "cpu",
                            "ngram": {"buckets": 2**16}, "output_dir": str(tmp_path / "clf")},
                           cls=ClassifierConfig)
    train(clf)
    cfg = recipe_from_dict({"name": "scored", "inputs": {"raw": [labelled], "rows_per_part": 120},
                            "steps": [{"step": "quality_classifier", "model": str(tmp_path / "clf" / "edu"),
                                       "column": "edu_score"}],
                            "output_dir": str(tmp_path)}, cls=CurateConfig)
    files = expand(cfg.inputs.raw, "inputs.raw")
    phases = plan(cfg, files, identities(files))
    run_phases(cfg, files, phases)
    m = finish(cfg, phases, identities(files))
    kept, dropped = _rows(tmp_path / "scored" / "data"), _rows(tmp_path / "scored" / "dropped")
    assert len(kept) + len(dropped) == 300 and kept and dropped
    assert all(d["edu_score"] >= 3.0 for d in kept)
    assert {d["reason"] for d in dropped} == {"quality_classifier.threshold"}
    assert all(float(d["detail"]) < 3.0 for d in dropped)
    scorer = load_scorer(str(tmp_path / "clf" / "edu"))
    got = scorer([d["text"] for d in kept[:20]])
    assert np.allclose(got, [d["edu_score"] for d in kept[:20]], atol=1e-3)
    assert m["steps"][-1]["step"] == "quality_classifier" and m["output"]["docs"] == len(kept)


def test_output_on_an_object_store_is_refused_with_the_fix():
    from pydantic import ValidationError

    from smolray.curate.config import CurateConfig

    with pytest.raises(ValidationError, match=r"output_dir='s3://b/curate'.*shared file system"):
        CurateConfig(name="x", inputs={"raw": ["a.jsonl"]}, steps=[{"step": "exact_dedup"}],
                     output_dir="s3://b/curate")


def test_html_pages_become_their_main_text(tmp_path):
    """inputs.html: navigation, footers and scripts go; the article stays; a page with no text is counted."""
    from smolray.curate.config import Inputs
    from smolray.curate.parts import read_file

    article = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
               "must be in want of a wife.")
    page = (f"<html><head><title>Books</title><script>var t = 1;</script></head><body><nav><a href='/'>Home</a>"
            f" | <a href='/about'>About</a></nav><main><h1>Chapter 1</h1><p>{article}</p></main>"
            "<footer>Copyright 2012 | Privacy policy</footer></body></html>")
    latin = page.replace("Chapter 1", "Chapitre été").encode("latin-1")
    f = tmp_path / "pages.parquet"
    pq.write_table(pa.table({"html": [page.encode(), latin, b"<html><body><script>x()</script></body></html>"]}), f)
    docs, dropped, _ = read_file(str(f), 0, Inputs(raw=[str(f)], text_field="html", html=True))
    assert [d["text"] for d in docs] == [f"Chapter 1\n\n{article}", f"Chapitre été\n\n{article}"]
    assert [d["reason"] for d in dropped] == ["read.no_text_in_html"]
