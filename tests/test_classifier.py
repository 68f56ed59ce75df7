"""Quality classifier: both kinds learn, the folder and its scorer round-trip, bad input is named."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT, SAMPLE

from smolray.curate.classifier import ClassifierConfig, ClassifierError, load_scorer
from smolray.curate.classifier_train import heldout_mask, read_labelled, train
from smolray.recipe import recipe_from_dict

LABELLED = SAMPLE / "labelled" / "edu_scores.jsonl"
PY = sys.executable
MARKERS = ["theorem", "eigenvalue", "derivative", "lemma"]  # words Austen never uses


def config(tmp_path, raw, kind="ngram", **changes) -> ClassifierConfig:
    base = {"name": "clf", "kind": kind, "data": {"raw": [str(raw)]}, "device": "cpu",
            "output_dir": str(tmp_path / "out")}
    if kind == "ngram":
        base["ngram"] = {"buckets": 2**16}
    return recipe_from_dict({**base, **changes}, cls=ClassifierConfig)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def planted_rows(n=400) -> list[dict]:
    """Austen passages scored 1, or 5 where a few marker words were slipped in: the one signal."""
    rng = random.Random(0)
    texts = [json.loads(line)["text"] for line in open(SAMPLE / "prose.jsonl")][:n]
    rows = []
    for i, text in enumerate(texts):
        words = text[:300].split()
        if i % 2 == 0:
            for _ in range(3):
                words.insert(rng.randrange(len(words) + 1), rng.choice(MARKERS))
        rows.append({"text": " ".join(words), "score": 5 if i % 2 == 0 else 1})
    return rows


def test_ngram_learns_a_planted_marker(tmp_path):
    rows = planted_rows()
    cfg = config(tmp_path, write_jsonl(tmp_path / "planted.jsonl", rows))
    m = train(cfg)
    assert m["heldout"]["f1"] >= 0.9, m["heldout"]
    scorer = load_scorer(str(tmp_path / "out" / "clf"))
    assert scorer.kind == "ngram" and scorer.threshold == 3.0
    held = heldout_mask([r["text"] for r in rows], cfg.heldout_fraction)
    good = [r["text"] for r, h in zip(rows, held) if h and r["score"] == 5]
    bad = [r["text"] for r, h in zip(rows, held) if h and r["score"] == 1]
    s_good, s_bad = scorer(good), scorer(bad)
    assert s_good.dtype == np.float32 and len(good) >= 5 and len(bad) >= 5
    assert (s_good >= scorer.threshold).all() and (s_bad < scorer.threshold).mean() >= 0.9


@pytest.fixture(scope="module")
def edu(init_model, tmp_path_factory):
    """The embedding recipe on the labelled sample, with the tests' tiny Llama as the frozen encoder."""
    tmp = tmp_path_factory.mktemp("edu")
    raw = yaml.safe_load((ROOT / "recipes" / "classifier-edu-tiny.yaml").read_text())
    raw.update(output_dir=str(tmp), device="cpu", data={"raw": [str(LABELLED)]})
    raw["embedding"]["encoder"] = init_model
    cfg = recipe_from_dict(raw, cls=ClassifierConfig)
    return {"cfg": cfg, "metrics": train(cfg), "out": tmp / cfg.name, "encoder": init_model}


def test_embedding_classifier_beats_the_constant_and_writes_its_folder(edu):
    h = edu["metrics"]["heldout"]
    assert h["mse"] < 0.8 * h["constant_mse"], h
    assert sum(map(sum, h["confusion"]["matrix"])) == h["rows"] == edu["metrics"]["rows"]["heldout"]
    out = edu["out"]
    assert json.loads((out / "metrics.json").read_text()) == edu["metrics"]
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["kind"] == "embedding" and meta["encoder"] == edu["encoder"] and meta["threshold"] == 3.0
    assert (out / "head.safetensors").is_file() and not list(out.parent.glob("*.tmp*"))


def test_scorer_in_a_fresh_process_matches_and_reproduces_the_metrics(edu, tmp_path):
    texts, y, _, _ = read_labelled(edu["cfg"].data)
    held = heldout_mask(texts, edu["cfg"].heldout_fraction)
    texts, y = [t for t, h in zip(texts, held) if h], y[held]
    scorer = load_scorer(str(edu["out"]))
    here = scorer(texts)
    assert here.shape == (len(texts),) and here.dtype == np.float32 and scorer.kind == "embedding"
    assert float(np.mean((here - y) ** 2)) == pytest.approx(edu["metrics"]["heldout"]["mse"], rel=1e-3)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    code = ("import json, sys, numpy as np; from smolray.curate.classifier import load_scorer; "
            "s = load_scorer(sys.argv[1]); np.save(sys.argv[3], s(json.load(open(sys.argv[2]))))")
    res = subprocess.run([PY, "-c", code, str(edu["out"]), str(tmp_path / "texts.json"), str(tmp_path / "s.npy")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), here, rtol=0, atol=1e-5)


