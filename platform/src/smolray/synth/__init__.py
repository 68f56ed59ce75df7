"""Synthetic data and LLM annotation with vLLM on Ray Data, written as a mixer source."""
