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


def test_fingerprint_identifies_vocabulary(tokenizer_dir, tok, tmp_path):
    from smolray.tokenizer import offline_fingerprint, train_bpe

    fp = fingerprint(tokenizer_dir)
    assert fp.startswith("sha256:") and fingerprint(tokenizer_dir) == fp
    # The same vocabulary saved elsewhere: the same identity (the path is not part of it).
    tok.save_pretrained(tmp_path / "copy")
    assert fingerprint(tmp_path / "copy") == fp
    # Another vocabulary: another identity, even from the same text.
    other = tmp_path / "other"
    train_bpe(TEXTS * 50, vocab_size=300, out_dir=other)
    assert fingerprint(other) != fp
    assert offline_fingerprint(tokenizer_dir) == (fp, None)


def test_offline_fingerprint_of_an_uncached_hub_id_never_goes_online(tmp_path):
    """What a dry run asks: answered from the local cache, with no request to the hub."""
    import os
    import socket
    import subprocess
    import sys

    hub = socket.socket()
    hub.bind(("127.0.0.1", 0))
    hub.listen()
    hub.settimeout(0.5)
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}",
           "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    env.pop("HF_HUB_OFFLINE", None)
    code = ("from smolray.tokenizer import offline_fingerprint; "
            "print(offline_fingerprint('HuggingFaceTB/SmolLM2-135M'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(None, " in out.stdout and "not in the local Hugging Face cache" in out.stdout
    try:
        hub.accept()
        raise AssertionError("offline_fingerprint connected to the hub")
    except TimeoutError:
        pass
    finally:
        hub.close()
