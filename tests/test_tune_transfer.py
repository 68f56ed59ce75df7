"""Rank transfer: the best mixtures and the baselines retrained at a larger proxy, the two rankings compared."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import ROOT
from test_tune_config import TOKENS, sweep
from test_tune_replicates import _rows


def test_a_scaled_proxy_is_wider_deeper_and_longer(monkeypatch):
    from smolray.tune.space import check, trial_recipe
    from smolray.tune.sweep import plan_trials, transfer_trials

    monkeypatch.chdir(ROOT)
    cfg = sweep(replicates=2, transfer={"scale": 2, "top_k": 2})
    check(cfg)
    mix = {"prose": 0.5, "code": 0.3, "math": 0.2}
    small = trial_recipe(cfg, mix, "s", "/tmp/unused")
    big = trial_recipe(cfg, mix, "b", "/tmp/unused", replicate=1, larger=True)
    m, b = small.model, big.model
    # Twice the heads of the same size (head_dim and the GQA group kept), twice the layers and tokens.
    assert (b.hidden_size, b.num_heads, b.num_kv_heads, b.num_layers) == \
           (2 * m.hidden_size, 2 * m.num_heads, 2 * m.num_kv_heads, 2 * m.num_layers)
    assert b.head_dim == m.head_dim and b.intermediate_size == 2 * m.intermediate_size
    assert big.train.total_tokens == 2 * cfg.budget_tokens and big.seed == small.seed + 1
    assert big.data.mixture == small.data.mixture and big.eval.target == small.eval.target
    odd = trial_recipe(sweep(transfer={"scale": 1.5}), mix, "o", "/tmp/unused", larger=True).model
    assert (odd.num_kv_heads, odd.num_heads, odd.hidden_size, odd.num_layers) == (3, 6, 192, 6)

    trials = plan_trials(cfg, TOKENS)
    ts = transfer_trials(cfg, ["t03", "uniform"], trials, "/tmp/unused")
    assert [(t.id, t.group, t.replicate) for t in ts] == [
        ("larger-t03-s0", "t03", 0), ("larger-t03-s1", "t03", 1),
        ("larger-uniform-s0", "uniform", 0), ("larger-uniform-s1", "uniform", 1)]
    assert ts[0].mixture == next(t.mixture for t in trials if t.group == "t03")


def test_transfer_settings_are_checked_before_any_trial(monkeypatch, tmp_path):
    from smolray.recipe import RecipeError
    from smolray.tune.space import check

    monkeypatch.chdir(ROOT)
    for bad in ({}, {"scale": 2, "recipe": "recipes/tiny.yaml"}):
        with pytest.raises(ValueError, match="transfer: give either scale"):
            sweep(transfer=bad)
    with pytest.raises(ValueError, match="scale"):
        sweep(transfer={"scale": 0.5})  # a larger proxy, not a smaller one
    with pytest.raises(ValueError, match="transfer.top_k=1 with no baselines retrains one mixture"):
        sweep(transfer={"scale": 2, "top_k": 1}, baselines={})
    raw = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    raw["data"]["sources"] = [s for s in raw["data"]["sources"] if s["name"] != "math"]
    raw["data"]["weights"] = {"prose": 0.5, "code": 0.5}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match=r"transfer.recipe=.*lacks the sources \['math'\]"):
        check(sweep(transfer={"recipe": str(other)}))
    with pytest.raises(RecipeError, match="raise transfer.budget_tokens"):
        check(sweep(transfer={"scale": 2, "budget_tokens": 100}))


def test_rank_transfer_reports_the_correlation_with_its_interval(tmp_path):
    from smolray.tune.analysis import fit_rows, format_summary, rank_transfer, transfer_choice, write_report

    cfg = sweep(replicates=3, transfer={"scale": 2, "top_k": 3})
    rows = _rows(cfg, effect=2.0, noise=0.01)
    # The best three by mean (least math first), then the baseline.
    assert transfer_choice(cfg, rows) == ["t04", "t00", "t02", "uniform"]

    def larger(order: dict[str, float]) -> list[dict]:
        return [{**r, "trial": "larger-" + r["trial"], cfg.metric: order[r["mixture"]] + 0.001 * i}
                for i, r in enumerate(rows) if r["mixture"] in order]

    same = rank_transfer(cfg, rows, larger({"t04": 5.0, "t00": 5.1, "t02": 5.2, "uniform": 5.3}))
    assert same["rank_corr"] == 1.0 and same["rank_corr_90"][1] == 1.0
    assert same["mixtures"]["t04"]["seeds"] == 3 and same["larger"] == "scale 2 (width, depth, tokens)"
    fixed = sweep(replicates=3, transfer={"scale": 2, "top_k": 3, "budget_tokens": 65536})
    assert rank_transfer(fixed, rows, [])["larger"] == "scale 2 (width, depth; 65,536 tokens)"
    flipped = rank_transfer(cfg, rows, larger({"t04": 5.3, "t00": 5.2, "t02": 5.1, "uniform": 5.0}))
    assert flipped["rank_corr"] == -1.0 and flipped["rank_corr_90"][0] == -1.0
    # One swap among four: Spearman 1 - 6 * 2 / (4 * 15) = 0.8.
    swap = rank_transfer(cfg, rows, larger({"t04": 5.0, "t00": 5.2, "t02": 5.1, "uniform": 5.3}))
    assert swap["rank_corr"] == pytest.approx(0.8)

    summary = write_report(cfg, str(tmp_path), rows, fit_rows(cfg, rows, TOKENS), [],
                           larger({"t04": 5.0, "t00": 5.2, "t02": 5.1, "uniform": 5.3}))
    assert summary["transfer"]["rank_corr"] == pytest.approx(0.8)
    assert (tmp_path / "transfer.png").read_bytes().startswith(b"\x89PNG")
    text = format_summary(cfg, [{**r, "step": 8} for r in rows], summary)
    assert "rank transfer to scale 2 (width, depth, tokens): Spearman 0.80" in text
    assert "proxy t04 < t00 < t02 < uniform, larger t04 < t02 < t00 < uniform" in text
    assert np.isfinite(summary["transfer"]["rank_corr_90"]).all()
