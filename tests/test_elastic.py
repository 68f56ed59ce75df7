"""Elastic training on the `multinode` cluster: shrink when a trainer node is lost, grow when one returns.

A `long` test (`make test-long`): about two minutes on 2 cores, most of it
Ray Train waiting out its 60 s worker-group start timeout after the loss,
which `make test` has no room for (docs/testing.md, docs/reliability.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import LONG, ROOT, TINY, recipe_overrides, registered_step
from test_multinode import DRIVER
from test_resume import planned_log
from test_train import sample_log

pytestmark = LONG

STEPS = 48


def _starts(metrics: str) -> dict[int, set[int]]:
    """{the step a worker group began at: the worker counts it logged with}."""
    from smolray.train.metrics import read_rows

    out: dict[int, set[int]] = {}
    for r in read_rows(metrics) if os.path.exists(metrics) else []:
        out.setdefault(r["resumed_from"], set()).add(round(r["tokens_per_s"] / r["tokens_per_s_per_gpu"]))
    return out


def _next_start(metrics: str, proc, seen: int, timeout: float = 300) -> float:
    deadline = time.time() + timeout
    while len(_starts(metrics)) == seen and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    return time.time()


def test_elastic_run_shrinks_on_node_loss_and_grows_back(multinode, corpus, tmp_path):
    from smolray.data.plan import build_plan
    from smolray.recipe import load_recipe
    from smolray.train.trainer import log_dir

    cluster = multinode["cluster"]
    out = tmp_path / "run"
    # One worker per trainer node (2 CPUs each): losing a node loses a worker.
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], out) + [
        f"train.total_tokens={4096 * STEPS}", "schedule.warmup_steps=2", "run.log_every_steps=1",
        "checkpoint.every_steps=2", "checkpoint.keep=2", "train.max_failures=4",
        "train.num_workers=[1, 2]", "train.cpus_per_worker=2", "train.resize_check_s=5",
        "train.node_role=train_node", "data.node_role=data_node"]
    recipe = load_recipe(TINY, sets)
    samples, metrics = tmp_path / "samples", os.path.join(log_dir(recipe), "metrics.jsonl")
    output = tmp_path / "driver.log"
    with open(output, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address, str(TINY), str(samples), *sets],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while registered_step(out / "ray" / recipe.name) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and _starts(metrics) == {0: {2}}, output.read_text()[-3000:]

    lost_node = multinode["train"].pop(0)
    cluster.remove_node(lost_node, allow_graceful=False)
    lost = time.time()
    shrunk = _next_start(metrics, proc, 1)
    multinode["train"].append(cluster.add_node(num_cpus=2, resources={"train_node": 1}))
    added = time.time()
    grown = _next_start(metrics, proc, 2)
    proc.wait(timeout=600)
    log = output.read_text()
    print(f"elastic: 2 -> 1 workers {shrunk - lost:.1f} s after the node loss, "
          f"1 -> 2 workers {grown - added:.1f} s after a node came back")

    assert proc.returncode == 0 and f"finished at step {STEPS}" in log, log[-3000:]
    starts = _starts(metrics)
    # Three worker groups: 2 workers from step 0, 1 after the loss, 2 again after the return.
    assert [starts[s] for s in sorted(starts)] == [{2}, {1}, {2}], starts
    # Every step's samples are the plan's, whatever the worker count that trained them.
    assert sample_log(samples) == planned_log(build_plan(recipe), STEPS)
