"""Training a quality classifier: labelled rows in, <output_dir>/<name>/ out (jobs/train_classifier.py).

It all runs in one process, the driver, without Ray: labelled rows are few (FineWeb-Edu used
450k), the encoder is frozen so it runs over them once (on a GPU when there is one), and a
linear head or a hashed bag of n-grams trains in seconds to minutes. The folder holds the
model (safetensors), classifier.json (what load_scorer needs), metrics.json (held-out MSE,
precision/recall/F1 at the threshold, the 0-5 confusion matrix) and confusion.png; it is
built beside the old one and renamed into place.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import time
from collections import Counter

import numpy as np

from smolray.curate.classifier import (FORMAT, MAX_SCORE, ClassifierConfig, ClassifierError, Encoder,
                                       LabelledData, bags, embedding_head, encoder_fingerprint, ngram_ids,
                                       ngram_model, torch_device)
from smolray.curate.classifier_report import confusion_png, evaluate
from smolray.redact import redact_obj

MIN_ROWS = 10


def read_labelled(data: LabelledData) -> tuple[list[str], np.ndarray, dict[str, int], list[str]]:
    """(texts, scores, skipped rows by reason, files). A file without either field is refused."""
    from smolray.data.raw import expand

    files = expand(data.raw, "data.raw")
    texts, scores, skipped = [], [], Counter()
    for path in files:
        recs, names = _records(path, [data.text_field, data.score_field])
        for field, key, what in ((data.text_field, "text_field", "the document text"),
                                 (data.score_field, "score_field", "the 0-5 score")):
            if recs and field not in names:
                raise ClassifierError(f"{path}: no field {field!r} (fields: {names}); set data.{key} to the "
                                      f"field that holds {what} (the annotate job, jobs/synth.py, writes "
                                      "`text` and `score`)")
        for rec in recs:
            if isinstance(rec, str):  # a line that is not JSON or not UTF-8
                skipped[rec.removeprefix("read.")] += 1
                continue
            text, score = rec.get(data.text_field), rec.get(data.score_field)
            if not isinstance(text, str) or not text.strip():
                skipped["no text"] += 1
            elif score is None:
                skipped["no score"] += 1
            elif isinstance(score, bool) or not isinstance(score, numbers.Real) or math.isnan(score):
                skipped["score not a number"] += 1
            elif not 0 <= score <= MAX_SCORE:
                skipped["score outside 0..5"] += 1
            else:
                texts.append(text)
                scores.append(float(score))
    return texts, np.asarray(scores, dtype=np.float32), dict(sorted(skipped.items())), files


def _records(path: str, fields: list[str]) -> tuple[list, list[str]]:
    import pyarrow as pa
    import pyarrow.dataset as pads

    from smolray.curate.parts import jsonl_records
    from smolray.data.raw import file_format
    from smolray.data.shards import filesystem

    try:
        if file_format(path) != "parquet":
            # Line by line, not pyarrow's JSON reader: one bad line or a score that is a string
            # on some lines is a counted row, not a file that cannot be read.
            return jsonl_records(path)
        fs, p = filesystem(path)
        ds = pads.dataset(p, filesystem=fs, format="parquet")
        names = ds.schema.names
        return ds.to_table(columns=[f for f in fields if f in names]).to_pylist(), names
    except (OSError, pa.ArrowException) as e:
        raise ClassifierError(f"{path}: cannot be read ({type(e).__name__}: {e}); fix the file or remove it "
                              "from data.raw") from None


def heldout_mask(texts: list[str], fraction: float) -> np.ndarray:
    import xxhash

    return np.fromiter((xxhash.xxh64_intdigest(t.encode()) / 2.0**64 < fraction for t in texts),
                       dtype=bool, count=len(texts))


def train(cfg: ClassifierConfig) -> dict:
    """Train, evaluate on the held-out rows, write the folder; returns metrics.json's content."""
    import torch

    start = time.time()
    texts, y, skipped, files = read_labelled(cfg.data)
    if len(texts) < MIN_ROWS:
        raise ClassifierError(f"data.raw: {len(texts)} usable labelled rows (skipped: {skipped or 'none'}); "
                              f"a classifier needs at least {MIN_ROWS}; label more documents "
                              "(jobs/synth.py in annotate mode)")
    held = heldout_mask(texts, cfg.heldout_fraction)
    if held.all() or not held.any():
        raise ClassifierError(f"heldout_fraction={cfg.heldout_fraction} put {int(held.sum())} of {len(texts)} "
                              "rows in the held-out set; move heldout_fraction towards 0.1 or label more rows")
    good = y[held] >= cfg.threshold
    if good.all() or not good.any():
        raise ClassifierError(
            f"the held-out set ({int(held.sum())} of {len(texts)} rows, heldout_fraction="
            f"{cfg.heldout_fraction}) has only {'good' if good.any() else 'bad'} documents at threshold="
            f"{cfg.threshold}, so precision and recall mean nothing; label more documents of both kinds, "
            "raise heldout_fraction or move the threshold")
    device = torch_device("gpu" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    torch.manual_seed(cfg.seed)
    train_texts = [t for t, h in zip(texts, held) if not h]
    test_texts = [t for t, h in zip(texts, held) if h]
    fit = _fit_embedding if cfg.kind == "embedding" else _fit_ngram
    tensors, meta, pred_train, pred_test = fit(cfg, train_texts, y[~held], test_texts, device)
    if not (np.isfinite(pred_train).all() and np.isfinite(pred_test).all()):
        raise ClassifierError(f"training diverged (predictions are not finite); lower {cfg.kind}.lr "
                              f"(now {cfg.settings.lr})")
    constant = float(y[~held].mean())
    metrics = {"name": cfg.name, "kind": cfg.kind, "device": device,
               "rows": {"usable": len(texts), "train": int((~held).sum()), "heldout": int(held.sum()),
                        "skipped": skipped},
               "train_mse": float(np.mean((pred_train - y[~held]) ** 2)),
               "heldout": evaluate(y[held], pred_test, cfg.threshold, constant)}
    meta.update({"format": FORMAT, "name": cfg.name, "kind": cfg.kind, "threshold": cfg.threshold,
                 "settings": cfg.settings.model_dump(), "score_range": [0.0, MAX_SCORE],
                 "data": {"files": files, "text_field": cfg.data.text_field,
                          "score_field": cfg.data.score_field}})
    metrics["seconds"] = round(time.time() - start, 2)
    _write(cfg, tensors, redact_obj(meta), metrics)
    return metrics


def _fit_ngram(cfg, texts, y, test_texts, device):
    import torch

    s = cfg.settings
    model = ngram_model(s.buckets, s.dim).to(device)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.fill_(float(y.mean()))  # start as the constant predictor
    ids = [ngram_ids(t, s.buckets) for t in texts]
    target = torch.from_numpy(y).to(device)
    opt = _RowAdam(list(model.parameters()))
    gen = torch.Generator().manual_seed(cfg.seed)
    steps, total = 0, s.epochs * math.ceil(len(ids) / s.batch_size)
    model.train()
    for _ in range(s.epochs):
        for batch in torch.randperm(len(ids), generator=gen).split(s.batch_size):
            flat, offsets = bags([ids[i] for i in batch.tolist()])
            loss = torch.nn.functional.mse_loss(model(flat.to(device), offsets.to(device)), target[batch.to(device)])
            loss.backward()
            opt.step(s.lr * (1 - steps / total))
            steps += 1
    model.eval()

    def predict(ts):
        with torch.no_grad():
            flat, offsets = bags([ngram_ids(t, s.buckets) for t in ts])
            return model(flat.to(device), offsets.to(device)).clamp(0, MAX_SCORE).cpu().numpy()

    meta = {"model_file": "model.safetensors", "features": "lower-cased \\w+ words, unigrams and "
            "bigrams, xxh3_64 (seed 0) modulo buckets"}
    return _state(model), meta, predict(texts), predict(test_texts)


class _RowAdam:
    """Adam that updates only the bag rows a step touched (TensorFlow's LazyAdam).

    torch's SparseAdam rewrites its whole dense state every step: 0.1 s a step at
    2**18 buckets, where this takes a millisecond.
    """

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8):
        import torch

        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]

    def step(self, lr: float) -> None:
        import torch

        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        with torch.no_grad():
            for p, (m, v) in zip(self.params, self.state):
                g, p.grad = p.grad, None
                if g.is_sparse:
                    g = g.coalesce()
                    rows, g = g.indices()[0], g.values()
                else:
                    rows = torch.arange(p.shape[0], device=p.device)
                mr = m[rows].mul_(b1).add_(g, alpha=1 - b1)
                vr = v[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
                m[rows], v[rows] = mr, vr
                p.index_add_(0, rows, -lr * (mr / c1) / ((vr / c2).sqrt() + self.eps))


def _fit_embedding(cfg, texts, y, test_texts, device):
    import torch

    from smolray.serve.config import resolve_source

    s = cfg.settings
    try:
        source = resolve_source(s.encoder, "embedding.encoder")
    except ValueError as e:
        raise ClassifierError(str(e)) from None
    encoder = Encoder(source, s.max_length, s.batch_size, device)
    x = encoder(texts + test_texts).to(device)  # once: the encoder is frozen
    x_train, x_test = x[:len(texts)], x[len(texts):]
    head = embedding_head(encoder.dim).to(device)
    with torch.no_grad():
        head.mean.copy_(x_train.mean(0))
        head.scale.copy_(x_train.std(0).clamp(min=1e-6) if len(texts) > 1 else torch.ones(encoder.dim))
        head.out.weight.zero_()
        head.out.bias.fill_(float(y.mean()))  # start as the constant predictor
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr)
    target = torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(s.epochs):
        for batch in torch.randperm(len(texts), generator=gen).split(s.head_batch_size):
            batch = batch.to(device)
            loss = torch.nn.functional.mse_loss(head(x_train[batch]), target[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def predict(xs):
        with torch.no_grad():
            return head(xs).clamp(0, MAX_SCORE).cpu().numpy()

    meta = {"model_file": "head.safetensors", "encoder": source, "encoder_fingerprint": encoder_fingerprint(source),
            "max_length": encoder.max_length, "embedding_dim": encoder.dim,
            "pooling": "mean of the last hidden state over non-padding tokens"}
    return _state(head), meta, predict(x_train), predict(x_test)


def _state(module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _write(cfg: ClassifierConfig, tensors: dict, meta: dict, metrics: dict) -> str:
    from safetensors.torch import save_file

    final = os.path.join(cfg.output_dir, cfg.name)
    tmp = f"{final}.tmp-{os.getpid()}"  # two runs of one name never share a half-built folder
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(tensors, os.path.join(tmp, meta["model_file"]), metadata={"kind": cfg.kind})
    for name, obj in (("classifier.json", meta), ("metrics.json", metrics)):
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
    confusion_png(metrics["heldout"], os.path.join(tmp, "confusion.png"), cfg.name)
    # Whole folder or none: a scorer never pairs one run's head with another run's classifier.json.
    old = final + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
