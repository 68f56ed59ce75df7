"""Peak memory of the next-token loss: plain (full logits) against chunked, same run.

    python bench/loss_memory.py [--tokens 4096] [--hidden 960] [--vocab 49152] [--device cpu]

One forward and backward of the loss alone, from final hidden states to
their gradient, at SmolLM2-360M's width and vocabulary, each implementation
in a fresh process. Memory is the peak over the loss minus what the inputs
already held: process RSS on a CPU, allocated bytes on CUDA.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import json, resource, sys, time, torch
sys.path.insert(0, "platform/src")
from smolray.model.loss import token_nll
impl, n, h, v, dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cuda = dev == "cuda"
dtype = torch.bfloat16 if cuda else torch.float32
g = torch.Generator().manual_seed(0)
hidden = torch.randn(1, n, h, generator=g).to(dev, dtype).requires_grad_()
weight = (0.02 * torch.randn(v, h, generator=g)).to(dev, dtype).requires_grad_()
targets = torch.randint(0, v, (1, n), generator=g).to(dev)
def peak():
    return torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
before = torch.cuda.memory_allocated() if cuda else peak()
t0 = time.perf_counter()
token_nll(hidden, weight, targets, impl, "sum").backward()
if cuda:
    torch.cuda.synchronize()
print(json.dumps({"impl": impl, "loss_gb": (peak() - before) / 1e9, "seconds": time.perf_counter() - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=960)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    rows = {}
    for impl in ("plain", "chunked"):
        out = subprocess.run([sys.executable, "-c", ONE, impl, str(a.tokens), str(a.hidden), str(a.vocab), a.device],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    logits_gb = a.tokens * a.vocab * 4 / 1e9
    print(f"{a.tokens} tokens x {a.vocab} vocab, hidden {a.hidden}, {a.device}; "
          f"one float32 copy of the logits is {logits_gb:.2f} GB")
    print("| loss | peak memory over the inputs (GB) | time (s) |")
    print("|---|---:|---:|")
    for r in rows.values():
        print(f"| {r['impl']} | {r['loss_gb']:.2f} | {r['seconds']:.1f} |")
    print(f"chunked / plain memory: {rows['chunked']['loss_gb'] / rows['plain']['loss_gb']:.3f}")


if __name__ == "__main__":
    main()
