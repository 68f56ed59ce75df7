"""SFT and DPO: masks, packing isolation, the DPO loss, bad input, and the
SFT -> DPO chain through `ray job submit` with a stop and resume in each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Eleven."},
]


def _spans(mask: np.ndarray) -> int:
    return int(np.sum(np.diff(np.concatenate([[0], mask.astype(int)])) == 1))


def test_label_mask_covers_exactly_the_assistant_replies(tok):
    from smolray.posttrain.chat import IGNORE, labels, render
    from smolray.tokenizer.bpe import CHAT_TEMPLATE

    ids, mask = render(tok, CHAT, CHAT_TEMPLATE)
    assert tok.decode(ids) == tok.apply_chat_template(CHAT, tokenize=False, chat_template=CHAT_TEMPLATE)
    trained = tok.decode(ids[mask])
    assert trained == "Seven is prime.<|im_end|>Eleven.<|im_end|>"
    assert _spans(mask) == 2  # one span per assistant turn, nothing between
    rest = tok.decode(ids[~mask])
    for m in CHAT[:2] + CHAT[3:4]:
        assert m["content"] in rest  # system and user text are never trained on
    lab = labels(ids, mask)
    assert ((lab == IGNORE) == ~mask).all() and (lab[mask] == ids[mask]).all()
    # DPO scores only the final reply.
    _, last = render(tok, CHAT, CHAT_TEMPLATE, last_only=True)
    assert tok.decode(ids[last]) == "Eleven.<|im_end|>"


@pytest.mark.parametrize("msgs,reason", [
    ([{"role": "user", "content": "hi"}], "no_assistant"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], "unknown_role"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "empty_message"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"},
      {"role": "assistant", "content": "yo"}], "system_not_first"),
    ([{"role": "assistant", "content": "yo"}], "assistant_before_user"),
    ([{"role": "user"}], "malformed"),
    ("not a list", "malformed"),
])
def test_bad_conversations_are_skipped_with_a_reason(msgs, reason):
    from smolray.posttrain.chat import Skip, check_messages

    with pytest.raises(Skip) as e:
        check_messages(msgs)
    assert e.value.reason == reason


def test_preference_layouts_and_bad_pairs():
    from smolray.posttrain.chat import Skip, preference

    user = {"role": "user", "content": "Q?"}
    # Strings, and UltraFeedback-binarized message lists, give the same pair.
    assert preference("Q?", "good", "bad") == ([user], "good", "bad")
    assert preference("Q?", [user, {"role": "assistant", "content": "good"}],
                      [user, {"role": "assistant", "content": "bad"}]) == ([user], "good", "bad")
    for args, reason in [(("Q?", "same", " same "), "identical_pair"), (("Q?", "", "bad"), "empty_message"),
                         (("", "good", "bad"), "empty_message"),
                         (("Q?", [{"role": "user", "content": "other"},
                                  {"role": "assistant", "content": "good"}], "bad"), "prompt_mismatch")]:
        with pytest.raises(Skip) as e:
            preference(*args)
        assert e.value.reason == reason


def test_overlong_examples_are_truncated_or_dropped():
    from smolray.posttrain.chat import Skip, fit

    ids, mask = np.arange(10, dtype=np.int32), np.array([0, 0, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    cut, m, truncated = fit(ids, mask, 5, "truncate")
    assert truncated and len(cut) == 5 and m.sum() == 2
    with pytest.raises(Skip, match="overlong_dropped"):
        fit(ids, mask, 5, "drop")
    with pytest.raises(Skip, match="no_reply_within_seq_len"):
        fit(ids, mask, 3, "truncate")


def test_dpo_loss_matches_a_hand_computed_value():
    from smolray.posttrain.objective import dpo_loss

    # Policy gains 1 nat on chosen and loses 1 on rejected against the
    # reference: rewards +-beta, logit 2*beta, loss log(1 + e^-1) at beta 0.5.
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -19.0])
    rc, rr = torch.tensor([-11.0, -20.0]), torch.tensor([-11.0, -20.0])
    loss, r_c, r_r = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # 0.313262
    assert (r_c[0].item(), r_r[0].item()) == (0.5, -0.5)
    # Second pair prefers rejected by 1 nat: logit -0.5, loss log(1 + e^0.5).
    assert loss[1].item() == pytest.approx(math.log(1 + math.exp(0.5)), abs=1e-6)  # 0.974077
    # At the reference itself every pair costs log 2.
    assert dpo_loss(rc, rr, rc, rr, 0.1)[0].tolist() == pytest.approx([math.log(2)] * 2)


def test_packed_conversations_do_not_attend_to_each_other(tok, init_model):
    from smolray.posttrain.chat import render
    from smolray.posttrain.objective import token_logps
    from smolray.posttrain.prepare import _pad
    from smolray.posttrain.reference import load_causal_lm
    from smolray.tokenizer.bpe import CHAT_TEMPLATE

    model = load_causal_lm(init_model).eval()
    a = render(tok, CHAT, CHAT_TEMPLATE)
    b = render(tok, [{"role": "user", "content": "Hello there"},
                     {"role": "assistant", "content": "General Kenobi."}], CHAT_TEMPLATE)
    packed = {k: torch.from_numpy(v).long()[None] for k, v in _pad([a, b], 192).items()}
    alone = {k: torch.from_numpy(v).long()[None] for k, v in _pad([b], 192).items()}
    with torch.no_grad():
        lp_packed = token_logps(model, packed["input_ids"], packed["labels"], packed["position_ids"],
                                packed["position_ids"], "cpu")
        lp_alone = token_logps(model, alone["input_ids"], alone["labels"], alone["position_ids"],
                               alone["position_ids"], "cpu")
        # Without the position restarts, the second conversation would see the first.
        crossed = token_logps(model, packed["input_ids"], packed["labels"], torch.arange(192)[None],
                              torch.arange(192)[None], "cpu")
    n, m = len(a[0]), len(b[0])
    # Token-for-token the same log-probabilities as the conversation alone.
    torch.testing.assert_close(lp_packed[0, n:n + m - 1], lp_alone[0, :m - 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(crossed[0, n:n + m - 1], lp_alone[0, :m - 1], atol=1e-3)
    # The boundary token (first of b) is never a target, and padding never is.
    assert packed["labels"][0, n] == -100 and (packed["labels"][0, n + m:] == -100).all()
    assert (lp_packed[0, n - 1:n] == 0).all()


def test_step_rows_visit_every_row_once_per_epoch():
    from smolray.posttrain.loop import step_rows

    n, b = 37, 8
    seen = np.concatenate([step_rows(s, b, n, seed=3) for s in range(37)])  # 8 epochs exactly
    for e in range(8):
        assert sorted(seen[e * n:(e + 1) * n]) == list(range(n))
    assert not np.array_equal(seen[:n], seen[n:2 * n])  # each epoch is reshuffled
    assert np.array_equal(step_rows(5, b, n, 3), step_rows(5, b, n, 3))
