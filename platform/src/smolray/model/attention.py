"""Attention for packed documents, without a [L, L] mask.

With position ids that restart at each document (data.reset_position_ids,
packed SFT), transformers' SDPA path builds a block-diagonal 4D mask. That
rules out the flash kernels, repeats K/V for grouped-query attention, and
detects the packing by reading the position ids on the host every forward.

Here the documents are described once per micro batch on the host, as
cumulative sequence lengths over the flattened batch (`packed_documents`),
and the attention function registered under `NAME` runs each document as
its own causal sequence: torch's variable-length flash kernel (`varlen_attn`)
on CUDA, one SDPA call per document elsewhere. No mask function is
registered for `NAME`, so transformers builds no mask and runs no packing
check. Without the sequence lengths (generation, evaluation windows) every
row is one causal sequence, as with plain SDPA.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

NAME = "smolray_varlen"


@functools.cache
def _varlen_kernel():
    """torch's varlen_attn and the keywords this torch's version takes, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch without it
        return None
    return varlen_attn, set(inspect.signature(varlen_attn).parameters)


def _flash(q, k, v, cu, longest: int, scaling):
    kernel, params = _varlen_kernel()
    kw = {"scale": scaling}
    # Causal within each document: window_size (-1, 0) from torch 2.13, is_causal before.
    kw.update({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:  # older kernels want one K/V head per query head
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return kernel(q, k, v, cu, cu, longest, longest, **kw)


def packed_documents(position_ids: torch.Tensor) -> dict:
    """The model kwargs that describe a host batch's documents, from its position ids [B, L].

    A document starts wherever the position does not follow on by one (a
    restart at 0, the rule transformers' mask uses too) and at every row.
    The sequence lengths are over the batch flattened to B * L tokens.
    """
    b, length = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    idx = torch.nonzero(starts.flatten()).flatten()
    cu = torch.cat([idx, torch.tensor([b * length])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def to_device(kwargs: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in kwargs.items()}


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers' attention interface: q [B, H, L, D], k/v [B, Hkv, L, D] -> [B, L, H, D]."""
    b, heads, length, dim = query.shape
    gqa = key.shape[1] != heads
    if cu_seq_lens_q is None:  # one sequence per row
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True,
                                             scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2), None
    q, k, v = (t.transpose(1, 2).reshape(b * length, t.shape[1], dim) for t in (query, key, value))
    if query.is_cuda and _varlen_kernel() is not None:
        out = _flash(q, k, v, cu_seq_lens_q, max_length_q, scaling)
    else:
        bounds = cu_seq_lens_q.tolist()  # a host tensor off CUDA: no device sync
        parts = [F.scaled_dot_product_attention(*(t[a:z].transpose(0, 1).unsqueeze(0) for t in (q, k, v)),
                                                dropout_p=dropout, is_causal=True, scale=scaling,
                                                enable_gqa=gqa)[0].transpose(0, 1)
                 for a, z in zip(bounds[:-1], bounds[1:])]
        out = torch.cat(parts)
    return out.view(b, length, heads, dim), None


AttentionInterface.register(NAME, varlen_attention)


def use_varlen(model) -> None:
    """Switch a transformers model to the packed-document attention (in place)."""
    model.config._attn_implementation = NAME
