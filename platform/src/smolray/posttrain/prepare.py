"""Examples -> a prepared dataset: tokenized, masked, packed or padded, on disk.

Rendering runs as a Ray Data pass over the cluster; the driver consumes it
in input order, packs (SFT) and writes one Arrow IPC file of fixed-length
rows. Arrow files memory-map, so every worker reads exactly the rows of its
micro batches by index with no loader state: the data position is the step.

Every row holds `input_ids`, `labels` (IGNORE where not trained) and
`position_ids`. Positions restart at 0 at each packed conversation and at
the padding; transformers reads such restarts as separate sequences and
masks attention between them (see tests/test_posttrain.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter

import numpy as np
import pyarrow as pa

from smolray.posttrain.chat import Skip, check_messages, fit, labels, preference, render

EXAMPLES = "examples.arrow"
JSON_LINE = "_json_line"
META = "meta.json"


class PreparedDataError(ValueError):
    pass


@dataclasses.dataclass
class Stats:
    read: int = 0
    kept: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)  # reason -> count
    truncated: int = 0
    rows: int = 0  # sequences (SFT) or pairs (DPO) written
    tokens: int = 0  # real (non-padding) tokens in the rows
    trained_tokens: int = 0  # tokens the loss is computed on
    max_len: int = 0
    slots: int = 0  # rows * seq_len (* 2 for pairs)

    @property
    def fill(self) -> float:
        """Share of the sequence slots holding real tokens (packing efficiency)."""
        return self.tokens / max(1, self.slots)


def _render_batch(batch: pa.Table, tokenizer: str, template: str | None, fields: dict,
                  seq_len: int, overlong: str, objective: str) -> pa.Table:
    """Ray Data UDF: rows -> ids and masks, or the reason each row is skipped."""
    from smolray.tokenizer import cached_tokenizer

    tok = cached_tokenizer(tokenizer)
    cols: dict[str, list] = {k: [] for k in ("reason", "truncated", "ids", "mask", "ids2", "mask2")}
    for row in batch.to_pylist():
        ids = mask = ids2 = mask2 = None
        reason, cut = "", False
        try:
            if JSON_LINE in row:
                row = _parse_line(row[JSON_LINE])
            missing = [f for f in fields.values() if f not in row]
            if missing:
                raise Skip(f"missing_field:{missing[0]}")
            if objective == "sft":
                msgs = check_messages(row.get(fields["messages"]))
                ids, mask, cut = fit(*render(tok, msgs, template), seq_len, overlong)
            else:
                ctx, c, r = preference(row.get(fields["prompt"]), row.get(fields["chosen"]),
                                       row.get(fields["rejected"]))
                ids, mask, cut1 = fit(*render(tok, ctx + [_reply(c)], template, True), seq_len, overlong)
                ids2, mask2, cut2 = fit(*render(tok, ctx + [_reply(r)], template, True), seq_len, overlong)
                cut = cut1 or cut2
        except Skip as e:
            reason = e.reason
        cols["reason"].append(reason)
        cols["truncated"].append(cut)
        for k, v in (("ids", ids), ("mask", mask), ("ids2", ids2), ("mask2", mask2)):
            cols[k].append(None if v is None else v.tolist())
    types = {"reason": pa.string(), "truncated": pa.bool_(), "ids": pa.list_(pa.int32()),
             "mask": pa.list_(pa.bool_()), "ids2": pa.list_(pa.int32()), "mask2": pa.list_(pa.bool_())}
    return pa.table({k: pa.array(v, type=types[k]) for k, v in cols.items()})


def _parse_line(line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise Skip("invalid_json") from None
    if not isinstance(row, dict):
        raise Skip("invalid_json")
    return row


def _reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


def read_examples(recipe):
    """The recipe's examples as a Ray Dataset, in a stable order."""
    import ray

    d = recipe.data.dataset
    if d.hf:
        import datasets

        hf = datasets.load_dataset(d.hf, d.hf_config, split=d.split).with_format("arrow")
        # From the local Arrow cache, in blocks: ray.data.from_huggingface would
        # ask the hub for a parquet export, which a local or offline dataset lacks.
        step = 8192
        ds = ray.data.from_arrow([hf[i:i + step] for i in range(0, max(1, len(hf)), step)])
    else:
        from smolray.data.raw import expand, file_format
        from smolray.data.shards import filesystem

        files = expand(d.files, "data.dataset.files")
        parts = []
        for fmt in sorted({file_format(f) for f in files}):
            group = [f for f in files if file_format(f) == fmt]
            fs, paths = filesystem(group[0])[0], [filesystem(f)[1] for f in group]
            if fmt == "parquet":
                parts.append(ray.data.read_parquet(paths, filesystem=fs))
            else:
                # Lines are parsed in the render step: a column that is a
                # string in one row and a message list in the next (common in
                # preference data) breaks columnar JSON readers.
                parts.append(ray.data.read_text(paths, filesystem=fs, drop_empty_lines=True)
                             .rename_columns({"text": JSON_LINE}))
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    ds.context.execution_options.preserve_order = True
    return ds.limit(d.limit) if d.limit else ds


