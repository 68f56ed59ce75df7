"""Validation loss and bits per byte on held-out text.

Loss per token depends on the tokenizer; bits per byte does not (it divides
the summed negative log-likelihood by the UTF-8 bytes of the text), so it
compares models with different vocabularies. Documents are joined with EOS,
as in pretraining, and cut into non-overlapping windows of seq_len + 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def text_loss(model, tok, texts: list[str], seq_len: int, batch_size: int = 8,
              max_tokens: int | None = None) -> dict:
    ids: list[int] = []
    n_bytes = 0
    for text in texts:
        doc = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids.extend(doc)
        n_bytes += len(text.encode()) + 1  # the EOS stands for the document break
        if max_tokens and len(ids) > max_tokens:
            break
    windows = len(ids) // (seq_len + 1)
    if windows == 0:
        raise ValueError(f"held-out text of {len(ids)} tokens does not fill one window of "
                         f"{seq_len + 1}; give more text or a smaller seq_len")
    chunks = torch.tensor(np.asarray(ids[:windows * (seq_len + 1)]).reshape(windows, seq_len + 1))
    nll = 0.0
    for b in range(0, windows, batch_size):
        x = chunks[b:b + batch_size]
        with torch.no_grad():
            logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        nll += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
    tokens = windows * seq_len
    # Bytes in proportion to the tokens scored (the tail past the last window is not).
    scored_bytes = n_bytes * (windows * (seq_len + 1)) / len(ids)
    return {"loss": nll / tokens, "bpb": nll / (math.log(2) * scored_bytes), "tokens": tokens}


def mixture_loss(per_source: dict[str, dict], weights: dict[str, float]) -> dict:
    """Loss and bpb of a named target mixture: the weighted mean over its sources."""
    missing = [s for s in weights if s not in per_source]
    if missing:
        raise ValueError(f"target mixture names {missing} with no held-out text; give them with --heldout")
    total = sum(weights.values())
    return {k: sum(w / total * per_source[s][k] for s, w in weights.items()) for k in ("loss", "bpb")}
