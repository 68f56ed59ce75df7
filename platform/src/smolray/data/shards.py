"""Tokenized shards: the on-disk (or in-bucket) form of one source.

A source directory holds
  manifest.json               what follows, with counts and checksums
  shard-00003-00001.tokens    token ids, little-endian uint16 or uint32, flat
  shard-00003-00001.docs.npy  int64 start offset of each document in the shard
  heldout-00003.parquet       raw text of the documents held out for validation
  done-00003.json             what one input file produced (data/tokenize_file.py)
for each input file (00003) and part of it (00001). Every document ends
with EOS. Sources tokenized before per-file shards have shard-00000 and one
heldout.parquet; they read the same. Flat token files let the sampler
read any span with one ranged read (`read_at`), which works the same on a
local disk and on S3, so the mixer never downloads a whole shard.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

MANIFEST = "manifest.json"
# What write_shard names files (shard-00003-00001), and nothing that could leave the dir.
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# The one held-out file of a manifest that predates heldout_files.
HELDOUT = "heldout.parquet"
FORMAT_VERSION = 1
# Remote reads: requests in flight per reader, and the gap (in tokens) below
# which two spans of a shard are fetched as one request: a round trip costs
# more than reading 64 KiB (of uint16 tokens) more.
_REMOTE_READS = 16
_MERGE_GAP_TOKENS = 32768


class ShardError(RuntimeError):
    """A source directory that cannot be read as the manifest says."""


@dataclass(frozen=True)
class Shard:
    file: str
    docs: int
    tokens: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    source: str
    dtype: str  # "uint16" or "uint32"
    eos_id: int
    tokenizer: str  # tokenizer fingerprint (see smolray.tokenizer.fingerprint)
    shards: list[Shard] = field(default_factory=list)
    # The raw files and their sizes, so a re-run can tell nothing changed.
    inputs: list[str] = field(default_factory=list)
    skipped_empty: int = 0
    skipped_short: int = 0  # documents under min_doc_tokens, left out
    min_doc_tokens: int = 0
    # Documents set aside for validation (in heldout_files, not in shards).
    heldout_fraction: float = 0.0
    heldout_docs: int = 0
    # Parquet files of held-out text in input order; see heldout_names.
    heldout_files: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def docs(self) -> int:
        return sum(s.docs for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def to_json(self) -> str:
        d = asdict(self)
        d["total_docs"], d["total_tokens"] = self.docs, self.tokens
        return json.dumps(d, indent=2) + "\n"

    @staticmethod
    def from_json(text: str, where: str) -> Manifest:
        try:
            d = json.loads(text)
            d.pop("total_docs", None)
            d.pop("total_tokens", None)
            d["shards"] = [Shard(**s) for s in d["shards"]]
            m = Manifest(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise ShardError(f"{where}: not a smolray manifest ({e}); re-run jobs/tokenize.py") from None
        # Shard files are joined to the source dir: a name with a path in it
        # ("../x", "/etc/x") would read outside it.
        names = [("shard file", s.file) for s in m.shards] + [("held-out file", h) for h in m.heldout_files]
        for kind, name in names:
            if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
                raise ShardError(f"{where}: {kind} name {name!r} in {MANIFEST} is not a plain "
                                 "file name (letters, digits, '.', '_', '-'); the manifest was not "
                                 "written by jobs/tokenize.py: re-run it")
        return m


def heldout_names(m: Manifest) -> list[str]:
    """The held-out text files of a source, in input order."""
    if m.heldout_fraction <= 0:
        return []
    # A manifest written before heldout_files kept them all in one file.
    return list(m.heldout_files) or [HELDOUT]


def heldout_uris(uri: str, manifest: Manifest | None = None) -> list[str]:
    """The held-out text files of the source at `uri`, as URIs, in input order."""
    return [join_uri(uri, name) for name in heldout_names(manifest or read_manifest(uri))]


def shard_name(file: int, part: int) -> str:
    """Shard `part` of input file `file`: names sort in the stream's order."""
    return f"shard-{file:05d}-{part:05d}"


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path for a local path or a URI.

    pyarrow's own filesystems (local, s3://, gs://, hdfs://) first; any other
    scheme fsspec knows (hf://, az://, ...) is wrapped for pyarrow.
    """
    if "://" not in uri:
        import os

        return pafs.LocalFileSystem(), os.path.abspath(uri)
    parts = urlsplit(uri)
    if parts.scheme in ("s3", "gs"):
        # One filesystem per bucket (and credentials and options): building
        # one looks up the bucket's region, a round trip (seconds of retries
        # offline) that every source in the bucket would otherwise repeat.
        bucket = parts.netloc.rsplit("@", 1)[-1]
        return _bucket_filesystem(parts.scheme, parts.netloc, parts.query), bucket + parts.path.rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


_buckets: dict[tuple[str, str, str], pafs.FileSystem] = {}
_failed: dict[tuple[str, str, str], tuple[float, OSError]] = {}
_buckets_lock = threading.Lock()
_RETRY_AFTER_S = 60.0


def _bucket_filesystem(scheme: str, netloc: str, query: str) -> pafs.FileSystem:
    # A failed lookup is remembered for a minute: the sources of one bucket
    # (read in parallel by build_plan) wait once, not once each, and a
    # long-lived worker still recovers from a passing network error.
    key = (scheme, netloc, query)
    with _buckets_lock:
        if key in _buckets:
            return _buckets[key]
        when, error = _failed.get(key, (0.0, None))
        if error is not None and time.monotonic() - when < _RETRY_AFTER_S:
            raise error
        try:
            fs = pafs.FileSystem.from_uri(f"{scheme}://{netloc}" + (f"?{query}" if query else ""))[0]
        except OSError as e:
            _failed[key] = (time.monotonic(), e)
            raise
        _buckets[key] = fs
        return fs


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def join_uri(uri: str, name: str) -> str:
    """A file in the directory `uri`, keeping its query options (?endpoint_override=...)."""
    base, sep, query = uri.partition("?")
    return join(base, name) + sep + query


def write_shard(fs: pafs.FileSystem, base: str, index: int | str, docs: list[np.ndarray],
                dtype: str) -> Shard:
    """Write one shard from a list of token arrays (each already ending in EOS).

    `index` is a number (shard-00003) or a whole name (see shard_name).
    """
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.concatenate(docs).astype(dtype, copy=False) if docs else np.zeros(0, dtype)
    data = tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes()
    name = index if isinstance(index, str) else f"shard-{index:05d}"
    buf = io.BytesIO()
    np.save(buf, starts)
    for suffix, payload in ((".tokens", data), (".docs.npy", buf.getvalue())):
        put(fs, join(base, name + suffix), payload)
    return Shard(file=name, docs=len(docs), tokens=len(tokens), sha256=hashlib.sha256(data).hexdigest())


def put(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    """Write a whole file under a temporary name, then move it into place.

    A crash never leaves a file that looks complete but is not, and a retried
    task that writes the same name again replaces it whole.
    """
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(payload)
    fs.move(tmp, path)


def write_manifest(fs: pafs.FileSystem, base: str, manifest: Manifest) -> None:
    put(fs, join(base, MANIFEST), manifest.to_json().encode())


def read_manifest(uri: str) -> Manifest:
    try:
        fs, base = filesystem(uri)
    except OSError as e:  # e.g. a bucket whose region cannot be looked up offline
        raise ShardError(f"{uri}: cannot reach its filesystem ({str(e).splitlines()[0][:300]})") from None
    path = join(base, MANIFEST)
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode()
    except (FileNotFoundError, OSError) as e:
        raise ShardError(
            f"{uri}: no {MANIFEST} ({e.__class__.__name__}); tokenize this source first "
            "with `python jobs/tokenize.py --config <recipe>`"
        ) from None
    return Manifest.from_json(text, path)


class SourceReader:
    """Random access to one source's token stream: its shards laid end to end."""

    def __init__(self, uri: str, manifest: Manifest | None = None):
        self.uri = uri
        self.fs, self.base = filesystem(uri)
        self.manifest = manifest or read_manifest(uri)
        self.dtype = np.dtype(self.manifest.dtype).newbyteorder("<")
        sizes = [s.tokens for s in self.manifest.shards]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        doc_counts = [s.docs for s in self.manifest.shards]
        self.doc_base = np.concatenate([[0], np.cumsum(doc_counts)]).astype(np.int64)
        self._files: dict[int, pafs.NativeFile] = {}
        self._maps: dict[int, np.ndarray] = {}
        self._doc_index: dict[int, np.ndarray] = {}
        # A local shard is memory-mapped and sliced (no system call per span);
        # a remote one is read with concurrent ranged requests.
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def tokens(self) -> int:
        return int(self.starts[-1])

    def _file(self, shard: int) -> pafs.NativeFile:
        f = self._files.get(shard)
        if f is None:
            path = join(self.base, self.manifest.shards[shard].file + ".tokens")
            try:
                # A local shard is memory-mapped once: ranged reads and the
                # batched gather both slice that one mapping.
                f = pa.memory_map(path) if self._local else self.fs.open_input_file(path)
            except (FileNotFoundError, OSError) as e:
                raise ShardError(f"{path}: missing or unreadable ({e}); re-run jobs/tokenize.py") from None
            want = self.manifest.shards[shard].tokens * self.dtype.itemsize
            if f.size() != want:
                raise ShardError(
                    f"{path}: {f.size()} bytes but the manifest says {want}; the shard is "
                    "truncated or from another run: re-run jobs/tokenize.py for this source"
                )
            self._files[shard] = f
        return f

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of the stream."""
        if start < 0 or start + count > self.tokens:
            raise IndexError(f"{self.uri}: span {start}+{count} outside {self.tokens} tokens")
        out = np.empty(count, dtype=np.int64)
        done, pos = 0, start
        while done < count:
            shard = int(np.searchsorted(self.starts, pos, side="right") - 1)
            local = pos - int(self.starts[shard])
            n = min(count - done, int(self.starts[shard + 1]) - pos)
            raw = self._file(shard).read_at(n * self.dtype.itemsize, local * self.dtype.itemsize)
            out[done : done + n] = np.frombuffer(raw, dtype=self.dtype)
            done, pos = done + n, pos + n
        return out

    def gather(self, pos: np.ndarray, count: int, out: np.ndarray, rows: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Spans [pos[i], pos[i] + count) into out[rows[i]], in one batch.

        Returns the (document, offset in it) of each span's first token, as
        `locate` would. The training stream reads a few hundred spans per
        task from all over the source, so the cost per span is what counts.
        """
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos) and (pos.min() < 0 or pos.max() + count > self.tokens):
            raise IndexError(f"{self.uri}: a span of {count} outside {self.tokens} tokens")
        shard = np.searchsorted(self.starts, pos, side="right") - 1
        local = pos - self.starts[shard]
        inside = local + count <= self.starts[shard + 1] - self.starts[shard]
        if self._local:
            # Plain ints: numpy scalars would triple the cost of this loop.
            maps = {s: self._map(s) for s in np.unique(shard[inside]).tolist()}
            for s, a, r in zip(shard[inside].tolist(), local[inside].tolist(), rows[inside].tolist()):
                out[r] = maps[s][a:a + count]
        else:
            self._fetch(shard[inside], local[inside], count, out, rows[inside])
        for i in np.flatnonzero(~inside):  # a span across two shards: rare, read piecewise
            out[rows[i]] = self.read(int(pos[i]), count)
        doc, offset = np.empty_like(pos), np.empty_like(pos)
        order = np.argsort(shard, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(shard[order])) + 1):
            if len(group):
                s = int(shard[group[0]])
                starts = self._docs(s)
                d = np.searchsorted(starts, local[group], side="right") - 1
                doc[group], offset[group] = self.doc_base[s] + d, local[group] - starts[d]
        return doc, offset

    def _map(self, shard: int) -> np.ndarray:
        m = self._maps.get(shard)
        if m is None:
            f = self._file(shard)  # mapped and checked against the manifest's size
            f.seek(0)
            # A view of the mapping, not a copy (pyarrow's read_buffer is zero-copy on a map).
            m = self._maps[shard] = np.frombuffer(f.read_buffer(), dtype=self.dtype)
        return m

    def _fetch(self, shard: np.ndarray, local: np.ndarray, count: int, out: np.ndarray,
               rows: np.ndarray) -> None:
        """Remote spans as concurrent ranged reads, neighbours merged into one request."""
        size = self.dtype.itemsize
        order = np.lexsort((local, shard))
        runs: list[list] = []  # [shard, first token, end, span indices]
        for i in order:
            s, a = int(shard[i]), int(local[i])
            if runs and runs[-1][0] == s and a - runs[-1][2] <= _MERGE_GAP_TOKENS:
                runs[-1][2] = max(runs[-1][2], a + count)
                runs[-1][3].append(int(i))
            else:
                runs.append([s, a, a + count, [int(i)]])

        def one(run):
            s, a, b, members = run
            data = np.frombuffer(self._file(s).read_at((b - a) * size, a * size), dtype=self.dtype)
            for i in members:
                out[rows[i]] = data[local[i] - a:local[i] - a + count]

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=_REMOTE_READS)
        list(self._pool.map(one, runs))

    def locate(self, pos: int) -> tuple[int, int]:
        """(document index within the source, offset within that document) of token `pos`."""
        shard = int(np.searchsorted(self.starts, pos, side="right") - 1)
        starts = self._docs(shard)
        local = pos - int(self.starts[shard])
        d = int(np.searchsorted(starts, local, side="right") - 1)
        return int(self.doc_base[shard]) + d, local - int(starts[d])

    def _docs(self, shard: int) -> np.ndarray:
        idx = self._doc_index.get(shard)
        if idx is None:
            path = join(self.base, self.manifest.shards[shard].file + ".docs.npy")
            try:
                with self.fs.open_input_file(path) as f:
                    idx = np.load(io.BytesIO(f.read()))
            except (FileNotFoundError, OSError, ValueError) as e:
                raise ShardError(f"{path}: missing or unreadable ({e}); re-run jobs/tokenize.py") from None
            self._doc_index[shard] = idx
        return idx


@functools.lru_cache(maxsize=64)
def cached_reader(uri: str, manifest_json: str) -> SourceReader:
    """One open reader per (source, manifest) per process: Ray Data tasks reuse it."""
    return SourceReader(uri, Manifest.from_json(manifest_json, uri))
