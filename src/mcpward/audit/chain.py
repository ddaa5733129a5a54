"""The hash chain: how a record's hash is built, and `verify` for a SQLite log or a JSONL export.

    hash(n) = hex( H( prev || orjson([seq, ts, event]) || body ) )    prev of record 1 = 64 zeros

H is SHA-256, or HMAC-SHA256 with the configured key (then someone who can write the file cannot
recompute the chain). `body` is the canonical JSON of the record's fields (orjson, sorted keys),
exactly the bytes stored. The `[seq, ts, event]` array is self-delimiting and `prev` has a fixed
length, so no two different records hash the same input.

`verify` walks the records in order and stops at the first one that is wrong, naming it and why:
edited (its hash does not match its content), deleted (a seq is missing), out of order (the
missing seq turns up later), rewritten (its hash was recomputed, so the next record's link to it
breaks).

Removing records from the end leaves a valid, shorter chain, so a keyed log also carries a head
seal (issue 6):

    seal = hex( HMAC(key, "head" || orjson([seq, hash])) )    of the last record (0, GENESIS if none)

In SQLite it is `meta.head` = "<seq> <seal>", written in the same transaction as every commit, so
it always names the last committed record; a JSONL export ends with a seal line, and the mirror
gets one after each batch. `verify` of a keyed log fails unless a valid seal follows the last
record: a cut tail is "records after N removed". Someone who kept an older seal can still put it
back along with a cut (a rollback to an earlier state); only a head anchored elsewhere (`anchor=`)
detects that, and it is the only tail check an unkeyed log has.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mcpward.audit.settings import key_fingerprint

GENESIS = "0" * 64
FORMAT_VERSION = "1"
MOVE_WINDOW = 64  # how far from its place verify looks for where a moved record belongs
HEADER_KEY = "mcpward_audit"  # the first line of a JSONL export/mirror: algorithm and key fingerprint
SEAL_KEY = "mcpward_audit_head"  # a JSONL head seal line: {"mcpward_audit_head": 1, "seq": N, "seal": hex}
HEAD_META = "head"  # the SQLite meta key of the head seal: "<seq> <seal>"


class VerifyError(Exception):
    """The source cannot be verified at all (unreadable, not an audit log): a usage problem, not tampering."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    records: int  # records checked and found good (before the first bad one)
    first_bad: int | None  # seq of the first bad record
    reason: str | None
    head: str  # hash of the last good record (GENESIS for an empty log)
    algorithm: str = "sha256"


class Hasher:
    """One chain's hash function; precomputed so the append path pays one copy, not a key schedule."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.algorithm = "hmac-sha256" if key is not None else "sha256"
        self.fingerprint = key_fingerprint(key)
        self._mac = hmac.new(key, digestmod=hashlib.sha256) if key is not None else None

    def seal(self, seq: int, digest: str) -> str | None:
        """The head seal of a log whose last record is `seq` with hash `digest`; None without a key
        (anyone could recompute an unkeyed seal, so none is written or checked)."""
        if self._mac is None:
            return None
        mac = self._mac.copy()
        mac.update(b"head" + orjson.dumps([seq, digest]))  # "head" is not hex: never a record's input
        return mac.hexdigest()

    def __call__(self, prev: str, seq: int, ts: float, event: str, body: bytes) -> str:
        data = prev.encode("ascii") + orjson.dumps([seq, ts, event]) + body
        if self._mac is None:
            return hashlib.sha256(data).hexdigest()
        mac = self._mac.copy()
        mac.update(data)
        return mac.hexdigest()


def canonical(fields: Any) -> bytes:
    """The stored body: sorted keys, compact. Also how a JSONL line's `fields` turns back into it."""
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


# A record as verify sees it: (seq, ts, event, body, prev, hash), or a string saying why a line is unusable.
Row = tuple[int, float, str, bytes, str, str]


@dataclass(frozen=True, slots=True)
class Seal:
    """A head seal as read from the file: it claims record `seq` is the last one."""

    seq: int
    mac: str


def seal_text(value: str) -> Seal | None:
    """`meta.head` ("<seq> <seal>") parsed; None when it is not of that form."""
    seq, _, mac = value.partition(" ")
    return Seal(int(seq), mac) if seq.isascii() and seq.isdigit() and len(mac) == 64 else None


def seal_line(seq: int, mac: str) -> bytes:
    return orjson.dumps({SEAL_KEY: 1, "seq": seq, "seal": mac}) + b"\n"


