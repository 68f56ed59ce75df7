"""Serving throughput: the smolray endpoint (Ray Serve) against vLLM's own OpenAI server.

    python bench/serve_throughput.py [--model DIR] [--streams 16] [--output-tokens 128]

One run starts each server in turn on the same model and machine and sends
the same load to both: --rounds waves of --streams concurrent streaming
completions through the official `openai` client, every prompt exactly
--prompt-tokens token ids and every reply exactly --output-tokens tokens
(min_tokens = max_tokens, ignore_eos). Reports output tokens/s over the
waves and the median and p90 time to first token, for:
  bare      python -m vllm.entrypoints.openai.api_server (no Ray at all)
  serve     smolray.serve.app:build_app on Ray Serve, in each --ingress
            layout: direct (Serve's HTTP proxy, then the guarded vLLM
            replica) and router (the proxy, the bearer-key ingress, then an
            LLMServer replica)
and the ratio serve / bare, and the TTFT difference, and the cores each part
of the stack kept busy during the waves (vLLM's model worker and scheduler,
the replica or the bare front end, proxies, Ray's own processes, the load
generator). The bare server runs
first and again last; the ratios use its faster run. Without --model a tiny random Llama is built in
a temporary folder (vocabulary 1024, 2 layers, hidden 128).
"""

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"
SAMPLE = ROOT / "data" / "sample"


def tiny_model(out: Path) -> str:
    """A random Llama (head_dim 32: vLLM's CPU attention needs >= 32) with its tokenizer."""
    from smolray.data.raw import iter_texts
    from smolray.model import build_model
    from smolray.recipe import ModelConfig
    from smolray.tokenizer import train_bpe

    texts = (t for n in ("prose", "code", "math")
             for t in iter_texts([str(SAMPLE / f"{n}.jsonl")], "text", 400_000))
    tok = train_bpe(texts, vocab_size=1024, out_dir=out, model_max_length=512)
    cfg = ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=512)
    # train_bpe has already written the tokenizer into `out`.
    build_model(cfg, seed=0, bos_id=tok.bos_token_id, eos_id=tok.eos_token_id).save_pretrained(out)
    return str(out)


def prompts(model: str, n: int, length: int) -> list[list[int]]:
    """Random token ids: distinct per request, so no request reuses another's prefix cache."""
    vocab, rng = json.loads((Path(model) / "config.json").read_text())["vocab_size"], random.Random(0)
    # Ids below 17 are smolray's special tokens; a prompt of them would not be text.
    return [[rng.randrange(32, vocab) for _ in range(length)] for _ in range(n)]


async def one(client, model: str, prompt: list[int], out_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=out_tokens, temperature=0.8, stream=True,
        stream_options={"include_usage": True},
        extra_body={"min_tokens": out_tokens, "ignore_eos": True})
    async for chunk in stream:
        # The first chunk with a choice, even an empty one: a token that ends
        # mid-character decodes to no text but was still generated.
        if ttft is None and chunk.choices:
            ttft = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return ttft if ttft is not None else float("nan"), tokens


def pin_off_engine(args) -> None:
    """With --pin: every process of the server but vLLM's model worker onto
    the last core, the one vLLM's thread binding reserves for the rest.

    vLLM binds its worker's compute threads to core 0 but leaves its
    scheduler (EngineCore), the API server and everything else free to
    land there too; each time one does, the engine step waits on it.
    """
    import psutil

    if not args.pin or len(os.sched_getaffinity(0)) < 2:
        return
    rest = {max(os.sched_getaffinity(0))}
    # The servers are this process's descendants (the vLLM server, or Ray's
    # processes and workers); this process itself is left alone: a server
    # started after it inherits its affinity, and `pinned_load` pins the
    # thread that sends the load.
    for p in psutil.Process().children(recursive=True):
        try:
            if "VLLM::Worker" not in " ".join(p.cmdline()):
                for t in p.threads():
                    os.sched_setaffinity(t.id, rest)
        except (psutil.Error, OSError):
            pass  # exited meanwhile


def pinned_load(*args) -> dict:
    """`load` with this thread on the last core only, and back.

    vLLM binds its engine to core 0 and leaves the rest for everything else;
    a load generator the kernel happened to schedule on core 0 would slow
    the engine it measures (runs varied 1,200-4,000 tokens/s that way). The
    servers started before this, so they keep their own placement.
    """
    cores = os.sched_getaffinity(0)
    if len(cores) > 1:
        os.sched_setaffinity(0, {max(cores)})
    try:
        return asyncio.run(load(*args))
    finally:
        os.sched_setaffinity(0, cores)


