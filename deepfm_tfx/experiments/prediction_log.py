"""Durable, bounded, rotated JSON-lines logs: what a warehouse loads as is.

One writer (a server process, a `experiment outcomes` run) owns its files:

    <folder>/<prefix>-<writer>-<seq>.jsonl      the open file, appended to
    <folder>/<prefix>-<writer>-<seq>.jsonl.gz   a closed one (BigQuery, Snowflake and Spark read gzipped JSON lines)

Records are buffered in memory and written and fsynced every
`flush_seconds` by a background thread (and at close), so a crash loses at
most the records since the last flush, and a torn last line is skipped (and
counted) by the reader. A file past `max_file_bytes` is closed, gzipped
(to a temporary name, fsynced, renamed, then the plain file removed: a crash
at any step leaves one complete copy) and a new one opened. Past
`max_files`, the oldest closed files are deleted and each deletion is noted
in `<folder>/retention.jsonl`, so the log stays bounded and a report can say
what it no longer sees.
"""
from __future__ import annotations

import gzip
import logging
import os
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import orjson

from deepfm_tfx.model_repository import fsync_dir

log = logging.getLogger("deepfm_tfx.experiments")

RETENTION_FILE = "retention.jsonl"
_OPEN, _CLOSED, _TMP = ".jsonl", ".jsonl.gz", ".tmp"


def writer_id() -> str:
    """Unique per writer, so two processes never append to the same file."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{int(time.time() * 1000)}"


def encode(record: Dict[str, Any]) -> bytes:
    # orjson writes NaN as null, which every JSON reader takes.
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


class JsonLinesLog:
    def __init__(self, folder: str, prefix: str, max_file_bytes: int = 64 << 20, max_files: int = 2000,
                 flush_seconds: float = 1.0, max_buffer_records: int = 200_000, background: bool = True):
        self.folder, self.prefix = folder, prefix
        self.max_file_bytes, self.max_files = max_file_bytes, max_files
        self.flush_seconds = flush_seconds
        self.max_buffer_records = max_buffer_records
        self.writer = writer_id()
        self._buffer: List[bytes] = []
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one flush at a time, in order
        self._seq = 0
        self._file = None
        self._file_bytes = 0
        self.records_written = 0
        self.flush_errors = 0
        self._closed = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        os.makedirs(folder, exist_ok=True)
        if background:
            self._thread = threading.Thread(target=self._flusher, name=f"log-{prefix}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ writing

    def append(self, records: List[Dict[str, Any]], flush: bool = False) -> None:
        """Buffers records; with flush, returns once they are on disk. Never drops a record:
        past max_buffer_records the caller writes the buffer itself."""
        if self._closed:
            raise RuntimeError(f"log {self.folder}/{self.prefix} is closed")
        lines = [encode(r) for r in records]
        with self._buffer_lock:
            self._buffer.extend(lines)
            full = len(self._buffer) >= self.max_buffer_records
        if flush or full:
            self.flush()

    def flush(self) -> int:
        """Writes and fsyncs what is buffered; returns the records written."""
        with self._write_lock:
            with self._buffer_lock:
                lines, self._buffer = self._buffer, []
            if not lines:
                return 0
            try:
                self._write(lines)
            except OSError:
                with self._buffer_lock:  # keep them for the next try, in order
                    self._buffer[:0] = lines
                self.flush_errors += 1
                raise
            self.records_written += len(lines)
            return len(lines)

    def _write(self, lines: List[bytes]) -> None:
        if self._file is None:
            self._open_next()
        data = b"".join(lines)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file_bytes += len(data)
        if self._file_bytes >= self.max_file_bytes:
            self._rotate()

    def _path(self, seq: int, suffix: str) -> str:
        return os.path.join(self.folder, f"{self.prefix}-{self.writer}-{seq:06d}{suffix}")

    def _open_next(self) -> None:
        self._seq += 1
        self._file = open(self._path(self._seq, _OPEN), "ab")
        self._file_bytes = 0
        fsync_dir(self.folder)  # the new name survives a crash too

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        plain = self._path(self._seq, _OPEN)
        compress(plain)
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        closed = sorted((os.path.getmtime(p), p) for p in _files(self.folder, self.prefix) if p.endswith(_CLOSED))
        plain = [p for p in _files(self.folder, self.prefix) if p.endswith(_OPEN)]
        excess = len(closed) + len(plain) + 1 - self.max_files  # + the file this writer opens next
        for _, path in closed[:max(excess, 0)]:
            size = os.path.getsize(path)
            os.remove(path)
            with open(os.path.join(self.folder, RETENTION_FILE), "ab") as f:
                f.write(encode({"deleted": os.path.basename(path), "bytes": size, "time": time.time(),
                                "why": f"more than {self.max_files} files"}))
                f.flush()
                os.fsync(f.fileno())
            log.warning("%s: deleted %s (retention: at most %d files)", self.folder, path, self.max_files)

    def _flusher(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except OSError as e:  # disk full, say: keep the records and try again
                log.error("cannot write %s/%s: %s; retrying", self.folder, self.prefix, e)

    def close(self) -> None:
        """Flushes everything; the open file stays plain JSON lines (readable as is)."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        self._closed = True
        with self._write_lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @property
    def pending(self) -> int:
        with self._buffer_lock:
            return len(self._buffer)


