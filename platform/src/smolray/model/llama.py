"""The Llama architecture, as transformers defines it.

Using `LlamaForCausalLM` itself (not a re-implementation) means every
checkpoint smolray writes is a standard Hugging Face checkpoint that
transformers and vLLM load as is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import LlamaConfig, LlamaForCausalLM

if TYPE_CHECKING:  # the recipe (pydantic) is not needed to build or time a model
    from smolray.recipe import ModelConfig


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def build_model(cfg: ModelConfig, seed: int, bos_id: int | None = None,
                eos_id: int | None = None) -> LlamaForCausalLM:
    """A freshly initialized model: N(0, init_std) weights, the same on every rank."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(cfg, bos_id, eos_id))
    # SDPA runs on CPU and GPU alike and needs no extra package.
    model.config._attn_implementation = "sdpa"
    return model


def count_parameters(cfg: ModelConfig) -> int:
    """Exact count of unique parameters, from the real module built on the meta device."""
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_config(cfg))
    return sum(p.numel() for p in model.parameters())


def set_rope_theta(model: LlamaForCausalLM, theta: float) -> None:
    """Switch RoPE's base (context extension) in place, e.g. at a stage boundary.

    inv_freq is a non-persistent buffer: it is not in checkpoints, so a run
    that resumes inside a stage sets it again from the recipe.
    """
    cfg = model.config
    if cfg.rope_parameters.get("rope_theta") == theta:
        return
    cfg.rope_parameters = {**cfg.rope_parameters, "rope_theta": theta}
    rotary = model.model.rotary_emb
    fresh = type(rotary)(cfg)
    with torch.no_grad():
        rotary.inv_freq.copy_(fresh.inv_freq)
        rotary.original_inv_freq.copy_(fresh.original_inv_freq)
