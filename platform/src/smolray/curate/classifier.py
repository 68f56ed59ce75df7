"""Quality classifier (FineWeb-Edu / DCLM style): its recipe, its models and the scoring API.

kind: embedding  a frozen encoder (any Hugging Face AutoModel folder), its last hidden state
                 mean-pooled over the non-padding tokens, and one linear regression output
                 for the 0-5 score: FineWeb-Edu's design (arctic-embed-m, AdamW 3e-4, 20 epochs).
kind: ngram      fastText-style: word unigrams and bigrams hashed into buckets, a mean
                 EmbeddingBag and a linear output, regression on the score: DCLM's
                 bigram fastText classifier, written in torch.

jobs/train_classifier.py trains one into <output_dir>/<name>/ (smolray.curate.classifier_train).
`load_scorer(folder)` turns that folder back into a callable anywhere, e.g. in a Ray Data actor:

    scorer = load_scorer("outputs/classifiers/edu-tiny", device="gpu")
    scores = scorer(texts)            # numpy float32, clipped to 0..5
    keep = scores >= scorer.threshold
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from smolray.curate import CurateError
from smolray.recipe.schema import _Strict

FORMAT = 1  # classifier.json layout; bumped when an old folder could be misread
MAX_SCORE = 5.0


class ClassifierError(CurateError):
    """Bad labelled data, a bad classifier folder or an unusable encoder; the message names the fix."""


class LabelledData(_Strict):
    raw: list[str] = Field(min_length=1)  # parquet/JSONL files, globs or folders, local or remote
    text_field: str = "text"
    score_field: str = "score"  # 0..5, as the annotate job (jobs/synth.py) writes it


class EmbeddingSettings(_Strict):
    # A local Hugging Face model folder (e.g. an export of `make demo`) or hf://org/name. Frozen.
    encoder: str
    max_length: int = Field(default=512, gt=0)  # tokens per document (capped at the model's own limit)
    batch_size: int = Field(default=16, gt=0)  # documents per encoder forward
    lr: float = Field(default=3e-4, gt=0)  # AdamW, as FineWeb-Edu's head
    epochs: int = Field(default=20, gt=0)
    head_batch_size: int = Field(default=32, gt=0)  # embeddings per head step


class NgramSettings(_Strict):
    buckets: int = Field(default=2**20, gt=0)  # hashed unigram+bigram ids; model size is buckets*dim
    dim: int = Field(default=16, gt=0)
    epochs: int = Field(default=5, gt=0)
    # Adam (sparse for the bag), decayed linearly to 0 as fastText decays its SGD rate.
    lr: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=16, gt=0)


class ClassifierConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: LabelledData
    kind: Literal["embedding", "ngram"]
    embedding: EmbeddingSettings | None = None
    ngram: NgramSettings | None = None  # all defaults when absent
    # Good means score >= threshold. FineWeb-Edu keeps int(round(score)) >= 3, i.e. a raw
    # score >= 2.5: set 2.5 to reproduce its cut exactly.
    threshold: float = Field(default=3.0, gt=0, le=MAX_SCORE)
    # Held-out rows are picked by a hash of the text alone, so every model trained on the
    # same data (any kind, any seed) is judged on the same rows, and copies never straddle.
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1)
    seed: int = 0
    device: Literal["auto", "cpu", "gpu"] = "auto"  # auto: a GPU when torch sees one
    output_dir: str = "outputs/classifiers"

    @model_validator(mode="after")
    def _kind_section(self):
        other = "ngram" if self.kind == "embedding" else "embedding"
        if self.kind == "embedding" and self.embedding is None:
            raise ValueError("kind=embedding needs an `embedding:` section with at least `encoder:` (a "
                             "model folder); see recipes/classifier-edu-tiny.yaml")
        if getattr(self, other) is not None:
            raise ValueError(f"kind={self.kind} but the recipe has an `{other}:` section; remove it or "
                             f"set kind={other}")
        return self

    @property
    def settings(self) -> EmbeddingSettings | NgramSettings:
        return self.embedding if self.kind == "embedding" else (self.ngram or NgramSettings())


# --- n-gram features and model ---

_WORD = re.compile(r"\w+")


def ngram_ids(text: str, buckets: int) -> np.ndarray:
    """Bucket ids of the lower-cased word unigrams and bigrams (xxh3-64, seed 0) of one text."""
    import xxhash

    words = _WORD.findall(text.lower())
    grams = words + [a + " " + b for a, b in zip(words, words[1:])]
    return np.fromiter((xxhash.xxh3_64_intdigest(g.encode()) % buckets for g in grams), dtype=np.int64,
                       count=len(grams))


def bags(ids: list[np.ndarray]):
    """(flat ids, offsets) tensors for nn.EmbeddingBag; an empty text gives an empty bag (zeros)."""
    import torch

    lengths = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(ids) else np.zeros(0, np.int64)
    flat = np.concatenate(ids) if len(ids) else np.zeros(0, np.int64)
    return torch.from_numpy(flat), torch.from_numpy(offsets.astype(np.int64))


def ngram_model(buckets: int, dim: int):
    import torch
    from torch import nn

    class NgramModel(nn.Module):
        def __init__(self):
            super().__init__()
            # sparse: a step touches only the rows of its batch, not all buckets*dim weights
            self.bag = nn.EmbeddingBag(buckets, dim, mode="mean", sparse=True)
            self.out = nn.Linear(dim, 1)
            nn.init.uniform_(self.bag.weight, -1.0 / dim, 1.0 / dim)  # fastText's input init

        def forward(self, flat: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            return self.out(self.bag(flat, offsets)).squeeze(-1)

    return NgramModel()


# --- embedding encoder and head ---

class Encoder:
    """A frozen AutoModel: texts -> mean of the last hidden state over real tokens (float32, on CPU)."""

    def __init__(self, source: str, max_length: int, batch_size: int, device: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ClassifierError(f"encoder {source}: cannot be loaded ({type(e).__name__}: {e}); point "
                                  "embedding.encoder at a Hugging Face model folder") from None
        if self.tok.pad_token is None:
            if self.tok.eos_token is None:
                raise ClassifierError(f"encoder {source}: its tokenizer has neither a pad nor an eos "
                                      "token to pad batches with; add a pad_token to the tokenizer")
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"  # with a causal encoder, padding after a text leaves it alone
        self.model.eval().requires_grad_(False).to(device)
        self.device, self.batch_size = device, batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if limit else max_length
        self.dim = int(self.model.config.hidden_size)

    def __call__(self, texts: list[str]):
        import torch

        out = torch.empty(len(texts), self.dim)
        # Similar lengths batched together: far less padding to run through the encoder.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        cuda = self.device.startswith("cuda")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                # An empty text would be a zero-length row; one space is one real token.
                enc = self.tok([texts[i] or " " for i in idx], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    h = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (h.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[torch.tensor(idx)] = pooled.cpu()
        return out


def embedding_head(dim: int):
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            # Embeddings are standardized with the training rows' statistics, so the published
            # lr and epochs suit encoders whose hidden states have any scale.
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("scale", torch.ones(dim))
            self.out = nn.Linear(dim, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out((x - self.mean) / self.scale).squeeze(-1)

    return Head()


def encoder_fingerprint(source: str) -> str | None:
    """config.json plus each weight file's size and last MiB: a re-trained or swapped encoder differs."""
    if not os.path.isdir(source):
        return None  # a hub id: its revision is the hub's business
    h = hashlib.sha256()
    with open(os.path.join(source, "config.json"), "rb") as f:
        h.update(f.read())
    for name in sorted(os.listdir(source)):
        if name.endswith((".safetensors", ".bin")):
            path = os.path.join(source, name)
            size = os.path.getsize(path)
            h.update(f"{name}:{size}".encode())
            with open(path, "rb") as f:
                f.seek(max(0, size - (1 << 20)))
                h.update(f.read())
    return h.hexdigest()


