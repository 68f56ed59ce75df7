"""Entry points as users run them: dry-run, fail-fast, and `ray job submit`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, recipe_overrides, s3_client, s3_env
from s3_delay import DelayProxy
from test_resume import train_worker_pids

PY = sys.executable


def run_job(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def run_without_cluster(*args: str) -> subprocess.CompletedProcess:
    """run_job with a temp dir of its own, which must stay empty.

    Any Ray start (ray.init, smolray's connect(), Ray Data's implicit init)
    makes its session folder under TMPDIR, so an empty TMPDIR afterwards
    proves no cluster was started and nothing was left behind.
    """
    tmp = tempfile.mkdtemp(prefix="dry-", dir="/tmp")
    try:
        out = run_job(*args, env={"TMPDIR": tmp})
        left = os.listdir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert left == [], f"{args}: something started and wrote {left} to its temp dir"
    return out


PRESETS = {"smollm2-135m": "134,515,008", "smollm2-360m": "361,821,120", "smollm2-1.7b": "1,711,376,384"}

# `jobs/pretrain.py --dry-run` for every preset, as `python jobs/pretrain.py`
# runs it (its __main__), one after another in one process: most of a dry
# run is importing transformers to count the parameters.
DRY_RUNS = """
import runpy, sys
for name in sys.argv[1:]:
    sys.argv = ["jobs/pretrain.py", "--config", f"recipes/{name}.yaml", "--dry-run"]
    print(f"=== {name}", flush=True)
    runpy.run_path("jobs/pretrain.py", run_name="__main__")
    sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def dry_runs() -> dict[str, str]:
    out = run_without_cluster("-c", DRY_RUNS, *PRESETS)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"=== (\S+)\n(.*?)(?=\n=== |\Z)", out.stdout, re.S))


@pytest.mark.parametrize("name", PRESETS)
def test_dry_run_prints_exact_parameter_counts_and_plan(name, dry_runs):
    params, text = PRESETS[name], dry_runs[name] + "\n"
    assert f"parameters:        {params}\n" in text
    assert "tokens per step:" in text and "total tokens:" in text
    assert "flops per token:" in text and "tokens/s per GPU" in text  # what 45% MFU needs on an H100
    assert "end of warmup: step      1,999" in text and "last step:" in text
    for source in ("fineweb-edu", "dclm", "starcoderdata"):
        assert source in text
    # No hub here: the tokenizer check is named as skipped, in one line, and the rest printed.
    assert sum("not checked:" in line for line in text.splitlines()) == 1
    if name == "smollm2-1.7b":
        stages = [line for line in text.splitlines() if line.startswith("stage ")]
        assert [line.split(":")[0] for line in stages] == [
            "stage stage1", "stage stage2", "stage stage3", "stage stage4", "stage long-context"]
        assert "seq_len 8192, 256 sequences per step, rope theta 130000" in stages[-1]
        assert "long-docs" in text and "stack-edu" in text


def test_bad_recipe_fails_fast_with_field_and_fix():
    out = run_without_cluster("jobs/pretrain.py", "--config", "recipes/tiny.yaml", "--set",
                              "train.zero_stage=9", "--set", "data.weights.math=-1")
    assert out.returncode == 2
    assert "train.zero_stage=9" in out.stderr and "data.weights.math=-1" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_fails_before_cluster_work(tmp_path):
    out = run_without_cluster("jobs/pretrain.py", "--config", "recipes/tiny.yaml",
                              "--set", f"data.sources.code.shards={tmp_path}/none",
                              "--set", f"tokenizer={tmp_path}/no-tokenizer")
    assert out.returncode == 2
    assert "no tokenizer.json" in out.stderr


def test_cluster_yaml_matches_rays_schema():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(config)
    assert {"head", "gpu_train", "gpu_serve", "cpu_data"} <= set(config["available_node_types"])
    assert any("make install" in c for c in config["setup_commands"])
    # The job server (plain HTTP, the token in every request) is reached through `ray dashboard`'s tunnel.
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    config["available_node_types"]["head"]["min_wrokers"] = 1  # a typo must not pass
    with pytest.raises(Exception, match="min_wrokers"):
        validate_config(config)


def test_cluster_recipes_request_the_node_roles_cluster_yaml_declares():
    from smolray.recipe import load_recipe
    from smolray.recipe.post import DPORecipe, SFTRecipe

    types = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    declared = {name: set(t.get("resources", {})) for name, t in types.items()}
    assert "train_node" in declared["gpu_train"] and "data_node" in declared["cpu_data"]
    assert "serve_node" in declared["gpu_serve"]
    for name in ("smollm2-135m", "smollm2-360m", "smollm2-1.7b"):
        r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert (r.train.node_role, r.data.node_role) == ("train_node", "data_node"), name
    for name, cls in (("smollm2-sft", SFTRecipe), ("smollm2-dpo", DPORecipe)):
        assert load_recipe(ROOT / "recipes" / f"{name}.yaml", cls=cls).train.node_role == "train_node"
    # One-machine recipes pin nothing: they must run on a plain local Ray.
    assert load_recipe(ROOT / "recipes" / "tiny.yaml").train.node_role is None