# Which part of the serving stack a process is, by its command line (first match).
GROUPS = [("model worker", ("VLLM::Worker",)), ("engine scheduler", ("EngineCore",)),
          ("replica", ("ServeReplica",)), ("front end", ("api_server",)),
          ("haproxy", ("haproxy",)), ("serve proxy, controller", ("ProxyActor", "ServeController")),
          ("ray system", ("gcs_server", "raylet", "dashboard", "ray/_private", "ray::", "autoscaler"))]


def cpu_seconds() -> dict[int, tuple[float, str]]:
    """Every process's CPU time (user + system) and its command line."""
    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        c, cmd = p.info["cpu_times"], p.info["cmdline"] or [p.info["name"] or ""]
        if c is not None:
            out[p.pid] = (c.user + c.system, " ".join(cmd))
    return out


def cpu_by_group(before: dict, after: dict, wall: float) -> dict[str, float]:
    """Cores each part of the stack kept busy between two cpu_seconds() (CPU s / wall s)."""
    me, groups = os.getpid(), {}
    for pid, (t, cmd) in after.items():
        used = t - before.get(pid, (0.0, ""))[0]
        name = "load generator" if pid == me else next(
            (g for g, keys in GROUPS if any(k in cmd for k in keys)), "other")
        groups[name] = groups.get(name, 0.0) + used / wall
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


async def load(base_url: str, key: str, model: str, waves: list[list[list[int]]], out_tokens: int) -> dict:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600) as client:
        # An untimed wave of its own prompts: the first batch pays for lazy
        # allocations in the engine, and no timed prompt is in the prefix cache.
        await asyncio.gather(*(one(client, model, p, 8) for p in waves[0]))
        cpu0 = cpu_seconds()
        t0, results = time.perf_counter(), []
        for wave in waves[1:]:
            results += await asyncio.gather(*(one(client, model, p, out_tokens) for p in wave))
        wall = time.perf_counter() - t0
        cpu = cpu_by_group(cpu0, cpu_seconds(), wall)
    ttfts, tokens = sorted(r[0] for r in results), sum(r[1] for r in results)
    pick = lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))]  # noqa: E731
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": pick(0.5), "ttft_p90_s": pick(0.9), "ttft_s": [r[0] for r in results], "cores": cpu}


async def wait_ready(base_url: str, key: str, model: str, proc=None, limit_s: float = 600) -> None:
    from openai import AsyncOpenAI

    deadline = time.monotonic() + limit_s
    async with AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {proc.returncode} before it was ready")
            try:
                await client.completions.create(model=model, prompt=[40, 41], max_tokens=1)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)


def settle(limit_s: float = 90) -> float:
    """Wait until the machine is idle (90% over a second): a server or a Ray
    cluster that just stopped may keep a core busy for seconds while its
    processes exit, and the next run would pay for it. Returns the idle share."""
    def busy_idle():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    deadline = time.monotonic() + limit_s
    while True:
        (t0, i0), _ = busy_idle(), time.sleep(1)
        t1, i1 = busy_idle()
        idle = (i1 - i0) / max(t1 - t0, 1)
        if idle >= 0.9 or time.monotonic() > deadline:
            return idle


def bare(args, model: str, key: str, waves) -> dict:
    from smolray.serve.config import engine_kwargs

    port = args.port + 1
    # The engine settings the Serve replica gets, as the server's flags.
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
             for k, v in engine_kwargs("cpu", "auto", None, args.kv_cache_mb).items()]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--served-model-name", "bench", *flags, "--host", "127.0.0.1",
           "--port", str(port), f"--api-key={key}"]  # with "=": a key may start with "-"
    log = open(OUT / "serve_throughput.vllm.log", "w")
    # Its own session, so stopping it takes its engine process along.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        asyncio.run(wait_ready(url := f"http://127.0.0.1:{port}/v1", key, "bench", proc))
        pin_off_engine(args)
        return pinned_load(url, key, "bench", waves, args.output_tokens)
    finally:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass  # the server already exited; its error is in the log
        log.close()


