"""When training workers fail: where a run stands, and what to tell the user.

Ray Train restarts a failed worker group inside the same `fit()` up to
`train.max_failures` times; every new worker resumes from the latest
registered checkpoint (`ray.train.get_checkpoint()`). This module is the
driver's side of that: it reads which checkpoint a run would resume from,
refuses a resume that could never succeed before any worker starts (a
restart would only fail the same way again), and turns the end of a run
whose failures ran out into one message: the cause, the last checkpoint,
and the command that continues it.

Light imports only: the job entry points import it before torch.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass

SNAPSHOT = "checkpoint_manager_snapshot.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from, and why."""


class TrainingFailed(RuntimeError):
    """A run that ended because its workers failed more than train.max_failures times."""


@dataclass(frozen=True)
class Registered:
    step: int
    path: str  # local folder or URI of the checkpoint


def storage_path(output_dir: str) -> str:
    """Where Ray Train keeps a run's checkpoints: <output_dir>/ray."""
    return output_dir.rstrip("/") + "/ray" if "://" in output_dir else os.path.join(output_dir, "ray")


def latest_registered(output_dir: str, name: str) -> Registered | None:
    """The newest checkpoint Ray Train registered for run `name` (None before the first).

    A checkpoint folder exists on storage before it is registered (Ray records
    it only once every rank has reported); only registered ones are resumed
    from, so the snapshot Ray writes after each registration is the truth.
    """
    from smolray.data.shards import filesystem, join

    run = join(storage_path(output_dir), name)
    fs, base = filesystem(run)
    try:
        with fs.open_input_stream(join(base, SNAPSHOT)) as f:
            snap = json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None
    latest = snap.get("latest_checkpoint_result")
    if not latest:
        return None
    return Registered(step=int(latest["metrics"]["step"]), path=join(run, latest["checkpoint_dir_name"]))


def read_state(checkpoint: str) -> dict:
    """trainer_state.json of a checkpoint (local or URI), as a dict."""
    from smolray.data.shards import filesystem, join

    fs, base = filesystem(checkpoint)
    try:
        with fs.open_input_stream(join(base, "trainer_state.json")) as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError) as e:
        raise CheckpointError(f"{checkpoint}: no trainer_state.json ({e}); not a complete smolray "
                              "checkpoint") from None


def changed_stages(where: str, step: int, saved: list[str], want: list[str]) -> CheckpointError:
    changed = [a.split(":")[0] for a, b in zip(saved, want) if a != b]
    return CheckpointError(
        f"{where}: the recipe changed stages the checkpoint has already trained "
        f"({', '.join(changed) or 'the stage list'}): their sources, weights, seq_len, "
        "start, batch, seed or shards differ. Resuming would silently change what the "
        f"model has seen. Edit only stages that start after step {step}, or start a new run "
        "(a new recipe name) from this checkpoint.")


def changed_data(where: str, saved: list[str], want: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: the prepared data changed since this checkpoint (fingerprint {saved} now "
        f"{want}): the dataset, tokenizer, template or seq_len differ. Resuming would silently "
        "change what the model trains on; restore the data or start a new run (a new recipe name).")


def command_line() -> str:
    """The command that ran this job, to be run again (same folder, same arguments)."""
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "jobs/<job>.py"
    return shlex.join(["python", script, *sys.argv[1:]])


def failure_message(error: BaseException, max_failures: int, last: Registered | None) -> str:
    """One paragraph for a run whose worker failures exceeded train.max_failures."""
    causes = _causes(error)
    tries = "no restart allowed" if max_failures == 0 else f"after {max_failures} restart(s)"
    where = (f"the last registered checkpoint is {last.path} (step {last.step})" if last
             else "no checkpoint was registered yet, so it starts from step 0")
    return (f"training failed ({tries}, train.max_failures={max_failures}): {causes}. "
            f"Nothing registered is lost: {where}. Run the same command again to continue: "
            f"{command_line()} (on a cluster, submitted the same way: ray job submit "
            "--working-dir . -- <that command>). Raise train.max_failures (-1: no limit) to let "
            "Ray Train restart the workers by itself.")


def _causes(error: BaseException) -> str:
    failures = getattr(error, "worker_failures", None)
    if not failures:
        return _first_line(error)
    # When one rank dies, the others fail in their next collective (a closed
    # connection): name the dead ranks as the cause, the rest only as a count.
    dead = sorted(r for r, e in failures.items() if _died(e))
    if dead:
        others = len(failures) - len(dead)
        return (f"worker rank(s) {dead} died (the process was killed, ran out of memory, or its "
                "node was lost)" + (f"; {others} other rank(s) then lost their peer" if others else ""))
    parts = [f"rank {rank}: {_first_line(e)}" for rank, e in sorted(failures.items())]
    return "; ".join(parts[:2]) + (f"; and {len(parts) - 2} more" if len(parts) > 2 else "")


def _died(e: BaseException) -> bool:
    name = type(e).__name__
    return any(k in name for k in ("ActorDied", "ActorUnavailable", "NodeDied", "HealthCheckFailed"))


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The exception's own message: Ray wraps a worker's error in a traceback dump."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and cause is not e:
        e = cause
    name = type(e).__name__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # Ray's dumps end with the original "Type: message" line.
    text = lines[-1] if lines else ""
    text = text if text.startswith(name) or ": " in text[:60] else f"{name}: {text}"
    return text if len(text) <= limit else text[:limit] + "..."
