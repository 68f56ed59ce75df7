"""The OpenAI-compatible app: vLLM servers on Ray Serve, behind a key and limits.

`build_app` is the import path a Serve config names
(`import_path: smolray.serve.app:build_app`). Two layouts (`ingress`):
  router  (default) what `ray.serve.llm.build_openai_app` does (one
          LLMServer deployment per model, one OpenAI ingress routing `/v1/*`
          by the request's `model`) with the guard on the ingress: several
          models behind one URL, two Ray hops per streamed token.
  direct  each vLLM replica serves the API itself, behind
          `serve.guard.Guard` (serve/server.py): one model, one hop, none
          behind HAProxy.
Either way a request without the key, or over a limit, gets a 4xx and never
reaches an engine.
"""

from __future__ import annotations

from typing import Any

from smolray.recipe import RecipeError
from smolray.recipe.load import recipe_from_dict
from smolray.serve.config import Limits, ServeConfig, llm_config
from smolray.serve.guard import Digest, Guard, load_key


def build_app(args: dict[str, Any]):
    """Serve application builder: `args` is the application's `args` mapping."""
    cfg = recipe_from_dict(dict(args), source="serve app args", cls=ServeConfig)
    key = load_key(cfg.api_key_env, cfg.api_key_file)
    try:
        configs = [llm_config(cfg, m, f"models[{i}]") for i, m in enumerate(cfg.models)]
    except ValueError as e:
        raise RecipeError(f"serve app args: {e}") from None
    if cfg.ingress == "direct":
        from smolray.serve.server import direct_app

        return direct_app(configs[0], Digest(key), cfg.limits)
    return openai_app(configs, Digest(key), cfg.limits, cfg.ingress_cpus)


def openai_app(configs: list, digest: Digest, limits: Limits, ingress_cpus: float):
    from ray import serve
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
    # Private in Ray 2.60: the model card the ingress lists under /v1/models,
    # and the FastAPI app with Ray's OpenAI error handling, which the guard
    # is added to (last added, so it runs first).
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init

    app = init()
    app.add_middleware(Guard, digest=digest, limits=limits)
    ingress = make_fastapi_ingress(OpenAiIngress, app=app)
    options = OpenAiIngress.get_deployment_options(configs)
    options["ray_actor_options"] = {"num_cpus": ingress_cpus}
    return serve.deployment(ingress, **options).bind(
        llm_deployments={c.model_id: build_llm_deployment(c) for c in configs},
        model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in configs},
    )
