"""Audit events: one structured record per decision worth keeping.

`record(event, **fields)` does two things:
- logs one JSON object per line to the `mcpward.audit` logger (machine-readable, passes the log
  redactor; tests and operators read it), and
- appends the record to the installed `AuditLog` (the hash-chained SQLite log), if any, which
  redacts and escapes every string before it is hashed and stored.

Callers never put raw argument or result values here: names, rule ids, counts, hashes.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from mcpward.audit.store import AuditLog

log = logging.getLogger("mcpward.audit")
_installed: AuditLog | None = None
_atexit_registered = False
_HEX = re.compile(r"[0-9a-f]{1,128}")


class Digest(str):
    """A hex digest the gateway computed itself (of arguments, a session id): nothing a peer wrote can
    be in it, so the audit log stores it without the redaction scan every other string gets (each is
    unique, so the scan's cache never helps: it cost about 9 us per record)."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if not _HEX.fullmatch(value):
            raise ValueError("Digest: not a lowercase hex digest")
        return super().__new__(cls, value)

    @classmethod
    def sha256(cls, data: bytes) -> Digest:
        """The sha256 of `data` (hex by construction, so not checked again: this runs on every call)."""
        return str.__new__(cls, hashlib.sha256(data).hexdigest())


class AuditError(Exception):
    """The audit log cannot be opened as configured (wrong key, unknown format, unwritable path)."""


class AuditUnavailable(AuditError):
    """Records could not be committed: the caller must fail closed (not acknowledge the request)."""


# One record per client request: they belong in the audit log, and as log lines they are DEBUG (`-v`),
# not INFO: a line per call floods the log, and formatting and redacting it a second time was the
# largest audit cost per call. Every other event (refusals, sandbox, pins, alerts) is logged at INFO.
QUIET_EVENTS = frozenset({"request"})


def record(event: str, **fields: Any) -> None:
    record_parts(event, fields, None)


def record_parts(event: str, fields: dict[str, Any], made: dict[str, Any] | None) -> None:
    """`record` for a caller that keeps apart what the gateway produced itself (`made`: its own
    vocabulary, clock readings, counts and digests, under literal keys) from every string a client,
    an upstream or an operator wrote (`fields`). The log cleans `fields` only: `made` holds nothing
    a redaction or an escape could change. A key in both is a bug; `made` wins."""
    target = _installed
    if target is not None:
        target.append(event, fields, made)
    level = logging.DEBUG if event in QUIET_EVENTS else logging.INFO
    if not log.isEnabledFor(level):
        return
    body = {"ts": round(time.time(), 3), "event": event, **fields, **(made or {})}
    log.log(level, "%s", orjson.dumps(body, default=str, option=orjson.OPT_SORT_KEYS).decode())


def wanted(event: str) -> bool:
    """Whether a record of `event` would go anywhere (an audit log, or a log line at its level): lets
    a caller skip building a record nobody reads."""
    return _installed is not None or log.isEnabledFor(logging.DEBUG if event in QUIET_EVENTS else logging.INFO)


def install(audit_log: AuditLog | None) -> None:
    """Send every record from now on to `audit_log` as well (None: stop). The log is closed (flushed)
    at interpreter exit if nobody closed it before."""
    global _installed, _atexit_registered
    _installed = audit_log
    if audit_log is not None and not _atexit_registered:
        atexit.register(_close_at_exit)
        _atexit_registered = True


def installed() -> AuditLog | None:
    return _installed


def settled() -> bool:
    """Whether every record so far is already durable (journaled or committed), so `durable()` would
    return at once: lets the per-request path skip awaiting it."""
    target = _installed
    return target is None or target.settled()


async def durable() -> None:
    """Return once every record so far is committed; AuditUnavailable when it cannot be (fail closed)."""
    target = _installed
    if target is not None:
        await target.durable()


def _close_at_exit() -> None:
    target = _installed
    if target is not None:
        target.close()
