"""Bookkeeping deferred until a reply is written: order kept, nothing lost, failures contained."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mcpward.gateway import after_reply


def test_without_an_event_loop_it_runs_at_once() -> None:
    seen: list[int] = []
    after_reply.defer(lambda: seen.append(1))
    assert seen == [1] and after_reply.pending() == 0


def test_a_front_runs_the_queue_in_order() -> None:
    seen: list[int] = []

    async def main() -> None:
        for i in range(3):
            after_reply.defer(lambda i=i: seen.append(i))
        assert seen == [] and after_reply.pending() == 3  # nothing ran before the "reply"
        after_reply.run()
        assert seen == [0, 1, 2] and after_reply.pending() == 0

    asyncio.run(main())


def test_what_no_front_runs_is_run_by_the_fallback_timer_in_every_loop() -> None:
    seen: list[str] = []

    async def main(tag: str) -> None:
        after_reply.defer(lambda: seen.append(tag))
        await asyncio.sleep(after_reply.FALLBACK_DELAY * 4)

    asyncio.run(main("first"))
    asyncio.run(main("second"))  # a new loop gets its own timer
    assert seen == ["first", "second"]


def test_a_failure_is_logged_and_the_rest_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        after_reply.defer(broken)
        after_reply.defer(lambda: seen.append(2))
        after_reply.run()

    with caplog.at_level(logging.ERROR, logger="mcpward.gateway"):
        asyncio.run(main())
    assert seen == [2]
    assert "deferred bookkeeping failed" in caplog.text


def test_a_request_is_timed_at_its_end_not_when_it_is_recorded() -> None:
    import time

    from mcpward.telemetry import Telemetry
    from mcpward.telemetry.settings import TelemetrySettings

    telemetry = Telemetry(TelemetrySettings(metrics=True, traces=False))
    trace = telemetry.request("tools/call", transport="http", target="t", server=None, session_id=None,
                              request_id=1, protocol_version=None, traceparent=None, tracestate=None)
    ended = time.perf_counter()
    time.sleep(0.2)  # recorded late, as after_reply does
    trace.end("success", None, ended)
    text = telemetry.render_metrics()[0].decode()
    line = next(x for x in text.splitlines() if x.startswith("mcp_server_operation_duration_seconds_sum"))
    assert float(line.rsplit(" ", 1)[1]) < 0.1
