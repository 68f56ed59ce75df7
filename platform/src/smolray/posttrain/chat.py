"""Conversations and preference pairs -> token ids and a loss mask.

A row that cannot become a correct example raises `Skip` with a reason; the
preparation pass counts reasons and reports them, so nothing is silently
dropped and nothing is silently guessed.

The loss mask comes from rendering, not from a `{% generation %}` marker in
the template: for each assistant turn, the text rendered up to the turn (with
the generation prompt) must be a prefix of the text rendered through it, and
the characters in between are that turn's reply. This works with any
prefix-stable template, SmolLM2's and smolray's ChatML included.
"""

from __future__ import annotations

import numpy as np

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of a position that is not trained


class Skip(Exception):
    """A row that is not a usable example; the argument is the counted reason."""

    @property
    def reason(self) -> str:
        return self.args[0]


class TemplateError(ValueError):
    pass


def check_messages(msgs, need_assistant: bool = True) -> list[dict]:
    """The messages as plain dicts, or Skip with the reason they are unusable."""
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise Skip("malformed")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise Skip("malformed")
        role = m["role"]
        if role not in ROLES:
            raise Skip("unknown_role")
        if role == "system" and i:
            raise Skip("system_not_first")
        if not m["content"].strip():
            raise Skip("empty_message")
        out.append({"role": role, "content": m["content"]})
    first = next((m["role"] for m in out if m["role"] != "system"), None)
    if first == "assistant":
        raise Skip("assistant_before_user")
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise Skip("no_assistant")
    return out


def preference(prompt, chosen, rejected) -> tuple[list[dict], str, str]:
    """(context messages, chosen reply, rejected reply) from either common layout.

    prompt: a string (one user turn) or messages. chosen/rejected: the reply
    as a string, or a message list ending in the assistant's reply; a list of
    more than one message is the whole conversation (UltraFeedback binarized).
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise Skip("empty_message")
        context = [{"role": "user", "content": prompt}]
    else:
        context = check_messages(prompt, need_assistant=False)

    def split(reply) -> tuple[list[dict], str]:
        if isinstance(reply, str):
            return context, reply
        msgs = check_messages(reply)
        if msgs[-1]["role"] != "assistant":
            raise Skip("no_assistant")
        return (msgs[:-1] if len(msgs) > 1 else context), msgs[-1]["content"]

    ctx_c, c = split(chosen)
    ctx_r, r = split(rejected)
    if not c.strip() or not r.strip():
        raise Skip("empty_message")
    if ctx_c != ctx_r:
        raise Skip("prompt_mismatch")
    if c.strip() == r.strip():
        raise Skip("identical_pair")
    if ctx_c[-1]["role"] == "assistant":
        raise Skip("malformed")
    return ctx_c, c, r


def render(tok, messages: list[dict], template: str | None,
           last_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and a boolean mask of the assistant replies to train on.

    Each reply's span covers its text and the template's end-of-turn marker
    (so the model learns to stop), not the whitespace after it. `last_only`
    masks only the final reply (DPO scores one response).
    """
    def text(msgs, gen=False) -> str:
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                       chat_template=template)

    full = text(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (last_only and i != len(messages) - 1):
            continue
        before, upto = text(messages[:i], gen=True), text(messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TemplateError("the chat template is not prefix-stable (rendering a conversation "
                                "changes how its earlier turns render), so reply tokens cannot be "
                                "located; use chat_template: chatml or a prefix-stable template")
        spans.append((len(before), len(upto.rstrip())))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    starts = np.asarray([a for a, _ in enc["offset_mapping"]], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=bool)
    for a, b in spans:
        mask |= (starts >= a) & (starts < b)
    return ids, mask


def fit(ids: np.ndarray, mask: np.ndarray, seq_len: int, overlong: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cut an example to seq_len (or Skip it, per the recipe); returns (ids, mask, truncated)."""
    if len(ids) <= seq_len:
        return ids, mask, False
    if overlong == "drop":
        raise Skip("overlong_dropped")
    ids, mask = ids[:seq_len], mask[:seq_len]
    if not mask.any():
        raise Skip("no_reply_within_seq_len")
    return ids, mask, True


def labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Training labels aligned with ids: the token where trained, IGNORE elsewhere."""
    return np.where(mask, ids, IGNORE).astype(np.int32)
