"""The curate job: phases of steps over parts, each part whole or absent, resumable.

Steps that decide one document at a time (language ID, the filters,
decontamination) run together as one phase: a Ray Data actor pool takes one
part at a time, applies them in recipe order and writes the part's kept
documents, its dropped ones and its counters (the counters last: they mark
the part done). A dedup step is a phase of its own: a Ray Data shuffle finds
the duplicates (smolray.curate.dedup), then each part drops its own.

A phase's folder name carries a hash of the inputs and of every step up to
it, so a rerun reuses each finished part, and a recipe changed at step k
reuses the phases before k. The output folder is rewritten from the last
phase's parts at the end (data/, dropped/, manifest.json, funnel.png).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from smolray.curate.config import GLOBAL, POOLED, CurateConfig
from smolray.curate.parts import (DROPPED, ROW_BITS, CurateError, doc_schema, fresh_dir, read_file, read_json,
                                  table, write_atomic, write_json)


@dataclass(frozen=True)
class Phase:
    number: int
    steps: tuple  # step configs; a dedup step alone
    dir: str
    before: tuple  # the steps of the earlier phases (which columns the documents carry)

    @property
    def name(self) -> str:
        return "+".join(s.step for s in self.steps) if self.steps else "read"

    @property
    def is_global(self) -> bool:
        return bool(self.steps) and self.steps[0].step in GLOBAL

    @property
    def pooled(self):
        """The step config when this phase runs in an actor pool of its own, else None."""
        return self.steps[0] if self.steps and self.steps[0].step in POOLED else None


def out_dir(cfg: CurateConfig) -> str:
    return os.path.abspath(os.path.join(cfg.output_dir, cfg.name))


def plan(cfg: CurateConfig, files: list[str], identities: list[str]) -> list[Phase]:
    """The read phase, then runs of per-document steps and each dedup step on its own."""
    groups, run = [], []
    for s in cfg.steps:
        if s.step in GLOBAL or s.step in POOLED:
            groups += [run] if run else []
            groups.append([s])
            run = []
        else:
            run.append(s)
    groups += [run] if run else []
    key = hashlib.sha256(json.dumps([identities, cfg.inputs.model_dump()], sort_keys=True).encode())
    work = os.path.join(out_dir(cfg), "work")
    phases = [Phase(0, (), os.path.join(work, f"00-read-{key.hexdigest()[:10]}"), ())]
    before: tuple = ()
    for i, steps in enumerate(groups, 1):
        key.update(json.dumps([s.model_dump() for s in steps], sort_keys=True).encode())
        name = "+".join(s.step for s in steps)
        phases.append(Phase(i, tuple(steps), os.path.join(work, f"{i:02d}-{name}-{key.hexdigest()[:10]}"), before))
        before += tuple(steps)
    return phases


def part_name(idx: int, rows_per_part: int) -> str:
    return f"{idx >> ROW_BITS:05d}-{(idx & ((1 << ROW_BITS) - 1)) // rows_per_part:05d}"


def _counter(stats: dict, step: str) -> dict:
    return stats.setdefault(step, {"in": 0, "kept": 0, "dropped": {}, "bytes_in": 0, "bytes_kept": 0})


def _count(c: dict, text: str, reason: str | None, kept_text: str | None = None) -> None:
    c["in"] += 1
    c["bytes_in"] += len(text.encode())
    if reason is None:
        c["kept"] += 1
        c["bytes_kept"] += len((text if kept_text is None else kept_text).encode())
    else:
        c["dropped"][reason] = c["dropped"].get(reason, 0) + 1


class _Worker:
    """One part at a time for one phase."""

    def __init__(self, cfg: CurateConfig, phase: Phase, prev: Phase | None, files: list[str], shared: list):
        self.cfg, self.phase, self.prev, self.files = cfg, phase, prev, files
        self.detect = self.index = self.scorer = None
        for s in phase.steps:
            if s.step == "langid":
                from smolray.curate.langid import Detector

                self.detect = Detector(s)
            if s.step == "decontaminate":
                import ray

                self.index = ray.get(shared[0])
            if s.step == "quality_classifier":
                from smolray.curate.classifier import load_scorer

                self.scorer = load_scorer(s.model, device=s.device)

    def __call__(self, batch: dict) -> dict:
        out = []
        for job in batch["job"]:
            try:
                out.append(json.dumps(self.run(json.loads(job))))
            except CurateError as e:
                out.append(json.dumps({"error": str(e)}))
        return {"stats": np.array(out, dtype=object)}

    def run(self, job: dict) -> dict:
        if "file" in job:
            return self._read(job["file"], job["number"])
        return self._part(job["part"])

    def _read(self, path: str, number: int) -> dict:
        docs, dropped, _ = read_file(path, number, self.cfg.inputs)
        schema = doc_schema(self.cfg.inputs.keep_fields, ())
        parts: dict[str, tuple[list, list]] = {}
        for row in sorted(docs + dropped, key=lambda r: r["idx"]):
            parts.setdefault(part_name(row["idx"], self.cfg.inputs.rows_per_part), ([], []))[
                "reason" in row].append(row)
        c = _counter({}, "read")
        for name, (kept, lost) in sorted(parts.items()):
            write_atomic(table(lost, DROPPED), os.path.join(self.phase.dir, "dropped", name + ".parquet"))
            write_atomic(table(kept, schema), os.path.join(self.phase.dir, "data", name + ".parquet"))
            for r in kept:
                _count(c, r["text"], None)
            for r in lost:
                _count(c, r["text"], r["reason"])
        stats = {"parts": sorted(parts), "steps": {"read": c}}
        write_json(stats, os.path.join(self.phase.dir, "stats", f"{number:05d}.json"))
        return stats

    def _part(self, name: str) -> dict:
        docs = pq.read_table(os.path.join(self.prev.dir, "data", name + ".parquet")).to_pylist()
        stats: dict = {}
        dropped = []
        if self.phase.is_global:
            docs, dropped = self._dedup(name, docs, stats)
        else:
            for s in self.phase.steps:
                c = _counter(stats, s.step)
                if s.step == "quality_classifier":
                    self._score(s, docs)
                kept = []
                for d in docs:
                    before = d["text"]
                    reason, detail = self._decide(s, d)
                    _count(c, before, reason, d["text"])
                    if reason is None:
                        kept.append(d)
                    else:
                        dropped.append({"idx": d["idx"], "id": d["id"], "reason": reason, "detail": detail,
                                        "text": before})
                docs = kept
        write_atomic(table(dropped, DROPPED), os.path.join(self.phase.dir, "dropped", name + ".parquet"))
        write_atomic(table(docs, doc_schema(self.cfg.inputs.keep_fields, self.phase.before + self.phase.steps)),
                     os.path.join(self.phase.dir, "data", name + ".parquet"))
        result = {"parts": [name], "steps": stats}
        write_json(result, os.path.join(self.phase.dir, "stats", name + ".json"))
        return result

    def _decide(self, s, doc: dict) -> tuple[str | None, str]:
        if s.step == "langid":
            lang, score = self.detect(doc["text"])
            doc["language"], doc["language_score"] = lang, score
            reason = self.detect.reason(lang, score)
            return reason, f"{lang} {score:.2f}" if reason else ""
        if s.step == "quality_classifier":
            score = doc[s.column]
            threshold = self.scorer.threshold if s.threshold is None else s.threshold
            return ("quality_classifier.threshold", f"{score:.3f}") if score < threshold else (None, "")
        if s.step == "decontaminate":
            from smolray.curate.decontam import matches

            hit = matches(doc["text"], self.index, s.ngram)
            return ("decontaminate", ",".join(hit)) if hit else (None, "")
        text, reason = s.check(doc["text"])
        doc["text"] = text  # C4's line filter edits the text it keeps
        return reason, ""

    def _score(self, s, docs: list[dict]) -> None:
        for i in range(0, len(docs), s.batch_size):
            batch = docs[i:i + s.batch_size]
            for d, score in zip(batch, self.scorer([d["text"] for d in batch]).tolist()):
                d[s.column] = round(float(score), 4)

    def _dedup(self, name: str, docs: list[dict], stats: dict) -> tuple[list, list]:
        step = self.phase.steps[0].step
        where = os.path.join(self.phase.dir, "duplicates", f"part={name}")
        dup = {}
        if os.path.isdir(where):
            t = pq.read_table(where)
            dup = dict(zip(t.column("idx").to_pylist(), t.column("dup_of").to_pylist()))
        c = _counter(stats, step)
        kept, dropped = [], []
        for d in docs:
            of = dup.get(d["idx"])
            _count(c, d["text"], None if of is None else step)
            if of is None:
                kept.append(d)
            else:
                where_from = os.path.basename(self.files[of >> ROW_BITS].partition("?")[0])
                line = (of & ((1 << ROW_BITS) - 1)) + 1
                dropped.append({"idx": d["idx"], "id": d["id"], "reason": step,
                                "detail": f"duplicate of {where_from}:{line}", "text": d["text"]})
        return kept, dropped


def done(phase: Phase) -> dict[str, dict]:
    """Counters of the finished work items of a phase, by marker name."""
    folder = os.path.join(phase.dir, "stats")
    if not os.path.isdir(folder):
        return {}
    return {f[:-5]: read_json(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".json")}


def parts_of(phase: Phase) -> list[str]:
    return sorted(p for s in done(phase).values() for p in s["parts"])


_WORKERS: dict[str, _Worker] = {}


def _run_jobs(batch: dict, cfg: CurateConfig, phase: Phase, prev: Phase | None, files: list[str],
              shared: list) -> dict:
    # Ray Data tasks run in pooled worker processes: a task starts in
    # milliseconds where a new actor pool per phase costs seconds, and the
    # language model and benchmark index load once per process, not per part.
    if phase.dir not in _WORKERS:
        _WORKERS.clear()
        _WORKERS[phase.dir] = _Worker(cfg, phase, prev, files, shared)
    return _WORKERS[phase.dir](batch)


def _pool(cfg: CurateConfig, phase: Phase, prev: Phase | None, files: list[str], jobs: list[dict], shared,
          log) -> None:
    import ray

    items = ray.data.from_items([{"job": json.dumps(j)} for j in jobs], override_num_blocks=len(jobs))
    step = phase.pooled
    if step is None:
        results = items.map_batches(_run_jobs, fn_args=(cfg, phase, prev, files, shared), batch_size=1,
                                    num_cpus=cfg.cpus_per_worker)
    else:
        # A model per actor, loaded once: on a cluster each scoring actor holds a GPU.
        gpus = 1 if step.device == "gpu" else 0
        results = items.map_batches(_Worker, fn_constructor_args=(cfg, phase, prev, files, shared), batch_size=1,
                                    compute=ray.data.ActorPoolStrategy(size=min(step.concurrency, len(jobs))),
                                    num_cpus=cfg.cpus_per_worker, num_gpus=gpus)
    errors = []
    for i, row in enumerate(results.iter_rows(), 1):
        r = json.loads(row["stats"])
        if "error" in r:
            errors.append(r["error"])
        elif i % 10 == 0 or i == len(jobs):
            log(f"  {phase.name}: {i}/{len(jobs)} done")
    if errors:
        raise CurateError("; ".join(sorted(set(errors))))


def _with_part(t, rows_per_part: int):
    """The part each duplicate lives in, as a string column (the folder it is written under)."""
    import pyarrow as pa

    names = [part_name(i, rows_per_part) for i in t.column("idx").to_pylist()]
    return t.append_column("part", pa.array(names, pa.string()))


def _duplicates(cfg: CurateConfig, phase: Phase, prev: Phase, log) -> None:
    """Write <phase>/duplicates/part=<name>/ (idx, dup_of), then the _DONE marker."""
    import ray

    from smolray.curate.dedup import exact_duplicates, minhash_duplicates, partitions_for, read_parts

    final, marker = os.path.join(phase.dir, "duplicates"), os.path.join(phase.dir, "_DONE")
    if os.path.exists(marker):
        return
    parts = parts_of(prev)
    files = [os.path.join(prev.dir, "data", p + ".parquet") for p in parts]
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    s = phase.steps[0]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    docs = read_parts(files)  # one part per task: a worker holds one part's text at a time
    if s.step == "exact_dedup":
        dups = exact_duplicates(docs, partitions_for(rows, cpus))
    else:
        dups = minhash_duplicates(docs, s, partitions_for(rows * s.bands, cpus))
    named = dups.map_batches(_with_part, fn_args=(cfg.inputs.rows_per_part,), batch_format="pyarrow")
    tmp = fresh_dir(final + ".tmp")
    named.write_parquet(tmp, partition_cols=["part"])
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    n = sum(pq.read_metadata(os.path.join(d, f)).num_rows for d, _, fs in os.walk(final)
            for f in fs if f.endswith(".parquet"))
    write_json({"duplicates": n, "docs": rows}, marker)
    log(f"  {s.step}: {n} of {rows} documents are duplicates")


def run_phases(cfg: CurateConfig, files: list[str], phases: list[Phase], log=print) -> None:
    import ray

    shared = []
    for s in cfg.steps:
        if s.step == "decontaminate":
            from smolray.curate.decontam import build_index

            shared = [ray.put(build_index(s)[0])]
    prev = None
    for phase in phases:
        finished = done(phase)
        if phase.number == 0:
            jobs = [{"file": f, "number": i} for i, f in enumerate(files) if f"{i:05d}" not in finished]
        else:
            if phase.is_global:
                _duplicates(cfg, phase, prev, log)
            jobs = [{"part": p} for p in parts_of(prev) if p not in finished]
        log(f"{phase.name}: {len(jobs)} to run, {len(finished)} already done")
        if jobs:
            _pool(cfg, phase, prev, files, jobs, shared, log)
        prev = phase