def test_cluster_nodes_install_the_extra_their_hardware_needs(tmp_path):
    """GPU nodes: the `gpu` extra only (CUDA torch, GPU vLLM); CPU nodes: `cpu` only. Never both."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    installs = [c for c in config["setup_commands"] if "make install" in c or "pip install" in c]
    assert len(installs) == 1, installs  # one install per node, no second extra on top
    choice = re.search(r"EXTRA=\$\((.+)\)", installs[0]).group(1)
    gpu_bin, cpu_bin = tmp_path / "gpu", tmp_path / "cpu"
    for d in (gpu_bin, cpu_bin):
        d.mkdir()
    (gpu_bin / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (gpu_bin / "nvidia-smi").chmod(0o755)
    picked = {}
    for kind, path in (("gpu", gpu_bin), ("cpu", cpu_bin)):
        out = subprocess.run(["/bin/bash", "-c", choice], env={"PATH": f"{path}:/usr/bin:/bin"},
                             capture_output=True, text=True)
        picked[kind] = out.stdout.strip()
    assert picked == {"gpu": "gpu", "cpu": "cpu"}
    # And the Makefile's extras are those two, with CPU-only steps kept off GPU nodes.
    make = (ROOT / "Makefile").read_text()
    assert 'if [ "$(EXTRA)" = cpu ]; then DS_ACCELERATOR=cpu' in make


def test_nothing_importable_as_platform():
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert not list((ROOT / "platform").glob("*.py"))


PROBE = """
import platform, ray
ray.init()
@ray.remote
def probe():
    import os, platform
    return platform.__file__, platform.system(), os.getcwd()
