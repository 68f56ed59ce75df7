"""Batch generation throughput: ray.data.llm (the synth job's processor) against offline vLLM.

    python bench/synth_throughput.py [--model DIR] [--prompts 64] [--output-tokens 128] [--backend vllm]

The same --prompts prompts (the first --prompt-tokens tokens of the bundled
sample's prose, then code and math passages), the same model, the same
sampling (temperature 0.8, top_p 0.95, exactly --output-tokens tokens each:
min_tokens = max_tokens) through:
  offline   vllm.LLM(...).generate(prompts), in a child process that exits
            before Ray starts, so the two engines never share the cores
  vllm      the synth job's default backend (smolray.synth.engines): one
            vllm.LLM in a Ray Data actor, generate() per batch of rows
  ray.data.llm  the other backend: ray.data.llm's vLLM engine stage (one
            replica, one CPU bundle), as the synth job builds it
Reports generated tokens/s two ways: over generation alone (offline: the
generate() call; vllm: the first generate() call's start to the last one's
end; ray.data.llm: the engine core's clock from the first request it queued
to the last token it produced) and end to end, engine start included, which
is what one batch job of this size costs. Without --model a tiny random Llama is built as in
bench/serve_throughput.py.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"
SAMPLE = ROOT / "data" / "sample"


def make_prompts(model: str, n: int, length: int) -> list[str]:
    """Distinct passages cut to `length` tokens of the model's own tokenizer."""
    from transformers import AutoTokenizer

    from smolray.data.raw import iter_texts

    tok = AutoTokenizer.from_pretrained(model)
    out = []
    for text in iter_texts([str(SAMPLE / f"{n}.jsonl") for n in ("prose", "code", "math")], "text"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            out.append(tok.decode(ids[:length]))
        if len(out) == n:
            return out
    raise SystemExit(f"the sample corpus has only {len(out)} texts of {length} tokens; lower --prompts")


def offline(args) -> dict:
    """Runs in the child process: engine start, then one generate() over every prompt."""
    from vllm import LLM, SamplingParams

    from smolray.serve.config import engine_kwargs

    prompts = json.loads(Path(args.prompts_file).read_text())
    t0 = time.perf_counter()
    # The same engine arguments the synth job gives ray.data.llm.
    llm = LLM(model=args.model, **engine_kwargs("cpu", "auto", None, args.kv_cache_mb))
    t1 = time.perf_counter()
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.output_tokens,
                            min_tokens=args.output_tokens)
    outs = llm.generate(prompts, params, use_tqdm=False)
    t2 = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "rows": len(outs), "start_s": t1 - t0, "gen_s": t2 - t1, "total_s": t2 - t0}


