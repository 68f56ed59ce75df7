"""The memory-lean loss equals the plain one, in value and gradient, for every objective."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smolray.model.loss import IGNORE, LossHead, choose, has_torch_chunked, lm_loss, use_loss_head
from smolray.posttrain.objective import dpo_loss, response_logps, sft_loss

pytestmark = pytest.mark.skipif(not has_torch_chunked(), reason="torch without F.linear_cross_entropy")

V, B, L = 1024, 3, 24


def _pair(tied: bool = True):
    """The same tiny Llama twice: with the plain head and with a chunked LossHead."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    plain = LlamaForCausalLM(cfg)
    plain.config._attn_implementation = "sdpa"
    lean = copy.deepcopy(plain)
    assert use_loss_head(lean, "chunked") == "chunked"
    return plain, lean


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return out


def _same_grads(a, b):
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys()
    for name in ga:
        # float32 sums in another order: equal to 1e-5 of the tensor's scale.
        scale = float(ga[name].abs().max())
        torch.testing.assert_close(gb[name], ga[name], rtol=0, atol=1e-5 * scale, msg=name)


def _batch(masked: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, L), generator=g)
    labels = ids.clone()
    if masked:  # a prompt that is not trained, then a reply that is
        labels[:, : L // 2] = IGNORE
        labels[0, -3:] = IGNORE  # and padding
    # Two packed documents in row 1: positions restart.
    pos = torch.arange(L).repeat(B, 1)
    pos[1, 10:] = torch.arange(L - 10)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


@pytest.mark.parametrize("tied", [True, False])
def test_pretraining_loss_and_gradients_equal_the_plain_path(tied):
    plain, lean = _pair(tied)
    b = _batch(masked=False)
    targets = torch.roll(b["input_ids"], -1, 1)
    ref = lm_loss(plain, b["input_ids"], targets, b["position_ids"], "sum")
    got = lm_loss(lean, b["input_ids"], targets, b["position_ids"], "sum")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    ref.backward()
    got.backward()
    _same_grads(plain, lean)
    # Tied embeddings stay one Parameter; the checkpoint names do not change.
    assert (lean.lm_head.weight is lean.model.embed_tokens.weight) == tied
    assert lean.state_dict().keys() == plain.state_dict().keys()


def test_masked_sft_loss_and_gradients_equal_the_plain_path():
    plain, lean = _pair()
    b = _batch(masked=True)
    (ref, rs), (got, gs) = sft_loss(plain, b, "cpu"), sft_loss(lean, b, "cpu")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    assert gs["trained"] == rs["trained"] == int((b["labels"][:, 1:] != IGNORE).sum())
    ref.backward()
    got.backward()
    _same_grads(plain, lean)


def test_dpo_loss_and_gradients_equal_the_plain_path():
    plain, lean = _pair()
    c, r = _batch(masked=True), _batch(masked=True)
    r["labels"][:, L // 2:] = torch.roll(r["labels"][:, L // 2:], 1, 0)  # other replies
    r["input_ids"] = torch.where(r["labels"] == IGNORE, r["input_ids"], r["labels"])
    batch = {f"{side}_{k}": v for side, d in (("chosen", c), ("rejected", r)) for k, v in d.items()}
    ref_c, ref_r = torch.tensor([-40.0, -38.0, -41.0]), torch.tensor([-39.0, -42.0, -40.0])
    losses = []
    for m in (plain, lean):
        pc, pr = response_logps(m, batch, "cpu")
        loss = dpo_loss(pc, pr, ref_c, ref_r, beta=0.5)[0]
        losses.append(loss)
        loss.sum().backward()
    # Per-pair losses: each sequence's gradient is weighted differently.
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    _same_grads(plain, lean)


def test_lean_loss_never_holds_the_logits_and_the_head_still_gives_them():
    _, lean = _pair()
    b = _batch(masked=False)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm_loss(lean, b["input_ids"], b["labels"], b["position_ids"], "sum")
    assert saved and max(saved) < B * L * V, "a [tokens, vocab] tensor was kept for the backward"
    # Outside a loss (generation, evaluation) the head is an ordinary output layer.
    assert isinstance(lean.lm_head, LossHead) and lean.lm_head.targets is None
    with torch.no_grad():
        logits = lean(input_ids=b["input_ids"]).logits
    assert logits.shape == (B, L, V)


def test_loss_choice_is_automatic_and_a_wrong_one_names_the_field():
    assert choose("auto", torch.device("cpu")) == "chunked"
    assert choose("plain", torch.device("cpu")) == "plain"
    with pytest.raises(ValueError, match=r"train.lm_loss=liger needs the liger-kernel package"):
        choose("liger", torch.device("cpu"))
