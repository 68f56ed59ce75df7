from smolray.tokenizer.bpe import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    cached_tokenizer,
    fingerprint,
    load_tokenizer,
    offline_fingerprint,
    train_bpe,
)

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "cached_tokenizer", "fingerprint", "load_tokenizer", "offline_fingerprint", "train_bpe"]
