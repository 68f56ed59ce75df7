"""The direct ingress: each vLLM replica serves the OpenAI API itself, behind the guard.

In `ingress: router` mode (ray.serve.llm's own layout) a streamed token
crosses three processes: the engine's replica, an ingress replica that
routes by `model`, and Serve's HTTP proxy, each hop a Ray message. Here the
replica is the ingress: Serve's proxy hands the request to a replica whose
ASGI app is vLLM's own OpenAI server (the same code as
`vllm.entrypoints.openai.api_server`) with `Guard` outermost, so a token
crosses one hop, and the key and limits hold as before. One model per
application: several models behind one URL need `ingress: router`.
"""

from __future__ import annotations

from ray.serve.llm.deployment import LLMServer

from smolray.serve.guard import Digest, Guard


class GuardedLLMServer(LLMServer):
    """An LLMServer whose HTTP app refuses, before vLLM sees it, what Guard refuses."""

    async def __init__(self, llm_config, *, digest: Digest, limits, **kwargs):
        self._digest, self._limits = digest, limits
        await super().__init__(llm_config, **kwargs)

    async def __serve_build_asgi_app__(self):
        app = await super().__serve_build_asgi_app__()
        # vLLM builds its middleware stack eagerly: drop it so the guard,
        # added last, is rebuilt in as the outermost layer.
        app.middleware_stack = None
        app.add_middleware(Guard, digest=self._digest, limits=self._limits)
        return app


def direct_app(config, digest: Digest, limits):
    """The Serve application: one GuardedLLMServer deployment that is its own ingress."""
    from ray import serve
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(config, deployment_cls=serve.ingress()(GuardedLLMServer),
                                bind_kwargs={"digest": digest, "limits": limits})
