"""Crash safety: a record acknowledged by `durable()` survives the process being SIGKILLed.

A child appends records, awaiting `durable()` after each and printing its number only after that
returns; the parent kills it mid-stream, several times over the same files. After the next open
(which chains in what a killed process left in its journal) every number printed is in the
database, the chain verifies, and the JSONL mirror (cut mid-line by the kill, perhaps) is repaired
and verifies with the same head.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

from mcpward.audit.chain import verify
from mcpward.audit.settings import AuditSettings
from mcpward.audit.store import AuditLog
from tests.conftest import PYTHON

CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from mcpward.audit.settings import AuditSettings
    from mcpward.audit.store import AuditLog

    async def main() -> None:
        key = sys.argv[4].encode() or None
        log = AuditLog(AuditSettings(path=Path(sys.argv[1]), jsonl=Path(sys.argv[2])), key)
        round_ = sys.argv[3]
        i = 0
        while True:
            i += 1
            log.append("call", {"round": round_, "i": i, "server": "files"})
            await log.durable()
            sys.stdout.write(f"{round_}:{i}\\n")
            sys.stdout.flush()

    asyncio.run(main())
""")


def run_and_kill(db: Path, mirror: Path, round_: int, acknowledged: int, key: str) -> list[str]:
    proc = subprocess.Popen([PYTHON, "-c", CHILD, str(db), str(mirror), str(round_), key], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        while len(seen) < acknowledged:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode() if proc.stderr else "child exited"
            seen.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # whatever it acknowledged between our last read and the kill
        seen += rest.decode().split("\n")[:-1]  # complete lines only
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    return seen


# Keyed too: the head seal is rewritten in each commit's transaction (recovery's included), so a log
# killed mid-stream and recovered still verifies, and so does its mirror (sealed after each batch).
@pytest.mark.parametrize("key", ["", "crash-test-audit-key-0123456789"], ids=["unkeyed", "keyed"])
def test_acknowledged_records_survive_sigkill(tmp_path: Path, key: str) -> None:
    db, mirror = tmp_path / "audit.sqlite", tmp_path / "audit.jsonl"
    secret = key.encode() or None
    acknowledged: list[str] = []
    for round_, count in enumerate((150, 400, 250)):
        acknowledged += run_and_kill(db, mirror, round_, count, key)
    # The next start chains in what the last killed process left in its journal (each round's start
    # did the same for the round before) and repairs and completes the mirror.
    AuditLog(AuditSettings(path=db, jsonl=mirror), secret).close()
    with sqlite3.connect(db) as conn:
        bodies = [json.loads(body) for (body,) in conn.execute("SELECT body FROM records")]
    stored = {f"{f['round']}:{f['i']}" for f in bodies}
    missing = [a for a in acknowledged if a not in stored]
    assert missing == [] and len(acknowledged) >= 800
    report = verify(db, secret)
    assert report.ok and report.records == len(stored)
    mirrored = verify(mirror, secret)
    assert mirrored.ok and mirrored.head == report.head and mirrored.records == report.records
