"""Serving: an OpenAI-compatible Ray Serve app on vLLM (smolray.serve.app:build_app)."""
