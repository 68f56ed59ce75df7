"""Byte-level BPE tokenizers in Hugging Face format, with a chat template.

Byte-level means every string round-trips exactly (no unknown tokens), which
matters for code and math. The special tokens and ChatML template are those
SmolLM2 uses, so post-training and serving need no tokenizer surgery.
"""

from __future__ import annotations

import functools

import hashlib
from collections.abc import Iterable
from pathlib import Path

from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:  # transformers costs seconds to import; entry points check recipes first
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>",
                  "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>",
                  "<issue_comment>", "<issue_closed>", "<jupyter_start>",
                  "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
                  "<jupyter_script>", "<empty_output>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by smolray<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path,
              model_max_length: int = 8192) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} cannot hold the 256 bytes and "
                         f"{len(SPECIAL_TOKENS)} special tokens; use at least 512")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0.. in this order: EOS is 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
    )
    hf.save_pretrained(str(out_dir))
    return hf


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """load_tokenizer, once per process: Ray Data tasks call it for every batch."""
    return load_tokenizer(path)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A local tokenizer folder, or a Hugging Face hub id where the hub is reachable."""
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(p))
    _check_hub_id(path)
    try:
        return AutoTokenizer.from_pretrained(str(path))  # hub id such as org/name
    except OSError as e:
        raise FileNotFoundError(f"{_hint(path)} (and loading it from the hub failed: {e})") from None


def _hint(path) -> str:
    return (f"tokenizer {path}: no tokenizer.json there; train one with "
            "`python jobs/train_tokenizer.py --config <recipe>`")


def _check_hub_id(path) -> None:
    p = Path(path)
    if p.is_dir() or str(path).startswith((".", "/")) or str(path).count("/") != 1:
        raise FileNotFoundError(_hint(path))


def _tokenizer_json(path: str | Path, online: bool) -> str | None:
    """The tokenizer.json behind a folder or hub id; None if offline and not cached."""
    local = Path(path) / "tokenizer.json"
    if local.is_file():
        return str(local)
    _check_hub_id(path)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if not online:
        hit = try_to_load_from_cache(str(path), "tokenizer.json")
        return hit if isinstance(hit, str) else None
    try:
        return hf_hub_download(str(path), "tokenizer.json")
    except Exception as e:  # the hub's errors are many and unrelated; all mean "not there"
        raise FileNotFoundError(f"{_hint(path)} (and fetching it from the hub failed: {e})") from None


def fingerprint(path: str | Path) -> str:
    """Identity of a tokenizer's vocabulary, recorded in every shard manifest.

    A hash of its tokenizer.json as the tokenizers library serializes it, so
    a local folder and the same tokenizer fetched from the hub agree.
    """
    return _digest(_tokenizer_json(path, online=True))


def _digest(tokenizer_json: str) -> str:
    data = Tokenizer.from_file(tokenizer_json).to_str().encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def offline_fingerprint(path: str | Path) -> tuple[str | None, str | None]:
    """(fingerprint, None) from a local folder or the local hub cache, else (None, why not).

    For dry runs, which must answer in seconds with or without a network.
    """
    found = _tokenizer_json(path, online=False)
    if found is None:
        return None, (f"not checked: whether the shards were cut with tokenizer {path} (a hub id "
                      "not in the local Hugging Face cache, and a dry run does not go online); "
                      "point tokenizer at a local folder to check it")
    return _digest(found), None
