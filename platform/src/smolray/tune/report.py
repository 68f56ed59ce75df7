"""A sweep's results as a table and as pictures a person can judge at a glance.

Rows follow one convention: "trial", "weight/<source>" per source, and metric
columns such as "target_loss", "tokens", "wall_s", "status". The table is the
record; the plots show how the metric moves with each source's share and how
well the mixture regression predicts trials it did not see.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np
# Figure plus the Agg canvas, not pyplot: no global figure registry to leak
# into, and no backend switch forced on whoever imports this module.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def write_table(rows: list[dict], path: str) -> None:
    """CSV of rows; columns are the union of keys in first-seen order, gaps left empty."""
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    tmp = path + ".tmp"
    # Write beside the target and rename, so a crash never leaves half a table.
    try:
        with open(tmp, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(cols), restval="")
            out.writeheader()
            out.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _num(v: Any) -> float:
    # Metrics come from live rows or from a CSV read back, so strings, None
    # and blanks all turn up; anything that is not a finite number is missing.
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    # Drop the canvas's render buffers now rather than whenever the GC runs.
    fig.clear()


def finished(row: dict) -> bool:
    """Trained to the full budget. Rows without a status (built by hand) count as finished."""
    return row.get("status", "finished") == "finished"


def metric_points(rows: list[dict], source: str, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(share of `source`, metric) per trial, split into finished trials
    (sorted by share) and trials stopped early, whose value comes from an
    earlier step and is not comparable with the rest."""
    pts: dict[str, list] = {"finished": [], "early": []}
    for r in rows:
        x, y = _num(r.get(f"weight/{source}")), _num(r.get(metric))
        if not (math.isnan(x) or math.isnan(y)):
            pts["finished" if finished(r) else "early"].append((x, y))
    return {k: tuple(np.array(c, dtype=float) for c in zip(*sorted(v))) if v else (np.array([]), np.array([]))
            for k, v in pts.items()}