def ray_serve(args, model: str, key: str, waves, ingress: str) -> dict:
    import ray
    from ray import serve

    from smolray.serve.app import build_app

    os.environ["SMOLRAY_API_KEY"] = key
    if args.haproxy and ingress == "direct":
        # Read when Ray starts: HAProxy instead of Serve's Python proxy, so a
        # streamed token goes from the replica's own HTTP server to the client.
        os.environ.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_HAPROXY_NBTHREAD="1")
    else:
        os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    if args.throughput_optimized:
        # Serve's own preset: the replica's code on its main event loop (no
        # hop to a user-code thread per streamed chunk), buffered request
        # logs, no log copies to stderr, the GC frozen after start-up.
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    # address="local": never attach to a cluster another process left running.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app = build_app({"device": "cpu", "api_key_env": "SMOLRAY_API_KEY", "kv_cache_mb": args.kv_cache_mb,
                         "cpus_per_replica": args.cpus_per_replica, "ingress": ingress,
                         "models": [{"id": "bench", "source": model,
                                     "replicas": {"min_replicas": 1, "max_replicas": 1}}]})
        serve.run(app, name="bench", route_prefix="/")
        asyncio.run(wait_ready(url := f"http://127.0.0.1:{args.port}/v1", key, "bench"))
        pin_off_engine(args)
        return pinned_load(url, key, "bench", waves, args.output_tokens)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a Hugging Face model folder, e.g. outputs/demo/run/export")
    p.add_argument("--streams", type=int, default=16, help="concurrent streaming completions per wave")
    p.add_argument("--rounds", type=int, default=3, help="timed waves")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--kv-cache-mb", type=int, default=256)
    p.add_argument("--cpus-per-replica", type=int, default=1, help="as serving/tiny-cpu.yaml books")
    p.add_argument("--ingress", nargs="+", default=["direct", "router"], choices=["direct", "router"],
                   help="the Serve layouts to measure (serve/app.py), each against the same bare server")
    p.add_argument("--haproxy", action="store_true", help="direct layout behind HAProxy")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for the Serve runs")
    p.add_argument("--pin", action="store_true",
                   help="once each server is up, keep everything but vLLM's model worker off its core")
    p.add_argument("--port", type=int, default=8321, help="Serve's port; the bare server uses the next one")
    args = p.parse_args()
    # Ray's logging setup would print every client request.
    for name in ("httpx", "httpx2"):  # the openai client's transport, by version
        logging.getLogger(name).setLevel(logging.WARNING)

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="serve-bench-")
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(tmp.name, "vllm-cache"))
    model = os.path.abspath(args.model) if args.model else tiny_model(Path(tmp.name) / "model")
    key = secrets.token_urlsafe(24)
    ids = prompts(model, args.streams * (args.rounds + 1), args.prompt_tokens)
    waves = [ids[i * args.streams:(i + 1) * args.streams] for i in range(args.rounds + 1)]

    # One engine at a time: two would share the two cores and both look slow.
    settle()
    results = {"bare": bare(args, model, key, waves)}
    for ingress in args.ingress:
        settle()
        results[f"serve-{ingress}"] = ray_serve(args, model, key, waves, ingress)
    # The bare server again, last: a slow first run (cold caches, a busy
    # machine) must not flatter Serve. The ratios use the faster bare run.
    settle()
    results["bare-again"] = bare(args, model, key, waves)

    want = args.streams * args.rounds * args.output_tokens
    print(f"\n{args.rounds} x {args.streams} streams, {args.prompt_tokens} prompt + "
          f"{args.output_tokens} output tokens each")
    print(f"{'server':<14}{'tokens':>8}{'tokens/s':>11}{'TTFT p50':>10}{'TTFT p90':>10}")
    for name, r in results.items():
        note = "" if r["tokens"] == want else f"  (expected {want} tokens)"
        print(f"{name:<14}{r['tokens']:>8}{r['tokens_per_s']:>11,.1f}{r['ttft_p50_s']:>9.3f}s"
              f"{r['ttft_p90_s']:>9.3f}s{note}")
    print("\ncores busy during the timed waves (CPU seconds / wall seconds), by part of the stack:")
    for name, r in results.items():
        print(f"{name:<14}" + ", ".join(f"{g} {c:.2f}" for g, c in r["cores"].items() if c >= 0.005)
              + f"; total {sum(r['cores'].values()):.2f} of {len(os.sched_getaffinity(0))}")
    b = max(results["bare"], results["bare-again"], key=lambda r: r["tokens_per_s"])
    for ingress in args.ingress:
        s = results[f"serve-{ingress}"]
        print(f"serve ({ingress}) / bare: tokens/s {s['tokens_per_s'] / b['tokens_per_s']:.2f}, "
              f"TTFT p50 {1e3 * (s['ttft_p50_s'] - b['ttft_p50_s']):+.0f} ms, "
              f"p90 {1e3 * (s['ttft_p90_s'] - b['ttft_p90_s']):+.0f} ms")
    (OUT / "serve_throughput.json").write_text(json.dumps(
        {"args": vars(args), "model": args.model or "tiny random Llama", "cpus": os.cpu_count(),
         "results": results}, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
