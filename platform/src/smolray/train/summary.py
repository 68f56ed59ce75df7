"""The end-of-run summary: numbers, loss curve and a sample from the export."""

from __future__ import annotations

import json
import os

from smolray.data.plan import DataPlan
from smolray.recipe import Recipe
from smolray.redact import redact
from smolray.train.metrics import read_metrics


# The closing sample: sampled, not greedy (a small model's greedy text falls
# into loops that read as broken), and seeded, so the same run prints the
# same text.
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "seed": 0, "max_new_tokens": 32}


def heldout_series(rows: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
    """(step, loss, bits per byte) of every validation, per source."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        for key in r:
            if key.startswith("val/") and key.endswith("/loss"):
                name = key[len("val/"):-len("/loss")]
                out.setdefault(name, []).append((r["step"], r[key], r[f"val/{name}/bpb"]))
    return out


def plot_loss(rows: list[dict], png: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=120)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1.5, color="black",
            label="training")
    for name, pts in heldout_series(rows).items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1,
                label=f"held-out {name}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:gray", lw=1, ls="--")
    lr_ax.set_ylabel("learning rate (dashed)", color="tab:gray")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def sampled_completion(model_dir: str, prompt: str, temperature: float, top_p: float, seed: int,
                       max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    torch.manual_seed(seed)
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                         top_p=top_p, top_k=0, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def build_summary(recipe: Recipe, plan: DataPlan, log_dir: str, checkpoint: str, export_dir: str,
                  prompt: str, sample_from: str | None = None) -> dict:
    all_rows = read_metrics(os.path.join(log_dir, "metrics.jsonl"))
    rows = [r for r in all_rows if "loss" in r]  # step 0 holds only the untrained model's validation
    last = rows[-1]
    names = [k.split("/", 1)[1] for k in last if k.startswith("tokens/")]
    tokens = {n: last[f"tokens/{n}"] for n in names}
    total = sum(tokens.values())
    # The target over the run: what the plan draws, across all its stages.
    planned = dict(zip(plan.names, plan.tokens_through(recipe.total_steps).tolist()))
    planned_total = sum(planned.values())
    steady = [r["tokens_per_s"] for r in rows[1:]] or [last["tokens_per_s"]]
    heldout = {name: {"first_step": pts[0][0], "first_bpb": pts[0][2], "last_step": pts[-1][0],
                      "last_bpb": pts[-1][2]} for name, pts in heldout_series(all_rows).items()}
    return {
        "recipe": recipe.name,
        "steps": last["step"],
        "final_loss": last["loss"],
        "first_loss": rows[0]["loss"],
        "tokens": total,
        "tokens_per_s": sum(steady) / len(steady),
        **_mean(rows[1:] or [last], ("tokens_per_s_per_gpu", "tflops_per_gpu", "mfu")),
        "data_wait_frac": sum(r["data_wait_frac"] for r in rows) / len(rows),
        "sources": {n: {"tokens": tokens[n], "realized": tokens[n] / total,
                        "target": planned[n] / planned_total, "epochs": last[f"epochs/{n}"]}
                    for n in names},
        "heldout_bpb": heldout,
        "checkpoint": redact(checkpoint),  # printed and written: no credentials
        "export": redact(export_dir),
        "loss_curve": plot_loss(all_rows, os.path.join(log_dir, "loss.png"), recipe.name),
        "prompt": prompt,
        "sampling": SAMPLING,
        "completion": sampled_completion(sample_from or export_dir, prompt, **SAMPLING),
    }


def _mean(rows: list[dict], keys: tuple[str, ...]) -> dict:
    """Means over the steady rows of the keys they carry (mfu only on GPUs of known peak)."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys if rows and all(k in r for r in rows)}


def format_summary(s: dict) -> str:
    lines = [
        f"run {s['recipe']}: {s['steps']} steps, {s['tokens']:,} tokens, "
        f"loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}",
        f"throughput {s['tokens_per_s']:,.0f} tokens/s; {s['data_wait_frac']:.2%} of step time waiting for data",
        _per_device(s),
        f"{'source':<12}{'tokens':>12}{'realized':>10}{'target':>8}{'epochs':>8}",
    ]
    for name, v in s["sources"].items():
        lines.append(f"{name:<12}{v['tokens']:>12,}{v['realized']:>10.1%}{v['target']:>8.1%}{v['epochs']:>8.2f}")
    if s.get("heldout_bpb"):
        h = next(iter(s["heldout_bpb"].values()))
        lines.append(f"{'held-out':<12}{'bits per byte':>22}   (step {h['first_step']} -> {h['last_step']})")
        for name, v in s["heldout_bpb"].items():
            lines.append(f"{name:<12}{v['first_bpb']:>13.3f} -> {v['last_bpb']:.3f}")
    k = s["sampling"]
    lines += [
        f"checkpoint  {s['checkpoint']}",
        f"export      {s['export']}",
        f"loss curve  {s['loss_curve']}",
        f"sample of {s['prompt']!r} (temperature {k['temperature']}, top-p {k['top_p']}, "
        f"seed {k['seed']}, {k['max_new_tokens']} new tokens):",
        "  " + s["completion"].replace("\n", "\n  "),
    ]
    return "\n".join(lines)


def _per_device(s: dict) -> str:
    mfu = f"MFU {s['mfu']:.1%}" if "mfu" in s else "no MFU (no known bf16 peak for this device, e.g. a CPU)"
    return (f"per worker {s['tokens_per_s_per_gpu']:,.0f} tokens/s, {s['tflops_per_gpu']:.3f} TFLOP/s; {mfu}")


def write_summary(s: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(s, f, indent=2)
