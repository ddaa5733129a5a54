"""`AuditLog`: the hash-chained audit log in SQLite, with a write-ahead journal, group commit and an
optional JSONL mirror.

The append path is on every tool call, so it only cleans the fields (redact, escape), serialises
them once and queues. A reply waits on `durable()`, so it goes out only after its record would
survive a crash: a crash never loses an acknowledged record.

Durability (`[audit] fsync`):
- "commit" (default): each record is written to the journal (`journal.py`, one `write()`) as it is
  appended, which is what surviving a killed process needs, and SQLite (WAL, synchronous=NORMAL)
  gets the queued records in one transaction every BATCH_DELAY, off the reply path. A power loss
  may lose the last records (neither file is synced per record). Records left in the journal of a
  process that died are chained into the log when it is next opened.
- "always": no journal; one `flush` per event-loop turn commits everything queued in one
  transaction with synchronous=FULL (the WAL is fsynced at every commit), and the replies of that
  turn wait for it: a record then survives a power loss too, at the price of one fsync per turn.
Without a running event loop (a CLI command) every append is committed at once.

Two processes may append to the same file (the gateway and `mcpward tools approve`): each
transaction is `BEGIN IMMEDIATE` (the write lock) and reads the head inside it, so the chain stays
one chain.

A keyed log's head seal (`meta.head`, see chain.py) is rewritten in the transaction of every commit,
journal recovery included, so it always names the last committed record, whatever crashes. Opening
a keyed log checks the seal before anything is added: records cut off the end (while no gateway
ran) would otherwise be sealed over by the next commit, so a seal naming records that are gone, or
one that does not match, stops the open with AuditError. A missing seal (a log from before seals)
is written then, and the fact is recorded in the log (`audit.head-sealed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mcpward.audit.chain import FORMAT_VERSION, GENESIS, HEAD_META, Hasher
from mcpward.audit.events import AuditError, AuditUnavailable, Digest
from mcpward.audit.export import Mirror
from mcpward.audit.head import check_head
from mcpward.audit.journal import META_PREFIX, Journal, journal_glob, orphans, read_entries, remove_unborn, token_of
from mcpward.audit.settings import AuditSettings
from mcpward.guards.log_redaction import escape
from mcpward.guards.redactor import SECRETS, Profile

if TYPE_CHECKING:
    from mcpward.gateway.config import GatewayConfig
    from mcpward.guards.redactor import Redactor

# Not "mcpward.audit": that logger carries one JSON record per line, and readers parse it.
log = logging.getLogger("mcpward.auditlog")
Listener = Callable[[str, float, Mapping[str, Any]], None]
MAX_PENDING = 100_000  # records held while the database refuses writes; beyond this the oldest are lost (logged)
CACHE_MAX_ENTRIES = 8192
CACHE_MAX_LENGTH = 512  # longer strings rarely repeat; caching them would only churn the cache
RETRY_AFTER = 1.0  # seconds between write attempts while the database refuses them
# How long journaled records wait for their SQLite batch: long enough to batch a busy gateway's
# records (one transaction instead of one per request), short enough that `audit tail` keeps up.
# A transaction costs about 90 us of CPU whatever its size, a record about 10 us more: at 1,000
# calls/s, 50 ms batches cost about 11.5 us per record, 20 ms ones 15.5 us (measured, see
# docs/audit.md). Durability does not depend on it: the journal already holds every record.
BATCH_DELAY = 0.05
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what orjson serialises as a number
# What audit records and exported spans are cleaned with: the secret rules, PII candidates and
# injection markers (plus, always, the secret values the gateway holds).
AUDIT = Profile("audit", frozenset({"secret", "pii", "marker"}))
# No index on ts: each index is one more page written per commit (about +30 us); `audit search --since`
# scans instead, which is fine for a command a person runs.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL, body TEXT NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL);
"""


