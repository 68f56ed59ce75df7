"""The curate job's output: kept parts, dropped parts, the manifest, its table and the funnel PNG."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from smolray.curate.config import CurateConfig
from smolray.curate.parts import fresh_dir, write_atomic, write_json
from smolray.curate.run import Phase, done, out_dir, parts_of

DATA, DROPPED = "data", "dropped"


def step_counts(cfg: CurateConfig, phases: list[Phase]) -> list[dict]:
    """Per step, in recipe order: documents in, kept, dropped by reason, and bytes."""
    totals: dict[str, dict] = {}
    for phase in phases:
        for marker in done(phase).values():
            for step, c in marker["steps"].items():
                t = totals.setdefault(step, {"step": step, "in": 0, "kept": 0, "dropped": {}, "bytes_in": 0,
                                             "bytes_kept": 0})
                for k in ("in", "kept", "bytes_in", "bytes_kept"):
                    t[k] += c[k]
                for reason, n in c["dropped"].items():
                    t["dropped"][reason] = t["dropped"].get(reason, 0) + n
    order = ["read"] + [s.step for s in cfg.steps]
    return [{**totals[s], "dropped": dict(sorted(totals[s]["dropped"].items()))} for s in order if s in totals]


def _contamination(cfg: CurateConfig, phases: list[Phase]) -> dict | None:
    step = next((s for s in cfg.steps if s.step == "decontaminate"), None)
    if step is None:
        return None
    from smolray.curate.decontam import build_index

    _, tasks = build_index(step)
    phase = next(p for p in phases if any(s.step == "decontaminate" for s in p.steps))
    matched: dict[str, list[str]] = {}
    for part in parts_of(phase):
        t = pq.read_table(os.path.join(phase.dir, DROPPED, part + ".parquet"), columns=["id", "reason", "detail"])
        for doc, reason, detail in zip(*(t.column(c).to_pylist() for c in ("id", "reason", "detail"))):
            if reason == "decontaminate":
                for ex in detail.split(","):
                    matched.setdefault(ex, []).append(doc)
    for name, info in tasks.items():
        info["matched"] = {ex: docs for ex, docs in sorted(matched.items()) if ex.startswith(name + "/")}
    return {"ngram": step.ngram, "tasks": tasks}


def finish(cfg: CurateConfig, phases: list[Phase], identities: list[str], log=print) -> dict:
    """Rewrite <out>/data and <out>/dropped from the phases' parts; the manifest, table and funnel."""
    out = out_dir(cfg)
    last, parts = phases[-1], parts_of(phases[-1])
    tmp = fresh_dir(os.path.join(out, ".finish.tmp"))
    kept = bytes_kept = written = 0
    for p in parts:
        t = pq.read_table(os.path.join(last.dir, DATA, p + ".parquet")).drop_columns(["idx"])
        if t.num_rows:
            write_atomic(t, os.path.join(tmp, DATA, f"part-{written:05d}.parquet"))
            written += 1
            kept += t.num_rows
            bytes_kept += sum(len(x.encode()) for x in t.column("text").to_pylist())
    dropped_parts = 0
    for p in parts_of(phases[0]):
        tables = [pq.read_table(f) for ph in phases
                  if os.path.exists(f := os.path.join(ph.dir, DROPPED, p + ".parquet"))]
        t = pa.concat_tables(tables).drop_columns(["idx"]) if tables else None
        if t is not None and t.num_rows:
            write_atomic(t, os.path.join(tmp, DROPPED, f"part-{dropped_parts:05d}.parquet"))
            dropped_parts += 1
    os.makedirs(os.path.join(tmp, DATA), exist_ok=True)
    os.makedirs(os.path.join(tmp, DROPPED), exist_ok=True)
    for name in (DATA, DROPPED):
        final = os.path.join(out, name)
        if os.path.exists(final):
            os.replace(final, final + ".old")
        os.replace(os.path.join(tmp, name), final)
        shutil.rmtree(final + ".old", ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)

    steps = step_counts(cfg, phases)
    manifest = {"name": cfg.name, "inputs": identities, "text_field": cfg.inputs.text_field,
                "recipe": [s.model_dump() for s in cfg.steps], "steps": steps,
                "output": {"docs": kept, "bytes": bytes_kept, "parts": written,
                           "data": os.path.join(out, DATA), "dropped": os.path.join(out, DROPPED)}}
    contamination = _contamination(cfg, phases)
    if contamination is not None:
        write_json(contamination, os.path.join(out, "decontamination.json"))
        manifest["decontamination"] = os.path.join(out, "decontamination.json")
    funnel_png(steps, os.path.join(out, "funnel.png"), cfg.name)
    write_json(manifest, os.path.join(out, "manifest.json"))
    log(format_table(steps))
    return manifest


def format_table(steps: list[dict]) -> str:
    rows = [("step", "docs in", "kept", "dropped", "MB kept", "dropped by reason")]
    for s in steps:
        reasons = ", ".join(f"{r.split('.', 1)[-1]} {n}" for r, n in sorted(s["dropped"].items(),
                                                                       key=lambda kv: -kv[1]))
        rows.append((s["step"], str(s["in"]), str(s["kept"]), str(s["in"] - s["kept"]),
                     f"{s['bytes_kept'] / 1e6:.2f}", reasons or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 5)] + [r[5]]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def funnel_png(steps: list[dict], path: str, title: str) -> None:
    """Documents left after each step, widest at the top; bars labelled with what the step dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["step"] for s in steps]
    left = [s["kept"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(steps) + 1.2))
    y = list(range(len(steps)))[::-1]
    top = max([steps[0]["in"]] + left) or 1
    ax.barh(y, left, color="#4c72b0", left=[(top - n) / 2 for n in left])
    for yi, s in zip(y, steps):
        lost = s["in"] - s["kept"]
        ax.text(top / 2, yi, f"{s['kept']:,} docs ({s['bytes_kept'] / 1e6:.2f} MB)" + (f"  -{lost:,}" if lost else ""),
                ha="center", va="center", color="white" if s["kept"] > top * 0.4 else "black", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xticks([])
    ax.set_title(f"{title}: documents kept after each step")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