def _fields(recipe) -> dict:
    d = recipe.data
    if recipe.objective == "sft":
        return {"messages": d.messages_field}
    return {"prompt": d.prompt_field, "chosen": d.chosen_field, "rejected": d.rejected_field}


def _check_columns(ds, recipe) -> None:
    names = ds.schema().names
    if JSON_LINE in names:
        return  # JSON lines: checked row by row (missing_field:<name> skips)
    for field, col in _fields(recipe).items():
        if col not in names:
            raise PreparedDataError(
                f"data.{field}_field={col!r}: the dataset has no such column (it has {names}); "
                f"set data.{field}_field to the column that holds the {field}")


def prepare(recipe, tokenizer: str, template: str | None, out_dir: str | None) -> tuple[Stats, str]:
    """Render, pack and (if out_dir) write the prepared rows.

    Returns the statistics and a fingerprint of the rows' content. Without
    out_dir (a dry run) nothing is written.
    """
    if out_dir and os.path.exists(os.path.join(out_dir, META)):
        # A crash from here on leaves a folder that says "not prepared".
        os.remove(os.path.join(out_dir, META))
    ds = read_examples(recipe)
    _check_columns(ds, recipe)
    d = recipe.data
    ds = ds.map_batches(_render_batch, batch_size=256, batch_format="pyarrow", fn_kwargs=dict(
        tokenizer=tokenizer, template=template, fields=_fields(recipe), seq_len=d.seq_len,
        overlong=d.overlong, objective=recipe.objective))
    stats, reasons = Stats(), Counter()
    sink = _Sink(out_dir, d.seq_len, pairs=recipe.objective == "dpo")
    packer = _Packer(d.seq_len, sink) if recipe.objective == "sft" and d.packing else None
    for batch in ds.iter_batches(batch_size=1024, batch_format="pyarrow"):
        for row in batch.to_pylist():
            stats.read += 1
            if row["reason"]:
                reasons[row["reason"]] += 1
                continue
            stats.kept += 1
            stats.truncated += row["truncated"]
            ex = [(np.asarray(row["ids"], np.int32), np.asarray(row["mask"], bool))]
            if row["ids2"] is not None:
                ex.append((np.asarray(row["ids2"], np.int32), np.asarray(row["mask2"], bool)))
            for ids, mask in ex:
                stats.tokens += len(ids)
                stats.trained_tokens += int(mask.sum())
                stats.max_len = max(stats.max_len, len(ids))
            if packer:
                packer.add(*ex[0])
            else:
                sink.add([_pad([e], d.seq_len) for e in ex])
    if packer:
        packer.close()
    stats.skipped = dict(sorted(reasons.items()))
    stats.rows = sink.rows
    stats.slots = sink.rows * d.seq_len * (2 if recipe.objective == "dpo" else 1)
    malformed = sum(v for k, v in reasons.items() if k != "overlong_dropped")
    if stats.read and malformed / stats.read > d.max_skipped_fraction:
        sink.abort()
        raise PreparedDataError(
            f"{malformed} of {stats.read} examples were skipped ({stats.skipped}), more than "
            f"data.max_skipped_fraction={d.max_skipped_fraction}; check the dataset's format and "
            f"the field names ({', '.join(f'data.{k}_field={v!r}' for k, v in _fields(recipe).items())}), "
            "or raise max_skipped_fraction")
    if not stats.rows:
        sink.abort()
        raise PreparedDataError(f"no usable examples in data.dataset ({stats.read} read, skipped: "
                                f"{stats.skipped}); check the dataset and data.seq_len")
    sink.close()
    return stats, sink.fingerprint


