"""From a sweep's trial rows to its evidence: table, plots, recommendation.

The regression sees only finished trials: a trial ASHA stopped was scored
at an earlier step, so its loss is not comparable to the others'. It maps
the searched sources' relative weights (the fixed shares are the same in
every trial) to the metric, and recommends the mean of the best predicted
mixtures drawn from the same distribution the space draws from.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from smolray.tune.config import SweepConfig
from smolray.tune.noise import Spread, compare, fit_weights, pooled_variance, spearman_interval, spread
from smolray.tune.regress import Recommendation, recommend, spearman
from smolray.tune.report import finished, plot_fit, plot_metric, plot_transfer, write_table
from smolray.tune.space import prior


def candidates(cfg: SweepConfig, tokens: dict[str, int], n: int, seed: int = 1) -> np.ndarray:
    """Mixtures over the searched sources (rows sum to 1) for the fit to rank."""
    rng = np.random.default_rng(seed)
    sp, base = cfg.space, prior(cfg, tokens)
    if sp.kind == "dirichlet":
        return rng.dirichlet(sp.concentration * len(cfg.search) * base, size=n)
    if sp.kind == "grid":
        # The grid's line: the first source's share, the rest split by the prior.
        v = rng.uniform(min(sp.values), max(sp.values), size=(n, 1))
        rest = base[1:] / base[1:].sum() if len(base) > 1 else base[1:]
        return np.concatenate([v, (1 - v) * rest[None, :]], axis=1)
    return rng.dirichlet(np.ones(len(cfg.search)), size=n)


def searched(cfg: SweepConfig, row: dict) -> np.ndarray:
    w = np.array([float(row[f"weight/{s}"]) for s in cfg.search])
    return w / w.sum()


def full_mixture(cfg: SweepConfig, rel: dict[str, float]) -> dict[str, float]:
    """Relative weights over the searched sources -> the trial mixture with the fixed shares."""
    free = 1.0 - sum(cfg.fixed.values())
    mix = {**cfg.fixed, **{s: free * rel[s] for s in cfg.search}}
    return {s: round(w, 6) for s, w in mix.items() if w > 0}


def _finished(cfg: SweepConfig, rows: list[dict]) -> list[dict]:
    """Trials trained to the full budget: the only ones comparable with each other."""
    return [r for r in rows if finished(r) and math.isfinite(float(r[cfg.metric]))]


def by_mixture(cfg: SweepConfig, rows: list[dict]) -> dict[str, tuple[dict, Spread]]:
    """Finished trials grouped by mixture: (a representative row, the metric's spread over its seeds)."""
    groups: dict[str, list[dict]] = {}
    for r in _finished(cfg, rows):
        groups.setdefault(r.get("mixture") or r["trial"], []).append(r)
    return {g: (rs[0], spread([float(r[cfg.metric]) for r in rs])) for g, rs in groups.items()}


def fit_rows(cfg: SweepConfig, rows: list[dict], tokens: dict[str, int]) -> tuple[Recommendation, list[dict]] | None:
    """The recommendation over the finished mixtures' means, or None when fewer than 3 finished.

    With replicates, each mean is weighted by how well its seeds agree
    (noise.fit_weights), so a mixture whose seeds scatter pulls the fit less.
    """
    groups = by_mixture(cfg, rows)
    if len(groups) < 3:
        return None
    done = [{**row, cfg.metric: sp.mean} for row, sp in groups.values()]
    w = np.stack([searched(cfg, r) for r in done])
    y = np.array([float(r[cfg.metric]) for r in done])
    spreads = [sp for _, sp in groups.values()]
    weights = fit_weights(spreads) if any(sp.n > 1 for sp in spreads) else None
    rc = cfg.recommend
    rec = recommend(w, y, list(cfg.search), candidates(cfg, tokens, rc.candidates), mode=cfg.mode,
                    kind=rc.model, top_k=min(rc.top_k, rc.candidates), weights=weights)
    return rec, done


def verdicts(cfg: SweepConfig, rows: list[dict], confirm: list[dict]) -> list[str]:
    """Whether the confirmed recommendation beats each baseline and the best mixture, in words."""
    groups = by_mixture(cfg, rows)
    got = spread([float(r[cfg.metric]) for r in confirm if finished(r)])
    if not groups or got.n == 0:
        return []
    best = (min if cfg.mode == "min" else max)(groups, key=lambda g: groups[g][1].mean)
    rivals = [g for g in cfg.baselines if g in groups] + ([best] if best not in cfg.baselines else [])
    # Every mixture shares one seed noise: its pooled estimate is steadier
    # than each pair's own two or three seeds (whose sample spread can come
    # out several times too small by chance).
    pooled = pooled_variance([got] + [sp for _, sp in groups.values()])

    def steady(sp: Spread) -> Spread:
        if not math.isfinite(pooled):
            return sp
        return Spread(sp.mean, math.sqrt(pooled), math.sqrt(pooled / sp.n), sp.n)

    return [compare("recommended", steady(got), g, steady(groups[g][1]), cfg.mode).words() for g in rivals]


def transfer_choice(cfg: SweepConfig, rows: list[dict]) -> list[str]:
    """The mixtures to retrain at the larger proxy: the top_k by mean, then the baselines."""
    groups = by_mixture(cfg, rows)
    ranked = sorted((g for g in groups if g not in cfg.baselines), key=lambda g: groups[g][1].mean,
                    reverse=cfg.mode == "max")
    return ranked[:cfg.transfer.top_k] + [g for g in cfg.baselines if g in groups]


def rank_transfer(cfg: SweepConfig, rows: list[dict], larger: list[dict]) -> dict:
    """How the mixtures the larger proxy trained rank at both scales: Spearman with its interval.

    Each side is a mixture's mean over its finished seeds. With few mixtures
    the interval is wide; it is reported as it is, since a proxy sweep's
    whole premise is that this correlation is high.
    """
    small, big = by_mixture(cfg, rows), by_mixture(cfg, larger)
    names = [g for g in big if g in small]
    a = np.array([small[g][1].mean for g in names])
    b = np.array([big[g][1].mean for g in names])
    lo, hi = spearman_interval(a, b)
    t = cfg.transfer
    scaled = "width, depth" + (f"; {t.budget_tokens:,} tokens" if t.budget_tokens else ", tokens")
    return {"larger": t.recipe or f"scale {t.scale:g} ({scaled})",
            "mixtures": {g: {"proxy": small[g][1].mean, "proxy_sem": small[g][1].sem,
                             "larger": big[g][1].mean, "larger_sem": big[g][1].sem, "seeds": big[g][1].n}
                         for g in names},
            "rank_corr": spearman(a, b), "rank_corr_90": [lo, hi]}


def best_row(cfg: SweepConfig, rows: list[dict]) -> dict | None:
    done = _finished(cfg, rows)
    if not done:
        return None
    return (min if cfg.mode == "min" else max)(done, key=lambda r: float(r[cfg.metric]))


def best_mixture(cfg: SweepConfig, rows: list[dict]) -> dict | None:
    """The mixture with the best mean over its finished seeds, with its spread."""
    groups = by_mixture(cfg, rows)
    if not groups:
        return None
    name = (min if cfg.mode == "min" else max)(groups, key=lambda g: groups[g][1].mean)
    return _mixture_summary(cfg, name, groups)


def _mixture_summary(cfg: SweepConfig, name: str, groups: dict) -> dict:
    row, sp = groups[name]
    return {"mixture": name, "weights": _brief(cfg, row)["mixture"], cfg.metric: sp.mean, "std": sp.std,
            "sem": sp.sem, "seeds": sp.n}


def write_report(cfg: SweepConfig, out: str, rows: list[dict], fitted, confirm: list[dict],
                 larger: list[dict] = ()) -> dict:
    """results.csv, metric.png, fit.png (transfer.png) and recommendation.json; returns the summary.

    `confirm`: the recommended mixture's trials, one per replicate (or none).
    `larger`: the transfer's trials at the larger proxy (or none).
    """
    larger = list(larger)
    write_table(rows + confirm + larger, os.path.join(out, "results.csv"))
    best, groups = best_row(cfg, rows), by_mixture(cfg, rows)
    summary: dict = {"metric": cfg.metric, "mode": cfg.mode, "trials": len(rows),
                     "finished": sum(map(finished, rows)),
                     "best_trial": _brief(cfg, best) if best else None}
    if cfg.replicates > 1:
        # With seeds, a single trial's luck is not a finding: the best mean is,
        # and a baseline is its mean too (its trials are `uniform-s<r>`).
        summary["best_mixture"] = best_mixture(cfg, rows)
        summary["baselines"] = {g: _mixture_summary(cfg, g, groups) for g in cfg.baselines if g in groups}
    else:
        summary["baselines"] = {r["trial"]: _brief(cfg, r) for r in rows if r["trial"] in cfg.baselines}
    highlight = None
    if fitted:
        rec, done = fitted
        actual = np.array([float(r[cfg.metric]) for r in done])
        interval = spearman_interval(rec.loo_predicted, actual)
        summary["recommended"] = {
            "mixture": full_mixture(cfg, rec.mixture), "predicted": rec.predicted,
            "model": rec.kind, "fitted_on": rec.trials,
            # Leave-one-out: how well the fit ranks mixtures it did not see,
            # with a 90% bootstrap interval over the mixtures.
            "heldout_rank_corr": rec.rank_corr, "heldout_rank_corr_90": list(interval), "r2": rec.r2}
        value, label = rec.predicted, "recommended (predicted)"
        got = spread([float(r.get(cfg.metric, float("nan"))) for r in confirm if finished(r)])
        if got.n:
            summary["recommended"]["confirmed"] = got.mean
            if got.n > 1:
                summary["recommended"]["confirmed_sem"] = got.sem
            summary["verdicts"] = verdicts(cfg, rows, confirm)
            value, label = got.mean, "recommended (confirmed)"
        weights = summary["recommended"]["mixture"]
        highlight = {"weights": weights, "value": value, "label": label,
                     "sem": got.sem if got.n > 1 else math.nan}
        sems = np.array([groups[r.get("mixture") or r["trial"]][1].sem for r in done])
        plot_fit(actual, np.array(rec.loo_predicted), os.path.join(out, "fit.png"), cfg.metric, rec.rank_corr,
                 actual_sem=sems, interval=interval)
    if larger:
        tr = summary["transfer"] = rank_transfer(cfg, rows, larger)
        m = tr["mixtures"]
        plot_transfer([(g, v["proxy"], v["proxy_sem"], v["larger"], v["larger_sem"]) for g, v in m.items()],
                      os.path.join(out, "transfer.png"), cfg.metric, tr["rank_corr"], tr["rank_corr_90"])
    plot_metric(rows, list(cfg.search) + list(cfg.fixed), cfg.metric, os.path.join(out, "metric.png"),
                cfg.mode, highlight, line=cfg.space.kind == "grid")
    with open(os.path.join(out, "recommendation.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _brief(cfg: SweepConfig, row: dict) -> dict:
    mix = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("weight/") and float(v) > 0}
    return {"trial": row["trial"], cfg.metric: float(row[cfg.metric]), "mixture": mix}


def format_summary(cfg: SweepConfig, rows: list[dict], summary: dict) -> str:
    m = cfg.metric
    sources = list(cfg.search) + list(cfg.fixed)
    lines = [f"{'trial':<10}" + "".join(f"{s:>9}" for s in sources) + f"{m:>14}{'step':>7}  status"]
    for r in rows:
        lines.append(f"{r['trial']:<10}" + "".join(f"{float(r[f'weight/{s}']):>9.3f}" for s in sources)
                     + f"{float(r[m]):>14.4f}{r['step']:>7}  {r['status']}")
    rec = summary.get("recommended")
    if rec:
        mix = ", ".join(f"{s} {w:.3f}" for s, w in rec["mixture"].items())
        got = f", confirmed {rec['confirmed']:.4f}" if "confirmed" in rec else ""
        lo, hi = rec["heldout_rank_corr_90"]
        ci = f", 90% interval [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else ""
        lines.append(f"recommended: {mix}: predicted {m} {rec['predicted']:.4f}{got} "
                     f"({rec['model']} fit on {rec['fitted_on']} mixtures, held-out rank correlation "
                     f"{rec['heldout_rank_corr']:.2f}{ci})")
    else:
        lines.append("no recommendation: fewer than 3 trials finished")
    if summary["best_trial"]:
        b = summary["best_trial"]
        lines.append(f"best trial: {b['trial']} {m} {b[m]:.4f}")
    if summary.get("best_mixture"):
        b = summary["best_mixture"]
        lines.append(f"best mixture: {b['mixture']} {m} {b[m]:.4f} +/- {b['sem']:.4f} (s.e., {b['seeds']} seeds)")
    lines += summary.get("verdicts", [])
    tr = summary.get("transfer")
    if tr:
        lo, hi = tr["rank_corr_90"]
        ci = f", 90% interval [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else ""
        order = lambda side: " < ".join(sorted(tr["mixtures"], key=lambda g: tr["mixtures"][g][side]))  # noqa: E731
        lines.append(f"rank transfer to {tr['larger']}: Spearman {tr['rank_corr']:.2f}{ci} over "
                     f"{len(tr['mixtures'])} mixtures; by {m}, proxy {order('proxy')}, larger {order('larger')}")
    return "\n".join(lines)
