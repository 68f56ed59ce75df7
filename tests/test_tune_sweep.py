"""Mixture sweeps end to end, and the held-out split they are judged on."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time

import pytest
import yaml

from conftest import PY, ROOT, SAMPLE, TINY, heldout_texts, long, recipe_overrides, registered_step


def test_heldout_documents_never_reach_the_shards(corpus):
    from smolray.data.raw import iter_texts
    from smolray.data.tokenize import held_out

    texts = list(iter_texts([str(SAMPLE / "code.jsonl")], "text"))
    want = [t for t in texts if held_out(t, 0.1)]
    m = corpus["manifests"]["code"]
    got = heldout_texts(corpus["root"] / "code")
    # Exactly the hashed tenth, in file order, and the shards hold every other document.
    assert got == want and 0 < len(want) < len(texts) // 4
    assert m.heldout_docs == len(want) and m.docs == len(texts) - len(want)
    # The split depends on the text alone: the same document is held out wherever it appears.
    assert held_out(want[0], 0.1) and not held_out(want[0], 0.0)


def test_recipe_refuses_a_target_without_heldout_text(make_recipe):
    from smolray.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"eval.target names \['code'\], which hold out no documents; "
                                          r"set data.sources.code.heldout_fraction"):
        make_recipe("data.sources.code.heldout_fraction=0", "eval.target={code: 1}")
    with pytest.raises(RecipeError, match="eval.every_steps=5 but no source holds out"):
        make_recipe(*[f"data.sources.{n}.heldout_fraction=0" for n in ("prose", "code", "math")],
                    "eval.every_steps=5")


def test_bad_sweep_fails_before_any_cluster_work(tmp_path):
    bad = yaml.safe_load((ROOT / "tune" / "tiny-mixture.yaml").read_text())
    bad["budget_tokens"] = 100
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    res = subprocess.run([PY, "tune/mixture_sweep.py", "--config", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "budget_tokens=100 is less than one optimizer step" in res.stderr and "ray" not in res.stdout


def _trial_sets(corpus, out, checkpoint_every: int, log_every: int, eval_tokens: int) -> list[str]:
    """Recipe overrides for tiny one-worker proxy trials on the session's tokenized corpus."""
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], out / "unused")
    # The corpus's own raw paths: the sources are up to date, so nothing is re-tokenized.
    sets += [f"data.sources.{n}.raw=[{SAMPLE / n}.jsonl]" for n in ("prose", "code", "math")]
    return sets + ["train.num_workers=1", f"checkpoint.every_steps={checkpoint_every}",
                   f"run.log_every_steps={log_every}", "schedule.warmup_steps=1",
                   f"eval.max_tokens={eval_tokens}"]


STEPS = 8  # per trial; a checkpoint every 2 leaves the kill below 4 steps of room


@pytest.fixture(scope="module")
def sweep(head, corpus, tmp_path_factory):
    """A 4-trial sweep (3 listed mixtures and a uniform baseline) with a confirmation trial.

    The first job's driver is SIGKILLed once a trial has registered a
    checkpoint; the same command then finishes the sweep (the killed trials
    from their checkpoints), and a third run finds every trial done.
    """
    out = tmp_path_factory.mktemp("sweeps")
    sets = _trial_sets(corpus, out, checkpoint_every=2, log_every=1, eval_tokens=4096)
    cfg = {"name": "e2e", "recipe": str(TINY), "set": sets, "budget_tokens": 4096 * STEPS,
           "search": ["prose", "code", "math"],
           "space": {"kind": "list", "mixtures": [{"prose": 0.8, "code": 0.1, "math": 0.1},
                                                  {"prose": 0.1, "code": 0.8, "math": 0.1},
                                                  {"prose": 0.1, "code": 0.1, "math": 0.8}]},
           "baselines": {"uniform": {"prose": 1, "code": 1, "math": 1}},
           "eval": {"target": {"code": 0.7, "prose": 0.3}, "every_steps": 4},
           "scheduler": {"kind": "none"}, "resources": {"cpus_per_trial": 0.5, "max_concurrent": 2},
           "output_dir": str(out)}
    path = out / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    d = out / "e2e"
    cmd = ["python", "tune/mixture_sweep.py", "--config", str(path)]
    t0 = time.monotonic()
    cut, registered, status = _kill_driver_mid_trial(head, cmd, d, ("t00", "t01"))
    killed = {t: _logged(d, t) for t in ("t00", "t01", "t02", "uniform", "confirm")}
    results_after_kill = (d / "results.csv").exists()
    first = head.submit(cmd, working_dir=str(ROOT), timeout=900, capture=True)
    job_s = time.monotonic() - t0
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    table = (d / "results.csv").read_text()
    # The same command again: every trial is done, so Tune restores and trains nothing.
    again = head.submit(cmd, working_dir=str(ROOT), timeout=900, capture=True)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    return {"dir": d, "stdout": first.stdout, "table": table, "job_s": job_s,
            "table_again": (d / "results.csv").read_text(), "cut": cut, "registered": registered,
            "killed": killed, "status_after_kill": status, "results_after_kill": results_after_kill}