# --- the scoring API ---

class Scorer:
    """`scorer(texts)` -> numpy float32 scores in 0..5; `threshold` and `kind` come from the folder."""

    def __init__(self, kind: str, threshold: float, model, device: str, encoder: Encoder | None = None,
                 buckets: int = 0, meta: dict | None = None):
        self.kind, self.threshold, self.device = kind, float(threshold), device
        self.meta = meta or {}
        self._model, self._encoder, self._buckets = model.eval().to(device), encoder, buckets

    def __call__(self, texts) -> np.ndarray:
        import torch

        # Ray Data hands over numpy object arrays; nulls score as empty texts.
        texts = ["" if t is None else str(t) for t in texts]
        out = np.zeros(len(texts), dtype=np.float32)
        chunk = 4096 if self.kind == "ngram" else 1024
        with torch.inference_mode():
            for s in range(0, len(texts), chunk):
                part = texts[s:s + chunk]
                if self.kind == "embedding":
                    y = self._model(self._encoder(part).to(self.device))
                else:
                    flat, offsets = bags([ngram_ids(t, self._buckets) for t in part])
                    y = self._model(flat.to(self.device), offsets.to(self.device))
                out[s:s + len(part)] = y.float().clamp(0, MAX_SCORE).cpu().numpy()
        return out


def torch_device(device: str) -> str:
    import torch

    if device in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ClassifierError(f"device={device!r} but torch sees no CUDA GPU here; use device='cpu'")
        return "cuda"
    if device != "cpu":
        raise ClassifierError(f"device={device!r}: use 'cpu' or 'gpu'")
    return "cpu"


def _read(folder: str, name: str) -> bytes:
    from smolray.data.shards import filesystem

    fs, p = filesystem(folder.rstrip("/") + "/" + name)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except (OSError, FileNotFoundError) as e:
        raise ClassifierError(f"{folder}: no readable {name} ({e}); point at a folder that "
                              "jobs/train_classifier.py wrote (<output_dir>/<name>)") from None


def load_scorer(path: str, device: str = "cpu") -> Scorer:
    """The classifier in `path` (a folder jobs/train_classifier.py wrote; local or a URI) as a Scorer.

    device="gpu": the model on CUDA, the encoder under bfloat16 autocast; "cpu": float32 throughout.
    """
    from safetensors.torch import load as load_tensors

    dev = torch_device(device)
    meta = json.loads(_read(path, "classifier.json"))
    if meta.get("format") != FORMAT:
        raise ClassifierError(f"{path}: classifier.json format {meta.get('format')!r}, this code reads "
                              f"{FORMAT}; retrain it with jobs/train_classifier.py")
    tensors = load_tensors(_read(path, meta["model_file"]))
    s = meta["settings"]
    if meta["kind"] == "ngram":
        model = ngram_model(s["buckets"], s["dim"])
        model.load_state_dict(tensors)
        return Scorer("ngram", meta["threshold"], model, dev, buckets=s["buckets"], meta=meta)
    if encoder_fingerprint(meta["encoder"]) != meta["encoder_fingerprint"]:
        raise ClassifierError(f"{path}: the encoder {meta['encoder']} is missing or has changed since this "
                              "head was trained on it (a head fits one encoder's embeddings); retrain the "
                              "classifier on the encoder as it is now")
    encoder = Encoder(meta["encoder"], meta["max_length"], s["batch_size"], dev)
    head = embedding_head(encoder.dim)
    head.load_state_dict(tensors)
    return Scorer("embedding", meta["threshold"], head, dev, encoder=encoder, meta=meta)