print("PROBE", *ray.get(probe.remote()), sep="|")
"""


def test_stdlib_platform_on_a_worker_with_the_repo_as_working_dir(head):
    out = head.submit(["python", "-c", PROBE], working_dir=str(ROOT), timeout=300, capture=True)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("PROBE|"))
    _, path, system, cwd = line.split("|")
    assert Path(path).parent == Path(sysconfig.get_paths()["stdlib"])
    assert system == "Linux"
    assert (Path(cwd) / "platform" / "pyproject.toml").exists()  # the repo really is the cwd


def test_ray_job_submit_runs_pretrain_end_to_end_into_a_bucket(head, corpus, s3_server, tmp_path):
    """The main job as on a cloud: checkpoints, export and logs land in a bucket.

    A training worker is killed while the step-8 checkpoint uploads (a proxy
    holds those writes back): the job restarts its workers by itself from the
    step-4 checkpoint, the last one registered, never from the partial one.
    """
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], tmp_path) + [
        f"run.output_dir=s3://runs/{prefix}", "train.total_tokens=32768", "schedule.warmup_steps=2",
        "checkpoint.every_steps=4", "run.log_every_steps=2", "eval.at_start=true", "eval.max_tokens=4096",
        "train.max_failures=1"]
    args = [a for s in sets for a in ("--set", s)]
    done = {}
    with DelayProxy(s3_server, f"/{prefix}/ray/tiny/step-00000008/", delay_s=1.0) as proxy:
        job = threading.Thread(target=lambda: done.update(res=head.submit(
            ["python", "jobs/pretrain.py", "--config", str(TINY.relative_to(ROOT)), *args],
            working_dir=str(ROOT), timeout=600, capture=True, env_vars=s3_env(proxy.port))))
        job.start()
        while not proxy.delayed and job.is_alive():
            time.sleep(0.02)
        killed = train_worker_pids()
        if killed:
            os.kill(killed[-1], signal.SIGKILL)
        job.join()
    res = done["res"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(killed) == 2, "the kill must land while the step-8 upload is held back"
    client = s3_client(s3_server)
    log = client.get_object(Bucket="runs", Key=f"{prefix}/logs/metrics.jsonl")["Body"].read().decode()
    rows = [json.loads(line) for line in log.splitlines() if line.strip()]
    began = {r["resumed_from"] for r in rows if "resumed_from" in r}  # (the step-0 score has none)
    assert began == {0, 4}, began
    listed = client.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix=prefix + "/")
    keys = {o["Key"][len(prefix) + 1:] for page in listed for o in page.get("Contents", [])}
    assert {"export/config.json", "export/model.safetensors", "export/tokenizer.json"} <= keys
    assert {"logs/metrics.jsonl", "logs/summary.json", "logs/loss.png"} <= keys  # the logs were copied
    assert any(k.startswith("ray/tiny/step-00000008/") for k in keys)  # checkpoints went there too
    summary = json.loads(client.get_object(Bucket="runs", Key=f"{prefix}/logs/summary.json")["Body"].read())
    assert summary["steps"] == 8 and summary["final_loss"] < summary["first_loss"]
    assert summary["export"] == f"s3://runs/{prefix}/export" and summary["completion"]
    # Held-out bits per byte from the untrained model (step 0) to the end, per source.
    assert set(summary["heldout_bpb"]) == {"prose", "code", "math"}
    for v in summary["heldout_bpb"].values():
        assert (v["first_step"], v["last_step"]) == (0, 8) and v["last_bpb"] < v["first_bpb"]
    assert summary["sampling"]["temperature"] > 0  # a sampled completion, labelled as such
    assert "sample of 'She could not help thinking that' (temperature 0.8" in res.stdout
    # Achieved FLOP/s per worker in every run; on a CPU no MFU, and the summary says so.
    assert summary["tflops_per_gpu"] > 0 and "mfu" not in summary
    assert "no MFU (no known bf16 peak for this device" in res.stdout


def test_dry_run_of_the_five_stage_recipe_with_manifests(tokenizer_dir, tmp_path):
    """With manifests present, the 1.7B plan shows tokens, availability and epochs per stage."""
    from smolray.data.shards import Manifest, Shard, filesystem, write_manifest
    from smolray.tokenizer import fingerprint

    sizes = {"fineweb-edu": 1_300, "dclm": 3_800, "starcoderdata": 250, "stack-edu": 200,
             "openwebmath": 60, "finemath": 60, "cosmopedia-v2": 28, "long-docs": 60}  # billions
    sets = [f"tokenizer={tokenizer_dir}"]
    for name, billions in sizes.items():
        fs, base = filesystem(str(tmp_path / name))
        fs.create_dir(base, recursive=True)
        shard = Shard(file="shard-00000", docs=billions * 1_000_000, tokens=billions * 10**9, sha256="0")
        write_manifest(fs, base, Manifest(source=name, dtype="uint16", eos_id=0,
                                          tokenizer=fingerprint(tokenizer_dir), shards=[shard]))
        sets.append(f"data.sources.{name}.shards={tmp_path / name}")
    out = run_job("jobs/pretrain.py", "--config", "recipes/smollm2-1.7b.yaml", "--dry-run",
                  *[a for s in sets for a in ("--set", s)])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "the plan cannot run" not in out.stdout
    stage4 = lines.index(next(x for x in lines if x.startswith("stage stage4")))
    fineweb = lines[stage4 + 2].split()
    assert fineweb[:3] == ["fineweb-edu", "23.2%", "214,599,819,264"]
    assert fineweb[3] == "1,300,000,000,000" and float(fineweb[4]) == pytest.approx(0.17, abs=0.01)
    total = next(x for x in lines if x.startswith("dclm ")).split()
    assert total[1] == "3,937,559,252,992" and float(total[3]) == pytest.approx(1.04, abs=0.01)
    # The paper's context extension: the last 75B tokens at 8k, 40% of them long documents.
    extension = lines.index(next(x for x in lines if x.startswith("stage long-context")))
    assert "(35,763 steps), seq_len 8192" in lines[extension]
    assert lines[extension + 7].split()[:3] == ["long-docs", "40.0%", "30,000,177,152"]
    assert "warning: dclm repeats" in out.stdout


def test_dry_run_shows_an_epoch_cap_refusal(tokenizer_dir, corpus):
    sets = [f"tokenizer={corpus['tokenizer']}", "data.sources.prose.max_epochs=0.5"]
    sets += [f"data.sources.{n}.shards={corpus['root'] / n}" for n in ("prose", "code", "math")]
    sets += ["model.vocab_size=1024"]
    out = run_job("jobs/pretrain.py", "--config", "recipes/tiny.yaml", "--dry-run",
                  *[a for s in sets for a in ("--set", s)])
    assert out.returncode == 0
    assert re.search(r"data\.sources\.prose: the plan draws [0-9.]+ epochs, above max_epochs=0\.5", out.stdout)
    assert "data.allow_over_epochs=true" in out.stdout


def test_train_tokenizer_job_writes_the_recipes_vocabulary(tmp_path):
    from smolray.tokenizer import SPECIAL_TOKENS, load_tokenizer

    out = run_without_cluster("jobs/train_tokenizer.py", "--config", "recipes/tiny.yaml",
                              "--set", f"tokenizer={tmp_path / 'tok'}", "--set", "model.vocab_size=600",
                              "--sample-mb", "0.2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"tokenizer with 600 tokens written to {tmp_path / 'tok'}" in out.stdout
    tok = load_tokenizer(tmp_path / "tok")
    assert len(tok) == 600 and tok.model_max_length == 512  # the recipe's max_position_embeddings
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == SPECIAL_TOKENS
    code = "def area(r):\n    return 3.14159 * r ** 2  # ∑ π"
    assert tok.decode(tok(code, add_special_tokens=False).input_ids) == code
