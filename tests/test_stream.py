"""The Ray Data stream: what each rank gets, in order, whatever the world size."""

import numpy as np

from smolray.data.plan import build_plan
from smolray.data.stream import build_dataset, document_positions, rank_slice


def collect(plan, part) -> np.ndarray:
    rows = build_dataset(plan, part, rows_per_task=5).take_all()
    return np.array([r["index"] for r in rows])


def test_each_step_holds_the_same_sequences_for_any_worker_count(ray_cluster, make_recipe):
    plan = build_plan(make_recipe())
    B, steps = 16, 3
    one = collect(plan, rank_slice(plan, 0, 1, 2, 2 + steps))
    assert np.array_equal(one, np.arange(2 * B, (2 + steps) * B))  # in order, resuming at step 2
    two = [collect(plan, rank_slice(plan, r, 2, 2, 2 + steps)) for r in (0, 1)]
    for t in range(steps):
        step_rows = np.concatenate([two[r][t * 8:(t + 1) * 8] for r in (0, 1)])
        assert np.array_equal(np.sort(step_rows), one[t * B:(t + 1) * B])


def test_rows_carry_inputs_labels_and_identity(ray_cluster, make_recipe):
    recipe = make_recipe()
    plan = build_plan(recipe)
    row = build_dataset(plan, rank_slice(plan, 0, 1, 0, 1)).take(1)[0]
    expect = plan.read(0, 0, 1)
    assert np.array_equal(row["input_ids"], expect["tokens"][0, :-1])
    assert np.array_equal(row["labels"], expect["tokens"][0, 1:])
    assert len(row["input_ids"]) == recipe.data.seq_len
    assert {"source", "doc", "offset", "epoch", "index", "stage"} <= set(row)


def test_position_ids_restart_after_each_eos():
    ids = np.array([[5, 6, 0, 7, 8, 9, 0, 4]])
    assert document_positions(ids, eos=0).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