def verify(source: Path, key: bytes | None = None, anchor: str | None = None) -> VerifyReport:
    """Check a `.sqlite` log or a `.jsonl` export. VerifyError when the file cannot be read as either."""
    if _is_sqlite(source):
        algorithm, fingerprint, rows = _sqlite_rows(source)
    else:
        algorithm, fingerprint, rows = _jsonl_rows(source)
    hasher = Hasher(key)
    if algorithm is None:  # a JSONL file without its header line: assume what the caller holds
        algorithm = hasher.algorithm
    mismatch = _key_problem(algorithm, fingerprint, hasher)
    if mismatch is not None:
        return VerifyReport(False, 0, None, mismatch, GENESIS, algorithm)
    return _walk(rows, hasher, anchor, source)


def _key_problem(algorithm: str, fingerprint: str | None, hasher: Hasher) -> str | None:
    if algorithm not in ("sha256", "hmac-sha256"):
        return f"unknown chain algorithm {algorithm!r:.40}"
    if algorithm == "hmac-sha256" and hasher.key is None:
        return (f"key needed: the log is keyed (hmac-sha256, key fingerprint {fingerprint or '?'}); "
                "give the key (-c with [audit] key, or --key)")
    if algorithm == "sha256" and hasher.key is not None:
        return ("key mismatch: a key was given but the log says it is not keyed (sha256); a keyed log "
                "whose meta was rewritten, or the wrong file")
    if fingerprint and hasher.key is not None and fingerprint != hasher.fingerprint:
        return (f"key mismatch: the log was written with key fingerprint {fingerprint}, the given key has "
                f"fingerprint {hasher.fingerprint}")
    return None


def _walk(rows: Iterator[Row | Seal | str], hasher: Hasher, anchor: str | None, source: Path) -> VerifyReport:
    prev, expected, good, anchored = GENESIS, 1, 0, anchor is None
    sealed = False  # a valid seal came after the last record so far
    for row in rows:
        if isinstance(row, Seal):
            if hasher.key is None:
                continue  # unkeyed: there is nothing to check a seal with
            problem = _seal_problem(row, prev, expected - 1, hasher)
            if problem is not None:
                return VerifyReport(False, good, problem[0], problem[1], prev, hasher.algorithm)
            sealed = True
            continue
        bad = _check(row, prev, expected, hasher)
        if bad is not None:
            first_bad, reason = _classify(row, prev, expected, bad, source, hasher)
            return VerifyReport(False, good, first_bad, reason, prev, hasher.algorithm)
        assert not isinstance(row, str)
        prev, expected, good, sealed = row[5], row[0] + 1, good + 1, False
        if not anchored and prev == anchor:
            anchored = True
    if hasher.key is not None and not sealed:
        return VerifyReport(False, good, expected, f"no head seal after record {expected - 1}: records after it may "
                            "have been removed (or the log was written by an mcpward without head seals; check it "
                            "with --anchor)", prev, hasher.algorithm)
    if not anchored:
        return VerifyReport(False, good, expected, f"anchored head {anchor:.16}... not found: the chain ends at "
                            f"record {expected - 1}, so records after the anchor were removed (or it is "
                            "another log)", prev, hasher.algorithm)
    return VerifyReport(True, good, None, None, prev, hasher.algorithm)


def _seal_problem(seal: Seal, prev: str, last: int, hasher: Hasher) -> tuple[int, str] | None:
    """Why `seal`, read right after record `last` (hash `prev`), does not vouch for it: (first bad seq, reason)."""
    if seal.seq < 0:
        return last, f"the head seal after record {last} is unreadable"
    if seal.seq > last:
        return last + 1, (f"records after {last} removed: the head seal names record {seal.seq}, the log ends at "
                          f"record {last}")
    if seal.seq < last:
        return seal.seq + 1, (f"records {seal.seq + 1}..{last} are not covered by the head seal (it names record "
                              f"{seal.seq}): an older seal put back, or records added by a writer without seals")
    expected = hasher.seal(last, prev)
    if expected is None or not hmac.compare_digest(expected, seal.mac):
        return last, (f"the head seal does not match record {last}: forged, copied from another log, or "
                      "the records before it were rewritten")
    return None


def _check(row: Row | str, prev: str, expected: int, hasher: Hasher) -> str | None:
    if isinstance(row, str):
        return "unreadable"
    seq, ts, event, body, row_prev, row_hash = row
    if seq != expected:
        return "seq"
    if hasher(row_prev, seq, ts, event, body) != row_hash:
        return "hash"
    if row_prev != prev:
        return "link"
    return None


