"""The serving config: which models, on which device, behind which key.

`serve run serving/<name>.yaml` passes the application's `args` to
`smolray.serve.app:build_app`, which validates them with `ServeConfig` and
turns each model into a `ray.serve.llm.LLMConfig` with the settings vLLM
needs on that device (CPU: float32, eager mode, an explicit KV-cache size;
GPU: bfloat16, CUDA graphs, vLLM's own memory budget).
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from smolray.recipe.schema import _Strict

# A hub model is named hf://org/name; anything else must be a folder on disk
# (a bare "org/name" that is not a folder is an error, not a download).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Replicas(_Strict):
    """Ray Serve autoscaling for one model (one vLLM engine per replica), and its queue."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    # Requests in flight per replica that Serve aims for before adding one.
    target_ongoing_requests: int = Field(default=16, gt=0)
    # Requests a replica's engine takes at once (Serve's default is 1e9: no limit).
    max_ongoing_requests: int = Field(default=64, gt=0)
    # Requests waiting, in each ingress replica, while every engine replica is
    # full; beyond that a request gets 429 with Retry-After at once.
    max_queued_requests: int = Field(default=64, gt=0)

    @model_validator(mode="after")
    def _order(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"replicas.min_replicas={self.min_replicas} is above "
                             f"max_replicas={self.max_replicas}; raise max_replicas")
        if self.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError(f"replicas.target_ongoing_requests={self.target_ongoing_requests} is "
                             f"above max_ongoing_requests={self.max_ongoing_requests}; the autoscaler "
                             "would wait for a load the replica never takes")
        return self


class Limits(_Strict):
    """What one authenticated request may ask for (each breach is a 4xx before any engine)."""

    max_n: int = Field(default=4, ge=1)  # `n` and `best_of`: sequences sampled per request
    allow_beam_search: bool = False
    max_body_bytes: int = Field(default=1 << 20, gt=0)  # 413 beyond; a 32k-token prompt is ~130 KB
    # The whole response, stream included: 408 before the first byte, an
    # error event that ends the stream after it.
    request_timeout_s: float = Field(default=300.0, gt=0)


class ModelSpec(_Strict):
    id: str = Field(pattern=r"^[\w.:/-]+$")  # the name clients pass as `model`
    # An exported smolray checkpoint (<run>/export), any Hugging Face model
    # folder on disk, or hf://org/name for the hub (where it is reachable).
    source: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: per device
    max_model_len: int | None = Field(default=None, gt=0)  # default: the model's own
    replicas: Replicas = Replicas()
    engine: dict[str, Any] = Field(default_factory=dict)  # extra vLLM engine arguments


class ServeConfig(_Strict):
    device: Literal["cpu", "gpu"]
    models: list[ModelSpec] = Field(min_length=1)
    # The bearer key is read where the app is built (the head), from this
    # file (mode 0600; the way for `serve deploy`) or else from this
    # environment variable (the way for `serve run` on one machine). Never
    # put the key in the config or its runtime_env: Ray logs and shows both.
    api_key_file: str | None = None
    api_key_env: str = Field(default="SMOLRAY_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    limits: Limits = Limits()
    kv_cache_mb: int = Field(default=256, gt=0)  # CPU only: vLLM's KV cache per engine
    cpus_per_replica: int = Field(default=1, gt=0)  # CPU only: cores the engine books
    # router: an ingress routes by `model` to any number of models (two Ray
    # hops per streamed token). direct: each engine replica serves the API
    # itself, one model, one hop, and no hop at all behind HAProxy
    # (docs/serving.md: the fast path, and what HAProxy trades away).
    ingress: Literal["router", "direct"] = "router"
    # router only: the ingress parses JSON and routes; a whole core for it
    # would keep a 2-core machine from fitting an engine beside it.
    ingress_cpus: float = Field(default=0.25, ge=0)
    # The node role (a custom resource, cluster.yaml's serve_node) every
    # engine books, so a replica never takes a GPU of a training node.
    # null: any node (one machine).
    node_role: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        ids = [m.id for m in models]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"models: the id {dup[0]!r} appears twice; every model needs its own id")
        return models

    @model_validator(mode="after")
    def _one_model_direct(self):
        if self.ingress == "direct" and len(self.models) > 1:
            raise ValueError(f"ingress=direct serves one model, and models lists {len(self.models)}; "
                             "set ingress: router to serve them behind one URL, or give each model "
                             "its own application")
        return self