def compress(plain: str) -> str:
    """plain.jsonl -> plain.jsonl.gz; at every step one complete copy exists."""
    target = plain[:-len(_OPEN)] + _CLOSED
    tmp = target + _TMP
    with open(plain, "rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            while chunk := src.read(1 << 20):
                gz.write(chunk)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, target)
    fsync_dir(os.path.dirname(plain) or ".")
    os.remove(plain)
    return target


# ------------------------------------------------------------ reading

def _files(folder: str, prefix: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        if name.startswith(prefix + "-") and (name.endswith(_OPEN) or name.endswith(_CLOSED)):
            out.append(os.path.join(folder, name))
    return out


def files(folder: str, prefix: str) -> List[str]:
    """The log's files in write order; a file both plain and gzipped (a crash mid-compression) once."""
    paths = _files(folder, prefix)
    closed = {p[:-len(_CLOSED)] for p in paths if p.endswith(_CLOSED)}
    kept = [p for p in paths if not (p.endswith(_OPEN) and p[:-len(_OPEN)] in closed)]
    return sorted(kept, key=lambda p: os.path.basename(p).rsplit(".jsonl", 1)[0])


class ReadStats:
    def __init__(self):
        self.files = 0
        self.records = 0
        self.torn_lines = 0       # an unfinished last line (a crash mid-write) or a damaged one
        self.deleted_files = 0    # by retention

    def to_dict(self) -> Dict[str, int]:
        return dict(vars(self))


def read(folder: str, prefix: str, stats: Optional[ReadStats] = None) -> Iterator[Dict[str, Any]]:
    stats = stats if stats is not None else ReadStats()
    retention = os.path.join(folder, RETENTION_FILE)
    if os.path.exists(retention):
        with open(retention, "rb") as f:
            stats.deleted_files += sum(1 for line in f if line.strip())
    for path in files(folder, prefix):
        stats.files += 1
        for record in _read_file(path, stats):
            stats.records += 1
            yield record


def _read_file(path: str, stats: ReadStats) -> Iterator[Dict[str, Any]]:
    opener = gzip.open if path.endswith(_CLOSED) else open
    try:
        with opener(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    stats.torn_lines += 1
                    continue
                if isinstance(record, dict):
                    yield record
                else:
                    stats.torn_lines += 1
    except (OSError, EOFError) as e:  # a damaged gzip member: what was read stands
        log.error("%s: %s", path, e)
        stats.torn_lines += 1


def read_all(folder: str, prefix: str) -> Tuple[List[Dict[str, Any]], ReadStats]:
    stats = ReadStats()
    return list(read(folder, prefix, stats)), stats