def _pad(parts: list[tuple[np.ndarray, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
    """One fixed-length row from conversations laid end to end, then padding."""
    ids = np.zeros(seq_len, np.int32)
    lab = np.full(seq_len, -100, np.int32)
    pos = np.zeros(seq_len, np.int32)
    at = 0
    for x, m in parts:
        n = len(x)
        ids[at:at + n], lab[at:at + n], pos[at:at + n] = x, labels(x, m), np.arange(n)
        lab[at] = -100  # a conversation's first token is never predicted from the one before
        at += n
    pos[at:] = np.arange(seq_len - at)  # padding is a sequence of its own
    return {"input_ids": ids, "labels": lab, "position_ids": pos}


class _Packer:
    """First-fit packing over a bounded set of open sequences, in input order.

    Bounded so memory stays flat on any dataset size; when all bins are open
    and nothing fits, the fullest bin is written out.
    """

    def __init__(self, seq_len: int, sink, open_bins: int = 64):
        self.seq_len, self.sink, self.limit = seq_len, sink, open_bins
        self.bins: list[list] = []

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        for b in self.bins:
            if sum(len(x) for x, _ in b) + len(ids) <= self.seq_len:
                b.append((ids, mask))
                return
        if len(self.bins) == self.limit:
            full = max(range(len(self.bins)), key=lambda i: sum(len(x) for x, _ in self.bins[i]))
            self.sink.add([_pad(self.bins.pop(full), self.seq_len)])
        self.bins.append([(ids, mask)])

    def close(self) -> None:
        for b in self.bins:
            self.sink.add([_pad(b, self.seq_len)])
        self.bins = []


class _Sink:
    """Writes rows to <out_dir>/examples.arrow (via a temp name) and hashes them."""

    def __init__(self, out_dir: str | None, seq_len: int, pairs: bool):
        self.rows, self.hash = 0, hashlib.sha256()
        self.prefixes = ["chosen_", "rejected_"] if pairs else [""]
        fields = [pa.field(p + k, pa.list_(pa.int32(), seq_len))
                  for p in self.prefixes for k in ("input_ids", "labels", "position_ids")]
        self.schema = pa.schema(fields)
        self.pending: list[list[dict]] = []
        self.writer = None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            self.path = os.path.join(out_dir, EXAMPLES)
            self.writer = pa.ipc.new_file(self.path + ".tmp", self.schema)

    def add(self, parts: list[dict]) -> None:
        self.pending.append(parts)
        self.rows += 1
        if len(self.pending) >= 512:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        cols = {}
        for i, p in enumerate(self.prefixes):
            for k in ("input_ids", "labels", "position_ids"):
                flat = np.concatenate([parts[i][k] for parts in self.pending])
                self.hash.update(flat.tobytes())
                cols[p + k] = pa.FixedSizeListArray.from_arrays(pa.array(flat), len(self.pending[0][i][k]))
        if self.writer:
            self.writer.write_batch(pa.record_batch(cols, schema=self.schema))
        self.pending = []

    def close(self) -> None:
        self._flush()
        if self.writer:
            self.writer.close()
            os.replace(self.path + ".tmp", self.path)

    def abort(self) -> None:
        if self.writer:
            self.writer.close()
            os.remove(self.path + ".tmp")

    @property
    def fingerprint(self) -> str:
        return self.hash.hexdigest()[:16]


def write_meta(out_dir: str, key: dict, stats: Stats, fingerprint: str) -> None:
    meta = {"key": key, "fingerprint": fingerprint, "stats": dataclasses.asdict(stats)}
    with open(os.path.join(out_dir, META + ".tmp"), "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(os.path.join(out_dir, META + ".tmp"), os.path.join(out_dir, META))


def read_meta(out_dir: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, META)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