def test_a_changed_encoder_is_refused(edu, tmp_path):
    import shutil

    copy = tmp_path / "clf"
    shutil.copytree(edu["out"], copy)
    meta = json.loads((copy / "classifier.json").read_text())
    (copy / "classifier.json").write_text(json.dumps({**meta, "encoder_fingerprint": "0" * 64}))
    with pytest.raises(ClassifierError, match="has changed since this head was trained"):
        load_scorer(str(copy))


def test_bad_input_is_named_counted_or_refused(tmp_path):
    rows = planted_rows(60)
    nameless = write_jsonl(tmp_path / "nameless.jsonl", [{"text": r["text"], "label": r["score"]} for r in rows])
    with pytest.raises(ClassifierError) as e:
        train(config(tmp_path, nameless))
    assert "nameless.jsonl: no field 'score'" in str(e.value) and "data.score_field" in str(e.value)
    assert "label" in str(e.value)

    odd = [{"text": "a", "score": 7}, {"text": "b", "score": "high"}, {"text": "c"}, {"text": "d", "score": -1},
           {"text": "", "score": 3}, {"text": "e", "score": True}]
    m = train(config(tmp_path, write_jsonl(tmp_path / "odd.jsonl", rows + odd), heldout_fraction=0.3))
    assert m["rows"]["usable"] == len(rows)
    assert m["rows"]["skipped"] == {"no score": 1, "no text": 1, "score not a number": 2, "score outside 0..5": 2}

    with pytest.raises(ClassifierError, match="at least 10"):
        train(config(tmp_path, write_jsonl(tmp_path / "few.jsonl", rows[:6])))
    with pytest.raises(ClassifierError, match="only good documents"):
        train(config(tmp_path, write_jsonl(tmp_path / "good.jsonl", [{**r, "score": 5} for r in rows])))
    with pytest.raises(ValueError, match="needs an `embedding:` section"):
        config(tmp_path, nameless, kind="embedding")


def test_job_trains_the_ngram_recipe_end_to_end(tmp_path):
    res = subprocess.run([PY, "jobs/train_classifier.py", "--config", "recipes/classifier-ngram-tiny.yaml",
                          "--set", f"output_dir={tmp_path}", "--set", "ngram.buckets=65536", "--set", "device=cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = json.loads((tmp_path / "ngram-tiny" / "metrics.json").read_text())
    assert f"F1 {m['heldout']['f1']:.3f}" in res.stdout and "confusion" in res.stdout
    assert str(tmp_path / "ngram-tiny") in res.stdout
    assert m["heldout"]["f1"] >= 0.8 and m["rows"]["usable"] == 300


def test_trains_on_the_annotate_jobs_output(tmp_path):
    """Rows written by the annotate job's own code (synth/run.py) are the training data, unchanged."""
    from smolray.synth.config import SynthConfig
    from smolray.synth.run import DATA, DROPPED, _finish, _write_part

    cfg = recipe_from_dict({"name": "labels", "mode": "annotate", "model": {"source": "unused"},
                            "annotate": {"docs": {"raw": [str(LABELLED)]}}}, cls=SynthConfig)
    rows = [json.loads(line) for line in LABELLED.open()]
    replies = [{"id": f"d{i}", "doc": r["text"], "instruction": "", "template": "", "completion_tokens": 9,
                "generated": f"Useful.\nEducational score: {int(r['score'])}" if i % 10 else "no score here"}
               for i, r in enumerate(rows)]
    out = tmp_path / "annotate"
    for kind in (DATA, DROPPED):
        (out / kind).mkdir(parents=True)
    for start in range(0, len(replies), 64):
        kept, dropped, _ = _finish(cfg, replies[start:start + 64], set())
        _write_part(str(out), DATA, kept)
        _write_part(str(out), DROPPED, dropped)
    res = train(config(tmp_path, out / DATA))
    assert res["rows"]["usable"] == sum(1 for i in range(len(rows)) if i % 10)  # unparsed replies are not rows
    assert res["heldout"]["f1"] > 0.7