def resolve_source(source: str, field: str) -> str:
    """An absolute folder on disk, or a hub id written hf://org/name; anything else names the field.

    The hub needs its scheme: a mistyped or not yet exported local path
    such as `outputs/export` would otherwise be fetched from the hub as
    whatever model someone published under that name.
    """
    if source.startswith("hf://"):
        repo = source[len("hf://"):]
        if not _HUB_ID.match(repo):
            raise ValueError(f"{field}={source!r}: a hub model is hf://<org>/<name>")
        return repo
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{field}={source!r} is a folder without config.json; point it at an "
                             "export (<run>/export) or another Hugging Face model folder")
        return path
    hint = f" (for the hub model, write hf://{source})" if _HUB_ID.match(source) else ""
    raise ValueError(f"{field}={source!r}: no such folder (resolved to {path}){hint}; train and "
                     "export a model first (make demo writes outputs/demo/run/export)")


def engine_bundles(device: str, cpus: int, node_role: str | None, devices: int = 1) -> dict[str, Any] | None:
    """The placement group an engine books: its cores on CPU, a GPU per device on GPU,
    each on a node of `node_role` if set. None: Ray's default (a GPU per device, anywhere)."""
    from smolray.cluster import role_resources

    role = role_resources(node_role)
    if device == "cpu":
        return {"bundles": [{"CPU": cpus, **role}]}
    return {"bundles": [{"GPU": 1, **role} for _ in range(devices)]} if role else None


def engine_kwargs(device: str, dtype: str, max_model_len: int | None, kv_cache_mb: int) -> dict[str, Any]:
    """vLLM engine arguments for a device: the endpoint, the synth job and the benchmarks use these."""
    cpu = device == "cpu"
    engine: dict[str, Any] = {"dtype": dtype if dtype != "auto" else ("float32" if cpu else "bfloat16")}
    if max_model_len:
        engine["max_model_len"] = max_model_len
    if cpu:
        # bf16 on CPU crashed workers (AMX before the kernel grants it); CUDA
        # graph capture does not exist on CPU and torch.compile costs 40 s;
        # without an explicit size vLLM books a share of host memory.
        engine.update(enforce_eager=True, kv_cache_memory_bytes=kv_cache_mb << 20)
    return engine


def llm_config(cfg: ServeConfig, m: ModelSpec, field: str):
    """The ray.serve.llm LLMConfig for one model."""
    from ray.serve.llm import LLMConfig

    cpu = cfg.device == "cpu"
    engine = {**engine_kwargs(cfg.device, m.dtype, m.max_model_len, cfg.kv_cache_mb), **m.engine}
    autoscaling = m.replicas.model_dump(include={"min_replicas", "max_replicas", "target_ongoing_requests"})
    autoscaling["initial_replicas"] = max(1, m.replicas.min_replicas)
    deployment: dict[str, Any] = {
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": m.replicas.max_ongoing_requests,
        "max_queued_requests": m.replicas.max_queued_requests,
        # 429 (too many requests, come back) rather than Serve's default 503.
        "backpressure_config": {"status_code": 429, "retry_after_s": 1},
    }
    kwargs: dict[str, Any] = {}
    devices = int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1))
    bundles = engine_bundles(cfg.device, cfg.cpus_per_replica, cfg.node_role, devices)
    if bundles:
        kwargs["placement_group_config"] = bundles
    if cpu:
        kwargs["accelerator_config"] = {"kind": "cpu"}
        # The replica actor only relays to its engine process, which runs on
        # the bundle's cores; booking a core for each would double the cost.
        deployment["ray_actor_options"] = {"num_cpus": 0}
    return LLMConfig(
        model_loading_config={"model_id": m.id, "model_source": resolve_source(m.source, f"{field}.source")},
        engine_kwargs=engine,
        deployment_config=deployment,
        runtime_env=engine_runtime_env(),
        **kwargs,
    )


# Env vars of every process that runs a vLLM engine (a Serve replica, a synth
# actor): normal CPU priority, where Ray starts workers at niceness 15.
ENGINE_ENV_VARS = {"RAY_worker_niceness": "0"}


def engine_runtime_env() -> dict[str, Any]:
    """The runtime env of a replica that runs a vLLM engine: the application's,
    with the replica at normal CPU priority.

    Ray starts worker processes at niceness 15, below its own control plane,
    and the replica's engine processes inherit that. On a node whose cores
    are all busy (a CPU node under load), every nice-0 process then comes
    first: the engine's steps and the streamed tokens wait on them. Ray's
    job supervisor sets the same variable to 0 for drivers.
    """
    import ray

    env = ray.get_runtime_context().runtime_env if ray.is_initialized() else {}
    env = dict(env or {})
    # ray.serve.llm replaces the replica's env_vars with ours (a top-level
    # merge), so the application's are carried over here.
    env["env_vars"] = {**(env.get("env_vars") or {}), **ENGINE_ENV_VARS}
    return env