# Fields that name who acted, or the network endpoint involved, whatever the event: their values get
# the secret rules and the held secret values only, never the PII detectors. An OAuth subject is often
# an e-mail and a source address is an IP (both PII kinds), but the log exists to say who did what, from
# where, to which host: `alice@example.com` must stay readable there. Every other string (a target URI,
# a tool name, a reason, a diff) gets the full profile. See docs/audit.md, "What is redacted".
IDENTITY_FIELDS = frozenset({
    "principal", "subject", "client", "by",  # who: principal key and subject, client name, approver
    "source_ip", "host", "address", "egress",  # where from / to: addresses, not personal data
})


class RedactWith:
    """A `Redactor` as the log's `redact` callable, with what lets the log cache its results.

    `__call__` applies AUDIT (secret rules, PII, injection markers, and the secret values the gateway
    holds); `identity` applies the secret rules and held values only, for the
    IDENTITY_FIELDS.

    Most audit strings repeat (event names, servers, tools, rules, principals), and a scan costs
    microseconds. A redaction depends only on the text and the redactor's state, which changes only
    when exact secret values are added (`exact_count` grows). `generation()` says so: the log drops
    its cache when it changes, so a string that was clean before a secret was known is checked again.
    A `redact` callable without `generation` is called for every string (no cache: nothing proves
    its results stay valid).
    """

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(self, text: str) -> str:
        out = self.redactor.redact(text, AUDIT)
        return text if out is None else out

    def identity(self, text: str) -> str:
        out = self.redactor.redact(text, SECRETS)
        return text if out is None else out

    def generation(self) -> int:
        return self.redactor.exact_count


