"""The held-out report of a quality classifier: metrics.json's numbers, confusion.png, the job's text."""

from __future__ import annotations

import numpy as np

from smolray.curate.classifier import MAX_SCORE

LABELS = list(range(int(MAX_SCORE) + 1))


def evaluate(y: np.ndarray, pred: np.ndarray, threshold: float, constant: float) -> dict:
    """Held-out MSE (and the constant predictor's), the good/bad split at the threshold, the 0-5 confusion."""
    good, said = y >= threshold, pred >= threshold
    tp, fp = int((good & said).sum()), int((~good & said).sum())
    fn, tn = int((good & ~said).sum()), int((~good & ~said).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    def bucket(a):  # half up, as a reader expects of 2.5 (numpy rounds half to even)
        return np.clip(np.floor(a + 0.5), 0, MAX_SCORE).astype(int)

    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    np.add.at(confusion, (bucket(y), bucket(pred)), 1)
    return {"rows": int(len(y)), "mse": float(np.mean((pred - y) ** 2)),
            "constant_mse": float(np.mean((constant - y) ** 2)), "threshold": threshold,
            "precision": precision, "recall": recall, "f1": f1, "accuracy": (tp + tn) / len(y),
            "counts": {"good": int(good.sum()), "bad": int((~good).sum()), "true_positive": tp,
                       "false_positive": fp, "false_negative": fn, "true_negative": tn},
            "confusion": {"labels": LABELS, "rows": "true score, rounded", "columns": "predicted score, rounded",
                          "matrix": confusion.tolist()}}


def confusion_png(heldout: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(heldout["confusion"]["matrix"])
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(m, cmap="Blues")
    for i in LABELS:
        for j in LABELS:
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=9)
    ax.set_xticks(LABELS)
    ax.set_yticks(LABELS)
    ax.set_xlabel("predicted score (rounded)")
    ax.set_ylabel("true score (rounded)")
    ax.set_title(f"{title}: held-out F1 {heldout['f1']:.3f} at score >= {heldout['threshold']:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(m: dict) -> str:
    h = m["heldout"]
    c = h["counts"]
    lines = [f"held-out: {h['rows']} rows ({c['good']} good, {c['bad']} bad at score >= {h['threshold']:g}); "
             f"trained on {m['rows']['train']}" + (f"; skipped {m['rows']['skipped']}" if m['rows']['skipped'] else ""),
             f"  MSE {h['mse']:.3f} (constant predictor {h['constant_mse']:.3f}; train {m['train_mse']:.3f})",
             f"  at score >= {h['threshold']:g}: F1 {h['f1']:.3f}  precision {h['precision']:.3f}  "
             f"recall {h['recall']:.3f}  accuracy {h['accuracy']:.3f}",
             "confusion (rows: true score, columns: predicted, both rounded):",
             "      " + "".join(f"{j:>5}" for j in LABELS)]
    for i, row in enumerate(h["confusion"]["matrix"]):
        lines.append(f"  {i:>3} " + "".join(f"{v:>5}" for v in row))
    return "\n".join(lines)
