"""Driver side of pretraining: build the Ray Train TorchTrainer and fit it.

Ray Train keeps a snapshot of registered checkpoints under
<output_dir>/ray/<recipe name>; running the same command again finds it and
every worker resumes from the latest complete checkpoint. Inside one run,
Ray Train restarts failed workers the same way, up to train.max_failures
times (smolray.train.recovery).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from ray.train import (CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig,
                       TrainingFailedError)
from ray.train.torch import TorchTrainer

from smolray.cluster import check_role, role_resources
from smolray.data.plan import DataPlan
from smolray.recipe import Recipe
from smolray.tokenizer import load_tokenizer
from smolray.train.loop_config import LoopConfig
from smolray.train.recovery import (TrainingFailed, changed_stages, failure_message, latest_registered,
                                    read_state, storage_path)
from smolray.train.validate import load_heldout


def output_dir(recipe) -> str:
    out = recipe.run.output_dir
    return out if "://" in out else os.path.abspath(out)


def log_dir(recipe) -> str:
    out = output_dir(recipe)
    if "://" not in out:
        return os.path.join(out, "logs")
    # TensorBoard writes local files; for a bucket, keep logs on local disk
    # (copied to <output_dir>/logs at the end), one folder per output URI so
    # a run never appends to the logs of another run with the same name.
    key = hashlib.sha256(out.encode()).hexdigest()[:12]
    return os.path.join(private_temp_dir(), f"{recipe.name}-{key}", "logs")


def private_temp_dir() -> str:
    """This user's smolray folder in the temp dir, made 0700 and checked to be ours.

    The temp dir is shared: another user could create the folder first, or a
    symlink by that name, and read or swap every log written there.
    """
    path = os.path.join(tempfile.gettempdir(), f"smolray-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if os.path.islink(path) or not os.path.isdir(path) or st.st_uid != os.getuid():
        raise PermissionError(
            f"{path} is not a folder of this user (a symlink or another owner): someone else may "
            "have created it first. Remove it, or point TMPDIR at a folder of your own")
    if st.st_mode & 0o077:  # ours, from an older smolray that left it open
        os.chmod(path, 0o700)
    return path


def build_trainer(recipe: Recipe, plan: DataPlan, stop_at_step: int | None = None,
                  sample_log: str | None = None, callbacks: list | None = None) -> TorchTrainer:
    check_resume(recipe, plan)
    tok = load_tokenizer(recipe.tokenizer)
    heldout = load_heldout(recipe, tok) if recipe.eval.every_steps else {}
    cfg = LoopConfig(recipe=recipe, plan=plan, log_dir=log_dir(recipe), bos_id=tok.bos_token_id,
                     eos_id=tok.eos_token_id, stop_at_step=stop_at_step, sample_log=sample_log,
                     heldout=heldout)
    return torch_trainer(_train_loop, cfg, recipe, callbacks)


def _train_loop(cfg: LoopConfig) -> None:
    # Imported on the worker, not the driver: the loop brings transformers'
    # model stack and DeepSpeed, seconds of start-up a driver never uses.
    from smolray.train.loop import train_loop

    train_loop(cfg)


def check_resume(recipe: Recipe, plan: DataPlan) -> None:
    """Refuse, before any worker starts, a resume whose stages changed.

    The workers check again when they load; but there the error would be
    retried train.max_failures times, each a full restart that fails alike.
    """
    last = latest_registered(output_dir(recipe), recipe.name)
    source = last.path if last else recipe.run.init_from
    if not source:
        return
    state = read_state(source)
    want = plan.fingerprints(state["step"])
    if state["stage_fingerprints"] != want:
        raise changed_stages(source, state["step"], state["stage_fingerprints"], want)


def fit(trainer: TorchTrainer, recipe) -> Result:
    """trainer.fit(), ending in one TrainingFailed message once worker failures run out."""
    try:
        return trainer.fit()
    except TrainingFailedError as e:
        last = latest_registered(output_dir(recipe), recipe.name)
        raise TrainingFailed(failure_message(e, recipe.train.max_failures, last)) from None


def torch_trainer(loop, cfg, recipe, callbacks: list | None = None) -> TorchTrainer:
    """The TorchTrainer every objective runs on: `loop(cfg)` on each worker.

    `recipe` is any smolray recipe (pretraining or post-training): its name,
    train, checkpoint and run sections shape the run.
    """
    t = recipe.train
    check_role(t.node_role, "train.node_role")
    # Read by TorchTrainer.fit, which hands it to the controller it starts.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(t.poll_s)
    env = {"DS_ACCELERATOR": "cuda" if t.use_gpu else "cpu",
           # Each worker gets its share of cores; more threads only contend.
           "OMP_NUM_THREADS": str(max(1, int(t.cpus_per_worker)))}
    return TorchTrainer(
        loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=(t.min_workers, t.num_workers) if t.min_workers else t.num_workers,
                                     elastic_resize_monitor_interval_s=t.resize_check_s, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker,
                                                           **role_resources(t.node_role)}),
        run_config=RunConfig(
            name=recipe.name,
            storage_path=storage_path(output_dir(recipe)),
            checkpoint_config=CheckpointConfig(num_to_keep=recipe.checkpoint.keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
            worker_runtime_env={"env_vars": env},
            callbacks=callbacks or [],
        ),
    )
