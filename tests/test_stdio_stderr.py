"""A server's stderr reaches the log cut to size and rate-limited, and never stops being read."""

from __future__ import annotations

import logging

import pytest

from mcpward.transport import stdio_link
from mcpward.transport.stdio_link import STDERR_BUDGET, STDERR_LINE_MAX, StderrLog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mcpward.server.srv"]


def test_long_line_is_cut_and_says_how_much(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = StderrLog("srv")
    size = 3 * STDERR_LINE_MAX + 17
    body = b"a" * size
    for start in range(0, size, 1000):  # in pieces, as a pipe hands it over
        log.feed(body[start:start + 1000])
    log.feed(b"\nnext line\nunfinished")
    log.finish()
    first, second, third = lines(caplog)
    assert first == "a" * STDERR_LINE_MAX + f" [cut {size - STDERR_LINE_MAX} bytes]"
    assert (second, third) == ("next line", "unfinished")


def test_flood_is_counted_not_logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    now = [1000.0]
    monkeypatch.setattr(stdio_link.time, "monotonic", lambda: now[0])
    log = StderrLog("srv")
    log.feed(b"".join(b"line %d\n" % i for i in range(STDERR_BUDGET + 500)))
    assert len(lines(caplog)) == STDERR_BUDGET and log.suppressed == 500
    now[0] += stdio_link.STDERR_WINDOW  # a new window: the count is reported, then logging resumes
    log.feed(b"after\n")
    assert lines(caplog)[-1] == "after"
    summary = [r.getMessage() for r in caplog.records if r.name == "mcpward.upstream"]
    assert summary == [f"server srv wrote 500 stderr lines over the log budget ({STDERR_BUDGET} per 10s); not logged"]
