"""Annealing ablations: judge a candidate source by decaying on it.

SmolLM2 judged math and code datasets this way: take a checkpoint from the
stable phase of a run, decay the learning rate to its minimum over a short
stretch on the base mixture with the candidate at a given share, and
compare the annealed models on the evaluation suite. A candidate's effect
shows at a fraction of the cost of training with it from scratch.

Each candidate is an ordinary pretraining recipe: the base run's stages up
to the checkpoint (unchanged, so the checkpoint resumes), then one `anneal`
stage, with WSD's decay covering exactly that stage and `run.init_from`
pointing at the checkpoint. Rerun any of them alone with jobs/pretrain.py.
"""

from __future__ import annotations

import os

from pydantic import Field, model_validator

from smolray.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from smolray.recipe.schema import _Strict
from smolray.tune.config import ResourcesConfig
from smolray.tune.space import absolute


class Candidate(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    # The source added during the decay, at this share of every step; the
    # base mixture fills the rest. No source: the control, the base mixture alone.
    source: str | None = None
    share: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _share(self) -> Candidate:
        if self.source and self.share <= 0:
            raise ValueError(f"candidates.{self.name}.share={self.share}: give the candidate source "
                             f"{self.source!r} a share in (0, 1), e.g. 0.3")
        return self


class AnnealEval(_Strict):
    target: dict[str, float] = Field(default_factory=dict)  # target_loss, as in sweeps
    tasks: list[str] = Field(default_factory=list)  # multiple-choice task files, after the decay
    limit: int | None = Field(default=None, gt=0)  # examples per task


class AnnealConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    recipe: str  # the base run's recipe
    set: list[str] = Field(default_factory=list)
    checkpoint: str  # a step-* directory of the base run, from its stable phase
    decay_steps: int = Field(gt=0)
    candidates: list[Candidate] = Field(min_length=1)
    eval: AnnealEval = AnnealEval()
    resources: ResourcesConfig = ResourcesConfig()
    output_dir: str = "outputs/anneals"

    @model_validator(mode="after")
    def _unique(self) -> AnnealConfig:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidates: names must be unique, got {names}")
        return self


def anneal_dir(cfg: AnnealConfig) -> str:
    return os.path.abspath(os.path.join(cfg.output_dir, cfg.name))


def checkpoint_step(path: str) -> int:
    from smolray.train.checkpoint import CheckpointError, verify

    if "://" in path:
        raise RecipeError(f"checkpoint={path}: give a local step-* directory (download it first)")
    try:
        return verify(path).step
    except CheckpointError as e:
        raise RecipeError(f"checkpoint={path}: {e}") from None


def candidate_recipes(cfg: AnnealConfig, step: int) -> dict[str, Recipe]:
    """Each candidate's recipe; every problem is raised before any cluster work."""
    base = load_recipe(cfg.recipe, cfg.set)
    decay_start = base.total_steps - base.decay_steps
    if step < base.schedule.warmup_steps or step > decay_start:
        raise RecipeError(f"checkpoint={cfg.checkpoint} is at step {step}, outside the base run's "
                          f"stable phase (steps {base.schedule.warmup_steps} to {decay_start}); "
                          "anneal from a checkpoint taken after warmup and before the decay")
    known = {s.name for s in base.data.sources}
    stages = [st for st in base.stages if st.start_step < step]
    mixture = stages[-1].shares  # the mixture the checkpoint was training on
    out = {}
    for c in cfg.candidates:
        if c.source and c.source not in known:
            raise RecipeError(f"candidates.{c.name}.source={c.source!r}: the recipe {cfg.recipe} has no such "
                              f"source; its sources are {sorted(known)}")
        weights = {s: w * (1 - c.share) for s, w in mixture.items()}
        if c.source:
            weights[c.source] = weights.get(c.source, 0.0) + c.share
        raw = base.model_dump(mode="json")
        configs = base.data.stage_list
        raw["data"]["weights"] = None
        # Stages already trained keep their exact config (the checkpoint checks them).
        raw["data"]["stages"] = [configs[st.index].model_dump(mode="json") for st in stages] + [
            {"name": "anneal", "start": step * base.tokens_per_step, "weights": weights}]
        total = step + cfg.decay_steps
        raw["train"]["total_tokens"] = total * base.tokens_per_step
        raw["schedule"]["decay_fraction"] = cfg.decay_steps / total
        raw["name"] = f"{cfg.name}-{c.name}"
        raw["run"]["output_dir"] = os.path.join(anneal_dir(cfg), "trials", c.name)
        raw["run"]["init_from"] = os.path.abspath(cfg.checkpoint)
        raw["eval"]["target"] = cfg.eval.target
        # Scored once, at the end of the decay, on every held-out source.
        raw["eval"]["every_steps"] = cfg.decay_steps if base.heldout_sources else 0
        cpus = cfg.resources.cpus_per_trial / base.train.num_workers
        raw["train"]["cpus_per_worker"] = cpus
        out[c.name] = absolute(recipe_from_dict(raw, source=f"candidates.{c.name}"))
    return out
