"""T17: tampering with the audit log. Edit one field, delete a record, swap two, cut records out of the
middle, in the SQLite log and in a JSONL export: `mcpward audit verify` names the first bad record and
exits 1. An untouched log verifies (exit 0) and prints its head hash. With an HMAC key, an attacker who
recomputes the hash of an edited record is caught as well; without one, only the next record's link
catches the rewrite (and a rewrite of everything after it needs an anchored head). A keyed log also
carries a head seal, so records cut off its end (SQLite rows, or the last lines of an export) are named
too; an unkeyed log still needs an anchored head for that."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcpward.audit.chain import Hasher, verify
from mcpward.audit.export import export_jsonl
from mcpward.audit.settings import AuditSettings
from mcpward.audit.store import AuditLog
from mcpward.cli.audit import audit_app

runner = CliRunner()
N = 30
KEY = b"t17-audit-hmac-key-0123456789abcdef"


def build(path: Path, key: bytes | None = None) -> Path:
    log = AuditLog(AuditSettings(path=path), key)
    for i in range(1, N + 1):
        principal = "api-key:alice" if i % 2 else "oauth:bob"
        log.append("refusal" if i % 5 == 0 else "call", {"seq_hint": i, "principal": principal, "server": "files",
                                                          "tool": "read_file", "rule": f"r{i % 3}"})
    log.close()
    return path


def sql(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        db.execute(statement)
    db.close()


def cli_verify(path: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(audit_app, ["verify", "--file", str(path), *extra])
    return result.exit_code, result.output


SQLITE_TAMPERING: dict[str, tuple[Callable[[Path], None], int, str]] = {
    "edit one field": (lambda p: sql(p, "UPDATE records SET body = replace(body, 'alice', 'mallory') WHERE seq = 17"),
                       17, "record 17: hash mismatch (edited)"),
    "edit a timestamp": (lambda p: sql(p, "UPDATE records SET ts = ts - 3600 WHERE seq = 4"),
                         4, "record 4: hash mismatch (edited)"),
    "delete one record": (lambda p: sql(p, "DELETE FROM records WHERE seq = 18"), 18, "record 18 missing (deleted)"),
    "swap two records": (lambda p: sql(p, "UPDATE records SET seq = -1 WHERE seq = 20",
                                       "UPDATE records SET seq = 20 WHERE seq = 21",
                                       "UPDATE records SET seq = 21 WHERE seq = -1"),
                         20, "record 20 out of order"),
    "cut out of the middle": (lambda p: sql(p, "DELETE FROM records WHERE seq BETWEEN 10 AND 14"),
                              10, "records 10..14 missing (deleted)"),
    "delete the first record": (lambda p: sql(p, "DELETE FROM records WHERE seq = 1"), 1,
                                "record 1 missing (deleted)"),
}


@pytest.mark.parametrize("case", sorted(SQLITE_TAMPERING))
def test_sqlite_tampering_is_named(tmp_path: Path, case: str) -> None:
    path = build(tmp_path / "audit.sqlite")
    tamper, first_bad, reason = SQLITE_TAMPERING[case]
    tamper(path)
    report = verify(path)
    assert (report.ok, report.first_bad) == (False, first_bad) and reason in (report.reason or ""), report
    code, output = cli_verify(path)
    assert code == 1 and f"first bad record: {first_bad}" in output and reason in output, output


def jsonl_lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines(keepends=True)


def rewrite(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    path.write_text("".join(change(jsonl_lines(path))), "utf-8")


def edit_line(lines: list[str], seq: int) -> list[str]:
    record = json.loads(lines[seq])  # line 0 is the header
    record["fields"]["principal"] = "api-key:mallory"
    lines[seq] = json.dumps(record, indent=None, separators=(", ", ": ")) + "\n"  # reformatted on purpose
    return lines


JSONL_TAMPERING: dict[str, tuple[Callable[[list[str]], list[str]], int, str]] = {
    "edit one field": (lambda lines: edit_line(lines, 17), 17, "record 17: hash mismatch (edited)"),
    "delete one record": (lambda lines: lines[:18] + lines[19:], 18, "record 18 missing (deleted)"),
    "swap two records": (lambda lines: [*lines[:20], lines[21], lines[20], *lines[22:]], 20,
                         "record 20 out of order"),
    "cut out of the middle": (lambda lines: lines[:10] + lines[15:], 10, "records 10..14 missing (deleted)"),
    "truncate mid-line": (lambda lines: [*lines[:12], lines[12][: len(lines[12]) // 2]], 12,
                          "record 12: line 13 is not a valid record (truncated or corrupted)"),
    "duplicate a record": (lambda lines: [*lines[:9], lines[8], *lines[9:]], 8, "record 8 out of order"),
}


@pytest.mark.parametrize("case", sorted(JSONL_TAMPERING))
def test_jsonl_tampering_is_named(tmp_path: Path, case: str) -> None:
    export = tmp_path / "audit.jsonl"
    export_jsonl(build(tmp_path / "audit.sqlite"), export)
    change, first_bad, reason = JSONL_TAMPERING[case]
    rewrite(export, change)
    report = verify(export)
    assert (report.ok, report.first_bad) == (False, first_bad) and reason in (report.reason or ""), report
    code, output = cli_verify(export)
    assert code == 1 and f"first bad record: {first_bad}" in output, output


def test_untouched_logs_verify_and_print_the_head(tmp_path: Path) -> None:
    path = build(tmp_path / "audit.sqlite")
    export = tmp_path / "audit.jsonl"
    export_jsonl(path, export)
    head = verify(path).head
    for source in (path, export):
        code, output = cli_verify(source)
        assert code == 0 and f"{N} records verified" in output and f"head {head}" in output, output


def test_rewritten_record_is_caught_by_the_next_link(tmp_path: Path) -> None:
    """Without a key, an attacker can recompute the edited record's own hash; the next record's link breaks."""
    path = build(tmp_path / "audit.sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    seq, ts, event, body, prev = db.execute("SELECT seq, ts, event, body, prev FROM records WHERE seq = 9").fetchone()
    body = body.replace("alice", "mallory")
    db.execute("UPDATE records SET body = ?, hash = ? WHERE seq = 9",
               (body, Hasher(None)(prev, seq, ts, event, body.encode())))
    db.close()
    report = verify(path)
    assert (report.ok, report.first_bad) == (False, 9) and "record 9: rewritten" in (report.reason or "")


def test_keyed_chain_resists_recomputation(tmp_path: Path) -> None:
    """With HMAC, rewriting the whole chain from the edit on with plain SHA-256 fails at the edit."""
    path = build(tmp_path / "audit.sqlite", KEY)
    db = sqlite3.connect(path, isolation_level=None)
    records = db.execute("SELECT seq, ts, event, body, prev FROM records ORDER BY seq").fetchall()
    prev = records[4][4]
    for seq, ts, event, body, _ in records[4:]:  # from record 5: edit, then re-chain everything after
        body = body.replace("alice", "mallory")
        digest = Hasher(None)(prev, seq, ts, event, body.encode())
        db.execute("UPDATE records SET body = ?, prev = ?, hash = ? WHERE seq = ?", (body, prev, digest, seq))
        prev = digest
    db.close()
    report = verify(path, KEY)
    assert (report.ok, report.first_bad) == (False, 5) and "hash mismatch" in (report.reason or "")
    # The meta says keyed: verifying without the key is refused, not passed.
    no_key = verify(path)
    assert not no_key.ok and "key needed" in (no_key.reason or "")
    wrong = verify(path, b"another-key-of-enough-length!!")
    assert not wrong.ok and "key mismatch" in (wrong.reason or "")
    sql(path, "UPDATE meta SET value = 'sha256' WHERE key = 'algorithm'")  # downgrade the log to unkeyed
    downgraded = verify(path, KEY)
    assert not downgraded.ok and "key mismatch" in (downgraded.reason or "")


def test_unkeyed_tail_truncation_needs_an_anchor(tmp_path: Path) -> None:
    """Without a key, cutting records off the end leaves a valid, shorter chain: only an anchored head shows it."""
    path = build(tmp_path / "audit.sqlite")
    anchor = verify(path).head
    sql(path, "DELETE FROM records WHERE seq > 25")
    assert verify(path).ok
    report = verify(path, anchor=anchor)
    assert not report.ok and "anchored head" in (report.reason or "") and report.first_bad == 26
    code, output = cli_verify(path, "--anchor", anchor)
    assert code == 1 and "anchored head" in output


def test_keyed_tail_truncation_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a key, the head seal (rewritten at every commit) names a cut tail, in SQLite and in an export."""
    monkeypatch.setenv("T17_AUDIT_KEY", KEY.decode())
    path = build(tmp_path / "audit.sqlite", KEY)
    export = tmp_path / "audit.jsonl"
    export_jsonl(path, export)
    for source in (path, export):
        code, output = cli_verify(source, "--key", "env:T17_AUDIT_KEY")
        assert code == 0 and f"{N} records verified" in output, output
    rewrite(export, lambda lines: lines[:-2])  # the last record and the seal after it
    code, output = cli_verify(export, "--key", "env:T17_AUDIT_KEY")
    assert code == 1 and f"first bad record: {N}" in output and f"no head seal after record {N - 1}" in output
    sql(path, "DELETE FROM records WHERE seq > 25")
    code, output = cli_verify(path, "--key", "env:T17_AUDIT_KEY")
    assert code == 1 and "first bad record: 26" in output and f"records after 25 removed: the head seal names " \
        f"record {N}" in output, output
    # The gateway does not seal over the cut either: opening the log for writing is refused.
    from mcpward.audit.events import AuditError

    with pytest.raises(AuditError, match="records after 25 were removed"):
        AuditLog(AuditSettings(path=path), KEY)
