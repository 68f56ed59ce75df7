"""Sweep replicates: one trial per mixture and seed, means weighted by their spread, verdicts in words."""

from __future__ import annotations

import numpy as np

from conftest import ROOT
from test_tune_config import TOKENS, sweep


def test_each_mixture_trains_once_per_seed(monkeypatch):
    from smolray.tune.sweep import plan_trials

    monkeypatch.chdir(ROOT)
    cfg = sweep(replicates=2)
    trials = plan_trials(cfg, TOKENS)
    groups = sorted({t.group for t in trials})
    assert len(trials) == 2 * len(groups)
    for g in groups:
        a, b = [t for t in trials if t.group == g]
        assert (a.id, b.id) == (f"{g}-s0", f"{g}-s1") and (a.replicate, b.replicate) == (0, 1)
        assert a.mixture == b.mixture and a.recipe.data.mixture == b.recipe.data.mixture
        # Another seed: another initialisation and another data order.
        assert b.recipe.seed == a.recipe.seed + 1
    # Without replicates the ids and seeds are what they always were.
    plain = plan_trials(sweep(), TOKENS)
    assert [t.id for t in plain] == groups and all(t.recipe.seed == trials[0].recipe.seed for t in plain)


def _rows(cfg, effect: float, noise: float, seeds: int = 3, draw: int = 0) -> list[dict]:
    """Finished trial rows: 6 mixtures, the loss rising with the math share, and seed noise."""
    rng = np.random.default_rng(draw)
    mixes = [(0.6, 0.3, 0.1), (0.2, 0.5, 0.3), (0.4, 0.4, 0.2), (0.3, 0.2, 0.5), (0.5, 0.45, 0.05),
             (1 / 3, 1 / 3, 1 / 3)]
    names = ["t00", "t01", "t02", "t03", "t04", "uniform"]
    rows = []
    for name, m in zip(names, mixes):
        for r in range(seeds):
            loss = 6.0 + effect * m[2] + noise * rng.standard_normal()
            rows.append({"trial": f"{name}-s{r}", "mixture": name, cfg.metric: loss, "status": "finished",
                         **{f"weight/{s}": w for s, w in zip(cfg.search, m)}})
    return rows


def _confirm(cfg, rows, rec_math: float, effect: float, noise: float, seeds: int = 3,
             draw: int = 0) -> list[dict]:
    rng = np.random.default_rng(1000 + draw)
    return [{"trial": f"confirm-s{r}", "mixture": "confirm", "status": "finished",
             cfg.metric: 6.0 + effect * rec_math + noise * rng.standard_normal()} for r in range(seeds)]


def test_a_planted_effect_larger_than_the_noise_is_resolved():
    from smolray.tune.analysis import by_mixture, fit_rows, verdicts

    cfg = sweep(replicates=3)
    rows = _rows(cfg, effect=2.0, noise=0.01)
    groups = by_mixture(cfg, rows)
    assert set(groups) == {"t00", "t01", "t02", "t03", "t04", "uniform"}
    assert all(sp.n == 3 and sp.sem < 0.02 for _, sp in groups.values())
    rec, done = fit_rows(cfg, rows, TOKENS)
    assert len(done) == 6 and rec.mixture["math"] < 0.05  # the fit found the planted effect
    words = verdicts(cfg, rows, _confirm(cfg, rows, rec.mixture["math"], 2.0, 0.01))
    assert "recommended beats uniform by more than two standard errors" in words[0]
    assert "recommended beats t04 by more than two standard errors" in words[1]  # t04 has the least math


def test_an_effect_smaller_than_the_noise_is_not_resolved():
    # A tenth of the seed noise, over 20 independent sweeps: the verdict
    # against uniform must say "not resolved" nearly always (at two standard
    # errors a false call is about 1 in 20). Against the best mixture the
    # call leans "worse": the best of six noisy means is lucky by selection.
    from smolray.tune.analysis import fit_rows, verdicts

    cfg = sweep(replicates=3)
    calls = []
    for draw in range(20):
        rows = _rows(cfg, effect=0.005, noise=0.05, draw=draw)
        rec, _ = fit_rows(cfg, rows, TOKENS)
        words = verdicts(cfg, rows, _confirm(cfg, rows, rec.mixture["math"], 0.005, 0.05, draw=draw))
        assert words[0].startswith("recommended ") and " uniform " in words[0]
        calls.append(words[0].endswith("not resolved"))
    assert sum(calls) >= 17, calls


def test_report_gives_means_with_error_bars_and_an_interval_on_the_rank_corr(tmp_path):
    from smolray.tune.analysis import fit_rows, format_summary, write_report
    from smolray.tune.report import mixture_points

    cfg = sweep(replicates=3)
    rows = _rows(cfg, effect=2.0, noise=0.01)
    # One mixture's third seed was stopped early: its mean is over the two finished ones.
    rows[2] = {**rows[2], "status": "stopped at step 4", cfg.metric: 9.0}
    xs, means, sems, seeds = mixture_points(rows, "math", cfg.metric)
    by_share = {round(x, 6): (m, s, n) for x, m, s, n in zip(xs, means, sems, seeds)}
    got = [float(r[cfg.metric]) for r in rows[:2]]
    assert by_share[0.1] == (np.mean(got), np.std(got, ddof=1) / np.sqrt(2), 2)
    assert len(xs) == 6 and all(n == 3 for x, _, _, n in zip(xs, means, sems, seeds) if round(x, 6) != 0.1)

    fitted = fit_rows(cfg, rows, TOKENS)
    confirm = _confirm(cfg, rows, fitted[0].mixture["math"], 2.0, 0.01)
    summary = write_report(cfg, str(tmp_path), rows, fitted, confirm)
    lo, hi = summary["recommended"]["heldout_rank_corr_90"]
    # Six mixtures whose loss is a clean function of the math share: the fit
    # ranks the held-out ones well, and the interval says so.
    assert 0 < lo <= summary["recommended"]["heldout_rank_corr"] <= hi <= 1
    best = summary["best_mixture"]
    assert best["mixture"] == "t04" and best["seeds"] == 3  # the least math
    assert best[cfg.metric] == np.mean([float(r[cfg.metric]) for r in rows if r["mixture"] == "t04"])
    # A baseline is its mean over its seeds too (its trials are uniform-s0, -s1, -s2).
    base = summary["baselines"]["uniform"]
    assert base["seeds"] == 3 and base[cfg.metric] == np.mean(
        [float(r[cfg.metric]) for r in rows if r["mixture"] == "uniform"])
    text = format_summary(cfg, [{**r, "step": 8} for r in rows], summary)
    assert "90% interval [" in text and "best mixture: t04" in text
    for png in ("metric.png", "fit.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")
