"""The head seal of a keyed log (issue 6): a cut tail is caught by verify, in SQLite and in JSONL.

The seal is rewritten in the transaction of every commit (batched, journaled, recovered, or by a
second writer), so an untouched log always verifies; opening a log whose tail was cut stops with
AuditError instead of sealing over the cut.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest

from mcpward.audit.chain import GENESIS, Hasher, verify
from mcpward.audit.events import AuditError
from mcpward.audit.export import export_jsonl
from mcpward.audit.settings import AuditSettings
from mcpward.audit.store import AuditLog, open_path

KEY = b"seal-test-key-0123456789abcdefgh"


def head_meta(path: Path) -> str | None:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
    return None if row is None else str(row[0])


def last_record(path: Path) -> tuple[int, str]:
    with sqlite3.connect(path) as db:
        seq, digest = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    return int(seq), str(digest)


def sql(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        db.execute(statement)
    db.close()


def build(path: Path, n: int = 12, key: bytes | None = KEY) -> Path:
    log = open_path(path, key)
    for i in range(n):
        log.append("call", {"i": i, "principal": "api-key:alice"})
    log.close()
    return path


def test_a_new_keyed_log_is_sealed_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    open_path(path, KEY).close()
    assert head_meta(path) == f"0 {Hasher(KEY).seal(0, GENESIS)}"
    assert verify(path, KEY).ok
    sql(path, "DELETE FROM meta WHERE key = 'head'")  # an empty log without its seal vouches for nothing
    report = verify(path, KEY)
    assert not report.ok and "no head seal after record 0" in (report.reason or "")


def test_unkeyed_logs_have_no_seal(tmp_path: Path) -> None:
    path = build(tmp_path / "plain.sqlite", key=None)
    assert head_meta(path) is None and verify(path).ok
    export = tmp_path / "plain.jsonl"
    export_jsonl(path, export)
    assert b"mcpward_audit_head" not in export.read_bytes() and verify(export).ok


@pytest.mark.parametrize(("cut", "first_bad", "reason"), [
    ("DELETE FROM records WHERE seq >= 8", 8, "records after 7 removed: the head seal names record 12"),
    ("DELETE FROM records WHERE seq = 12", 12, "records after 11 removed"),
    ("DELETE FROM records", 1, "records after 0 removed"),
])
def test_a_cut_tail_is_named(tmp_path: Path, cut: str, first_bad: int, reason: str) -> None:
    path = build(tmp_path / "a.sqlite")
    assert verify(path, KEY).ok
    sql(path, cut)
    report = verify(path, KEY)
    assert (report.ok, report.first_bad) == (False, first_bad) and reason in (report.reason or ""), report


def test_seal_removed_forged_or_rolled_back(tmp_path: Path) -> None:
    path = build(tmp_path / "a.sqlite")
    seal = head_meta(path)
    assert seal is not None
    sql(path, "DELETE FROM records WHERE seq > 9", "DELETE FROM meta WHERE key = 'head'")
    report = verify(path, KEY)
    assert not report.ok and "no head seal after record 9" in (report.reason or "")
    # A seal made up for the cut log without the key (any HMAC-looking value) does not match.
    sql(path, f"INSERT INTO meta VALUES ('head', '9 {'ab' * 32}')")
    report = verify(path, KEY)
    assert not report.ok and "head seal does not match record 9" in (report.reason or "")
    sql(path, "UPDATE meta SET value = 'garbage' WHERE key = 'head'")
    assert "unreadable" in (verify(path, KEY).reason or "")


def test_records_beyond_the_seal_are_not_covered(tmp_path: Path) -> None:
    # What a writer without seals (an older mcpward) leaves: a valid keyed record after the seal.
    path = build(tmp_path / "a.sqlite")
    seq, prev = last_record(path)
    ts, body = 1.0, b'{"old":true}'
    digest = Hasher(KEY)(prev, seq + 1, ts, "call", body)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", (seq + 1, ts, "call", body.decode(), prev, digest))
    report = verify(path, KEY)
    assert not report.ok and "records 13..13 are not covered by the head seal" in (report.reason or "")
    # Opening it for writing seals it, and says so in the log itself.
    open_path(path, KEY).close()
    assert verify(path, KEY).ok
    with sqlite3.connect(path) as db:
        (event, body_text), = db.execute("SELECT event, body FROM records WHERE seq = 14").fetchall()
    assert event == "audit.head-sealed" and "records 13..13 were added without a head seal" in body_text


def test_a_log_without_a_seal_is_sealed_at_open_and_the_fact_recorded(tmp_path: Path) -> None:
    path = build(tmp_path / "a.sqlite")
    sql(path, "DELETE FROM meta WHERE key = 'head'")  # as a keyed log written before seals existed
    open_path(path, KEY).close()
    assert verify(path, KEY).ok
    with sqlite3.connect(path) as db:
        event, body = db.execute("SELECT event, body FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    assert event == "audit.head-sealed" and "had no head seal" in body and "sealed now at record 12" in body


@pytest.mark.parametrize(("tamper", "words"), [
    ("DELETE FROM records WHERE seq > 10", "records after 10 were removed (the head seal names record 12)"),
    (f"UPDATE meta SET value = '12 {'cd' * 32}' WHERE key = 'head'", "the head seal does not match record 12"),
    ("UPDATE meta SET value = 'x' WHERE key = 'head'", "the head seal is unreadable"),
])
def test_opening_a_cut_log_refuses_to_seal_over_the_cut(tmp_path: Path, tamper: str, words: str) -> None:
    path = build(tmp_path / "a.sqlite")
    sql(path, tamper)
    before = path.read_bytes(), head_meta(path)
    with pytest.raises(AuditError, match="keep this file as evidence") as info:
        open_path(path, KEY)
    assert words in str(info.value)
    assert (path.read_bytes(), head_meta(path)) == before  # nothing was written over the evidence
    assert not verify(path, KEY).ok


def test_jsonl_export_ends_with_the_seal_and_a_cut_export_fails(tmp_path: Path) -> None:
    path = build(tmp_path / "a.sqlite")
    export = tmp_path / "a.jsonl"
    export_jsonl(path, export)
    lines = export.read_bytes().splitlines(keepends=True)
    trailer = orjson.loads(lines[-1])
    assert trailer == {"mcpward_audit_head": 1, "seq": 12, "seal": head_meta(path).split()[1]}  # type: ignore[union-attr]
    assert verify(export, KEY).ok and verify(export, KEY).records == 12

    def check(name: str, kept: list[bytes], words: str) -> None:
        cut = tmp_path / f"{name}.jsonl"
        cut.write_bytes(b"".join(kept))
        report = verify(cut, KEY)
        assert not report.ok and words in (report.reason or ""), (name, report)

    check("minus-two", lines[:-2], "no head seal after record 11")
    check("minus-seal", lines[:-1], "no head seal after record 12")
    check("minus-record", lines[:-2] + lines[-1:], "records after 11 removed: the head seal names record 12")
    check("header-only", lines[:1], "no head seal after record 0")
    check("seal-first", lines[:1] + lines[-1:] + lines[1:-1], "records after 0 removed")


async def test_batched_journaled_commits_keep_the_seal_on_the_last_record(tmp_path: Path) -> None:
    path, mirror = tmp_path / "a.sqlite", tmp_path / "a.jsonl"
    log = AuditLog(AuditSettings(path=path, jsonl=mirror), KEY)
    second = open_path(path, KEY)  # another writer on the same file (like `mcpward tools approve`)

    async def call(i: int) -> None:
        log.append("call", {"i": i})
        await log.durable()

    try:
        for burst in range(4):
            await asyncio.gather(*(call(burst * 100 + i) for i in range(100)))
            second.append("approve", {"burst": burst})  # no loop in its thread: commits at once
            await asyncio.sleep(0.12)  # past BATCH_DELAY: the batch is committed
            seq, digest = last_record(path)
            assert head_meta(path) == f"{seq} {Hasher(KEY).seal(seq, digest)}"
            assert verify(path, KEY).ok
        await call(-1)  # the mirror (of `log`) catches up on the other writer's records at its next batch
    finally:
        log.close()
        second.close()
    report = verify(path, KEY)
    assert report.ok and report.records == 405
    mirrored = verify(mirror, KEY)  # seal lines after each batch, the last one on the last record
    assert mirrored.ok and mirrored.head == report.head and mirrored.records == 405
    assert mirror.read_bytes().count(b"mcpward_audit_head") >= 5
