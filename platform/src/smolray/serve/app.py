"""The OpenAI-compatible app: ray.serve.llm's ingress and vLLM servers, behind a bearer key.

`build_app` is the import path a Serve config names
(`import_path: smolray.serve.app:build_app`). It does what
`ray.serve.llm.build_openai_app` does (one LLMServer deployment per model,
one OpenAI ingress routing `/v1/*` by the request's `model`) with one
addition: the ingress's FastAPI app checks `Authorization: Bearer <key>`
before any route runs, so a request without the key gets 401 and never
reaches an engine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from smolray.recipe import RecipeError
from smolray.recipe.load import recipe_from_dict
from smolray.serve.config import ServeConfig, llm_config


def build_app(args: dict[str, Any]):
    """Serve application builder: `args` is the application's `args` mapping."""
    cfg = recipe_from_dict(dict(args), source="serve app args", cls=ServeConfig)
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise RecipeError(
            f"api_key_env={cfg.api_key_env}: that environment variable is empty where the app is "
            f"built; export {cfg.api_key_env}=<key> before `serve run`, or set it under the "
            "application's runtime_env.env_vars for `serve deploy`")
    try:
        configs = [llm_config(cfg, m, f"models[{i}]") for i, m in enumerate(cfg.models)]
    except ValueError as e:
        raise RecipeError(f"serve app args: {e}") from None
    return openai_app(configs, hashlib.sha256(key.encode()).hexdigest(), cfg.ingress_cpus)


def openai_app(configs: list, key_sha256: str, ingress_cpus: float):
    from ray import serve
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
    # Private in Ray 2.60: the model card the ingress lists under /v1/models,
    # and the FastAPI app with Ray's OpenAI error handling, which the auth
    # middleware is added to.
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init

    app = init()
    app.middleware("http")(_bearer_check(key_sha256))
    ingress = make_fastapi_ingress(OpenAiIngress, app=app)
    options = OpenAiIngress.get_deployment_options(configs)
    options["ray_actor_options"] = {"num_cpus": ingress_cpus}
    return serve.deployment(ingress, **options).bind(
        llm_deployments={c.model_id: build_llm_deployment(c) for c in configs},
        model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in configs},
    )


def _bearer_check(key_sha256: str):
    """Middleware refusing any request whose bearer token does not hash to key_sha256.

    Only the digest travels with the deployment; comparing digests in
    constant time keeps the check from leaking the key through timing.
    """
    from fastapi.responses import JSONResponse

    want = bytes.fromhex(key_sha256)

    async def check(request, call_next):
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        got = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(got, want):
            missing = not token
            return JSONResponse(
                status_code=401, headers={"WWW-Authenticate": "Bearer"},
                content={"error": {
                    "message": ("Missing API key: send 'Authorization: Bearer <key>'" if missing
                                else "Incorrect API key"),
                    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
        return await call_next(request)

    return check
