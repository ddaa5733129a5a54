"""Reading a running gateway's audit log from a test.

A reply goes out once its record is in the log's journal; SQLite gets the records in a batch a
few milliseconds later (`mcpward.audit.store.BATCH_DELAY`). A test that reads SQLite right after a
reply therefore waits for what it expects, then one more batch interval, so an exact count is not
read in the middle of a batch.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mcpward.audit.store import BATCH_DELAY


def committed(db: Path, event: str, at_least: int = 1, timeout: float = 10.0) -> list[str]:
    """Bodies of the `event` records in SQLite, once at least `at_least` are (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        bodies = _bodies(db, event)
        if len(bodies) >= at_least or time.monotonic() > deadline:
            break
        time.sleep(BATCH_DELAY / 2)
    time.sleep(BATCH_DELAY * 3)  # a batch that was being committed when the count was reached
    return _bodies(db, event)


def _bodies(db: Path, event: str) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT body FROM records WHERE event = ? ORDER BY seq", (event,))]