def _classify(row: Row | str, prev: str, expected: int, bad: str, source: Path,
              hasher: Hasher) -> tuple[int, str]:
    """Name the first bad record and say what most likely happened to it."""
    if bad == "unreadable":
        return expected, f"record {expected}: {row} (truncated or corrupted)"
    assert not isinstance(row, str)
    seq = row[0]
    if bad == "hash":
        # A row moved to another seq (SQLite keeps rows sorted, so a swap renumbers them) is intact for
        # the seq it was written as: look for that seq nearby before calling it an edit.
        _, ts, event, body, row_prev, row_hash = row
        for other in range(max(1, seq - MOVE_WINDOW), seq + MOVE_WINDOW + 1):
            if other != seq and hasher(row_prev, other, ts, event, body) == row_hash:
                return seq, f"record {seq} out of order (this row holds record {other})"
        return seq, f"record {seq}: hash mismatch (edited)"
    if bad == "link":
        if expected > 1:
            return expected - 1, (f"record {expected - 1}: rewritten (its hash no longer matches the prev link "
                                  f"of record {seq}); prev link broken")
        return seq, f"record {seq}: prev link broken (record 1 must link to the genesis hash)"
    # The seq is not the next one: the expected record is gone, or it sits somewhere else.
    if seq < expected:
        return seq, f"record {seq} out of order or repeated (it comes again after record {expected - 1})"
    if _appears_later(source, expected, prev):
        return expected, f"record {expected} out of order (it appears later in the log)"
    if seq == expected + 1:
        return expected, f"record {expected} missing (deleted)"
    return expected, f"records {expected}..{seq - 1} missing (deleted)"


def _appears_later(source: Path, seq: int, prev: str) -> bool:
    """A JSONL export: is the record with this seq (still linking to `prev`) further down?
    SQLite keeps rows in seq order, so a record there is never out of place, only renumbered."""
    if _is_sqlite(source):
        return False
    _, _, rows = _jsonl_rows(source)
    return any(isinstance(r, tuple) and r[0] == seq and r[4] == prev for r in rows)


def _is_sqlite(source: Path) -> bool:
    try:
        with source.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError as exc:
        raise VerifyError(f"{source}: cannot read: {exc.strerror}") from None


def _sqlite_rows(source: Path) -> tuple[str | None, str | None, Iterator[Row | Seal | str]]:
    from mcpward.audit.export import connect_ro  # export imports this module

    try:
        db = connect_ro(source)
        # One read transaction, from the meta (the head seal) to the last row: a consistent snapshot
        # while the gateway keeps appending.
        db.execute("BEGIN")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise VerifyError(f"{source}: not an mcpward audit log ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise VerifyError(f"{source}: unknown audit log format {meta.get('format')!r:.20}")
    head = meta.get(HEAD_META)

    def rows() -> Iterator[Row | Seal | str]:
        last = 0
        try:
            for seq, ts, event, body, prev, hash_ in db.execute(
                    "SELECT seq, ts, event, body, prev, hash FROM records ORDER BY seq"):
                last = seq
                yield (seq, float(ts), str(event), str(body).encode("utf-8"), str(prev), str(hash_))
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            yield f"the database is damaged after record {last} ({exc})"
            return
        finally:
            db.close()
        if head is not None:
            # An unreadable seal vouches for nothing: -1 names no record, so verify reports it.
            yield seal_text(str(head)) or Seal(-1, "")

    return meta.get("algorithm"), meta.get("key_fingerprint"), rows()


def _jsonl_rows(source: Path) -> tuple[str | None, str | None, Iterator[Row | Seal | str]]:
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise VerifyError(f"{source}: cannot read: {exc.strerror}") from None
    first = handle.readline()
    algorithm: str | None = None
    fingerprint: str | None = None
    try:
        header = orjson.loads(first) if first.strip() else None
    except orjson.JSONDecodeError:
        header = None
    if isinstance(header, dict) and HEADER_KEY in header:
        algorithm, fingerprint = str(header.get("algorithm")), str(header.get("key_fingerprint") or "")
        first = b""
    elif first.strip() and not isinstance(header, dict):
        handle.close()
        raise VerifyError(f"{source}: neither an SQLite audit log nor a JSONL export")

    def rows() -> Iterator[Row | Seal | str]:
        with handle:
            if first.strip():
                yield _parse_line(first, 1)
            for lineno, line in enumerate(handle, start=2):
                if line.strip():
                    yield _parse_line(line, lineno)

    return algorithm, fingerprint, rows()


def _parse_line(line: bytes, lineno: int) -> Row | Seal | str:
    try:
        obj = orjson.loads(line)
        if isinstance(obj, dict) and SEAL_KEY in obj:
            seq, mac = obj["seq"], obj["seal"]
            if type(seq) is not int or not isinstance(mac, str):
                return f"line {lineno} is not a valid head seal"
            return Seal(seq, mac)
        seq, ts, event, fields = obj["seq"], obj["ts"], obj["event"], obj["fields"]
        prev, hash_ = obj["prev"], obj["hash"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"line {lineno} is not a valid record"
    if (not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(ts, int | float)
            or not isinstance(event, str) or not isinstance(fields, dict) or not isinstance(prev, str)
            or not isinstance(hash_, str)):
        return f"line {lineno} has a field of the wrong type"
    return (seq, float(ts), event, canonical(fields), prev, hash_)