def _kill_driver_mid_trial(head, cmd, d, trials):
    """Submit the sweep, SIGKILL its driver once one of `trials` has registered a checkpoint.

    Returns (that trial, its registered step at the kill, `ray job status` after it).
    """
    ray = [os.path.join(os.path.dirname(PY), "ray"), "job"]
    addr = f"--address={head.dashboard_url}"
    head.submit_nowait(cmd, str(ROOT), job_id="sweep-cut")
    cut, deadline = None, time.monotonic() + 600
    while cut is None and time.monotonic() < deadline:
        cut = next((t for t in trials if registered_step(d / "trials" / t / "ray" / f"{d.name}-{t}")), None)
        time.sleep(0.1)
    assert cut, "no trial registered a checkpoint"
    # A crash, not a polite stop: SIGKILL reaches the driver at once, where
    # `ray job stop` takes seconds of CLI start-up and grace period on a busy
    # machine. Ray then tears down the trials' workers, which the driver owns.
    driver = " ".join(cmd[1:])
    subprocess.run(["pkill", "-KILL", "-f", driver], check=True)
    while subprocess.run(["pgrep", "-f", driver], capture_output=True).returncode == 0:
        time.sleep(0.1)
    registered = registered_step(d / "trials" / cut / "ray" / f"{d.name}-{cut}")
    status = subprocess.run([*ray, "status", addr, "sweep-cut"], env=head.env, capture_output=True, text=True,
                            timeout=120)
    return cut, registered, status.stdout


def _logged(d, tid):
    """(step, the step its run began at) for every metrics row of a trial, as written."""
    log = d / "trials" / tid / "logs" / "metrics.jsonl"
    rows = map(json.loads, log.open()) if log.exists() else []
    return [(r["step"], r["resumed_from"]) for r in rows]


def _rows(d):
    with open(d / "results.csv") as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


def test_sweep_writes_one_row_per_trial_with_its_mixture_and_metrics(sweep):
    from smolray.recipe import load_recipe

    rows = _rows(sweep["dir"])
    assert set(rows) == {"t00", "t01", "t02", "uniform", "confirm"}
    for tid, r in rows.items():
        assert r["status"] == "finished" and int(r["step"]) == STEPS and int(r["tokens"]) == 4096 * STEPS
        # Seconds the trial ran (in both jobs): inside the jobs' own wall time.
        assert 0 < float(r["wall_s"]) < sweep["job_s"]
        # target_loss is the named mixture of the per-source held-out losses.
        want = 0.7 * float(r["val/code/loss"]) + 0.3 * float(r["val/prose/loss"])
        assert float(r["target_loss"]) == pytest.approx(want, rel=1e-9)
        # The recorded recipe reruns the trial alone: same mixture, same budget.
        recipe = load_recipe(r["recipe"])
        assert recipe.train.total_tokens == 4096 * STEPS and recipe.eval.target == {"code": 0.7, "prose": 0.3}
        w = {s: float(r[f"weight/{s}"]) for s in ("prose", "code", "math")}
        assert recipe.data.mixture == pytest.approx({s: v for s, v in w.items() if v > 0}, abs=1e-6)
    assert float(rows["uniform"]["weight/code"]) == pytest.approx(1 / 3, abs=1e-6)
    # More code in training, lower held-out code loss.
    assert float(rows["t01"]["val/code/loss"]) < float(rows["t00"]["val/code/loss"])