class AuditLog:
    def __init__(self, settings: AuditSettings, key: bytes | None = None,
                 redact: Callable[[str], str] | None = None) -> None:
        self.settings = settings
        self.path = settings.path
        self._hasher = Hasher(key)
        self._redact = redact
        # The IDENTITY_FIELDS' redaction (see RedactWith.identity); a plain callable serves both.
        self._redact_identity: Callable[[str], str] | None = getattr(redact, "identity", redact)
        # Cleaned strings by their original: safe only when the redaction is known to be stable (see RedactWith).
        self._generation: Callable[[], int] | None = getattr(redact, "generation", None)
        self._cacheable = redact is None or self._generation is not None
        self._generation_seen = self._generation() if self._generation is not None else 0
        self._cache: dict[str, str] = {}
        self._identity_cache: dict[str, str] = {}  # the same for IDENTITY_FIELDS' values
        self._lock = threading.Lock()
        self._queue: list[tuple[int, str, float, bytes]] = []  # (append number, event, ts, body)
        self._appended = 0  # number of the last append
        self._done = 0  # every append up to this number is committed (or was lost, and logged)
        self._journal: Journal | None = None  # opened at the first append on an event loop ("commit" only)
        self._journal_off: str | None = None if settings.fsync == "commit" else "fsync = always"
        self._synced = 0  # every append up to this number is in the journal
        self._scheduled = False
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where the scheduled flush will run
        self._event: asyncio.Event | None = None  # set when that flush has run
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._error: str | None = None
        self._retry_at = 0.0
        self._closed = False
        self.lost = 0  # records dropped after MAX_PENDING piled up behind a failing database
        self._listeners: list[Listener] = []
        self._head: tuple[int, str] | None = None  # (seq, hash) after our last commit
        self._head_version = -1
        self._db = self._open()
        try:
            sealed_note = check_head(self._db, self._hasher, self.path)
        except AuditError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise AuditError(f"{self.path}: cannot check the head seal: {_reason(exc)}") from None
        try:
            self._recover()
        except (sqlite3.Error, OSError, ValueError) as exc:
            self._db.close()
            raise AuditError(f"{self.path}: cannot add the records of an unfinished journal: {_reason(exc)}") from None
        self._mirror: Mirror | None = None
        if settings.jsonl is not None:
            try:
                self._mirror = Mirror(settings.jsonl, self._hasher.algorithm, self._hasher.fingerprint,
                                      settings.fsync == "always", self._hasher.seal)
                self._mirror.sync(self._db, [])  # catch up on records committed while it was not written
            except OSError as exc:
                self._db.close()
                raise AuditError(f"{settings.jsonl}: cannot write the JSONL mirror: {exc.strerror}") from None
        if sealed_note is not None:
            log.warning("audit log %s: %s", self.path, sealed_note)
            self.append("audit.head-sealed", {"reason": sealed_note})

    # -------------------------------------------------------------------------------------------- opening

    def _open(self) -> sqlite3.Connection:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 before SQLite sees it; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(str(path), timeout=self.settings.lock_timeout, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(f"{path}: cannot open the audit log: {_reason(exc)}") from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AuditError(f"{path}: the file system does not support SQLite's WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous={'FULL' if self.settings.fsync == 'always' else 'NORMAL'}")
            db.executescript(SCHEMA)
            self._check_meta(db)
        except sqlite3.Error as exc:
            db.close()
            raise AuditError(f"{path}: not a usable audit log: {_reason(exc)}") from None
        except AuditError:
            db.close()
            raise
        return db

    def _check_meta(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                created = [("format", FORMAT_VERSION), ("algorithm", self._hasher.algorithm),
                           ("key_fingerprint", self._hasher.fingerprint), ("created", repr(time.time()))]
                seal = self._hasher.seal(0, GENESIS)
                if seal is not None:  # sealed from the start: a keyed log never lacks a seal
                    created.append((HEAD_META, f"0 {seal}"))
                db.executemany("INSERT INTO meta VALUES (?, ?)", created)
                meta = {"format": FORMAT_VERSION, "algorithm": self._hasher.algorithm,
                        "key_fingerprint": self._hasher.fingerprint}
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if meta.get("format") != FORMAT_VERSION:
            raise AuditError(f"{self.path}: unknown audit log format {meta.get('format')!r:.20}")
        if meta.get("algorithm") != self._hasher.algorithm:
            raise AuditError(f"{self.path}: the log's chain is {meta.get('algorithm')!r:.20} but the configuration "
                             f"{'sets' if self._hasher.key else 'has no'} [audit] key; start a new log file "
                             "(audit.path) rather than mixing the two")
        if meta.get("key_fingerprint", "") != self._hasher.fingerprint:
            raise AuditError(f"{self.path}: key mismatch: the log was written with key fingerprint "
                             f"{meta.get('key_fingerprint')}, the configured key has {self._hasher.fingerprint}")

    def _recover(self) -> None:
        """Chain in what the journals of processes that died hold beyond their marker, then remove them."""
        db = self._db
        for path, token, fd in orphans(self.path):
            try:
                key = META_PREFIX + token
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                done = int(row[0]) if row else 0
                todo = [(e.number, e.event, e.ts, e.body) for e in read_entries(path) if e.number > done]
                if todo:
                    self._write(todo, marker=key)
                    log.warning("audit log %s: added %d records from the journal of a process that stopped without "
                                "closing the log", self.path, len(todo))
                path.unlink()
            finally:
                os.close(fd)
        remove_unborn(self.path)
        live = {META_PREFIX + token_of(p, self.path) for p in journal_glob(self.path)}
        stale = [(k,) for (k,) in db.execute("SELECT key FROM meta WHERE key LIKE 'journal:%'") if k not in live]
        if stale:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM meta WHERE key = ?", stale)
            db.execute("COMMIT")

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is None:
            return
        if any(item[0] <= self._synced for item in self._queue):
            journal.release()  # journaled records not committed: the next open adds them
            log.error("audit log %s: journaled records not committed yet are left in %s for the next start",
                      self.path, journal.path)
            return
        journal.close()
        try:
            self._db.execute("DELETE FROM meta WHERE key = ?", (journal.key,))
        except sqlite3.Error as exc:  # a stale marker is removed by the next open
            log.warning("audit log %s: cannot remove the journal marker: %s", self.path, _reason(exc))

    # -------------------------------------------------------------------------------------------- appending

    def subscribe(self, listener: Listener) -> None:
        """`listener(event, ts, fields)` at append time, with the fields as they will be stored."""
        self._listeners.append(listener)

    def append(self, event: str, fields: Mapping[str, Any], made: Mapping[str, Any] | None = None) -> None:
        """Queue one record (cheap, never blocks on disk); it is committed by the next flush.

        `fields` may hold anything: every string in it, keys included, is redacted and escaped.
        `made` (optional) holds what the gateway produced itself under literal keys (its own
        vocabulary, numbers, `Digest`s): stored as is, since nothing a peer wrote is in it. Only its
        JSON-native scalars skip the cleaning; anything else in it is cleaned like `fields`."""
        ts = time.time()
        if self._generation is not None and self._generation() != self._generation_seen:
            self._cache.clear()
            self._identity_cache.clear()
            self._generation_seen = self._generation()
        get = self._cache.get
        event = get(event) or self._text(event)
        clean: dict[str, Any] = {}
        # The common shapes inline (str keys; str, int, float, bool, None values): this runs on every call.
        for k, v in fields.items():
            key = (get(k) if type(k) is str else None) or self._key(k)
            kind = type(v)
            if k in IDENTITY_FIELDS:
                clean[key] = self._identity(v)
            elif kind is str:
                clean[key] = get(v) or self._text(v)
            # A Digest is computed by the gateway: hex only, nothing to redact or escape.
            elif (kind is Digest or v is None or kind is bool or kind is float
                  or (kind is int and _INT_MIN <= v <= _INT_MAX)):
                clean[key] = v
            else:
                clean[key] = self._clean(v)
        if made:
            for k, v in made.items():
                kind = type(v)
                if (kind is str or kind is Digest or v is None or kind is bool or kind is float
                        or (kind is int and _INT_MIN <= v <= _INT_MAX)):
                    clean[k] = v
                else:
                    clean[k] = self._clean(v)
        try:
            body = orjson.dumps(clean, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):  # not reachable with cleaned values; never lose the record
            body = orjson.dumps({"unserialisable": sorted(clean)}, option=orjson.OPT_SORT_KEYS)
        loop = asyncio._get_running_loop()
        with self._lock:
            self._appended += 1
            number = self._appended
            self._queue.append((number, event, ts, body))
            journaled = loop is not None and self._journal_off is None and self._to_journal(number, event, ts, body)
            schedule = not self._scheduled
            self._scheduled = True
        for listener in self._listeners:
            try:
                listener(event, ts, clean)
            except Exception:
                log.exception("audit listener %r failed on a %s record", listener, event)
        if schedule:
            if loop is None:  # no event loop (a CLI command, a worker thread): commit now
                self.flush()
                return
            try:
                if journaled:  # durable already: batch it with the records that follow
                    loop.call_later(BATCH_DELAY, self.flush)
                else:
                    loop.call_soon(self.flush)
            except RuntimeError:  # the loop is closing
                self.flush()
                return
            self._flush_loop = loop

    def _to_journal(self, number: int, event: str, ts: float, body: bytes) -> bool:
        """Write one record to the journal (under the lock); False, and journaling off, if it cannot be."""
        journal = self._journal
        try:
            if journal is None:
                journal = self._journal = Journal(self.path)
            journal.write(number, ts, event, body)
        except OSError as exc:
            self._journal_off = _reason(exc)
            log.error("audit journal for %s: cannot write: %s; every reply now waits for its SQLite commit",
                      self.path, self._journal_off)
            return False
        self._synced = number
        return True

    def _text(self, value: str) -> str:
        hit = self._cache.get(value)
        return hit if hit is not None else self._cleaned(value, self._redact, self._cache)

    def identity_text(self, value: str) -> str:
        """`value` as this log stores it under an IDENTITY_FIELDS key (a principal key, a subject):
        what a listener reading those fields (the anomaly rules) must compare with."""
        hit = self._identity_cache.get(value)
        return hit if hit is not None else self._cleaned(value, self._redact_identity, self._identity_cache)

    def _cleaned(self, value: str, redact: Callable[[str], str] | None, cache: dict[str, str]) -> str:
        """Redacted, then escaped; remembered in `cache` (the hot path looks there first)."""
        out = escape(value if redact is None else redact(value))
        if self._cacheable and len(value) <= CACHE_MAX_LENGTH:
            if len(cache) >= CACHE_MAX_ENTRIES:
                cache.clear()
            cache[value] = out
        return out

    def _identity(self, value: Any) -> Any:
        """An IDENTITY_FIELDS value: strings (also inside lists) get the identity redaction; the rest
        is cleaned as usual."""
        if isinstance(value, str):
            return self.identity_text(value)
        if isinstance(value, list | tuple | set | frozenset):
            return [self._identity(v) for v in value]
        return self._clean(value)

    def _key(self, key: Any) -> str:
        return self._text(key if isinstance(key, str) else str(key))

    def _clean(self, value: Any) -> Any:
        """JSON-native, every string redacted and escaped; so what is hashed reads back the same."""
        if isinstance(value, str):
            return self._text(value)
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            return value if _INT_MIN <= value <= _INT_MAX else self._text(str(value))
        if isinstance(value, Mapping):
            return {self._key(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        return self._text(str(value))

    # -------------------------------------------------------------------------------------------- committing

    def flush(self) -> None:
        """Commit everything queued, in one transaction. A failure is logged and kept for `durable()`."""
        try:
            self._flush()
        finally:
            self._wake()

    def _flush(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self._queue:
                return
            if self._error is not None and time.monotonic() < self._retry_at:
                return  # still failing: do not stall the event loop on the lock timeout at every turn
            batch, self._queue = self._queue, []
            try:
                rows = self._write(batch)
            except (sqlite3.Error, OSError) as exc:
                self._failed(batch, exc)
                return
            self._done = batch[-1][0]
            journal = self._journal
            if journal is not None and journal.dirty and not self._queue:
                try:
                    journal.reset()  # everything in it is committed
                except OSError as exc:
                    log.error("audit journal %s: cannot truncate: %s", journal.path, _reason(exc))
            if self._error is not None:
                log.warning("audit log %s is writable again; %d records committed", self.path, len(rows))
                self._error = None
                if self._journal_off == "the database refuses writes":
                    self._journal_off = None
            if self._mirror is not None:
                try:
                    self._mirror.sync(self._db, rows)
                except (sqlite3.Error, OSError) as exc:  # the database is the record; the mirror catches up later
                    log.error("audit JSONL mirror %s: cannot write: %s", self._mirror.path, _reason(exc))

    def _write(self, batch: list[tuple[int, str, float, bytes]],
               marker: str | None = None) -> list[tuple[int, float, str, str, str, str]]:
        """Chain and insert `batch` in one transaction, with the journal marker (`marker` = its meta key)
        set to the batch's last number in the same transaction."""
        db, hasher = self._db, self._hasher
        if marker is None and self._journal is not None:
            marker = self._journal.key
        db.execute("BEGIN IMMEDIATE")
        try:
            # The head is read again only when another connection (another process) committed since
            # our own last commit: `data_version` changes exactly then, and costs no disk read.
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if self._head is None or version != self._head_version:
                head = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                self._head = (int(head[0]), str(head[1])) if head else (0, GENESIS)
            seq, prev = self._head
            rows = []
            for _, event, ts, body in batch:
                seq += 1
                digest = hasher(prev, seq, ts, event, body)
                rows.append((seq, ts, event, body.decode("utf-8"), prev, digest))
                prev = digest
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
            # In the same transaction: the journal marker, and a keyed log's head seal for the new last
            # record (so the seal always matches what is committed, whatever crashes when).
            meta = [] if marker is None else [(marker, str(batch[-1][0]))]
            seal = hasher.seal(seq, prev)
            if seal is not None:
                meta.append((HEAD_META, f"{seq} {seal}"))
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
            db.execute("COMMIT")
        except BaseException:
            self._head = None
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._head = (seq, prev)
        self._head_version = version  # our own commit does not change our connection's data_version
        return rows

    def _failed(self, batch: list[tuple[int, str, float, bytes]], exc: BaseException) -> None:
        self._queue = batch + self._queue
        if self._journal_off is None:
            # Replies go back to waiting for SQLite, so they are refused (fail closed) while it refuses writes.
            self._journal_off = "the database refuses writes"
        overflow = len(self._queue) - MAX_PENDING
        if overflow > 0:
            # Journaled records stay (the journal is only emptied once they are committed); the oldest of
            # the others go, each counted and logged.
            journaled = [item for item in self._queue if item[0] <= self._synced]
            others = self._queue[len(journaled):]
            dropped = min(overflow, len(others))
            self.lost += dropped
            self._queue = journaled + others[dropped:]
            if dropped:
                log.error("audit log %s: %d records lost: the database has refused writes for too long", self.path,
                          dropped)
        first = self._error is None
        self._error = _reason(exc)
        self._retry_at = time.monotonic() + RETRY_AFTER
        if first:
            log.error("audit log %s: cannot commit %d records: %s (requests that need them are refused)",
                      self.path, len(self._queue), self._error)

    def _wake(self) -> None:
        """Release the `durable()` waiters of the flush that just ran (committed or failed, they check)."""
        event, loop = self._event, self._event_loop
        if event is None or loop is None:
            return
        self._event = None
        if asyncio._get_running_loop() is loop:
            event.set()
        else:  # flushed from another thread, or with no loop: an Event belongs to its loop
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def settled(self) -> bool:
        """Whether everything appended so far is durable: journaled ("commit") or committed."""
        appended = self._appended
        return self._synced >= appended or self._done >= appended

    async def durable(self) -> None:
        """Return once everything appended before this call is committed; AuditUnavailable if it cannot be.

        Group commit: when a flush is already scheduled on this loop (every append schedules one), wait for
        it, so the records of every request that finished in this loop turn go out in one transaction.
        """
        target = self._appended
        if self._done >= target or self._synced >= target:
            return
        loop = asyncio._get_running_loop()
        if self._scheduled and loop is not None and self._flush_loop is loop:
            if self._event is None:
                self._event, self._event_loop = asyncio.Event(), loop
            await self._event.wait()
        if self._done < target and self._synced < target:
            self.flush()  # nothing was scheduled here, or the scheduled flush failed: one direct attempt
        if self._done < target and self._synced < target:
            raise AuditUnavailable(f"audit log {self.path}: records not committed: "
                                   f"{self._error or 'the write failed'}")

    @property
    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Flush and close (idempotent); a failed final flush is logged with the count of records lost."""
        if self._closed:
            return
        self._retry_at = 0.0  # one last attempt even while backing off
        self.flush()
        with self._lock:
            self._closed = True
            if self._queue:
                log.error("audit log %s: closing with %d records not committed: %s", self.path, len(self._queue),
                          self._error)
            self._close_journal()
            self._db.close()
            if self._mirror is not None:
                self._mirror.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def open_from_config(cfg: GatewayConfig, redactor: Redactor | None = None) -> AuditLog | None:
    """The configured log, or None when `[audit] enabled = false`. ConfigError for a bad table or key,
    AuditError for a file that cannot be used. `redactor` defaults to the config's output redactor."""
    from mcpward.audit.settings import load_settings, resolve_key
    from mcpward.gateway.assembly import secret_resolver
    from mcpward.guards import output

    settings = load_settings(cfg)
    if not settings.enabled:
        return None
    key = resolve_key(settings, secret_resolver(cfg))
    return AuditLog(settings, key, RedactWith(redactor or output.redactor_for(cfg)))


def open_path(path: Path, key: bytes | None = None) -> AuditLog:
    """A log at `path` with default settings (tests, tools)."""
    return AuditLog(AuditSettings(path=path), key)
