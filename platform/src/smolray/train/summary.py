"""The end-of-run summary: numbers, loss curve and a sample from the export."""

from __future__ import annotations

import json
import os

from smolray.data.plan import DataPlan
from smolray.recipe import Recipe
from smolray.train.metrics import read_metrics


def plot_loss(rows: list[dict], png: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", lw=1, alpha=0.6)
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def greedy_completion(model_dir: str, prompt: str, max_new_tokens: int = 24) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def build_summary(recipe: Recipe, plan: DataPlan, log_dir: str, checkpoint: str, export_dir: str,
                  prompt: str, sample_from: str | None = None) -> dict:
    rows = read_metrics(os.path.join(log_dir, "metrics.jsonl"))
    last = rows[-1]
    names = [k.split("/", 1)[1] for k in last if k.startswith("tokens/")]
    tokens = {n: last[f"tokens/{n}"] for n in names}
    total = sum(tokens.values())
    # The target over the run: what the plan draws, across all its stages.
    planned = dict(zip(plan.names, plan.tokens_through(recipe.total_steps).tolist()))
    planned_total = sum(planned.values())
    steady = [r["tokens_per_s"] for r in rows[1:]] or [last["tokens_per_s"]]
    return {
        "recipe": recipe.name,
        "steps": last["step"],
        "final_loss": last["loss"],
        "first_loss": rows[0]["loss"],
        "tokens": total,
        "tokens_per_s": sum(steady) / len(steady),
        "data_wait_frac": sum(r["data_wait_frac"] for r in rows) / len(rows),
        "sources": {n: {"tokens": tokens[n], "realized": tokens[n] / total,
                        "target": planned[n] / planned_total, "epochs": last[f"epochs/{n}"]}
                    for n in names},
        "checkpoint": checkpoint,
        "export": export_dir,
        "loss_curve": plot_loss(rows, os.path.join(log_dir, "loss.png"), recipe.name),
        "prompt": prompt,
        "completion": greedy_completion(sample_from or export_dir, prompt),
    }


def format_summary(s: dict) -> str:
    lines = [
        f"run {s['recipe']}: {s['steps']} steps, {s['tokens']:,} tokens, "
        f"loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}",
        f"throughput {s['tokens_per_s']:,.0f} tokens/s; {s['data_wait_frac']:.2%} of step time waiting for data",
        f"{'source':<12}{'tokens':>12}{'realized':>10}{'target':>8}{'epochs':>8}",
    ]
    for name, v in s["sources"].items():
        lines.append(f"{name:<12}{v['tokens']:>12,}{v['realized']:>10.1%}{v['target']:>8.1%}{v['epochs']:>8.2f}")
    lines += [
        f"checkpoint  {s['checkpoint']}",
        f"export      {s['export']}",
        f"loss curve  {s['loss_curve']}",
        f"greedy completion of {s['prompt']!r}:",
        "  " + s["completion"].replace("\n", "\n  "),
    ]
    return "\n".join(lines)


def write_summary(s: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(s, f, indent=2)
