"""Audit events: one structured record per decision worth keeping.

Until the hash-chained audit log lands, records go to the `mcpward.audit` logger as one
JSON object per line, so they are machine-readable already and pass the log redactor.
Callers never put raw argument or result values here: names, rule ids, counts, hashes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

log = logging.getLogger("mcpward.audit")


def record(event: str, **fields: Any) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    body = {"ts": round(time.time(), 3), "event": event, **fields}
    log.info("%s", orjson.dumps(body, default=str, option=orjson.OPT_SORT_KEYS).decode())
