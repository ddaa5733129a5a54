"""JSON lines: `export_jsonl` (a whole log, for archiving or another machine) and `Mirror`, the file the
gateway appends each committed record to when `[audit] jsonl` is set (for log shippers).

Line 1 is a header, `{"mcpward_audit": 1, "algorithm": ..., "key_fingerprint": ...}`; every other
line is one record: `{"seq", "ts", "event", "fields", "prev", "hash"}`. `fields` is the stored body
as it is (canonical JSON), so `mcpward audit verify` recomputes the same hashes from the file alone.
A keyed log's export ends with its head seal, `{"mcpward_audit_head": 1, "seq": N, "seal": ...}`
(copied from the database, read in the same transaction as the records), and the mirror gets one
after every batch it appends: verify fails a keyed file whose records do not end with a valid seal,
so a cut export is caught (see chain.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import orjson

from mcpward.audit.chain import FORMAT_VERSION, HEAD_META, HEADER_KEY, seal_line, seal_text

StoredRow = tuple[int, float, str, str, str, str]  # seq, ts, event, body, prev, hash
SELECT_ALL = "SELECT seq, ts, event, body, prev, hash FROM records"
TAIL_WINDOW = 1 << 20  # how far back from the end of a mirror we look for its last record


def connect_ro(db: Path) -> sqlite3.Connection:
    """Read-only: readers never take the write lock, and never create a file that is not there."""
    return sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)


def header(algorithm: str, fingerprint: str) -> bytes:
    return orjson.dumps({HEADER_KEY: int(FORMAT_VERSION), "algorithm": algorithm,
                         "key_fingerprint": fingerprint}) + b"\n"


def line(row: StoredRow) -> bytes:
    """One record as a JSON line; the body is embedded as stored (it is canonical JSON already)."""
    seq, ts, event, body, prev, digest = row
    return b"".join((b'{"seq":', str(int(seq)).encode(), b',"ts":', orjson.dumps(float(ts)), b',"event":',
                     orjson.dumps(event), b',"fields":', body.encode("utf-8"), b',"prev":', orjson.dumps(prev),
                     b',"hash":', orjson.dumps(digest), b"}\n"))


def display_line(row: StoredRow) -> bytes:
    """`line(row)` for reading (`audit tail --json`, `search --json`), never for verifying. A body that
    is not one JSON value was edited outside the gateway: embedded as it is, raw control bytes would
    reach the terminal and the line would not parse (or could add keys of its own). It is shown
    instead as `{"unparsable_body": "..."}`, escaped down to ASCII; `audit verify` reports the edit."""
    try:
        orjson.loads(row[3])
    except orjson.JSONDecodeError:
        shown = json.dumps({"unparsable_body": row[3]}, ensure_ascii=True)
        return line((row[0], row[1], row[2], shown, row[4], row[5]))
    return line(row)


def export_jsonl(db: Path, out: Path | IO[bytes]) -> int:
    """Write every record of the SQLite log `db` to `out` (a path, or a binary stream); returns the count.
    Read in one transaction, so the export is a consistent prefix of a log that is still growing."""
    conn = connect_ro(db)
    try:
        conn.execute("BEGIN")  # the meta's head seal and the rows from one snapshot
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        rows = conn.execute(SELECT_ALL + " ORDER BY seq")
        if isinstance(out, Path):
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                return _write_all(handle, meta, rows)
        return _write_all(out, meta, rows)
    finally:
        conn.close()


def _write_all(handle: IO[bytes], meta: dict[str, str], rows: Iterable[StoredRow]) -> int:
    handle.write(header(meta.get("algorithm", "sha256"), meta.get("key_fingerprint", "")))
    count = 0
    for row in rows:
        handle.write(line(row))
        count += 1
    seal = seal_text(meta.get(HEAD_META, ""))
    if seal is not None:
        handle.write(seal_line(seal.seq, seal.mac))
    handle.flush()
    return count


class Mirror:
    """The JSONL mirror of one log. Each sync appends, under an exclusive lock on the file, every
    committed record the file does not have yet: normally just the batch that was committed, and after
    a crash, or when another process appended to the same log, whatever is missing, read from the
    database. So the mirror is always the log's records in seq order, and a verifiable chain."""

    def __init__(self, path: Path, algorithm: str, fingerprint: str, fsync: bool,
                 seal: Callable[[int, str], str | None] = lambda seq, digest: None) -> None:
        """`seal(seq, hash)`: the head seal for a batch ending there (None for an unkeyed log)."""
        self.path = path
        self._seal = seal
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._header = header(algorithm, fingerprint)
        self._fsync = fsync
        self._size = -1  # the file's size after our last write, and the last seq it then held
        self._last = 0

    def sync(self, db: sqlite3.Connection, rows: list[StoredRow]) -> None:
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            last = self._last if size == self._size else self._read_last(size)
            size = os.fstat(fd).st_size
            parts: list[bytes] = [self._header] if size == 0 else []
            end: StoredRow | None = None  # the last record appended now
            if rows and rows[0][0] == last + 1:
                parts += [line(r) for r in rows]
                end = rows[-1]
            elif not rows or rows[-1][0] > last:
                for r in db.execute(SELECT_ALL + " WHERE seq > ? ORDER BY seq", (last,)):
                    parts.append(line(r))
                    end = r
            if end is not None:
                last = end[0]
                mac = self._seal(int(end[0]), str(end[5]))
                if mac is not None:  # in the same write() as the records, so the file always ends sealed
                    parts.append(seal_line(last, mac))
            if parts:
                _write(fd, b"".join(parts))
                if self._fsync:
                    os.fsync(fd)
            self._size, self._last = os.fstat(fd).st_size, last
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _read_last(self, size: int) -> int:
        """The last seq in the file. A partial last line (a crash mid-write) is cut off: its record is in
        the database and is written again whole."""
        if size == 0:
            return 0
        start = max(0, size - TAIL_WINDOW)
        data = os.pread(self._fd, size - start, start)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            os.ftruncate(self._fd, start + end)
            data = data[:end]
        for raw in reversed(data.splitlines()):
            with contextlib.suppress(orjson.JSONDecodeError):
                obj = orjson.loads(raw)
                if isinstance(obj, dict) and isinstance(obj.get("seq"), int):
                    return int(obj["seq"])
        return 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
