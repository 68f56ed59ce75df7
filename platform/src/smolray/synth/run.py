"""The synth job: plan the rows, skip those already done, run vLLM over them, write parts.

The driver plans every row up front (prompt or document ids are hashes of
their content), drops the ids already on disk, streams the rest through the
configured engine backend (smolray.synth.engines), and writes each
`rows_per_part` results as one parquet part: written to a temporary name,
then renamed, so a part is either whole or absent. A job that dies keeps
every finished part, and a rerun generates only what no part holds.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq

from smolray.synth.config import SynthConfig
from smolray.synth.engines import processor
from smolray.synth.prompts import (RUBRIC, TEMPLATE, KeywordIndex, doc_id, parse_score, passages,
                                   plan_prompts, read_topics, rubric_prompt)

DATA, DROPPED = "data", "dropped"


def out_dir(cfg: SynthConfig) -> str:
    return os.path.abspath(os.path.join(cfg.output_dir, cfg.name))


def _texts(corpus, field: str) -> list[str]:
    from smolray.data.raw import expand, iter_texts

    return list(iter_texts(expand(corpus.raw, field), corpus.text_field))


def plan(cfg: SynthConfig) -> tuple[list[dict], int]:
    """Every row the job must produce (id, prompt and provenance), and how many inputs were duplicates."""
    if cfg.mode == "generate":
        g = cfg.generate
        index = KeywordIndex(passages(_texts(g.seeds, "generate.seeds.raw"), g.seeds.max_chars))
        if not index.passages:
            raise ValueError(f"generate.seeds.raw={g.seeds.raw}: no text to draw seed passages from")
        prompts = plan_prompts(read_topics(g.topics), index, g.audiences, g.formats, g.prompts, g.seed)
        return [{**{k: v for k, v in asdict(p).items() if k != "text"}, "instruction": p.text,
                 "template": TEMPLATE} for p in prompts], 0
    a = cfg.annotate
    rows, seen, dup = [], set(), 0
    for text in _texts(a.docs, "annotate.docs.raw"):
        text = text[: a.docs.max_chars]
        i = doc_id(text)
        if i in seen:
            dup += 1
            continue
        seen.add(i)
        rows.append({"id": i, "doc": text, "instruction": rubric_prompt(text), "template": RUBRIC})
        if a.limit and len(rows) == a.limit:
            break
    return rows, dup


def _parts(out: str, kind: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out, kind, "part-*.parquet")))


def _column(files: list[str], name: str) -> list:
    return [v for f in files for v in pq.read_table(f, columns=[name]).column(0).to_pylist()]


def done_ids(out: str) -> set[str]:
    return set(_column(_parts(out, DATA) + _parts(out, DROPPED), "id"))


def text_hash(text: str) -> str:
    """Exact-duplicate key: the text with its whitespace runs collapsed."""
    return hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).hexdigest()


def check_same_run(cfg: SynthConfig, out: str, record: bool = True) -> None:
    """A rerun must use the same model, sampling and mode as the rows already written.

    With `record`, a first run writes the settings it uses (run.json).
    """
    path = os.path.join(out, "run.json")
    want = {"mode": cfg.mode, "model": cfg.model.source, "sampling": cfg.sampling.model_dump()}
    if os.path.exists(path):
        with open(path) as f:
            have = json.load(f)
        if have != want:
            raise ValueError(f"{out} holds rows made with {have}; this run uses {want}. Give the job a new "
                             "`name` to start another source, or restore the old settings to resume")
    elif record:
        os.makedirs(out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(want, f, indent=2)


def run(cfg: SynthConfig, planned: tuple[list[dict], int] | None = None, log=print,
        stop_after_parts: int | None = None) -> dict:
    """Generate (or annotate) every planned row not yet on disk; the manifest.

    With `stop_after_parts`, stop once that many parts of results are on
    disk (a time-limited allocation); the same call again continues.
    """
    import ray

    out = out_dir(cfg)
    rows, dup_inputs = planned or plan(cfg)
    check_same_run(cfg, out)
    for kind in (DATA, DROPPED):
        os.makedirs(os.path.join(out, kind), exist_ok=True)
    done = done_ids(out)
    todo = [r for r in rows if r["id"] not in done]
    log(f"{cfg.name}: {len(rows)} planned, {len(rows) - len(todo)} already written, {len(todo)} to run")
    seen = set(_column(_parts(out, DATA), "text_hash")) if cfg.mode == "generate" else set()
    failed = parts = 0
    if todo:
        # One input block per part: results stream back block by block, so
        # parts reach disk while the job runs instead of all at the end.
        blocks = -(-len(todo) // cfg.rows_per_part)
        results = processor(cfg)(ray.data.from_items(todo, override_num_blocks=blocks))
        for batch in results.iter_batches(batch_size=cfg.rows_per_part, batch_format="pyarrow"):
            kept, dropped, errors = _finish(cfg, batch.to_pylist(), seen)
            failed += errors
            _write_part(out, DROPPED, dropped)
            _write_part(out, DATA, kept)
            log(f"  part: {len(kept)} rows kept, {len(dropped)} dropped, {errors} failed (rerun retries them)")
            parts += 1
            if stop_after_parts and parts >= stop_after_parts:
                log(f"stopped after {parts} parts; run the same command again to continue")
                break
    manifest = summarize(cfg, out, len(rows), dup_inputs, failed)
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    return manifest


def _finish(cfg: SynthConfig, batch: list[dict], seen: set[str]) -> tuple[list[dict], list[dict], int]:
    """Split a batch of engine results into kept rows and dropped ones (with the reason)."""
    model = {"model": cfg.model.source, "sampling": json.dumps(cfg.sampling.model_dump(), sort_keys=True)}
    kept, dropped, errors = [], [], 0
    for r in batch:
        # Failed rows skip the postprocess step and carry Ray's own error column.
        error = r.get("error") or r.get("__inference_error__")
        if error:
            if not errors:
                print(f"  a row failed in the engine (a rerun retries it): {str(error)[:300]}")
            errors += 1
            continue
        gen = r["generated"]
        if cfg.mode == "annotate":
            score = parse_score(gen)
            row = {"id": r["id"], "text": r["doc"], "score": score, "reply": gen, "prompt": r["instruction"],
                   "rubric": r["template"], "completion_tokens": r["completion_tokens"], **model}
            if score is None:
                dropped.append({"id": r["id"], "reason": "no score", "duplicate_of": None, "reply": gen})
            else:
                kept.append(row)
            continue
        h = text_hash(gen)
        if not gen.strip():
            dropped.append({"id": r["id"], "reason": "empty", "duplicate_of": None, "reply": gen})
        elif h in seen:
            dropped.append({"id": r["id"], "reason": "duplicate", "duplicate_of": h, "reply": gen})
        else:
            seen.add(h)
            kept.append({"id": r["id"], "text": gen, "text_hash": h, "topic": r["topic"], "audience": r["audience"],
                         "format": r["format"], "seed_id": r["seed_id"], "seed": r["seed"],
                         "prompt": r["instruction"], "template": r["template"],
                         "completion_tokens": r["completion_tokens"], **model})
    return kept, dropped, errors


def _write_part(out: str, kind: str, rows: list[dict]) -> None:
    """One parquet part, renamed into place only when whole."""
    if not rows:
        return
    n = len(_parts(out, kind))
    path = os.path.join(out, kind, f"part-{n:05d}.parquet")
    tmp = path + ".tmp"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def summarize(cfg: SynthConfig, out: str, planned: int, dup_inputs: int, failed: int) -> dict:
    data, dropped = _parts(out, DATA), _parts(out, DROPPED)
    reasons = Counter(_column(dropped, "reason"))
    m = {"name": cfg.name, "mode": cfg.mode, "model": cfg.model.source, "sampling": cfg.sampling.model_dump(),
         "template": TEMPLATE if cfg.mode == "generate" else RUBRIC,
         "planned": planned, "rows": sum(pq.read_metadata(f).num_rows for f in data),
         "dropped": dict(sorted(reasons.items())), "duplicate_inputs": dup_inputs,
         "failed_this_run": failed, "missing": planned - len(done_ids(out)),
         "data": os.path.join(out, DATA), "parts": [os.path.basename(f) for f in data]}
    if cfg.mode == "annotate":
        scores = Counter(_column(data, "score"))
        m["scores"] = {str(k): scores.get(k, 0) for k in range(6)}
    return m
