"""Regression from mixture weights to a sweep metric, and the mixture it recommends.

RegMix-style: a sweep trains many small proxy runs on random mixtures, a
cheap model is fitted from each run's weights to its metric, and the model is
then queried over many more sampled mixtures than were ever trained. The
mixture recommended is the mean of the best predicted candidates. The fit's
held-out rank correlation says how far to trust it: a sweep is about which
mixture wins, not about the exact loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("linear", "quadratic")


def _check_kind(kind: str) -> None:
    if kind not in FEATURES:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {', '.join(FEATURES)}")


def features(w: np.ndarray, kind: str) -> np.ndarray:
    """Design matrix for mixture weights w [n, k] (rows summing to 1).

    No intercept column: the weights sum to 1, so they already span it, and
    an extra constant would make the matrix rank-deficient. The quadratic
    model adds only cross products (Scheffé): w_i**2 = w_i * (1 - sum of the
    others), so squares would be redundant too.
    """
    _check_kind(kind)
    w = np.asarray(w, dtype=float)
    if w.ndim != 2:
        raise ValueError(f"mixture weights must be [trials, sources], got shape {w.shape}")
    if kind == "linear":
        return w
    i, j = np.triu_indices(w.shape[1], k=1)
    return np.hstack([w, w[:, i] * w[:, j]])


def _params(kind: str, k: int) -> int:
    return k if kind == "linear" else k + k * (k - 1) // 2


def _resolve(kind: str, n: int, k: int) -> str:
    # With fewer trials than quadratic terms the fit would be decided by the
    # ridge rather than the data, and rank candidates on noise; the linear
    # model is the most that such a sweep can support.
    _check_kind(kind)
    if kind == "quadratic" and _params(kind, k) > n:
        return "linear"
    return kind


def _solve(x: np.ndarray, y: np.ndarray, ridge: float, weights: np.ndarray | None = None) -> np.ndarray:
    # Weighted least squares: a mixture's mean over more (or steadier)
    # replicates pulls the fit harder (smolray.tune.noise.fit_weights).
    wx = x if weights is None else x * weights[:, None]
    a = wx.T @ x + ridge * np.eye(x.shape[1])
    return np.linalg.solve(a, wx.T @ y)


@dataclass(frozen=True)
class Fit:
    kind: str
    coef: np.ndarray
    names: list[str]

    def predict(self, w: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(np.asarray(w, dtype=float))
        if w.shape[1] != len(self.names):
            raise ValueError(f"expected weights for {len(self.names)} sources {self.names}, got {w.shape[1]}")
        return features(w, self.kind) @ self.coef


def _check(w: np.ndarray, y: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(w, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    if w.ndim != 2 or w.shape[1] != len(names):
        raise ValueError(f"weights must be [trials, {len(names)}] for sources {list(names)}, got shape {w.shape}")
    if w.shape[0] != y.shape[0]:
        raise ValueError(f"{w.shape[0]} weight rows but {y.shape[0]} metric values")
    if y.shape[0] < 2:
        raise ValueError(f"need at least 2 trials to fit, got {y.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise ValueError(f"metric of trial {int(bad[0])} is {y[bad[0]]}; drop unfinished trials before fitting")
    return w, y


def _weights(weights, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    v = np.asarray(weights, dtype=float).ravel()
    if v.shape != (n,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"fit weights must be {n} finite positive numbers, got {v.tolist()}")
    return v


def fit(w: np.ndarray, y: np.ndarray, names: list[str], kind: str = "quadratic", ridge: float = 1e-4,
        weights=None) -> Fit:
    """Ridge least squares from weights to metric, in closed form (weighted per trial if given)."""
    w, y = _check(w, y, names)
    kind = _resolve(kind, *w.shape)
    return Fit(kind=kind, coef=_solve(features(w, kind), y, ridge, _weights(weights, len(y))), names=list(names))


def loo_predictions(
    w: np.ndarray, y: np.ndarray, names: list[str], kind: str = "quadratic", ridge: float = 1e-4, weights=None
) -> np.ndarray:
    """Each trial's metric as predicted by a fit on all the other trials."""
    w, y = _check(w, y, names)
    weights = _weights(weights, len(y))
    # Decide the model on all trials, so every held-out fit is the same model
    # as the one being judged rather than flipping to linear at n - 1.
    x = features(w, _resolve(kind, *w.shape))
    out = np.empty_like(y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        out[i] = x[i] @ _solve(x[keep], y[keep], ridge, None if weights is None else weights[keep])
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    s = x[order]
    # Tied values share the mean of the positions they occupy.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    r = np.empty(len(x))
    for a, b in zip(starts, ends):
        r[order[a:b]] = (a + b + 1) / 2.0
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.size} and {b.size}")
    if a.size < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class Recommendation:
    mixture: dict[str, float]
    predicted: float
    rank_corr: float
    r2: float
    loo_predicted: list[float]
    kind: str
    trials: int


def _rounded(m: np.ndarray) -> np.ndarray:
    # Rounding each share alone can leave the sum at 0.999999; the largest
    # share absorbs the difference, where it matters least in relative terms.
    r = np.round(m / m.sum(), 6)
    big = int(np.argmax(r))
    r[big] = round(1.0 - (r.sum() - r[big]), 6)
    return r


def recommend(
    w: np.ndarray,
    y: np.ndarray,
    names: list[str],
    candidates: np.ndarray,
    mode: str = "min",
    kind: str = "quadratic",
    ridge: float = 1e-4,
    top_k: int = 100,
    weights=None,
) -> Recommendation:
    """Fit on all trials, score the candidates, and recommend the mean of the top_k best."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    model = fit(w, y, names, kind=kind, ridge=ridge, weights=weights)
    w, y = _check(w, y, names)
    cand = np.asarray(candidates, dtype=float)
    if cand.ndim != 2 or cand.shape[1] != len(names) or cand.shape[0] == 0:
        raise ValueError(f"candidates must be [m, {len(names)}] with m >= 1, got shape {cand.shape}")

    scores = model.predict(cand)
    order = np.argsort(scores if mode == "min" else -scores, kind="stable")
    # The mean of many good candidates stays inside the sampled region; the
    # single best is usually a corner where the fit extrapolates most.
    best = _rounded(cand[order[:top_k]].mean(axis=0))

    loo = loo_predictions(w, y, names, kind=model.kind, ridge=ridge, weights=weights)
    resid = y - model.predict(w)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / total if total > 0 else float("nan")
    return Recommendation(
        mixture={n: float(v) for n, v in zip(names, best)},
        predicted=float(model.predict(best)[0]),
        rank_corr=spearman(loo, y),
        r2=r2,
        loo_predicted=[float(v) for v in loo],
        kind=model.kind,
        trials=int(len(y)),
    )
