"""Every log record passes the secret redactor, and nothing logged can start a new line (T05).

Tool output, upstream stderr and error details end up in log lines. Two things must not happen:
a credential in them lands in the log in clear, and text in them forges log entries (a CR/LF
followed by something that looks like a record of its own, or terminal escapes that rewrite what an
operator sees). So each record's formatted message is redacted with the secret rules and the
configured secret values, then control characters are escaped (`\\n`, `\\r`, `\\x1b`, `\\u2028`...).
Tracebacks keep their line breaks, but every line of them is prefixed with `  | `, so no line of a
traceback can pass for a record.

`install_log_redaction` adds the filter to the root logger's handlers and also wraps the log record
factory, so records that reach handlers installed later (uvicorn configures its own at start-up)
are clean as well. Records are cleaned once.
"""

from __future__ import annotations

import logging
from typing import Any

from mcpward.guards.redactor import SECRETS, Redactor

_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in range(0x20) if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x7F: "\\x7f"})
_ESCAPES.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D,
                                          0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0xFEFF)})
_FORMATTER = logging.Formatter()
_PREFIX = "  | "
_CONTINUATION = "\n" + _PREFIX


def escape(text: str) -> str:
    """Control characters, line and paragraph separators and bidi controls as visible escapes."""
    if text.isprintable():
        return text
    return text.translate(_ESCAPES)


def escape_block(text: str) -> str:
    """Like `escape`, but keeps line breaks; every line starts with a marker no record starts with."""
    return _PREFIX + _CONTINUATION.join(escape(line) for line in text.rstrip("\n").split("\n"))


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def _clean(self, text: str) -> str:
        try:
            redacted = self.redactor.redact(text, SECRETS)
        except Exception:  # never lose a log line to the redactor; say it could not be checked
            return "[mcpward: log message withheld: the redactor failed on it]"
        return redacted if redacted is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "mcpward_clean", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, still redacted
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = escape(self._clean(message))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_block(self._clean(record.exc_text))
        if record.stack_info:
            record.stack_info = escape_block(self._clean(record.stack_info))
        record.mcpward_clean = True
        return True


_active: RedactingFilter | None = None


def _factory(base: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        if _active is not None:
            _active.filter(record)
        return record

    make.mcpward_base = base  # type: ignore[attr-defined]
    return make


def install_log_redaction(redactor: Redactor) -> RedactingFilter:
    """Redact and escape every log record from now on; returns the filter (idempotent)."""
    global _active
    if _active is None:
        _active = RedactingFilter(redactor)
    else:
        _active.redactor = redactor
    for handler in logging.getLogger().handlers:
        if _active not in handler.filters:
            handler.addFilter(_active)
    current = logging.getLogRecordFactory()
    if not hasattr(current, "mcpward_base"):
        logging.setLogRecordFactory(_factory(current))
    return _active


def uninstall_log_redaction() -> None:
    """Undo `install_log_redaction` (for tests)."""
    global _active
    for handler in logging.getLogger().handlers:
        if _active is not None and _active in handler.filters:
            handler.removeFilter(_active)
    current = logging.getLogRecordFactory()
    base = getattr(current, "mcpward_base", None)
    if base is not None:
        logging.setLogRecordFactory(base)
    _active = None
