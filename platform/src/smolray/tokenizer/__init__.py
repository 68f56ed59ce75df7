from smolray.tokenizer.bpe import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    fingerprint,
    load_tokenizer,
    train_bpe,
)

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "fingerprint", "load_tokenizer", "train_bpe"]
