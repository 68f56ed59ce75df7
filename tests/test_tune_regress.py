"""Mixture regression and sweep reports: pure numpy and files, no Ray."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from smolray.tune.regress import (
    FEATURES,
    features,
    fit,
    loo_predictions,
    recommend,
    spearman,
)
from smolray.tune.report import plot_fit, plot_metric, write_table

NAMES = ["prose", "code", "math"]
A = np.array([1.0, 2.0, 3.0])
B = -4.0
# In Scheffé terms: the three weights, then w0*w1, w0*w2, w1*w2.
TRUE_COEF = np.array([1.0, 2.0, 3.0, -4.0, 0.0, 0.0])


def truth(w: np.ndarray) -> np.ndarray:
    return w @ A + B * w[:, 0] * w[:, 1]


def trials(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    w = np.random.default_rng(seed).dirichlet(np.ones(3), size=n)
    return w, truth(w)


def candidates(m: int = 20_000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(3), size=m)


def test_features_shapes_and_unknown_kind():
    w, _ = trials(5)
    assert features(w, "linear").shape == (5, 3)
    q = features(w, "quadratic")
    assert q.shape == (5, 6)
    assert np.allclose(q[:, 3], w[:, 0] * w[:, 1])
    with pytest.raises(ValueError, match="cubic.*linear, quadratic"):
        features(w, "cubic")
    assert FEATURES == ("linear", "quadratic")


def test_quadratic_fit_recovers_truth():
    w, y = trials()
    f = fit(w, y, NAMES, kind="quadratic", ridge=1e-10)
    assert f.kind == "quadratic"
    assert np.allclose(f.coef, TRUE_COEF, atol=1e-3)
    assert np.allclose(f.predict(w), y, atol=1e-4)
    loo = loo_predictions(w, y, NAMES, kind="quadratic", ridge=1e-10)
    assert np.allclose(loo, y, atol=1e-3)


def test_recommend_min_lands_near_true_best():
    w, y = trials()
    cand = candidates()
    rec = recommend(w, y, NAMES, cand, mode="min", ridge=1e-10, top_k=20)
    assert rec.kind == "quadratic" and rec.trials == 20
    assert rec.rank_corr > 0.95
    assert rec.r2 > 0.999
    assert len(rec.loo_predicted) == 20
    assert list(rec.mixture) == NAMES
    assert math.isclose(sum(rec.mixture.values()), 1.0, abs_tol=1e-9)
    # Analytic optimum: w2 = 0 and w0 = 5/8, where the truth is 0.4375.
    got = np.array([rec.mixture[n] for n in NAMES])
    assert np.allclose(got, [5 / 8, 3 / 8, 0.0], atol=0.05)
    best_true = truth(cand).min()
    assert truth(got[None])[0] - best_true < 0.01
    assert abs(rec.predicted - truth(got[None])[0]) < 1e-3


def test_recommend_max_picks_the_opposite_end():
    w, y = trials()
    rec = recommend(w, y, NAMES, candidates(), mode="max", ridge=1e-10, top_k=20)
    # The truth is largest at pure "math" (value 3).
    assert rec.mixture["math"] > 0.9
    assert rec.predicted > 2.8


def test_recommend_rejects_bad_mode():
    w, y = trials()
    with pytest.raises(ValueError, match="mode"):
        recommend(w, y, NAMES, candidates(100), mode="best")


def test_falls_back_to_linear_with_few_trials():
    names = ["a", "b", "c", "d"]  # quadratic needs 4 + 6 = 10 parameters
    rng = np.random.default_rng(3)
    w = rng.dirichlet(np.ones(4), size=6)
    y = w @ np.array([1.0, 2.0, 3.0, 4.0])
    assert fit(w, y, names).kind == "linear"
    rec = recommend(w, y, names, rng.dirichlet(np.ones(4), size=500), top_k=10)
    assert rec.kind == "linear"
    assert rec.mixture["a"] == max(rec.mixture.values())


def test_spearman():
    x = np.array([3.0, 1.0, 4.0, 1.5, 9.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # Ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_nan_metric_names_the_trial():
    w, y = trials(5)
    y[3] = np.nan
    with pytest.raises(ValueError, match="trial 3"):
        fit(w, y, NAMES)
    with pytest.raises(ValueError, match="at least 2"):
        fit(w[:1], y[:1], NAMES)


def test_write_table(tmp_path):
    path = str(tmp_path / "trials.csv")
    rows = [
        {"trial": 0, "weight/prose": 0.5, "target_loss": 3.2},
        {"trial": 1, "weight/prose": 0.7, "status": "stopped"},
    ]
    write_table(rows, path)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["trial", "weight/prose", "target_loss", "status"]
    assert back[0]["status"] == "" and back[1]["target_loss"] == ""
    assert back[1]["status"] == "stopped" and float(back[0]["target_loss"]) == 3.2
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]


def _rows() -> list[dict]:
    w, y = trials(8)
    rows = [
        {"trial": i, **{f"weight/{n}": float(v) for n, v in zip(NAMES, wi)}, "target_loss": float(yi)}
        for i, (wi, yi) in enumerate(zip(w, y))
    ]
    rows[2]["target_loss"] = float("nan")
    del rows[5]["target_loss"]  # stopped before any eval
    return rows


def test_plotted_points_keep_early_stopped_trials_apart():
    from smolray.tune.report import metric_points

    rows = [{"trial": "a", "weight/code": 0.8, "loss": 2.0, "status": "finished"},
            {"trial": "b", "weight/code": 0.2, "loss": 3.0, "status": "finished"},
            {"trial": "c", "weight/code": 0.5, "loss": 4.0, "status": "stopped at step 4"},
            {"trial": "d", "weight/code": 0.6, "loss": "", "status": "finished"},  # never scored
            {"trial": "e", "weight/code": 0.4, "loss": 2.5}]  # no status: a finished row
    pts = metric_points(rows, "code", "loss")
    # Finished trials in order of the share (what a grid sweep's line joins).
    assert pts["finished"][0].tolist() == [0.2, 0.4, 0.8] and pts["finished"][1].tolist() == [3.0, 2.5, 2.0]
    assert pts["early"][0].tolist() == [0.5] and pts["early"][1].tolist() == [4.0]


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 100 and data.startswith(b"\x89PNG")


def test_plots_are_pngs(tmp_path):
    rows = _rows()
    hi = {"weights": {"prose": 0.6, "code": 0.4, "math": 0.0}, "value": 0.44, "label": "recommended"}
    out = tmp_path / "loss.png"
    plot_metric(rows, NAMES, "target_loss", str(out), "min", highlight=hi)
    assert _is_png(out)
    plot_metric(rows, NAMES, "target_loss", str(tmp_path / "plain.png"), "max")
    assert _is_png(tmp_path / "plain.png")

    rows[0]["status"], rows[1]["status"] = "stopped at step 4", "finished"
    plot_metric(rows, NAMES, "target_loss", str(tmp_path / "line.png"), "min", line=True)
    assert _is_png(tmp_path / "line.png")

    w, y = trials()
    loo = loo_predictions(w, y, NAMES)
    fit_png = tmp_path / "fit.png"
    plot_fit(y, loo, str(fit_png), "target_loss", spearman(loo, y))
    assert _is_png(fit_png)
    assert not list(tmp_path.glob("*.tmp"))
