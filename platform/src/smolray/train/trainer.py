"""Driver side of pretraining: build the Ray Train TorchTrainer and fit it.

Ray Train keeps a snapshot of registered checkpoints under
<output_dir>/ray/<recipe name>; running the same command again finds it and
every worker resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from smolray.data.plan import DataPlan
from smolray.recipe import Recipe
from smolray.tokenizer import load_tokenizer
from smolray.train.loop import LoopConfig, train_loop
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
                  sample_log: str | None = None, max_failures: int = 0,
                  callbacks: list | None = None) -> TorchTrainer:
    tok = load_tokenizer(recipe.tokenizer)
    heldout = load_heldout(recipe, tok) if recipe.eval.every_steps else {}
    cfg = LoopConfig(recipe=recipe, plan=plan, log_dir=log_dir(recipe), bos_id=tok.bos_token_id,
                     eos_id=tok.eos_token_id, stop_at_step=stop_at_step, sample_log=sample_log,
                     heldout=heldout)
    return torch_trainer(train_loop, cfg, recipe, max_failures, callbacks)


def torch_trainer(loop, cfg, recipe, max_failures: int = 0, callbacks: list | None = None) -> TorchTrainer:
    """The TorchTrainer every objective runs on: `loop(cfg)` on each worker.

    `recipe` is any smolray recipe (pretraining or post-training): its name,
    train, checkpoint and run sections shape the run.
    """
    t = recipe.train
    env = {"DS_ACCELERATOR": "cuda" if t.use_gpu else "cpu",
           # Each worker gets its share of cores; more threads only contend.
           "OMP_NUM_THREADS": str(max(1, int(t.cpus_per_worker)))}
    return TorchTrainer(
        loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name=recipe.name,
            storage_path=os.path.join(output_dir(recipe), "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=recipe.checkpoint.keep),
            failure_config=FailureConfig(max_failures=max_failures),
            worker_runtime_env={"env_vars": env},
            callbacks=callbacks or [],
        ),
    )