def test_sweep_regression_recommends_and_confirms_a_mixture(sweep):
    d = sweep["dir"]
    rec = json.loads((d / "recommendation.json").read_text())
    r = rec["recommended"]
    assert sum(r["mixture"].values()) == pytest.approx(1, abs=1e-5) and set(r["mixture"]) <= {"prose", "code", "math"}
    # Four finished trials cannot fit the 6-term quadratic: the fit falls back to linear.
    assert r["model"] == "linear" and r["fitted_on"] == 4
    # A Spearman correlation of 4 ranks is 1 - (sum of squared rank gaps) / 10 with an
    # even sum: a multiple of 0.2 in [-1, 1] (a Pearson value, or a 5-trial fit, is not).
    corr = r["heldout_rank_corr"]
    assert -1 <= corr <= 1 and corr * 5 == pytest.approx(round(corr * 5), abs=1e-9)
    assert math.isfinite(r["predicted"])
    confirm = _rows(d)["confirm"]
    assert r["confirmed"] == pytest.approx(float(confirm["target_loss"]))
    for w in ("prose", "code", "math"):
        assert float(confirm[f"weight/{w}"]) == pytest.approx(r["mixture"].get(w, 0), abs=1e-6)
    assert rec["best_trial"]["trial"] in {"t00", "t01", "t02", "uniform"}
    assert rec["baselines"]["uniform"]["target_loss"] == pytest.approx(float(_rows(d)["uniform"]["target_loss"]))
    for png in ("metric.png", "fit.png"):
        data = (d / png).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 5000
    assert "recommended:" in sweep["stdout"] and "held-out rank correlation" in sweep["stdout"]


def test_sweep_rerun_resumes_instead_of_retraining(sweep):
    def metrics(table):
        return {r["trial"]: r["target_loss"] for r in csv.DictReader(table.splitlines())}

    assert metrics(sweep["table_again"]) == metrics(sweep["table"])
    # Wall times included: a retrained trial would report a new time_total_s.
    assert sweep["table_again"] == sweep["table"]
    ckpts = sorted(p.name for p in (sweep["dir"] / "trials" / "t00" / "ray" / "e2e-t00").glob("step-*"))
    assert ckpts == ["step-00000006", "step-00000008"]  # checkpoint.keep=2


def test_sweep_rerun_with_another_budget_or_base_recipe_is_refused(sweep):
    from smolray.recipe import RecipeError, load_recipe
    from smolray.tune.config import SweepConfig
    from smolray.tune.space import check
    from smolray.tune.sweep import plan_trials, write_trials

    path = sweep["dir"].parent / "e2e.yaml"
    cfg = load_recipe(path, cls=SweepConfig)
    tokens = {s: m.tokens for s, m in _manifests(check(cfg)).items()}
    cases = [({"budget_tokens": 8192 * STEPS}, r"train\.total_tokens"),  # the budget
             ({"set": cfg.set + ["optim.lr=1e-2"]}, r"optim\.lr"),  # the base recipe
             ({"set": cfg.set + ["seed=7"]}, r"\bseed\b")]
    for update, field in cases:
        changed = cfg.model_copy(update=update)
        with pytest.raises(RecipeError, match=rf"planned differently \(trial \w+'s recipe changed in [^)]*{field}"):
            write_trials(str(sweep["dir"]), plan_trials(changed, tokens))
    moved = cfg.model_copy(update={"space": cfg.space.model_copy(update={"mixtures": cfg.space.mixtures[::-1]})})
    with pytest.raises(RecipeError, match=r"trial t00's mixture was"):
        write_trials(str(sweep["dir"]), plan_trials(moved, tokens))
    # The unchanged config is accepted (what a plain rerun does).
    write_trials(str(sweep["dir"]), plan_trials(cfg, tokens))


