"""What the policy guard costs per request and per list, with the `standard` base policy.

    .venv/bin/python bench/policy_cost.py            # 7 repetitions of each figure, medians printed

Each figure is the CPU time (time.process_time) of `await guard.on_request(call)` or
`await guard.on_list(call, "tools", items)` in a running event loop, per call, the median over 7
repetitions. "cached": the same principal, tool and relevant context were decided before (the
usual case: an agent calls the same tools again and again). "not cached": the decision cache is
emptied before every call, so each one is a Cedar evaluation.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from mcpward.gateway.config import parse
from mcpward.gateway.context import system_context
from mcpward.guards.base import Call, Listed
from mcpward.policy.guard import from_config

REPEATS = 7


def main() -> None:
    tmp = tempfile.TemporaryDirectory()
    cfg = parse({"servers": {"fs": {"command": "unused"}}}, str(Path(tmp.name) / "mcpward.toml"), Path(tmp.name))
    guard = from_config(cfg)
    ctx = system_context()
    tool = {"name": "fs__read", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}
    items = [Listed("fs", f"t{i}", {"name": f"fs__t{i}", "inputSchema": {"type": "object"},
                                    "annotations": {"readOnlyHint": i % 2 == 0}}) for i in range(500)]

    def call() -> Call:
        return Call(ctx=ctx, method="tools/call", params={"name": "fs__read", "arguments": {"path": "README.md"}},
                    server="fs", target="read", exposed="fs__read", definition=tool)

    async def per_request(n: int, cold: bool) -> float:
        calls = [call() for _ in range(n)]
        await guard.on_request(call())
        cache = guard.engine._cache
        start = time.process_time()
        for c in calls:
            if cold:
                cache.clear()
            await guard.on_request(c)
        return (time.process_time() - start) / n * 1e6

    async def per_list(n: int, cold: bool) -> float:
        lister = Call(ctx=ctx, method="tools/list", params={})
        await guard.on_list(lister, "tools", items)
        cache = guard.engine._cache
        start = time.process_time()
        for _ in range(n):
            if cold:
                cache.clear()
            await guard.on_list(lister, "tools", items)
        return (time.process_time() - start) / n * 1e3

    async def run() -> list[tuple[str, str]]:
        rows = []
        for label, coro, unit in (("on_request, decision cached", lambda: per_request(20_000, False), "us"),
                                  ("on_request, not cached (one Cedar call)", lambda: per_request(300, True), "us"),
                                  ("on_list of 500 tools, not cached", lambda: per_list(10, True), "ms"),
                                  ("on_list of 500 tools, cached", lambda: per_list(50, False), "ms")):
            values = [await coro() for _ in range(REPEATS)]
            rows.append((label, f"{statistics.median(values):.1f} {unit} (range {min(values):.1f}-{max(values):.1f})"))
        return rows

    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start; CPU time per call, median of {REPEATS}")
    print("| what | cost |\n|---|---|")
    for label, value in asyncio.run(run()):
        print(f"| {label} | {value} |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
