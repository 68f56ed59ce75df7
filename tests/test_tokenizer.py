from smolray.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, fingerprint, load_tokenizer

TEXTS = ["It is a truth universally acknowledged, that a single man...",
         "def f(x):\n    return {k: v ** 2 for k, v in x.items()}  # tab\tdone",
         r"$\int_0^1 x^2 \, dx = \frac{1}{3}$ and unicode: Ωμέγα, 数学, emoji 🙂", "  \n\n  "]


def test_round_trip_is_exact(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids or tok.unk_token_id == tok.eos_token_id


def test_special_tokens_and_chat_template(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert len(tok) == 1024
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == SPECIAL_TOKENS
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.chat_template == CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # Special tokens are single ids, never split by BPE.
    assert tok("<|im_start|>", add_special_tokens=False).input_ids == [1]


def test_fingerprint_identifies_vocabulary(tokenizer_dir):
    assert fingerprint(tokenizer_dir) == fingerprint(tokenizer_dir)
    assert fingerprint(tokenizer_dir).startswith("sha256:")
