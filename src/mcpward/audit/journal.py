"""The audit log's write-ahead journal: what makes a record durable before SQLite has it.

A reply must not leave the gateway before its audit record would survive a crash. Committing a
SQLite transaction per reply costs three statements and a WAL append (60-130 us here); appending one
line to a file costs one `write()`. So `AuditLog` writes each record to this journal as it is
appended (a killed process cannot lose what the kernel already has), and commits to SQLite in
batches off the reply path. With `fsync = "always"` the journal is also `fdatasync`ed, once per
event-loop turn for every record of that turn, before those replies go out.

One journal file per open log (`<log>-journal-<token>`), held under an exclusive `flock` while its
owner lives. SQLite's `meta` table holds `journal:<token>` = the last journal number committed, in
the same transaction as the records, so a crash between the two never duplicates or loses a record.
On open, a journal whose lock can be taken belongs to a process that is gone: its records after
that number are chained into the log, then the file and the marker are removed.

Line format: `[number, ts, event]` as JSON, a tab, the record body exactly as it will be stored.
orjson never writes a raw tab or newline inside a JSON value, so the first tab and the newline
delimit fields without a second serialisation. A torn last line (power loss mid-write, never an
acknowledged record) is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger("mcpward.auditlog")
META_PREFIX = "journal:"


@dataclass(frozen=True, slots=True)
class Entry:
    number: int
    ts: float
    event: str
    body: bytes


def journal_glob(db_path: Path) -> Iterator[Path]:
    return db_path.parent.glob(f"{db_path.name}-journal-*")


def token_of(path: Path, db_path: Path) -> str:
    return path.name[len(db_path.name) + len("-journal-"):]


class Journal:
    """An append-only file owned by one `AuditLog` (flock-held until `close`)."""

    def __init__(self, db_path: Path) -> None:
        self.token = secrets.token_hex(8)
        self.path = db_path.parent / f"{db_path.name}-journal-{self.token}"
        self.key = META_PREFIX + self.token
        # Created and locked under a name recovery does not look at, then renamed: a recovering process
        # must never find our journal unlocked, or it would take it for an orphan.
        hidden = db_path.parent / f"{db_path.name}.new-journal-{self.token}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                hidden.unlink()
            raise
        self._fd = fd
        self.dirty = False  # something was written since the last reset

    def write(self, number: int, ts: float, event: str, body: bytes) -> None:
        """One `write()`: the record is in the kernel when this returns (OSError if it is not)."""
        line = orjson.dumps([number, ts, event]) + b"\t" + body + b"\n"
        written = os.write(self._fd, line)
        if written != len(line):  # a short write to a regular file means the disk is full
            raise OSError(28, "short write to the audit journal (disk full?)")
        self.dirty = True

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def reset(self) -> None:
        """Everything written is committed to SQLite: start the file over (O_APPEND writes at the new end)."""
        os.ftruncate(self._fd, 0)
        self.dirty = False

    def release(self) -> None:
        """Close without removing: what is left in it is recovered by the next open of the log."""
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def close(self) -> None:
        """Remove the file (call only once SQLite holds every record written to it).

        Unlinked before the lock is released, so a recovering process that gets the lock next sees a
        file with no name left (`st_nlink == 0`) and leaves it alone."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def read_entries(path: Path) -> list[Entry]:
    """The complete lines of a journal; a torn last line is dropped (and logged)."""
    entries: list[Entry] = []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for number, line in enumerate(lines, 1):
        entry = _parse(line)
        if entry is None:
            log.error("audit journal %s: line %d is unreadable; it and the %d lines after it are skipped", path,
                      number, len(lines) - number)
            return entries
        entries.append(entry)
    if tail:
        log.warning("audit journal %s: its last line was cut off mid-write (never acknowledged); ignored", path)
    return entries


def _parse(line: bytes) -> Entry | None:
    head, tab, body = line.partition(b"\t")
    if not tab:
        return None
    try:
        number, ts, event = orjson.loads(head)
        orjson.loads(body)  # a complete JSON value, or the line is damaged
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
    if type(number) is not int or not isinstance(ts, int | float) or type(event) is not str:
        return None
    return Entry(number, float(ts), event, body)


def unfinished(db_path: Path) -> list[tuple[Path, int]]:
    """Journals left by processes that died, each with its count of complete lines (read-only: for
    tools that only read the log; the records are added by the next open of the log for writing)."""
    found = []
    for path in sorted(journal_glob(db_path)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while its owner lives
            if os.fstat(fd).st_nlink:
                found.append((path, path.read_bytes().count(b"\n")))
        except OSError:
            pass
        finally:
            os.close(fd)
    return [(path, lines) for path, lines in found if lines]


def orphans(db_path: Path) -> Iterator[tuple[Path, str, int]]:
    """Journals of processes that are gone, each with its token and a descriptor holding its lock.

    The caller closes the descriptor after recovering (or skipping) the journal. A journal whose lock
    is held belongs to a live process and is not yielded."""
    for path in sorted(journal_glob(db_path)):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile by its owner
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:  # its owner (or another recovery) finished and removed it
                raise OSError("gone")
        except OSError:
            os.close(fd)
            continue
        yield path, token_of(path, db_path), fd


def remove_unborn(db_path: Path) -> None:
    """Remove journals that died between creation and rename (empty: nothing is written before it)."""
    for path in db_path.parent.glob(f"{db_path.name}.new-journal-*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
        except OSError:
            pass  # being created right now by a live process
        finally:
            os.close(fd)
