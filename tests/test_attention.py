"""Packed-document attention without a 4D mask: the same log-probabilities, no token crosses a boundary."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from smolray.model.attention import NAME, packed_documents, use_varlen

V, L = 256, 20


def _models():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    mask = LlamaForCausalLM(cfg).eval()
    mask.config._attn_implementation = "sdpa"  # the reference: transformers' block-diagonal mask
    varlen = copy.deepcopy(mask)
    use_varlen(varlen)
    return mask, varlen


def _positions() -> torch.Tensor:
    pos = torch.arange(L).repeat(3, 1)
    pos[0, 7:] = torch.arange(L - 7)  # row 0: documents of 7 and 13 tokens
    pos[1, 3:] = torch.arange(L - 3)  # row 1: 3, 9 and 8
    pos[1, 12:] = torch.arange(L - 12)
    return pos  # row 2: one document


def _logps(model, ids, pos, packed: bool) -> torch.Tensor:
    kw = packed_documents(pos) if packed else {}
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=pos, use_cache=False, **kw).logits
    return torch.gather(F.log_softmax(logits[:, :-1].float(), -1), 2, ids[:, 1:, None])[..., 0]


def test_document_lengths_come_from_the_position_resets():
    kw = packed_documents(_positions())
    assert kw["cu_seq_lens_q"].tolist() == [0, 7, 20, 23, 32, 40, 60]
    assert kw["max_length_q"] == 20 and kw["cu_seq_lens_q"].dtype == torch.int32
    # A row always starts a document, whatever its first position.
    assert packed_documents(torch.tensor([[5, 6, 0, 1]]))["cu_seq_lens_q"].tolist() == [0, 2, 4]


def test_varlen_log_probabilities_equal_the_4d_mask_path():
    mask, varlen = _models()
    ids = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(1))
    pos = _positions()
    ref = _logps(mask, ids, pos, packed=False)
    torch.testing.assert_close(_logps(varlen, ids, pos, packed=True), ref, rtol=1e-5, atol=1e-5)
    # Unpacked rows (generation, evaluation windows): plain causal attention.
    full = torch.arange(L).repeat(3, 1)
    torch.testing.assert_close(_logps(varlen, ids, full, packed=False), _logps(mask, ids, full, packed=False),
                               rtol=1e-5, atol=1e-5)
    assert varlen.config._attn_implementation == NAME


def test_no_token_attends_across_a_document_boundary():
    _, varlen = _models()
    ids = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(1))
    pos = _positions()
    base = _logps(varlen, ids, pos, packed=True)
    other = ids.clone()
    other[0, :7] = (other[0, :7] + 1) % V  # rewrite row 0's first document
    got = _logps(varlen, other, pos, packed=True)
    # The second document's predictions (targets 8..19) are exactly unchanged;
    # the first one's moved, so the rewrite was seen where it may be.
    assert torch.equal(got[0, 7:], base[0, 7:])
    assert not torch.allclose(got[0, :6], base[0, :6])
    assert torch.equal(got[1:], base[1:])  # other rows: untouched


def test_packed_forward_reads_nothing_on_the_host():
    """On the meta device any host read of a device tensor raises: transformers' packing check does."""
    mask, varlen = _models()
    meta = torch.device("meta")
    varlen.to(meta)
    pos = _positions()
    ids = torch.zeros(3, L, dtype=torch.long, device=meta)
    kw = packed_documents(pos)  # on the host, as the loops compute them
    out = varlen(input_ids=ids, position_ids=pos.to(meta), use_cache=False, **kw).logits
    assert out.shape == (3, L, V) and out.device == meta
    with pytest.raises(RuntimeError, match="meta"):  # the 4D-mask path reads the positions
        mask.to(meta)(input_ids=ids, position_ids=pos.to(meta), use_cache=False)