def on_ray(args, prompts: list[str], backend: str) -> dict:
    import ray

    from smolray.synth.config import SynthConfig
    from smolray.synth.engines import processor

    # The annotate mode's columns are the fewest the processor carries; the
    # docs path is never read, only the processor is used.
    cfg = SynthConfig.model_validate({
        "name": "bench", "mode": "annotate", "annotate": {"docs": {"raw": ["unused"]}},
        "model": {"source": args.model, "device": "cpu", "kv_cache_mb": args.kv_cache_mb, "chat": False,
                  "backend": backend, "batch_size": args.batch_size},
        "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": args.output_tokens,
                     "min_tokens": args.output_tokens}})
    rows = [{"id": str(i), "doc": "", "instruction": p, "template": ""} for i, p in enumerate(prompts)]
    # More logical CPUs than cores, as smolray.cluster.connect gives a local
    # job: the engine books one, the CPU stages need their own.
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        proc = processor(cfg, timed=True)
        if backend == "ray.data.llm":
            inner = proc.postprocess

            # smolray's postprocess keeps only the synth columns; the engine's
            # per-request timings are read before it.
            def stamped(row):
                m = row[proc.DATA_COLUMN].get("metrics") or {}
                # The engine core's own clock: queued, and the last token.
                return {**inner(row), "gen_start": m.get("queued_ts"), "gen_end": m.get("last_token_ts")}

            proc.postprocess = stamped
        t0 = time.perf_counter()
        out = proc(ray.data.from_items(rows)).take_all()
        total = time.perf_counter() - t0
    finally:
        ray.shutdown()
    # Rows that failed in ray.data.llm skip the postprocess and keep Ray's own error column.
    errors = [e for e in (r.get("error") or r.get("__inference_error__") for r in out) if e]
    timed = [r for r in out if r.get("gen_start") and r.get("gen_end")]
    if not timed:
        raise SystemExit(f"{backend}: no row came back with engine timings; first error: {errors[:1]}")
    return {"tokens": sum(r.get("completion_tokens") or 0 for r in out), "rows": len(out),
            "errors": len(errors), "first_error": str(errors[0])[:300] if errors else "",
            # vllm: from the first generate() call's start to the last one's
            # end; ray.data.llm: from the first request the engine queued to
            # the last token it made.
            "gen_s": max(r["gen_end"] for r in timed) - min(r["gen_start"] for r in timed),
            "total_s": total, "rows_per_call": cfg.model.rows_per_call}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a Hugging Face model folder, e.g. outputs/demo/run/export")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--kv-cache-mb", type=int, default=256)
    p.add_argument("--backend", nargs="+", default=["vllm", "ray.data.llm"], choices=["vllm", "ray.data.llm"],
                   help="the synth job's engine backends to measure (default: both)")
    p.add_argument("--batch-size", type=int, help="model.batch_size (default: the backend's rule)")
    p.add_argument("--prompts-file", help=argparse.SUPPRESS)  # set: this is the offline child
    args = p.parse_args()
    if args.prompts_file:
        print("RESULT " + json.dumps(offline(args)), flush=True)
        return

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="synth-bench-")
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(tmp.name, "vllm-cache"))
    if args.model:
        args.model = os.path.abspath(args.model)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from serve_throughput import tiny_model

        args.model = tiny_model(Path(tmp.name) / "model")
    prompts = make_prompts(args.model, args.prompts, args.prompt_tokens)
    pfile = Path(tmp.name) / "prompts.json"
    pfile.write_text(json.dumps(prompts))

    log_path = OUT / "synth_throughput.offline.log"
    with open(log_path, "w") as log:
        child = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--output-tokens", str(args.output_tokens),
             "--kv-cache-mb", str(args.kv_cache_mb), "--prompts-file", str(pfile)],
            stdout=subprocess.PIPE, stderr=log, text=True)
    lines = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
    if child.returncode or not lines:
        raise SystemExit(f"offline vLLM failed ({child.returncode}); see {log_path}")
    results = {"offline": json.loads(lines[-1][7:])}
    for backend in args.backend:
        results[backend] = on_ray(args, prompts, backend)

    want = args.prompts * args.output_tokens
    print(f"\n{args.prompts} prompts x {args.prompt_tokens} tokens, "
          f"{args.output_tokens} generated tokens each")
    print(f"{'':<14}{'tokens':>8}{'gen s':>8}{'tokens/s':>10}{'total s':>9}{'end-to-end tokens/s':>21}")
    for name, r in results.items():
        note = "" if r["tokens"] == want else f"  (expected {want})"
        print(f"{name:<14}{r['tokens']:>8}{r['gen_s']:>8.2f}{r['tokens'] / r['gen_s']:>10,.1f}"
              f"{r['total_s']:>9.1f}{r['tokens'] / r['total_s']:>21,.1f}{note}")
    o = results["offline"]
    print(f"offline engine start: {o['start_s']:.1f} s")
    for backend in args.backend:
        d = results[backend]
        ratio = lambda key: (d["tokens"] / d[key]) / (o["tokens"] / o[key])  # noqa: E731
        print(f"{backend} / offline: generation {ratio('gen_s'):.2f}, end to end {ratio('total_s'):.2f} "
              f"({d['rows_per_call']} rows per engine call)")
        if d["errors"]:
            print(f"{backend}: {d['errors']} rows failed, e.g. {d['first_error']}")
    kept = {k: v for k, v in vars(args).items() if k != "prompts_file"}
    (OUT / "synth_throughput.json").write_text(json.dumps(
        {"args": kept, "cpus": os.cpu_count(), "results": results}, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
