"""Kill a training run at a random point; the rerun trains exactly the plan.

The expected log needs no second training run: which sequence a step trains
on is a pure function of the plan, so it is computed from DataPlan directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from smolray.data.plan import build_plan
from smolray.train.metrics import read_metrics, read_rows
from smolray.train.trainer import build_trainer, log_dir

from conftest import ROOT, TINY, recipe_overrides, registered_step
from test_train import SHORT, sample_log

DRIVER = """
import sys, ray
ray.init(address=sys.argv[1])
from smolray.data.plan import build_plan
from smolray.recipe import load_recipe
from smolray.train.trainer import build_trainer
recipe = load_recipe(sys.argv[2], sys.argv[4:])
build_trainer(recipe, build_plan(recipe), sample_log=sys.argv[3]).fit()
"""


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


def test_killed_run_resumes_with_exactly_the_planned_samples(ray_cluster, corpus, tmp_path):
    from smolray.recipe import load_recipe

    out = tmp_path / "run"
    sets = recipe_overrides(corpus["tokenizer"], corpus["root"], out) + [*SHORT, "checkpoint.every_steps=3"]
    recipe = load_recipe(TINY, sets)
    samples = tmp_path / "samples"
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(TINY), str(samples), *sets],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = out / "ray" / recipe.name
    deadline = time.time() + 240
    while registered_step(run_dir) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # the driver dies; Ray tears down its workers
    proc.wait()
    registered = registered_step(run_dir)
    killed_at = max(r["step"] for r in read_metrics(os.path.join(log_dir(recipe), "metrics.jsonl")))
    assert 3 <= registered and killed_at < 12, "the kill must land mid-run"

    result = build_trainer(recipe, build_plan(recipe), sample_log=str(samples)).fit()
    assert result.metrics["step"] == 12
    assert sample_log(samples) == planned_log(build_plan(recipe), 12)
    # The rerun began at a checkpoint the killed run registered (every 3 steps,
    # at or before the kill), not at step 0, and logged each later step once.
    raw = read_rows(os.path.join(log_dir(recipe), "metrics.jsonl"))
    rerun = [r for r in raw if r["resumed_from"] > 0]
    began = {r["resumed_from"] for r in rerun}
    assert len(began) == 1, began
    start = began.pop()
    # At least the checkpoint registered before the kill (a later one may have
    # been registered while the workers were torn down).
    assert start % 3 == 0 and registered <= start <= killed_at
    logs = [s for s in range(1, 13) if s % 2 == 0 or s % 3 == 0]  # log and checkpoint steps
    assert [r["step"] for r in rerun] == [s for s in logs if s > start]

