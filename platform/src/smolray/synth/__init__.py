"""Synthetic data and LLM annotation on ray.data.llm (vLLM), written as a mixer source."""
