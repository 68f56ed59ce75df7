"""A post-training checkpoint -> a Hugging Face chat model folder.

The tokenizer is saved with the chat template the model was trained on, and
generation stops at the template's end-of-turn token as well as EOS, so
transformers' `apply_chat_template` + `generate` and vLLM's chat endpoint
speak exactly the format of training.
"""

from __future__ import annotations

import os
import tempfile

from smolray.posttrain.reference import load_causal_lm
from smolray.train.export import load_trained, publish

END_OF_TURN = "<|im_end|>"


def export_chat_model(checkpoint_dir: str, recipe, init_dir: str, tok, out_dir: str) -> str:
    if "://" in out_dir:
        with tempfile.TemporaryDirectory(prefix="smolray-export-") as local:
            export_chat_model(checkpoint_dir, recipe, init_dir, tok, local)
            publish(local, out_dir)
        return out_dir
    # The starting model gives the architecture and config; its weights are replaced.
    model = load_trained(load_causal_lm(init_dir, packed=False), checkpoint_dir, recipe.train.zero_stage,
                         recipe.export.dtype, recipe.run.trust_checkpoint)
    stop = [tok.eos_token_id]
    turn = tok.convert_tokens_to_ids(END_OF_TURN)
    if END_OF_TURN in tok.chat_template and isinstance(turn, int) and turn != tok.unk_token_id:
        stop.append(turn)
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = tok.pad_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
