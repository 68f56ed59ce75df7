"""bench/gpu_mfu.py runs without Ray or pydantic (a bare GPU box has neither) and reports true figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smolray.recipe import load_recipe
from smolray.train.flops import flops_per_token

from conftest import ROOT

# Ray and pydantic made unimportable: the benchmark must not need them.
BARE = """
import runpy, sys
sys.modules.update(ray=None, pydantic=None)
sys.argv = ["gpu_mfu.py", *sys.argv[1:]]
runpy.run_path("bench/gpu_mfu.py", run_name="__main__")
"""


def test_gpu_mfu_bench_runs_the_tiny_preset_on_cpu_with_torch_alone():
    out = subprocess.run([sys.executable, "-c", BARE, "--preset", "tiny", "--steps", "2", "--warmup", "1",
                          "--device", "cpu", "--activation-checkpointing", "--packed", "64"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    model = load_recipe(ROOT / "recipes" / "tiny.yaml").model
    # The parameters of the model it built, and FLOPs per token, agree with the recipe's arithmetic.
    assert r["params"] == model.num_parameters
    assert r["gflops_per_token"] == pytest.approx(flops_per_token(model, 256) / 1e9)
    assert r["tflops_per_gpu"] == pytest.approx(r["tokens_per_s"] * r["gflops_per_token"] / 1e3)
    assert r["steps"] == 2 and r["tokens_per_s"] > 0 and r["peak_memory_gb"] > 0
    assert r["loss"] == "chunked" and r["levers"] == ["activation checkpointing per decoder layer"]
    assert r["packed"] == 64  # documents of 64 tokens through the variable-length attention
    assert "mfu" not in r and "| tiny | cpu | 8 x 256 | chunked |" in out.stdout  # no peak for a CPU
