"""Validation loss and bits per byte on held-out text.

Loss per token depends on the tokenizer; bits per byte does not (it divides
the summed negative log-likelihood by the UTF-8 bytes of the text), so it
compares models with different vocabularies. Documents are joined with EOS,
as in pretraining, and cut into non-overlapping windows of seq_len + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Windows:
    """Held-out text as token windows, and the UTF-8 bytes they cover."""

    ids: np.ndarray  # [n, seq_len + 1] int32
    bytes: float

    @property
    def tokens(self) -> int:  # tokens scored: every window position but the first
        return int(self.ids.shape[0] * (self.ids.shape[1] - 1))


def windows(tok, texts, seq_len: int, max_tokens: int | None = None) -> Windows:
    ids: list[int] = []
    n_bytes = 0
    for text in texts:
        doc = tok(text, add_special_tokens=False, verbose=False)["input_ids"] + [tok.eos_token_id]
        ids.extend(doc)
        n_bytes += len(text.encode()) + 1  # the EOS stands for the document break
        if max_tokens and len(ids) > max_tokens:
            break
    n = len(ids) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"held-out text of {len(ids)} tokens does not fill one window of "
                         f"{seq_len + 1}; give more text or a smaller seq_len")
    if max_tokens:
        n = max(1, min(n, max_tokens // seq_len))
    # Bytes in proportion to the tokens kept (the tail past the last window is not scored).
    return Windows(np.asarray(ids[:n * (seq_len + 1)], dtype=np.int32).reshape(n, seq_len + 1),
                   n_bytes * n * (seq_len + 1) / len(ids))


def window_nll(model, ids: np.ndarray, batch_size: int = 8, device="cpu") -> float:
    """Summed next-token negative log-likelihood over the windows."""
    nll = 0.0
    for b in range(0, len(ids), batch_size):
        x = torch.as_tensor(ids[b:b + batch_size], dtype=torch.long, device=device)
        with torch.no_grad():
            logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        nll += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
    return nll


def summarize(nll: float, w: Windows) -> dict:
    return {"loss": nll / w.tokens, "bpb": nll / (math.log(2) * w.bytes), "tokens": w.tokens}


def text_loss(model, tok, texts: list[str], seq_len: int, batch_size: int = 8,
              max_tokens: int | None = None) -> dict:
    w = windows(tok, texts, seq_len, max_tokens)
    return summarize(window_nll(model, w.ids, batch_size), w)


def mixture_loss(per_source: dict[str, dict], weights: dict[str, float]) -> dict:
    """Loss and bpb of a named target mixture: the weighted mean over its sources."""
    missing = [s for s in weights if s not in per_source]
    if missing:
        raise ValueError(f"target mixture names {missing} with no held-out text; give them with --heldout")
    total = sum(weights.values())
    return {k: sum(w / total * per_source[s][k] for s, w in weights.items()) for k in ("loss", "bpb")}
