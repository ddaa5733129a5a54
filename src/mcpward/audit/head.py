"""The check of a keyed log's head seal when the log is opened for writing.

Every commit rewrites the seal (`meta.head`, see chain.py) for the record it ends with. So before
the first commit of a new writer, the seal must vouch for the last record: if records were cut off
the end while no gateway ran, that commit would seal the cut-down log and `verify` would pass.
A seal naming records that are gone, or one that does not match, therefore stops the open
(AuditError, fail closed: nothing is written over the evidence). A log without a seal (written
before seals existed) and one with records after its seal (appended by such a writer) are sealed
now; the caller records that in the log itself.
"""

from __future__ import annotations

import hmac
import sqlite3
from pathlib import Path

from mcpward.audit.chain import GENESIS, HEAD_META, Hasher, seal_text
from mcpward.audit.events import AuditError

KEEP = "keep this file as evidence (`mcpward audit verify` names the damage) and start a new log (audit.path)"


def check_head(db: sqlite3.Connection, hasher: Hasher, path: Path) -> str | None:
    """None when the seal vouches for the last record (or the log is unkeyed); a note saying why the
    log was sealed now; AuditError when records are gone or the seal is forged."""
    if hasher.key is None:
        return None
    db.execute("BEGIN IMMEDIATE")
    try:
        last = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        seq, digest = (int(last[0]), str(last[1])) if last else (0, GENESIS)
        stored = db.execute("SELECT value FROM meta WHERE key = ?", (HEAD_META,)).fetchone()
        if stored is None:
            note: str | None = (f"the log had no head seal (written by an mcpward without head seals, or the seal "
                                f"was removed): sealed now at record {seq}; a cut before this shows only with an "
                                "anchor")
        else:
            note = _note(db, hasher, path, str(stored[0]), seq)
        if note is not None:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (HEAD_META, f"{seq} {hasher.seal(seq, digest)}"))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return note


def _note(db: sqlite3.Connection, hasher: Hasher, path: Path, stored: str, seq: int) -> str | None:
    seal = seal_text(stored)
    if seal is None:
        raise AuditError(f"{path}: the head seal is unreadable; {KEEP}")
    if seal.seq > seq:
        raise AuditError(f"{path}: records after {seq} were removed (the head seal names record {seal.seq}); {KEEP}")
    row = db.execute("SELECT hash FROM records WHERE seq = ?", (seal.seq,)).fetchone()
    sealed_hash = str(row[0]) if row else (GENESIS if seal.seq == 0 else "")
    if not hmac.compare_digest(hasher.seal(seal.seq, sealed_hash) or "", seal.mac):
        raise AuditError(f"{path}: the head seal does not match record {seal.seq} (forged, copied from another "
                         f"log, or the records were rewritten); {KEEP}")
    if seal.seq < seq:
        return (f"records {seal.seq + 1}..{seq} were added without a head seal (by an mcpward without head "
                f"seals): sealed now at record {seq}")
    return None