def _manifests(base):
    from smolray.data.shards import read_manifest

    return {s.name: read_manifest(s.shards) for s in base.data.sources}


def test_in_loop_validation_equals_offline_eval_of_the_checkpoint(sweep, tok, tmp_path):
    """The loop's val/code/loss is the eval library's loss of the same weights on the same text."""
    from smolray.eval.loss import text_loss
    from smolray.recipe import load_recipe
    from smolray.train.export import export_hf
    from transformers import AutoModelForCausalLM

    row = _rows(sweep["dir"])["t01"]
    recipe = load_recipe(row["recipe"])
    ckpt = sweep["dir"] / "trials" / "t01" / "ray" / "e2e-t01" / "step-00000008"
    model = AutoModelForCausalLM.from_pretrained(export_hf(str(ckpt), recipe, str(tmp_path / "export"))).eval()
    texts = heldout_texts(recipe.data.source("code").shards)
    got = text_loss(model, tok, texts, recipe.data.seq_len, max_tokens=recipe.eval.max_tokens)
    assert float(row["val/code/loss"]) == pytest.approx(got["loss"], rel=1e-4)
    assert float(row["val/code/bpb"]) == pytest.approx(got["bpb"], rel=1e-4)


def test_sweep_stopped_mid_trial_resumes_from_the_checkpoints(sweep):
    """The first job's driver was killed in the middle of a trial; the same command finished it from its checkpoint."""
    assert "succeeded" not in sweep["status_after_kill"].lower(), sweep["status_after_kill"]
    assert not sweep["results_after_kill"]
    cut, registered, d = sweep["cut"], sweep["registered"], sweep["dir"]
    # The killed trial went on from a checkpoint, not from scratch. The newest
    # checkpoint directory may not be registered yet when the job dies (Ray
    # Train records it after the upload), so the resume point is the latest
    # registered one: an even step, and the steps up to it were trained once.
    after = _logged(d, cut)
    first = [s for s, began in after if began == 0]
    rerun = [(s, began) for s, began in after if began > 0]
    assert first == list(range(1, len(first) + 1)) and max(first) < STEPS, f"not killed mid-trial: {first}"
    assert first == [s for s, _ in sweep["killed"][cut]]
    resumed_from = rerun[0][1]
    assert {began for _, began in rerun} == {resumed_from}
    assert 2 <= registered <= resumed_from <= max(first) and resumed_from % 2 == 0, (registered, after)
    assert [s for s, _ in rerun] == list(range(resumed_from + 1, STEPS + 1))
    # Trials the killed job never reached ran once, from the start.
    for tid in ("t02", "uniform", "confirm"):
        assert sweep["killed"][tid] == [] and _logged(d, tid) == [(s, 0) for s in range(1, STEPS + 1)], tid


