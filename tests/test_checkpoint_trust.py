"""Checkpoints load weights-only: a file that would run code when unpickled is refused, DeepSpeed's loads included."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

# One DeepSpeed process: a real ZeRO-2 bf16 checkpoint loads back under the
# weights-only rule (every object DeepSpeed writes is allowed), then the
# same checkpoint with one shard swapped for a pickle that runs a command
# is refused by the engine's loader and by the export, and the command never runs.
PLANT = """
import os, sys, torch
import torch.distributed as dist
os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
import ray.train
from smolray.recipe import OptimConfig
from smolray.recipe.schema import EngineConfig
from smolray.train.checkpoint import CheckpointError, TrainerState, load_engine, mark_rank_done
from smolray.train.engine import build_engine
from smolray.train.export import consolidated_state_dict
from smolray.train.schedule import WSD
sys.path.insert(0, "tests")
from test_levers import _model
out, marker = sys.argv[2], sys.argv[3]
train = EngineConfig(global_batch_size=2, micro_batch_size=2, precision="bf16", zero_stage=2)
def engine():
    return build_engine(_model(), OptimConfig(lr=1e-3), train, WSD(peak=1e-3, total=4, warmup=0, decay=0), 1)
eng = engine()
x = torch.randint(0, 512, (2, 16))
eng.backward(eng(input_ids=x, labels=x).loss)
eng.step()
eng.save_checkpoint(out, tag="ds")
TrainerState(step=1, sequences=2, world_size=1, source_names=["a"], source_tokens=[32], source_sequences=[2],
             source_epochs=[0.1], source_shares=[1.0], recipe_name="t", stage_fingerprints=[]).save(out)
mark_rank_done(out, 0)
fresh = engine()
load_engine(fresh, ray.train.Checkpoint(out), reshard=False, zero_stage=2)
same = all(torch.equal(a, b) for a, b in zip(fresh.module.state_dict().values(), eng.module.state_dict().values()))
full = consolidated_state_dict(out, 2)
print("roundtrip", same, len(full) == len(dict(eng.module.named_parameters())))

class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))
victim = os.path.join(out, "ds", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
torch.save({"optimizer_state_dict": Payload()}, victim)  # what an attacker writes: torch's own format
for what, load in [("engine", lambda: load_engine(engine(), ray.train.Checkpoint(out), reshard=False, zero_stage=2)),
                   ("universal", lambda: load_engine(engine(), ray.train.Checkpoint(out), reshard=True, zero_stage=2)),
                   ("export", lambda: consolidated_state_dict(out, 2))]:
    try:
        load()
        print("loaded", what)
    except CheckpointError as e:
        print("refused", what, str(e).replace(chr(10), " "))
print("ran", os.path.exists(marker), "force", os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD"))
"""


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    from smolray.cluster import _free_port

    marker = tmp_path / "pwned"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", PLANT, str(_free_port()), str(tmp_path / "ckpt"), str(marker)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split()[0] + ("" if line.startswith(("roundtrip", "ran")) else " " + line.split()[1]): line
             for line in out.stdout.splitlines() if line.split() and line.split()[0] in
             ("roundtrip", "refused", "loaded", "ran")}
    assert lines["roundtrip"].split()[1:] == ["True", "True"], out.stdout[-2000:]
    for what in ("engine", "universal", "export"):
        line = lines.get(f"refused {what}", out.stdout[-2000:])
        assert "refused to load" in line and "GLOBAL posix.system" in line and "run.trust_checkpoint=true" in line, line
    # The command in the pickle never ran, and the override did not outlive the loads.
    assert lines["ran"].split()[1:] == ["False", "force", "None"] and not marker.exists()
