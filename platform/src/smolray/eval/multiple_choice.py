"""Multiple-choice tasks scored by log-likelihood, in cloze form.

Each example is a set of (context, continuation) pairs, one per choice; the
model's answer is the choice whose continuation it finds most likely. `acc`
compares summed log-probabilities; `acc_norm` divides each by the
continuation's length in characters first (lighteval's
`loglikelihood_acc_norm`, the metric of the SmolLM2 and FineWeb ablations),
so long answers are not penalised for being long.

Task files are JSON lines, one example per line:

    {"id": "q1", "query": "Question: ...\\nAnswer:", "choices": [" a", " b"], "gold": 0}

The continuation is appended to the query as is (so choices usually start
with a space). `hf:<task>` loads a known benchmark from the Hugging Face hub
where it is reachable (see HUB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from smolray.eval import TaskError


@dataclass(frozen=True)
class Example:
    id: str
    pairs: tuple[tuple[str, str], ...]  # (context, continuation) per choice
    gold: int


def from_row(row: dict, where: str) -> Example:
    try:
        query, choices, gold = row["query"], row["choices"], int(row["gold"])
    except (KeyError, TypeError, ValueError):
        raise TaskError(f"{where}: a row needs query (str), choices (list of str) and gold "
                        f"(index); got keys {sorted(row) if isinstance(row, dict) else row!r}") from None
    if not isinstance(choices, list) or len(choices) < 2 or not 0 <= gold < len(choices):
        raise TaskError(f"{where}: needs at least 2 choices and 0 <= gold < len(choices); "
                        f"got {len(choices) if isinstance(choices, list) else choices!r} choices, gold {gold}")
    return Example(str(row.get("id", where)), tuple((query, c) for c in choices), gold)


def _hellaswag(r):
    ctx = f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}".strip()
    return ctx, [" " + e for e in r["endings"]], int(r["label"])


def _lettered(question_key):
    def convert(r):
        q = r[question_key]
        labels = list(r["choices"]["label"])
        return (f"Question: {q}\nAnswer:", [" " + t for t in r["choices"]["text"]],
                labels.index(r["answerKey"]))
    return convert


def _winogrande(r):
    # The choice fills the blank; the shared rest of the sentence is scored.
    i = r["sentence"].index("_")
    ctxs = [r["sentence"][:i] + r["option1"], r["sentence"][:i] + r["option2"]]
    return ctxs, r["sentence"][i + 1:], int(r["answer"]) - 1


# name -> (dataset, config, split, converter(row) -> (query, choices, gold)).
HUB = {
    "hellaswag": ("Rowan/hellaswag", None, "validation", _hellaswag),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", _lettered("question")),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", _lettered("question")),
    "openbookqa": ("allenai/openbookqa", "main", "test", _lettered("question_stem")),
    "commonsense_qa": ("tau/commonsense_qa", None, "validation", _lettered("question")),
    "piqa": ("ybisk/piqa", None, "validation",
             lambda r: (f"Question: {r['goal']}\nAnswer:", [" " + r["sol1"], " " + r["sol2"]], int(r["label"]))),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", _winogrande),
    "mmlu": ("cais/mmlu", "all", "test",
             lambda r: (f"Question: {r['question']}\nAnswer:", [" " + c for c in r["choices"]], int(r["answer"]))),
}


def hub_example(name: str, row: dict, i: int) -> Example:
    query, choices, gold = HUB[name][3](row)
    if isinstance(query, list):  # one context per choice, shared continuation
        return Example(f"{name}-{i}", tuple((q, " " + choices.lstrip()) for q in query), gold)
    return Example(f"{name}-{i}", tuple((query, c) for c in choices), gold)


def load_task(spec: str, limit: int | None = None) -> tuple[str, list[Example]]:
    """(task name, examples) from a JSONL path or URI, or `hf:<name>`."""
    if spec.startswith("hf:"):
        name = spec[3:]
        if name not in HUB:
            raise TaskError(f"--tasks {spec}: unknown hub task; known: {', '.join(sorted(HUB))}")
        import datasets

        repo, config, split, _ = HUB[name]
        rows = datasets.load_dataset(repo, config, split=split)
        n = len(rows) if limit is None else min(limit, len(rows))
        return name, [hub_example(name, rows[i], i) for i in range(n)]
    from smolray.data.shards import filesystem

    fs, path = filesystem(spec)
    try:
        with fs.open_input_stream(path) as f:
            lines = f.read().decode().splitlines()
    except FileNotFoundError:
        raise TaskError(f"--tasks {spec}: no such file; give a JSONL task file or hf:<name>") from None
    name = path.rsplit("/", 1)[-1].removesuffix(".jsonl")
    out = []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{spec}:{i + 1}: not JSON ({e})") from None
            out.append(from_row(row, f"{spec}:{i + 1}"))
        if limit is not None and len(out) == limit:
            break
    if not out:
        raise TaskError(f"--tasks {spec}: no examples")
    return name, out


def continuation_logprobs(model, tok, pairs: list[tuple[str, str]], batch_size: int = 16,
                          max_len: int | None = None) -> np.ndarray:
    """Summed log-probability of each continuation given its context."""
    max_len = max_len or model.config.max_position_embeddings
    seqs = []
    for ctx, cont in pairs:
        # Encoded apart so every choice is scored on the same context tokens.
        c = tok(ctx, add_special_tokens=False)["input_ids"]
        x = tok(cont, add_special_tokens=False)["input_ids"]
        if not x:
            raise TaskError(f"an empty continuation after {ctx[-40:]!r}")
        full = (c + x)[-max_len:]
        seqs.append((full, min(len(x), len(full) - 1)))
    out = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # less padding
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(seqs[i][0])] = torch.tensor(seqs[i][0])
            mask[row, :len(seqs[i][0])] = 1
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        for row, i in enumerate(idx):
            full, n = seqs[i]
            t = torch.arange(len(full) - n, len(full))
            out[i] = logp[row, t - 1, ids[row, t]].sum().item()
    return out


def evaluate(model, tok, examples: list[Example], batch_size: int = 16) -> dict:
    """acc and acc_norm over the examples, with their standard errors."""
    pairs = [p for ex in examples for p in ex.pairs]
    lp = continuation_logprobs(model, tok, pairs, batch_size)
    acc, acc_norm, at = [], [], 0
    for ex in examples:
        k = len(ex.pairs)
        scores = lp[at:at + k]
        chars = np.array([len(cont) for _, cont in ex.pairs], dtype=float)
        acc.append(float(np.argmax(scores) == ex.gold))
        acc_norm.append(float(np.argmax(scores / chars) == ex.gold))
        at += k
    n = len(examples)

    def stderr(v):
        return float(np.std(v, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")

    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)),
            "acc_stderr": stderr(acc), "acc_norm_stderr": stderr(acc_norm), "examples": n}