def test_asha_stops_the_mixture_that_falls_behind(head, corpus, tmp_path):
    """One trial at a time makes ASHA's decision deterministic: the second
    trial meets the first at the step-4 rung, and the prose-heavy mixture is
    worse on a code target, so it is stopped there and left out of the fit."""
    steps = 16  # the stop lands a step or two after the rung at 4: far from the end
    sets = _trial_sets(corpus, tmp_path, checkpoint_every=steps, log_every=2, eval_tokens=2048)
    cfg = {"name": "asha", "recipe": str(TINY), "set": sets, "budget_tokens": 4096 * steps,
           "search": ["prose", "code", "math"],
           "space": {"kind": "list", "mixtures": [{"prose": 0.05, "code": 0.9, "math": 0.05},
                                                  {"prose": 0.9, "code": 0.05, "math": 0.05}]},
           "eval": {"target": {"code": 1.0}, "every_steps": 4},
           "scheduler": {"kind": "asha", "grace_period_steps": 4, "reduction_factor": 2},
           "resources": {"cpus_per_trial": 0.5, "max_concurrent": 1}, "recommend": {"confirm": False},
           "output_dir": str(tmp_path)}
    path = tmp_path / "asha.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = head.submit(["python", "tune/mixture_sweep.py", "--config", str(path)], working_dir=str(ROOT),
                      timeout=900, capture=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    rows = _rows(tmp_path / "asha")
    assert rows["t00"]["status"] == "finished" and int(rows["t00"]["tokens"]) == 4096 * steps
    assert rows["t01"]["status"].startswith("stopped at step") and int(rows["t01"]["tokens"]) < 4096 * steps
    def logged(tid):
        log = tmp_path / "asha" / "trials" / tid / "logs" / "metrics.jsonl"
        return {r["step"]: r for r in map(json.loads, log.open())}

    first, second = logged("t00"), logged("t01")
    # The stop reaches the training workers a step or two after the rung (it
    # is asynchronous), far from the end.
    assert int(rows["t01"]["eval_step"]) == 4 and 4 <= max(second) < steps
    # Both were scored at the rung, and the stopped one lost there.
    assert second[4]["target_loss"] == pytest.approx(float(rows["t01"]["target_loss"]))
    assert second[4]["target_loss"] > first[4]["target_loss"]
    rec = json.loads((tmp_path / "asha" / "recommendation.json").read_text())
    assert rec["finished"] == 1 and rec["best_trial"]["trial"] == "t00"


@long
def test_sweep_retrains_the_best_mixture_and_the_baseline_at_a_larger_proxy(head, corpus, tmp_path):
    """`transfer`: after the sweep, the best mixture and the baseline train again at 1.5x width and depth."""
    from smolray.recipe import load_recipe
    from smolray.tune.regress import spearman

    steps = 4
    sets = _trial_sets(corpus, tmp_path, checkpoint_every=steps, log_every=2, eval_tokens=2048)
    cfg = {"name": "transfer", "recipe": str(TINY), "set": sets, "budget_tokens": 4096 * steps,
           "search": ["prose", "code", "math"],
           "space": {"kind": "list", "mixtures": [{"prose": 0.1, "code": 0.8, "math": 0.1},
                                                  {"prose": 0.1, "code": 0.1, "math": 0.8}]},
           "baselines": {"uniform": {"prose": 1, "code": 1, "math": 1}},
           "eval": {"target": {"code": 0.7, "prose": 0.3}}, "scheduler": {"kind": "none"},
           "resources": {"cpus_per_trial": 0.5, "max_concurrent": 2}, "recommend": {"confirm": False},
           "transfer": {"scale": 1.5, "top_k": 1, "budget_tokens": 4096 * steps}, "output_dir": str(tmp_path)}
    path = tmp_path / "transfer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = head.submit(["python", "tune/mixture_sweep.py", "--config", str(path)], working_dir=str(ROOT),
                      timeout=900, capture=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    d = tmp_path / "transfer"
    rows = _rows(d)
    tr = json.loads((d / "recommendation.json").read_text())["transfer"]
    best = min(("t00", "t01"), key=lambda t: float(rows[t]["target_loss"]))
    assert set(rows) == {"t00", "t01", "uniform", f"larger-{best}", "larger-uniform"}
    assert set(tr["mixtures"]) == {best, "uniform"}
    for g, m in tr["mixtures"].items():
        big, small = rows[f"larger-{g}"], rows[g]
        # The same mixture and steps on a model 1.5x as wide (whole GQA groups) and deep.
        model = load_recipe(big["recipe"]).model
        assert (model.hidden_size, model.num_heads, model.num_kv_heads, model.num_layers) == (192, 6, 3, 6)
        assert big["weight/code"] == small["weight/code"] and big["status"] == "finished"
        assert (m["proxy"], m["larger"]) == (float(small["target_loss"]), float(big["target_loss"]))
    names = sorted(tr["mixtures"])
    assert tr["rank_corr"] == spearman([tr["mixtures"][g]["proxy"] for g in names],
                                       [tr["mixtures"][g]["larger"] for g in names])
    assert (d / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    # The transfer's own budget_tokens: the same tokens as the proxy, and the summary says so.
    assert "rank transfer to scale 1.5 (width, depth; 16,384 tokens)" in res.stdout
