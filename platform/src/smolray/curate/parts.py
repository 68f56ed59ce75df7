"""Reading raw inputs into work parts, and writing parts so that a part is whole or absent.

Every document gets an `idx` that never changes: file number << 32 | line
(or row) number in the sorted input list. Dedup keeps the smallest idx of a
group, so the kept copy is the first in input order whatever the cluster's
shape, and the output is the same however the work was scheduled.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from smolray.curate import CurateError
from smolray.curate.config import Inputs

ROW_BITS = 32


def write_atomic(table: pa.Table, path: str) -> None:
    """A parquet file renamed into place only when whole."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def jsonl_records(path: str) -> tuple[list, list[str]]:
    """(records or drop reasons per line, field names seen) of a JSONL file; reasons are strings."""
    from smolray.data.shards import filesystem

    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # pyarrow already inflates local .gz files by their name
        raw = gzip.decompress(raw)
    out, names = [], set()
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append("read.not_utf8")
            continue
        except json.JSONDecodeError:
            out.append("read.bad_json")
            continue
        if not isinstance(rec, dict):
            out.append("read.bad_json")
            continue
        names.update(rec)
        out.append(rec)
    return out, sorted(names)


def _rows(path: str) -> tuple[list, list[str]]:
    from smolray.data.shards import filesystem

    fs, p = filesystem(path)
    table = pq.read_table(p, filesystem=fs)
    return table.to_pylist(), table.schema.names


def read_file(path: str, number: int, cfg: Inputs) -> tuple[list[dict], list[dict], list[str]]:
    """(documents, dropped rows, the file's field names) of one input file.

    A file no document of which has the text field is refused (a wrong
    `text_field` would otherwise drop the whole corpus as "no text").
    """
    from smolray.data.raw import file_format

    try:
        recs, names = (_rows if file_format(path) == "parquet" else jsonl_records)(path)
    except (OSError, pa.ArrowException) as e:
        raise CurateError(f"{path}: cannot be read ({type(e).__name__}: {e}); fix the file or remove it "
                          "from inputs.raw") from None
    if recs and cfg.text_field not in names:
        raise CurateError(f"{path}: no record has the field inputs.text_field={cfg.text_field!r} (fields: "
                          f"{names}); set inputs.text_field to the field that holds the text")
    name = os.path.basename(path.partition("?")[0])
    docs, dropped = [], []
    for line, rec in enumerate(recs):
        idx = number << ROW_BITS | line
        reason, text = None, None
        if isinstance(rec, str):
            reason = rec
        else:
            text = rec.get(cfg.text_field)
            if isinstance(text, bytes) and cfg.html:
                text = _html_bytes(text)
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    reason = "read.not_utf8"
            if reason is None and not isinstance(text, str):
                reason = "read.no_text"
            elif reason is None and not text.strip():
                reason = "read.empty"
            elif reason is None and cfg.html:
                page, text = text, _extract(text, cfg.main_content)
                if not text.strip():
                    reason, text = "read.no_text_in_html", page
        ident = rec.get(cfg.id_field) if isinstance(rec, dict) else None
        row = {"idx": idx, "id": str(ident) if ident is not None else f"{name}:{line + 1}"}
        if reason:
            dropped.append({**row, "reason": reason, "detail": "", "text": text if isinstance(text, str) else ""})
            continue
        docs.append({**row, "text": text, **{k: _plain(rec.get(k)) for k in cfg.keep_fields}})
    return docs, dropped, names


def _html_bytes(raw: bytes) -> str:
    # Pages come in many encodings: detect it from the bytes (and meta tags).
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    return bytes_to_str(raw, detect_encoding(raw))


def _extract(html: str, main_content: bool) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=main_content, alt_texts=False, links=False,
                              form_fields=False, noscript=False)


def _plain(v) -> str | None:
    # Carried as text: a field that is a number in one file and a string in
    # another would otherwise give parts schemas that cannot be read together.
    return None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def doc_schema(keep_fields: list[str], steps) -> pa.Schema:
    """Columns of a kept-document part after `steps`: fixed, so parts of any size (or none) read together."""
    cols = [("idx", pa.int64()), ("id", pa.string()), ("text", pa.string())]
    cols += [(k, pa.string()) for k in keep_fields]
    for s in steps:
        if s.step == "langid":
            cols += [("language", pa.string()), ("language_score", pa.float32())]
        if s.step == "quality_classifier":
            cols += [(s.column, pa.float32())]
    return pa.schema(cols)


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


DROPPED = pa.schema([("idx", pa.int64()), ("id", pa.string()), ("reason", pa.string()),
                     ("detail", pa.string()), ("text", pa.string())])
