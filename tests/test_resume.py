"""A killed training worker with no restarts left: the job ends with one
message naming the cause, the last checkpoint and the command that
continues it. (Restarts inside the run: test_multinode.py, the DPO job of
test_posttrain_jobs.py and the bucket job of test_jobs.py; a rerun of the
same command resuming exactly: test_stages.py.)

The expected log needs no second training run: which sequence a step trains
on is a pure function of the plan, so it is computed from DataPlan directly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from smolray.train.metrics import read_metrics, read_rows
from smolray.train.trainer import log_dir

from conftest import ROOT, TINY, recipe_overrides, registered_step
from test_train import SHORT


def planned_log(plan, total_steps: int) -> list[str]:
    lines = []
    for sp in plan.stages:
        st = sp.stage
        for t in range(st.start_step, min(st.stop_step, total_steps)):
            j = (t - st.start_step) * st.batch
            got = plan.read(st.index, j, j + st.batch)
            for i in range(st.batch):
                row = [got[k][i] for k in ("index", "stage", "source", "epoch", "doc", "offset")]
                row[2] = plan.names[row[2]]
                lines.append("\t".join(map(str, [t, *row])))
    return lines


def train_worker_pids() -> list[int]:
    """Processes of Ray Train workers (their title is ray::RayTrainWorker...)."""
    out = subprocess.run(["pgrep", "-f", "^ray::RayTrainWorker"], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def first_resumed_row(metrics: str, timeout: float = 300) -> float:
    """Wall time at which a restarted worker group logged its first row (for docs/reliability.md)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(metrics) and any(r["resumed_from"] > 0 for r in read_rows(metrics)):
            return time.time()
        time.sleep(0.2)
    return float("nan")


def kill_a_worker_after(run_dir, step: int, timeout: float = 240) -> dict:
    """Once `step` is registered, SIGKILL one training worker; returns what happened."""
    seen = {}
    deadline = time.time() + timeout
    while registered_step(run_dir) < step and time.time() < deadline:
        time.sleep(0.1)
    pids = train_worker_pids()
    seen["registered"], seen["pids"] = registered_step(run_dir), pids
    if pids:
        os.kill(pids[-1], signal.SIGKILL)
        seen["killed_at"] = time.time()
    return seen


def test_failures_beyond_the_limit_end_the_job_with_one_message(ray_cluster, corpus, tmp_path):
    from smolray.recipe import load_recipe

    out = tmp_path / "run"
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], out) + [*SHORT, "checkpoint.every_steps=3",
                                                                        "train.max_failures=0"]
    recipe = load_recipe(TINY, sets)
    samples = tmp_path / "samples"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    args = ["jobs/pretrain.py", "--config", str(TINY), "--sample-log", str(samples)]
    for s in sets:
        args += ["--set", s]
    # Output to files: a pipe nobody reads while the test waits would fill and stall the job.
    with open(tmp_path / "out.log", "w") as o, open(tmp_path / "err.log", "w") as e:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=o, stderr=e)
    seen = kill_a_worker_after(out / "ray" / recipe.name, 3)
    proc.wait(timeout=240)
    err = (tmp_path / "err.log").read_text()
    assert len(seen["pids"]) == 2, seen
    killed_at = max(r["step"] for r in read_metrics(os.path.join(log_dir(recipe), "metrics.jsonl")))
    assert killed_at < 12, "the kill must land mid-run"

    # The job ends by itself, with one message: the cause, the checkpoint, the command.
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    message = errors[0]
    registered = registered_step(out / "ray" / recipe.name)
    # Which rank the killed process held is up to Ray. The other rank is named
    # only if its own error (a lost peer) reached the controller first.
    assert re.match(r"error: training failed \(no restart allowed, train\.max_failures=0\): worker rank\(s\) "
                    r"\[[01]\] died \(the process was killed, ran out of memory, or its node was lost\)"
                    r"(; 1 other rank\(s\) then lost their peer)?\. Nothing registered is lost", message), message
    assert f"step-{registered:08d} (step {registered})" in message
    assert f"Run the same command again to continue: python jobs/pretrain.py --config {TINY}" in message
