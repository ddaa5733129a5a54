"""The audit log's write-ahead journal: records acknowledged from it survive a crash, exactly once.

A process that dies leaves its journal behind; the next open of the log chains in what it holds
beyond the marker committed with the last batch, and removes it. A live process's journal is never
touched by another opener.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

from mcpward.audit.chain import verify
from mcpward.audit.settings import AuditSettings
from mcpward.audit.store import BATCH_DELAY, AuditLog
from tests.conftest import PYTHON

# Appends N records, acknowledging each after `durable()`, with the SQLite batch pushed far away so
# that, when the parent kills it, the records exist only in the journal.
CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from mcpward.audit import store
    from mcpward.audit.settings import AuditSettings

    async def main() -> None:
        log = store.AuditLog(AuditSettings(path=Path(sys.argv[1])))
        committed, journaled = int(sys.argv[2]), int(sys.argv[3])
        for i in range(committed):
            log.append("call", {"i": i})
        await log.durable()
        log.flush()  # these are in SQLite (and the journal emptied)
        store.BATCH_DELAY = 3600.0
        for i in range(committed, committed + journaled):
            log.append("call", {"i": i})
            await log.durable()
        print("acknowledged", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def bodies(path: Path) -> list[dict[str, int]]:
    with sqlite3.connect(path) as db:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM records ORDER BY seq")]


def markers(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [k for (k,) in db.execute("SELECT key FROM meta WHERE key LIKE 'journal:%'")]


async def journaled(log: AuditLog, numbers: range) -> None:
    """Append one record per number, each acknowledged (in the journal) before the next."""
    for i in numbers:
        log.append("call", {"i": i})
        await log.durable()


def crash(log: AuditLog) -> None:
    """What a SIGKILL leaves: the journal's lock goes with the process, nothing else runs."""
    assert log._journal is not None
    log._journal.release()
    log._db.close()


def kill_after_ack(path: Path, committed: int, journaled: int) -> None:
    proc = subprocess.Popen([PYTHON, "-c", CHILD, str(path), str(committed), str(journaled)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"acknowledged\n", proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)


def test_a_killed_process_journal_is_chained_in_at_the_next_open(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.sqlite"
    kill_after_ack(path, committed=3, journaled=7)
    assert [b["i"] for b in bodies(path)] == [0, 1, 2]  # the 7 acknowledged ones are only in the journal
    [journal] = tmp_path.glob("audit.sqlite-journal-*")
    assert len(journal.read_bytes().splitlines()) == 7
    with caplog.at_level(logging.WARNING, logger="mcpward.auditlog"):
        AuditLog(AuditSettings(path=path)).close()
    assert [b["i"] for b in bodies(path)] == list(range(10))
    assert any("added 7 records from the journal" in r.getMessage() for r in caplog.records)
    report = verify(path)
    assert report.ok and report.records == 10
    assert list(tmp_path.glob("audit.sqlite*journal*")) == [] and markers(path) == []


async def test_records_committed_before_the_crash_are_not_added_twice(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = AuditLog(AuditSettings(path=path))
    await journaled(log, range(5))
    assert log._journal is not None
    log._journal.reset = lambda: None  # type: ignore[method-assign]  # as if killed between commit and truncate
    log.flush()
    await journaled(log, range(5, 8))
    journal = log._journal.path
    assert len(journal.read_bytes().splitlines()) == 8 and len(bodies(path)) == 5
    crash(log)
    AuditLog(AuditSettings(path=path)).close()
    assert [b["i"] for b in bodies(path)] == list(range(8))
    assert verify(path).ok and not journal.exists() and markers(path) == []


async def test_a_torn_last_line_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.sqlite"
    log = AuditLog(AuditSettings(path=path))
    await journaled(log, range(2))
    assert log._journal is not None
    journal = log._journal.path
    with journal.open("ab") as f:
        f.write(b'[3,1.5,"call"]\t{"i":')  # power lost mid-write: never acknowledged
    crash(log)
    with caplog.at_level(logging.WARNING, logger="mcpward.auditlog"):
        AuditLog(AuditSettings(path=path)).close()
    assert [b["i"] for b in bodies(path)] == [0, 1] and verify(path).ok
    assert any("cut off mid-write" in r.getMessage() for r in caplog.records)


async def test_a_live_journal_is_left_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    owner = AuditLog(AuditSettings(path=path))
    await journaled(owner, range(4))
    other = AuditLog(AuditSettings(path=path))  # opening recovers orphans only: this one is locked
    assert bodies(path) == [] and len(list(tmp_path.glob("audit.sqlite-journal-*"))) == 1
    other.append("cli", {"approve": "x"})  # another writer meanwhile, with its own journal
    other.close()
    await asyncio.sleep(BATCH_DELAY * 5)
    owner.close()
    assert sorted(b.get("i", -1) for b in bodies(path)) == [-1, 0, 1, 2, 3]  # each exactly once
    assert verify(path).ok and list(tmp_path.glob("audit.sqlite*journal*")) == []


async def test_a_journal_that_cannot_be_written_falls_back_to_commit_per_reply(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from mcpward.audit import store

    def refuse(_path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "Journal", refuse)
    path = tmp_path / "audit.sqlite"
    log = AuditLog(AuditSettings(path=path))
    with caplog.at_level(logging.ERROR, logger="mcpward.auditlog"):
        log.append("call", {"i": 0})
        await log.durable()
    assert log.pending == 0 and [b["i"] for b in bodies(path)] == [0]  # committed before the reply
    assert any("No space left" in r.getMessage() and "waits for its SQLite commit" in r.getMessage()
               for r in caplog.records)
    log.close()


def test_cli_warns_about_an_unfinished_journal(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mcpward.cli.audit import audit_app

    path = tmp_path / "audit.sqlite"
    kill_after_ack(path, committed=1, journaled=2)
    result = CliRunner().invoke(audit_app, ["verify", "--file", str(path)])
    assert result.exit_code == 0 and "holds 2 records" in result.output and "1 records verified" in result.output
    AuditLog(AuditSettings(path=path)).close()  # the next start
    result = CliRunner().invoke(audit_app, ["verify", "--file", str(path)])
    assert result.exit_code == 0 and "holds" not in result.output and "3 records verified" in result.output