def mixture_points(rows: list[dict], source: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(share of `source`, mean, standard error, seeds) per mixture over its finished replicates.

    Rows of one mixture share a "mixture" key (sweeps with replicates); a row
    without one is its own mixture. The standard error is nan for a mixture
    with one finished seed. Sorted by share.
    """
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        x, y = _num(r.get(f"weight/{source}")), _num(r.get(metric))
        if finished(r) and not (math.isnan(x) or math.isnan(y)):
            groups.setdefault(str(r.get("mixture") or r.get("trial")), []).append((x, y))
    pts = []
    for members in groups.values():
        ys = np.array([y for _, y in members])
        sem = float(ys.std(ddof=1) / math.sqrt(ys.size)) if ys.size > 1 else math.nan
        pts.append((members[0][0], float(ys.mean()), sem, ys.size))
    pts.sort()
    return tuple(np.array(c, dtype=float) for c in zip(*pts)) if pts else tuple(np.array([]) for _ in range(4))


def plot_metric(
    rows: list[dict],
    sources: list[str],
    metric: str,
    path: str,
    mode: str,
    highlight: dict | None = None,
    line: bool = False,
) -> None:
    """One panel per source: the metric against that source's share, best trial marked.

    highlight, if given, is {"weights": {source: w}, "value": float, "label": str}
    and optionally "sem" (usually the regression's recommendation, confirmed
    under several seeds) and is drawn as a star, with its error bar. With
    `line` (grid sweeps, whose trials lie on one line through the simplex),
    the finished trials are joined in order of the share. Trials stopped
    early are drawn hollow: they were scored at an earlier step. With
    replicates (rows sharing a "mixture"), each mixture is drawn as its mean
    with a bar of one standard error either side, its seeds as faint dots,
    and the best marked is the best mean.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if not sources:
        raise ValueError("plot_metric needs at least one source")
    ys = np.array([_num(r.get(metric)) for r in rows], dtype=float)
    ok = ~np.isnan(ys)
    skipped = int((~ok).sum())
    done = ok & np.array([finished(r) for r in rows], dtype=bool)
    # The best mixture: the best mean over its finished seeds (one seed: the best trial).
    means: dict[str, list[float]] = {}
    for r, y, d in zip(rows, ys, done):
        if d:
            means.setdefault(str(r.get("mixture") or r.get("trial")), []).append(float(y))
    seeds = max((len(v) for v in means.values()), default=0)
    pick = min if mode == "min" else max
    best = pick(means, key=lambda g: float(np.mean(means[g]))) if means else None
    best_row = next((r for r, d in zip(rows, done) if d and str(r.get("mixture") or r.get("trial")) == best), None)

    fig = Figure(figsize=(4 * len(sources), 3.5))
    axes = fig.subplots(1, len(sources), squeeze=False)[0]
    for ax, s in zip(axes, sources):
        pts = metric_points(rows, s, metric)
        if seeds > 1:
            ax.scatter(*pts["finished"], color="tab:blue", s=10, alpha=0.3, label="seeds")
            xs, ys_done, sem, n = mixture_points(rows, s, metric)
            ax.errorbar(xs, ys_done, yerr=np.nan_to_num(sem), fmt="o", color="tab:blue", markersize=5,
                        capsize=3, label=f"mixture mean +/- 1 s.e. ({int(n.max())} seeds)")
        else:
            xs, ys_done = pts["finished"]
            ax.scatter(xs, ys_done, color="tab:blue", s=24, label="trials")
        if line and len(xs) > 1:
            ax.plot(xs, ys_done, color="tab:blue", alpha=0.5)
        if len(pts["early"][0]):
            ax.scatter(*pts["early"], facecolors="none", edgecolors="tab:gray", s=24,
                       label="stopped early (earlier step)")
        x_best = _num(best_row.get(f"weight/{s}")) if best_row is not None else math.nan
        if not math.isnan(x_best):
            what = "mixture" if seeds > 1 else "trial"
            ax.scatter(x_best, float(np.mean(means[best])), color="tab:red", s=60, zorder=3,
                       label=f"best ({mode}): {what} {best}")
        if highlight is not None and s in highlight.get("weights", {}):
            if math.isfinite(highlight.get("sem", math.nan)):
                ax.errorbar(highlight["weights"][s], highlight["value"], yerr=highlight["sem"], color="black",
                            capsize=3, zorder=3)
            ax.scatter(highlight["weights"][s], highlight["value"], marker="*", s=220,
                       color="gold", edgecolors="black", zorder=4,
                       label=highlight.get("label", "recommended"))
        ax.set_xlabel(f"share of {s}")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    title = metric if not skipped else f"{metric} ({skipped} trial(s) without a value not shown)"
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_fit(
    actual: np.ndarray, predicted: np.ndarray, path: str, metric: str, rank_corr: float,
    actual_sem: np.ndarray | None = None, interval: tuple[float, float] | None = None,
) -> None:
    """Leave-one-out predictions against actual values, with the y = x line.

    With replicates, `actual` are mixture means and `actual_sem` their
    standard errors (drawn as horizontal bars); `interval` is the rank
    correlation's bootstrap interval, shown in the title.
    """
    a = np.asarray(actual, dtype=float).ravel()
    p = np.asarray(predicted, dtype=float).ravel()
    if a.shape != p.shape:
        raise ValueError(f"{a.size} actual values but {p.size} predictions")
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    if actual_sem is not None and np.isfinite(actual_sem).any():
        ax.errorbar(a, p, xerr=np.nan_to_num(np.asarray(actual_sem, dtype=float)), fmt="o", color="tab:blue",
                    markersize=5, capsize=3)
    else:
        ax.scatter(a, p, color="tab:blue", s=24)
    both = np.concatenate([a, p])
    both = both[np.isfinite(both)]
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", label="y = x")
        ax.legend(fontsize="small")
    ax.set_xlabel(f"actual {metric}")
    ax.set_ylabel(f"leave-one-out predicted {metric}")
    ci = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval and all(map(math.isfinite, interval)) else ""
    ax.set_title(f"{metric}: held-out fit, Spearman {rank_corr:.3f}{ci}", fontsize="medium")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_transfer(points: list[tuple[str, float, float, float, float]], path: str, metric: str,
                  rank_corr: float, interval) -> None:
    """Each mixture's mean at the proxy against its mean at the larger proxy, with their errors.

    points: (mixture, proxy mean, proxy s.e., larger mean, larger s.e.).
    """
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    if points:
        names, x, xe, y, ye = zip(*points)
        ax.errorbar(x, y, xerr=np.nan_to_num(np.array(xe, dtype=float)),
                    yerr=np.nan_to_num(np.array(ye, dtype=float)), fmt="o", color="tab:blue", capsize=3)
        for n, xi, yi in zip(names, x, y):
            ax.annotate(n, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ci = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if all(map(math.isfinite, interval)) else ""
    ax.set_title(f"rank transfer: Spearman {rank_corr:.2f}{ci}", fontsize="medium")
    ax.set_xlabel(f"{metric} at the proxy")
    ax.set_ylabel(f"{metric} at the larger proxy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_bars(rows: list[dict], columns: list[str], path: str) -> None:
    """One bar panel per column, one bar per trial (annealing candidates side by side)."""
    names = [str(r["trial"]) for r in rows]
    fig = Figure(figsize=(max(4.0, 1.2 * len(names)) * len(columns) / 2 + 2, 3.5))
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, col in zip(axes, columns):
        vals = [_num(r.get(col)) for r in rows]
        ax.bar(names, [v if math.isfinite(v) else 0.0 for v in vals], color="tab:blue")
        finite = [v for v in vals if math.isfinite(v)]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = 0.1 * (hi - lo) or 0.05 * abs(hi) or 0.05
            ax.set_ylim(lo - pad, hi + pad)  # differences are small; a zero baseline hides them
        ax.set_title(col, fontsize="small")
        ax.tick_params(axis="x", labelrotation=30, labelsize="small")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)
