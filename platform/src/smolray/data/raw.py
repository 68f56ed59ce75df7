"""Raw documents: parquet or JSON-lines files on any pyarrow filesystem."""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterator

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from smolray.data.shards import filesystem

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


class RawDataError(ValueError):
    pass


def file_format(path: str) -> str:
    path = path.partition("?")[0]
    for ext, fmt in FORMATS.items():
        if path.endswith(ext) or path.endswith(ext + ".gz"):
            return fmt
    raise RawDataError(f"{path}: unknown format; raw documents must be .parquet, .jsonl or .json(.gz)")


def expand(patterns: list[str], field: str) -> list[str]:
    """Sorted file list for glob patterns or directories, local or remote."""
    out: list[str] = []
    for pat in patterns:
        found = _expand_one(pat)
        if not found:
            raise RawDataError(f"{field}: {pat!r} matches no files; check the path or glob")
        out.extend(found)
    for f in out:
        file_format(f)
    return out


def _expand_one(pat: str) -> list[str]:
    if "://" not in pat:
        if os.path.isdir(pat):
            return sorted(p for p in glob.glob(os.path.join(pat, "**", "*"), recursive=True)
                          if os.path.isfile(p) and _known(p))
        return sorted(p for p in glob.glob(pat) if os.path.isfile(p))
    # Query options (?endpoint_override=...) configure the filesystem; keep
    # them on every expanded path so each one opens the same way anywhere.
    base, _, query = pat.partition("?")
    fs, path = filesystem(pat)
    scheme, rest = base.split("://", 1)
    netloc = rest.split("/", 1)[0]
    # Credentials in the URI (user:key@bucket) stay with every path too.
    prefix = scheme + "://" + (netloc.rsplit("@", 1)[0] + "@" if "@" in netloc else "")
    has_glob = any(c in path for c in "*?[")
    root = path.split("*")[0].rsplit("/", 1)[0] if has_glob else path
    info = fs.get_file_info(root)
    suffix = "?" + query if query else ""
    if info.type == pafs.FileType.File:
        return [pat]
    if info.type != pafs.FileType.Directory:
        return []
    files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    keep = [f.path for f in files if f.type == pafs.FileType.File and
            (fnmatch.fnmatch(f.path, path) if has_glob else _known(f.path))]
    return sorted(prefix + p + suffix for p in keep)


def identities(files: list[str]) -> list[str]:
    """`path:size` of each file, for up-to-date checks; credentials in a URI
    (s3://key:secret@bucket) are never written out."""
    out = []
    for f in files:
        fs, p = filesystem(f)
        out.append(f"{re.sub(r'://[^/@]+@', '://', f)}:{fs.get_file_info(p).size}")
    return out


def _known(path: str) -> bool:
    path = path.partition("?")[0]
    return any(path.endswith(e) or path.endswith(e + ".gz") for e in FORMATS)


def iter_texts(files: list[str], text_field: str, max_bytes: int | None = None) -> Iterator[str]:
    """Texts in file order, stopping after about max_bytes (for tokenizer training)."""
    seen = 0
    for path in files:
        for batch in text_batches(path, text_field):
            for text in batch:
                if not text:
                    continue
                yield text
                seen += len(text)
                if max_bytes is not None and seen >= max_bytes:
                    return


def text_batches(path: str, text_field: str) -> Iterator[list[str | None]]:
    """The texts of one file in row order, a batch at a time, empty rows included."""
    fs, p = filesystem(path)
    ds = pads.dataset(p, filesystem=fs, format=file_format(path))
    if text_field not in ds.schema.names:
        raise RawDataError(f"{path}: no field {text_field!r} (has {ds.schema.names}); set text_field")
    for batch in ds.to_batches(columns=[text_field]):
        yield batch.column(0).to_pylist()
