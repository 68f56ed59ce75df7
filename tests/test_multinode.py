"""A real multi-node cluster (the `multinode` fixture): node roles, node loss, elastic resizing.

The run pins its training workers to `train_node` nodes (one worker per
node) and its stream's read tasks to `data_node` nodes, as on cluster.yaml's
cluster, with `train.num_workers=[1, 2]`. Mid-run a trainer node and a data
node that served the stream are killed like lost machines: Ray Train goes on
inside the same run with one worker on the surviving trainer node, the stream
moves to the other data node, and when a trainer node comes back the run
grows to two workers again. Every step's samples are exactly the plan's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from smolray.data.plan import build_plan
from smolray.train.metrics import read_rows
from smolray.train.trainer import log_dir

from conftest import ROOT, TINY, recipe_overrides, registered_step
from test_resume import planned_log
from test_train import sample_log

DRIVER = """
import sys, ray
ray.init(address=sys.argv[1])
from smolray.data.plan import build_plan
from smolray.recipe import load_recipe
from smolray.train.trainer import build_trainer, fit
recipe = load_recipe(sys.argv[2], sys.argv[4:])
print("finished at step", fit(build_trainer(recipe, build_plan(recipe), sample_log=sys.argv[3]), recipe).metrics["step"])
"""

STREAM_TASK = "MapBatches(_assemble)"  # the training stream's read-and-pack tasks
# Enough steps after the shrink for a resize check and a new worker group (about 25 s on 2 busy cores).
STEPS = 96


def _workers(dashboard: str) -> list[dict]:
    from ray.util.state import list_actors

    return [a.__dict__ for a in list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker")],
                                            limit=1000, raise_on_missing_output=False)]


def _stream_tasks(dashboard: str) -> list[dict]:
    from ray.util.state import list_tasks

    return [t.__dict__ for t in list_tasks(address=dashboard, filters=[("name", "=", STREAM_TASK)],
                                           limit=10000, raise_on_missing_output=False)]


def _groups(metrics: str) -> dict[int, set[int]]:
    """{the step a worker group began at: the worker counts its rows were logged with}."""
    out: dict[int, set[int]] = {}
    for r in read_rows(metrics) if os.path.exists(metrics) else []:
        out.setdefault(r["resumed_from"], set()).add(round(r["tokens_per_s"] / r["tokens_per_s_per_gpu"]))
    return out


def _next_group(metrics: str, proc, seen: int, timeout: float = 300) -> float:
    """Wait until a worker group beyond the first `seen` has logged a row; the wall time it did."""
    deadline = time.time() + timeout
    while len(_groups(metrics)) == seen and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    return time.time()


def test_training_survives_node_loss_shrinks_and_grows_back(multinode, corpus, tmp_path):
    from smolray.recipe import load_recipe

    cluster, dashboard = multinode["cluster"], multinode["dashboard"]
    train_ids = {n.node_id for n in multinode["train"]}
    data_ids = {n.node_id for n in multinode["data"]}
    out = tmp_path / "run"
    # One worker per trainer node (2 CPUs each): losing a node loses a worker.
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], out) + [
        f"train.total_tokens={4096 * STEPS}", "schedule.warmup_steps=2", "run.log_every_steps=1",
        "checkpoint.every_steps=2", "checkpoint.keep=2", "train.max_failures=4",
        "train.num_workers=[1, 2]", "train.cpus_per_worker=2", "train.resize_check_s=2",
        "train.node_role=train_node", "data.node_role=data_node"]
    recipe = load_recipe(TINY, sets)
    samples, metrics = tmp_path / "samples", os.path.join(log_dir(recipe), "metrics.jsonl")
    # Output to a file: a pipe nobody reads while the test waits would fill and stall the driver.
    output = tmp_path / "driver.log"
    with open(output, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address, str(TINY), str(samples), *sets],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while registered_step(out / "ray" / recipe.name) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and _groups(metrics) == {0: {2}}, output.read_text()[-3000:]

    # Placement so far: a worker on each trainer node, every stream task on a data node.
    alive = [a for a in _workers(dashboard) if a["state"] == "ALIVE"]
    assert len(alive) == 2 and {a["node_id"] for a in alive} == train_ids, alive
    before = _stream_tasks(dashboard)
    assert before and {t["node_id"] for t in before} <= data_ids, before

    # Kill, like lost machines, a trainer node and a data node that served the stream.
    lost = multinode["train"].pop(0)
    served = {t["node_id"] for t in before}
    data_node = next(n for n in multinode["data"] if n.node_id in served)
    multinode["data"].remove(data_node)
    cluster.remove_node(lost, allow_graceful=False)
    cluster.remove_node(data_node, allow_graceful=False)
    lost_at = time.time()
    shrunk_at = _next_group(metrics, proc, 1)
    survivor = multinode["train"][0].node_id
    assert {a["node_id"] for a in _workers(dashboard) if a["state"] == "ALIVE"} == {survivor}
    returned = cluster.add_node(num_cpus=2, resources={"train_node": 1})
    multinode["train"].append(returned)
    added_at = time.time()
    grown_at = _next_group(metrics, proc, 2)
    proc.wait(timeout=600)
    log = output.read_text()
    print(f"elastic: 2 -> 1 workers {shrunk_at - lost_at:.1f} s after the node loss, "
          f"1 -> 2 workers {grown_at - added_at:.1f} s after a node came back")

    # The same run finished by itself, and every step's samples are the plan's,
    # whatever the worker count that trained them.
    assert proc.returncode == 0 and f"finished at step {STEPS}" in log, log[-3000:]
    groups = _groups(metrics)
    assert [groups[s] for s in sorted(groups)] == [{2}, {1}, {2}], groups
    assert sample_log(samples) == planned_log(build_plan(recipe), STEPS)
    # The grown group used the returned node; the stream stayed on the surviving data node.
    assert {a["node_id"] for a in _workers(dashboard)} == train_ids | {returned.node_id}
    after = [t for t in _stream_tasks(dashboard) if t["task_id"] not in {b["task_id"] for b in before}]
    assert after and {t["node_id"] for t in after} == data_ids - {data_node.node_id}, after

    # Give the fixture its data node back for whoever uses it next.
    multinode["data"].append(cluster.add_node(num_cpus=2, resources={"data_node": 1}))
    cluster.wait_for_nodes()
