"""An evaluation suite on one model, spread over the cluster as Ray tasks.

Each multiple-choice task and each held-out source is one task that loads
the model itself (small models load in about a second), so a suite runs as
wide as the cluster has CPUs, and the same call serves `jobs/eval.py`, the
mixture sweeps and the annealing ablations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray


@dataclass(frozen=True)
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # JSONL task files/URIs or hf:<name>
    heldout: dict[str, str] = field(default_factory=dict)  # source -> JSONL/parquet of held-out text
    target: dict[str, float] = field(default_factory=dict)  # a named mixture over heldout sources
    text_field: str = "text"
    seq_len: int = 256
    limit: int | None = None  # examples per task
    max_tokens: int | None = None  # held-out tokens per source
    cpus_per_task: float = 1.0


def _load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tok


def _task(model_dir: str, spec: str, limit: int | None) -> tuple[str, dict]:
    from smolray.eval.multiple_choice import evaluate, load_task

    name, examples = load_task(spec, limit)
    model, tok = _load(model_dir)
    return name, evaluate(model, tok, examples)


def _heldout(model_dir: str, path: str, cfg: EvalConfig) -> dict:
    from smolray.data.raw import expand, iter_texts
    from smolray.eval.loss import text_loss

    texts = list(iter_texts(expand([path], "--heldout"), cfg.text_field))
    model, tok = _load(model_dir)
    return text_loss(model, tok, texts, cfg.seq_len, max_tokens=cfg.max_tokens)


def run_suite(model_dir: str, cfg: EvalConfig) -> dict:
    """{"tasks": {name: metrics}, "heldout": {source: metrics}, "target": metrics}."""
    from smolray.eval.loss import mixture_loss

    task = ray.remote(num_cpus=cfg.cpus_per_task)(_task)
    held = ray.remote(num_cpus=cfg.cpus_per_task)(_heldout)
    tasks = [task.remote(model_dir, spec, cfg.limit) for spec in cfg.tasks]
    losses = {name: held.remote(model_dir, path, cfg) for name, path in cfg.heldout.items()}
    out: dict = {"model": model_dir, "tasks": dict(ray.get(tasks)),
                 "heldout": {k: ray.get(v) for k, v in losses.items()}}
    if cfg.target:
        out["target"] = mixture_loss(out["heldout"], cfg.target)
    return out


def format_results(res: dict) -> str:
    lines = [f"model {res['model']}"]
    if res["tasks"]:
        lines.append(f"{'task':<24}{'acc':>8}{'acc_norm':>10}{'+-':>7}{'n':>6}")
        for name, m in res["tasks"].items():
            lines.append(f"{name:<24}{m['acc']:>8.3f}{m['acc_norm']:>10.3f}{m['acc_norm_stderr']:>7.3f}"
                         f"{m['examples']:>6}")
    if res["heldout"]:
        lines.append(f"{'held-out source':<24}{'loss':>8}{'bpb':>10}{'tokens':>13}")
        for name, m in res["heldout"].items():
            lines.append(f"{name:<24}{m['loss']:>8.3f}{m['bpb']:>10.3f}{m['tokens']:>13,}")
    if "target" in res:
        lines.append(f"{'target mixture':<24}{res['target']['loss']:>8.3f}{res['target']['bpb']:>10.3f}")
    return "\n".join(lines)
