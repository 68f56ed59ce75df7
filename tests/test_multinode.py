"""A real multi-node cluster (the `multinode` fixture): node roles and node loss.

The run pins its training workers to `train_node` nodes and its stream's
read tasks to `data_node` nodes, as on cluster.yaml's cluster. Mid-run the
node holding the workers and a data node that served the stream are killed
like lost machines; Ray Train restarts the workers on the other trainer node
inside the same run, and the samples trained are exactly the plan's.
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
from test_resume import first_resumed_row, planned_log
from test_train import SHORT, sample_log

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


def _workers(dashboard: str) -> list[dict]:
    from ray.util.state import list_actors

    return [a.__dict__ for a in list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker")],
                                            limit=1000, raise_on_missing_output=False)]


def _stream_tasks(dashboard: str) -> list[dict]:
    from ray.util.state import list_tasks

    return [t.__dict__ for t in list_tasks(address=dashboard, filters=[("name", "=", STREAM_TASK)],
                                           limit=10000, raise_on_missing_output=False)]


def test_training_survives_losing_its_trainer_node_and_a_data_node(multinode, corpus, tmp_path):
    from smolray.recipe import load_recipe

    cluster, dashboard = multinode["cluster"], multinode["dashboard"]
    train_ids = {n.node_id for n in multinode["train"]}
    data_ids = {n.node_id for n in multinode["data"]}
    out = tmp_path / "run"
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], out) + [
        *SHORT, "checkpoint.every_steps=3", "train.max_failures=2",
        "train.node_role=train_node", "data.node_role=data_node"]
    recipe = load_recipe(TINY, sets)
    samples = tmp_path / "samples"
    # Output to a file: a pipe nobody reads while the test waits would fill and stall the driver.
    output = tmp_path / "driver.log"
    with open(output, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address, str(TINY), str(samples), *sets],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    run_dir = out / "ray" / recipe.name
    deadline = time.time() + 300
    while registered_step(run_dir) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, output.read_text()[-3000:]

    # Placement so far: workers on trainer nodes, every stream task on a data node.
    alive = [a for a in _workers(dashboard) if a["state"] == "ALIVE"]
    assert len(alive) == 2 and {a["node_id"] for a in alive} <= train_ids, alive
    before = _stream_tasks(dashboard)
    assert before and {t["node_id"] for t in before} <= data_ids, before
    # Kill, like lost machines, the node holding the workers and a data node that served them.
    (train_node,) = [n for n in multinode["train"] if n.node_id in {a["node_id"] for a in alive}]
    served = {t["node_id"] for t in before}
    data_node = next(n for n in multinode["data"] if n.node_id in served)
    cluster.remove_node(train_node, allow_graceful=False)
    cluster.remove_node(data_node, allow_graceful=False)
    lost_at = time.time()
    recovered_at = first_resumed_row(os.path.join(log_dir(recipe), "metrics.jsonl"))
    proc.wait(timeout=300)
    log = output.read_text()
    print(f"node loss to the restarted group's first row: {recovered_at - lost_at:.1f} s")

    # The same run finished by itself and trained exactly the plan.
    assert proc.returncode == 0 and "finished at step 12" in log, log[-3000:]
    assert sample_log(samples) == planned_log(build_plan(recipe), 12)
    began = sorted({r["resumed_from"] for r in read_rows(os.path.join(log_dir(recipe), "metrics.jsonl"))})
    assert began[0] == 0 and len(began) == 2 and began[1] >= 3, began
    # After the loss: the workers restarted on the other trainer node, the stream on the other data node.
    workers = _workers(dashboard)
    assert {a["node_id"] for a in workers} == {train_node.node_id} | (train_ids - {train_node.node_id})
    after = [t for t in _stream_tasks(dashboard) if t["task_id"] not in {b["task_id"] for b in before}]
    assert after and {t["node_id"] for t in after} == data_ids - {data_node.node_id}, after

    # Give the fixture its nodes back for whoever uses it next.
    multinode["train"].remove(train_node)
    multinode["data"].remove(data_node)
    multinode["train"].append(cluster.add_node(num_cpus=2, resources={"train_node": 1}))
    multinode["data"].append(cluster.add_node(num_cpus=2, resources={"data_node": 1}))
    cluster.wait_for_nodes()
