"""What a checkpoint holds besides DeepSpeed's shards, and how it is checked.

Layout of one Ray Train checkpoint directory (all ranks' files merged):
  ds/...                  DeepSpeed: model, optimizer and LR scheduler state
  trainer_state.json      step, data position, per-source token counts (rank 0)
  recipe.json             the recipe that wrote it (rank 0)
  rank-<r>.done           written by rank r after its shard is on disk
Ray registers a checkpoint only after every rank has reported it, and the
rank markers let a loader prove all shards arrived before trusting one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import ray.train
import torch

from smolray.redact import redact
from smolray.train.recovery import CheckpointError  # noqa: F401  (defined light, raised here)

TAG = "ds"
STATE = "trainer_state.json"
RECIPE = "recipe.json"


# Besides tensors and plain containers, these are the only objects a
# DeepSpeed 0.19 checkpoint holds (ZeRO 0-3, fp32 and bf16, plain and
# universal): plain data classes whose unpickling runs no code of the file's.
_DEEPSPEED_DATA = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                   "deepspeed.runtime.zero.config.ZeroStageEnum",
                   "deepspeed.utils.tensor_fragment.fragment_address")


@contextmanager
def weights_only_loads(source: str, trusted: bool = False):
    """Every torch.load inside, DeepSpeed's own included, refuses to run pickled code.

    A checkpoint can come from a shared bucket (`run.init_from`, a resume
    from `<output_dir>/ray`); a full unpickle would run whatever the file
    says on every worker. DeepSpeed passes weights_only=False to each of its
    loads, so torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides the argument
    here. `trusted` (run.trust_checkpoint) is the escape hatch for a
    checkpoint this user wrote with another DeepSpeed whose files hold other
    classes.
    """
    if trusted:
        yield
        return
    import importlib

    allowed = []
    for name in _DEEPSPEED_DATA:
        module, _, attr = name.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another DeepSpeed: torch names what it meets
            pass
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    except pickle.UnpicklingError as e:
        what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), str(e)[:200])
        raise CheckpointError(
            f"{redact(source)}: refused to load: the checkpoint holds an object that is not plain "
            f"data ({what}), and unpickling it could run code from the file. A checkpoint written "
            "by smolray never does; if this user wrote it with another DeepSpeed version and "
            "trusts every file in it, set run.trust_checkpoint=true") from None
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


@dataclass
class TrainerState:
    step: int  # optimizer steps completed: the data position (the plan does the rest)
    sequences: int  # sequences trained on so far, all sources
    world_size: int
    source_names: list[str]
    source_tokens: list[int]  # tokens consumed per source (inputs, seq_len per sequence)
    source_sequences: list[int]
    source_epochs: list[float]  # epochs of each source consumed so far
    source_shares: list[float]  # realized share of each source's tokens so far
    recipe_name: str
    # Identity of every stage begun so far: a resume must not change them.
    stage_fingerprints: list[str]
    extra: dict = field(default_factory=dict)

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, STATE), "w") as f:
            json.dump(asdict(self), f, indent=2)

    @staticmethod
    def load(directory: str) -> TrainerState:
        with open(os.path.join(directory, STATE)) as f:
            return TrainerState(**json.load(f))


def mark_rank_done(directory: str, rank: int) -> None:
    with open(os.path.join(directory, f"rank-{rank}.done"), "w") as f:
        f.write("ok\n")


def to_universal(directory: str, out_parent: str) -> str:
    """Convert the ZeRO shards to DeepSpeed's universal format; returns the load tag.

    Universal checkpoints hold each parameter's fp32 value and Adam moments
    whole, so any number of workers can load them: this is how a run resumes
    on a different worker count. Serial (no process pool): it runs inside a
    Ray worker.
    """
    import argparse

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    tag = TAG + "_universal"
    ds_to_universal(argparse.Namespace(
        input_folder=os.path.join(directory, TAG), output_folder=os.path.join(out_parent, tag),
        num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
        # Our engines do not record DeepSpeed's universal_checkpoint_info.
        inject_missing_state=True))
    return tag


def verify(directory: str) -> TrainerState:
    """The state of a complete checkpoint, or a CheckpointError naming what is missing."""
    if not os.path.isfile(os.path.join(directory, STATE)):
        raise CheckpointError(f"{directory}: no {STATE}; not a complete smolray checkpoint")
    state = TrainerState.load(directory)
    missing = [r for r in range(state.world_size)
               if not os.path.isfile(os.path.join(directory, f"rank-{r}.done"))]
    if missing or not os.path.isdir(os.path.join(directory, TAG)):
        raise CheckpointError(
            f"{directory}: shards of ranks {missing} are missing; the checkpoint is incomplete "
            "(an interrupted save). Delete it to resume from the one before")
    return state


def load_engine(engine, ckpt, reshard: bool, zero_stage: int, trusted: bool = False) -> None:
    with ckpt.as_directory() as d, weights_only_loads(ckpt.path, trusted):
        if not reshard:
            path, _ = engine.load_checkpoint(d, tag=TAG)
            if path is None:
                raise CheckpointError(f"{d}: DeepSpeed found no checkpoint under tag {TAG!r}")
            return
        # Each rank converts into its own temporary folder: no shared disk needed.
        with tempfile.TemporaryDirectory(prefix="smolray-universal-") as tmp:
            tag = to_universal(d, tmp)
            path, _ = engine.load_checkpoint(tmp, tag=tag)
            if path is None:
                raise CheckpointError(f"{d}: DeepSpeed could not load the universal copy")
            if zero_stage == 3:
                _fix_zero3_universal_groups(engine, os.path.join(tmp, tag))


def _fix_zero3_universal_groups(engine, universal_dir: str) -> None:
    """Work around two DeepSpeed 0.19.8 bugs in ZeRO-3 universal loading.

    It copies param group 0's hyperparameters onto every group (our norm
    group would get weight decay) and shares one Adam `step` tensor between
    groups (bias correction drifts by a step). Restore both from the file.
    """
    saved = torch.load(os.path.join(universal_dir, "zero", "optimizer_state.pt"), weights_only=True)
    for group, want in zip(engine.optimizer.optimizer.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in want.items() if k != "params"})
    for st in engine.optimizer.optimizer.state.values():
        if torch.is_tensor(st.get("step")):
            st["step"] = st["step"].clone()


def write_recipe(directory: str, recipe) -> None:
    """recipe.json, with any credentials in its URIs masked (checkpoints get shared)."""
    with open(os.path.join(directory, RECIPE), "w") as f:
        f.write(redact(recipe.model_dump_json(indent=2)))


def save_checkpoint(engine, state: TrainerState, rank: int, metrics: dict, recipe=None) -> None:
    """Every rank saves its shard and reports; Ray merges them into one checkpoint.

    Rank 0 also writes the recipe (any pydantic recipe), so the checkpoint
    describes its own model: post-training can start from it directly.
    """
    tmp = tempfile.mkdtemp(prefix="smolray-ckpt-")
    try:
        engine.save_checkpoint(tmp, tag=TAG)
        if rank == 0:
            state.save(tmp)
            if recipe is not None:
                write_recipe(tmp, recipe)
        mark_rank_done(tmp, rank)
        ray.train.report({**metrics, "step": state.step},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step-{state.step:08d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
