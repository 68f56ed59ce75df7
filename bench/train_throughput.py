"""Training throughput: Ray Train + DeepSpeed against a bare PyTorch loop.

    python bench/train_throughput.py [--steps 60]

Same tiny model (recipes/tiny.yaml), same global batch (16 x 256 tokens),
same sequences from the same data plan, same machine, one run. Reports
steady-state tokens/s (first window dropped) for:
  bare      one process, torch.optim.AdamW, all cores, data already in memory
  ray-1x2   Ray Train, 1 worker with all cores, DeepSpeed ZeRO-0
  ray-2x1   Ray Train, 2 workers with 1 core each, DeepSpeed ZeRO-2 (the demo)
and, for the Ray runs, the fraction of step time spent waiting for data.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"


def prepare(recipe_sets):
    from smolray.data.raw import iter_texts
    from smolray.data.tokenize import tokenize_recipe
    from smolray.recipe import load_recipe
    from smolray.tokenizer import train_bpe

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", recipe_sets)
    if not (OUT / "tokenizer" / "tokenizer.json").is_file():
        texts = (t for s in recipe.data.sources for t in iter_texts(s.raw, s.text_field))
        train_bpe(texts, recipe.model.vocab_size, OUT / "tokenizer")
    tokenize_recipe(recipe)
    return recipe


def bare_loop(recipe, plan, steps: int) -> float:
    import torch
    import torch.nn.functional as F

    from smolray.model import build_model
    from smolray.train.engine import param_groups
    from smolray.train.schedule import from_recipe

    torch.set_num_threads(os.cpu_count())
    model = build_model(recipe.model, recipe.seed)
    o = recipe.optim
    opt = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, from_recipe(recipe).factor)
    B, m = recipe.train.global_batch_size, recipe.train.micro_batch_size
    data = torch.tensor(plan.read(0, 0, steps * B)["tokens"])  # in memory: no data cost at all
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        for i in range(0, B, m):
            chunk = data[step * B + i: step * B + i + m]
            logits = model(input_ids=chunk[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten()) * (m / B)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    steady = times[10:]
    return recipe.tokens_per_step * len(steady) / sum(steady)


def ray_run(recipe, name: str) -> dict:
    from smolray.data.plan import build_plan
    from smolray.train.metrics import read_metrics
    from smolray.train.trainer import build_trainer, log_dir

    build_trainer(recipe, build_plan(recipe)).fit()
    # Training rows after the first window (start-up); step 0 holds only validation.
    rows = [r for r in read_metrics(os.path.join(log_dir(recipe), "metrics.jsonl")) if "loss" in r][1:]
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in rows) / len(rows),
            "data_wait_frac": sum(r["data_wait_frac"] for r in rows) / len(rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    sets = [f"tokenizer={OUT / 'tokenizer'}"]
    for n in ("prose", "code", "math"):
        sets += [f"data.sources.{n}.shards={OUT / 'data' / n}",
                 f"data.sources.{n}.raw=[{ROOT / 'data' / 'sample' / n}.jsonl]"]
    tokens = args.steps * 16 * 256
    common = sets + [f"train.total_tokens={tokens}", "schedule.warmup_steps=5",
                     "checkpoint.every_steps=100000", "run.log_every_steps=10"]

    import ray

    from smolray.cluster import connect
    from smolray.data.plan import build_plan
    from smolray.recipe import load_recipe

    connect()
    recipe = prepare(common)
    cpus = os.cpu_count()
    results = {"bare": {"tokens_per_s": bare_loop(recipe, build_plan(recipe), args.steps)}}
    variants = {
        f"ray-1x{cpus}": ["train.num_workers=1", f"train.cpus_per_worker={cpus}", "train.zero_stage=0"],
        f"ray-{cpus}x1": [f"train.num_workers={cpus}", "train.cpus_per_worker=1", "train.zero_stage=2"],
    }
    for name, extra in variants.items():
        r = load_recipe(ROOT / "recipes" / "tiny.yaml",
                        common + extra + [f"run.output_dir={OUT / 'runs' / name}", f"name=bench-{name}"])
        results[name] = ray_run(r, name)
    ray.shutdown()

    base = results["bare"]["tokens_per_s"]
    print(f"\n{'variant':<10}{'tokens/s':>12}{'vs bare':>10}{'data wait':>11}")
    for name, r in results.items():
        wait = f"{r['data_wait_frac']:.2%}" if "data_wait_frac" in r else "-"
        print(f"{name:<10}{r['tokens_per_s']:>12,.0f}{r['tokens_per_s'] / base:>10.2f}{wait:>11}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train_throughput.json").write_text(json.dumps(
        {"steps": args.steps, "cpus": cpus, "python": sys.version.split()[0], "results": results}, indent=2))


if __name__ == "__main__":
    main()
