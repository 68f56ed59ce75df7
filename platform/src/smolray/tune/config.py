"""A mixture sweep, typed and checked before any trial launches.

A sweep trains one proxy run of a base recipe per mixture, at a fixed token
budget, and compares them on an evaluation metric. The file names the base
recipe, the budget, which sources are searched (the others are fixed at a
given share or left out), how mixtures are drawn, and how trials share the
cluster. Everything that can be wrong with it is reported here, in one
message per problem that names the field, the value and the fix.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from smolray.recipe.schema import _Strict


class SpaceConfig(_Strict):
    """How mixtures are drawn over the searched sources.

    list: the mixtures given (each a share per searched source).
    grid: the first searched source at each value, the others splitting the
      rest in proportion to `prior` (the 2-source ratio ablation: 100/0,
      80/20, 60/40, ...).
    dirichlet: `trials` random mixtures from a Dirichlet centred on `prior`
      with the given concentration (RegMix: many small runs around the
      sources' natural shares).
    """

    kind: Literal["list", "grid", "dirichlet"]
    mixtures: list[dict[str, float]] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)
    # "tokens": the searched sources' shares of tokens on disk; "uniform";
    # or explicit relative weights per searched source.
    prior: Literal["tokens", "uniform"] | dict[str, float] = "tokens"
    concentration: float = Field(default=1.0, gt=0)
    trials: int = Field(default=0, ge=0)
    seed: int = 0


class EvalSpec(_Strict):
    # Named target mixture over held-out sources: its loss is `target_loss`.
    target: dict[str, float] = Field(default_factory=dict)
    # Multiple-choice task files (or hf:<name>) scored after each trial.
    tasks: list[str] = Field(default_factory=list)
    every_steps: int = Field(default=0, ge=0)  # 0: only at the end


class SchedulerConfig(_Strict):
    kind: Literal["asha", "none"] = "asha"
    grace_period_steps: int = Field(default=1, gt=0)
    reduction_factor: float = Field(default=2.0, gt=1)


class RecommendConfig(_Strict):
    """The regression over finished trials and the mixture it recommends."""

    model: Literal["linear", "quadratic"] = "quadratic"
    candidates: int = Field(default=100_000, gt=0)  # mixtures sampled and predicted
    top_k: int = Field(default=100, gt=0)  # the recommendation is their mean
    confirm: bool = True  # train the recommended mixture as one more trial


class TransferConfig(_Strict):
    """Rank transfer: the top mixtures and the baselines trained again at a larger proxy.

    Every proxy sweep assumes that mixtures rank the same at the proxy's
    scale as at the target's. This checks it one step up: the `top_k`
    mixtures by mean and every baseline are retrained (with the sweep's
    replicates) either at `scale` times the proxy's width, depth and tokens,
    or on a named second `recipe` (with the same sources); the report gives
    the Spearman rank correlation between the two scales with its interval.
    """

    top_k: int = Field(default=3, ge=1)
    # Width (hidden, intermediate and heads, so head_dim stays), depth and
    # tokens, each times `scale`, rounded; or a recipe of its own.
    scale: float | None = Field(default=None, gt=1)
    recipe: str | None = None
    # Tokens per larger trial; default: the sweep's budget x scale (x 1 with a recipe).
    budget_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> TransferConfig:
        if (self.scale is None) == (self.recipe is None):
            raise ValueError("transfer: give either scale (e.g. 2: twice the width, depth and tokens) or "
                             "recipe (a larger base recipe with the same sources), not both or neither")
        return self


class ResourcesConfig(_Strict):
    # Per trial; fractional CPUs let several tiny trials share a small box.
    cpus_per_trial: float = Field(default=1.0, gt=0)
    max_concurrent: int = Field(default=0, ge=0)  # 0: as many as fit


class SweepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    recipe: str  # the base recipe, e.g. recipes/tiny.yaml
    set: list[str] = Field(default_factory=list)  # overrides applied to every trial
    budget_tokens: int = Field(gt=0)  # training tokens per trial
    search: list[str] = Field(min_length=1)  # sources whose shares are searched
    fixed: dict[str, float] = Field(default_factory=dict)  # source -> fixed share in [0, 1]
    space: SpaceConfig
    # Named mixtures over the searched sources trained beside the space's
    # (e.g. uniform: {prose: 1, code: 1, math: 1}), as reference points.
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Trainings per mixture, each under its own seed (the recipe's seed + r:
    # another initialisation and another data order). With 2 or more, results
    # report each mixture's mean and standard error, and the recommendation
    # says whether its lead is larger than the seed noise.
    replicates: int = Field(default=1, ge=1)
    metric: str = "target_loss"
    mode: Literal["min", "max"] = "min"
    eval: EvalSpec = EvalSpec()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    recommend: RecommendConfig = RecommendConfig()
    transfer: TransferConfig | None = None  # off by default: it trains (top_k + baselines) x replicates more
    output_dir: str = "outputs/sweeps"

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        dup = sorted(set(self.search) & set(self.fixed))
        if dup:
            raise ValueError(f"search and fixed both name {dup}; a source is either searched or fixed")
        for name, share in self.fixed.items():
            if not (math.isfinite(share) and 0 <= share <= 1):
                raise ValueError(f"fixed.{name}={share}: a fixed share must be in [0, 1]")
        if sum(self.fixed.values()) >= 1:
            raise ValueError(f"fixed shares sum to {sum(self.fixed.values())}: they must leave room "
                             "(< 1) for the searched sources")
        sp = self.space
        if sp.kind == "list":
            if not sp.mixtures:
                raise ValueError("space.mixtures is empty: list at least one mixture, e.g. "
                                 f"[{{{self.search[0]}: 1.0}}]")
            for i, m in enumerate(sp.mixtures):
                extra = sorted(set(m) - set(self.search))
                if extra:
                    raise ValueError(f"space.mixtures.{i} names {extra}, which are not in search "
                                     f"{self.search}; add them to search or remove them")
                if any(not math.isfinite(v) or v < 0 for v in m.values()) or sum(m.values()) <= 0:
                    raise ValueError(f"space.mixtures.{i}={m}: weights must be >= 0 with a positive sum")
        elif sp.kind == "grid":
            if not sp.values:
                raise ValueError(f"space.values is empty: give shares of {self.search[0]}, e.g. [0, 0.2, 0.4]")
            bad = [v for v in sp.values if not 0 <= v <= 1]
            if bad:
                raise ValueError(f"space.values {bad}: a grid value is a share of the searched "
                                 "sources and must be in [0, 1]")
            if len(self.search) == 1 and any(v != 1 for v in sp.values):
                raise ValueError("space.kind=grid with one searched source: its share can only be 1; "
                                 "search two or more sources")
        elif sp.trials < 1:
            raise ValueError(f"space.trials={sp.trials}: a dirichlet space needs trials >= 1")
        for name, m in self.baselines.items():
            extra = sorted(set(m) - set(self.search))
            if extra:
                raise ValueError(f"baselines.{name} names {extra}, which are not in search "
                                 f"{self.search}; a baseline weighs the searched sources")
            if any(not math.isfinite(v) or v < 0 for v in m.values()) or sum(m.values()) <= 0:
                raise ValueError(f"baselines.{name}={m}: give weights >= 0 with a positive sum over "
                                 f"the searched sources {self.search}")
        if isinstance(sp.prior, dict):
            missing = sorted(set(self.search) - set(sp.prior))
            if missing or any(v <= 0 for v in sp.prior.values()):
                raise ValueError(f"space.prior={sp.prior}: give a positive weight for every searched "
                                 f"source (missing {missing})")
        if self.transfer and self.transfer.top_k + len(self.baselines) < 2:
            raise ValueError(f"transfer.top_k={self.transfer.top_k} with no baselines retrains one mixture, "
                             "and a ranking needs two or more: raise top_k or add a baseline")
        if self.metric == "target_loss" and not self.eval.target:
            raise ValueError("metric=target_loss needs eval.target, a mixture over held-out sources "
                             "(e.g. {code: 0.7, prose: 0.3}); set it or choose another metric")
        if self.scheduler.kind == "asha" and not self.eval.every_steps:
            raise ValueError("scheduler.kind=asha stops trials on intermediate evaluations, but "
                             "eval.every_steps=0 scores only at the end; set eval.every_steps (e.g. "
                             f"{self.scheduler.grace_period_steps}) or scheduler.kind=none")
        return self
