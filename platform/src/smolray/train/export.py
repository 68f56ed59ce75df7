"""A training checkpoint -> a Hugging Face model folder.

The folder (config.json, model.safetensors, tokenizer files with the chat
template, generation_config.json) loads with `from_pretrained` in
transformers and in vLLM as is.
"""

from __future__ import annotations

import os
import tempfile

import torch

from smolray.model import build_model, set_rope_theta
from smolray.recipe import Recipe
from smolray.tokenizer import load_tokenizer
from smolray.train.checkpoint import TAG, verify, weights_only_loads

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def consolidated_state_dict(checkpoint_dir: str, zero_stage: int,
                            trusted: bool = False) -> dict[str, torch.Tensor]:
    """Full fp32 weights from the DeepSpeed shards of every rank (loaded weights-only)."""
    verify(checkpoint_dir)
    with weights_only_loads(checkpoint_dir, trusted):
        if zero_stage == 0:
            path = os.path.join(checkpoint_dir, TAG, "mp_rank_00_model_states.pt")
            module = torch.load(path, map_location="cpu", weights_only=True)["module"]
            return {k: v.float() for k, v in module.items()}
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=TAG)


def export_hf(checkpoint_dir: str, recipe: Recipe, out_dir: str) -> str:
    """Write the export to out_dir, a local path or a URI (s3://...)."""
    if "://" in out_dir:
        with tempfile.TemporaryDirectory(prefix="smolray-export-") as local:
            _export_local(checkpoint_dir, recipe, local)
            publish(local, out_dir)
        return out_dir
    return _export_local(checkpoint_dir, recipe, out_dir)


def publish(local_dir: str, uri: str) -> None:
    """Copy a local folder to a URI on any filesystem smolray reads."""
    import pyarrow.fs as pafs

    from smolray.data.shards import filesystem

    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def load_trained(model, checkpoint_dir: str, zero_stage: int, dtype: str, trusted: bool = False):
    """The model with the checkpoint's consolidated weights, cast to the export dtype."""
    state = consolidated_state_dict(checkpoint_dir, zero_stage, trusted)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # With tied embeddings the output head is the input embedding, saved once.
    allowed = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"{checkpoint_dir}: weights do not match the model "
                           f"(missing {sorted(set(missing) - allowed)}, unexpected {unexpected})")
    model.tie_weights()
    model = model.to(DTYPES[dtype])
    model.config.dtype = dtype
    return model


def _export_local(checkpoint_dir: str, recipe: Recipe, out_dir: str) -> str:
    tok = load_tokenizer(recipe.tokenizer)
    model = build_model(recipe.model, recipe.seed, tok.bos_token_id, tok.eos_token_id)
    # The model leaves training with the last stage's RoPE base (context extension).
    set_rope_theta(model, recipe.stages[-1].rope_theta)
    model = load_trained(model, checkpoint_dir, recipe.train.zero_stage, recipe.export.dtype,
                         recipe.run.trust_checkpoint)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
