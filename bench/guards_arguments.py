"""Cost of the argument guard per call on a typical ~1 KiB arguments object.

    .venv/bin/python bench/guards_arguments.py [--iterations 20000]

Runs `ArgumentGuard.on_request` in-process (no gateway, no I/O) with the default settings and a
static DNS map, so the number is the guard's own CPU cost: the walk with limits and character
checks, schema validation (compiled once, cached), kind classification and the URL/path/command
screens. Prints median and p99 microseconds per call for several shapes of call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson

from mcpward.gateway.context import system_context
from mcpward.guards.arguments import ArgumentGuard
from mcpward.guards.base import Call
from mcpward.guards.url_screen import static_resolver

SCHEMA = {"type": "object", "properties": {
    "url": {"type": "string", "format": "uri", "description": "The page to fetch"},
    "output_path": {"type": "string", "description": "Where to save the result"},
    "query": {"type": "string"}, "max_length": {"type": "integer"}, "raw": {"type": "boolean"},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    "tags": {"type": "array", "items": {"type": "string"}},
    "notes": {"type": "string"},
}, "required": ["url"]}
TYPICAL = {
    "url": "https://docs.example.com/guides/getting-started?lang=en&page=2",
    "output_path": "/srv/data/reports/2024/getting-started.md",
    "query": "how to configure the gateway for several upstream servers",
    "max_length": 5000, "raw": False,
    "headers": {"Accept": "text/html", "Accept-Language": "en-GB,en;q=0.9", "User-Agent": "agent/1.0"},
    "tags": ["docs", "gateway", "setup", "mcp", "security"],
    "notes": "Summarise the page in five bullet points. Keep code samples, drop navigation text, and note any "
             "configuration keys with their defaults. " * 4,
}
COMMAND = {"command": "git status 2>&1 | head -20 && ls -la /srv/data/reports", "timeout_ms": 5000,
           "notes": TYPICAL["notes"], "tags": TYPICAL["tags"]}
TEXT_ONLY = {"title": "Quarterly report", "body": TYPICAL["notes"] * 2, "tags": TYPICAL["tags"], "count": 3}
# A file write over max_string: allowed because `content` is a content-kind parameter (max_content).
FILE_WRITE = {"path": "/srv/data/reports/summary.md", "content": ("## Findings\n" + TYPICAL["notes"] + "\n") * 24}


def call_for(arguments: dict[str, Any], schema: dict[str, Any] | None) -> Call:
    return Call(ctx=system_context(), method="tools/call", params={"name": "tool", "arguments": arguments},
                server="bench", target="tool", exposed="bench__tool",
                definition={"name": "tool", "inputSchema": schema} if schema else None)


async def measure(guard: ArgumentGuard, call: Call, iterations: int) -> tuple[float, float]:
    for _ in range(200):
        await guard.on_request(call)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        await guard.on_request(call)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


async def run(iterations: int) -> None:
    guard = ArgumentGuard(resolver=static_resolver({"docs.example.com": ["93.184.215.14"]}))
    shapes = [
        ("typical: url + path + text, with schema", TYPICAL, SCHEMA),
        ("typical: same, no schema (never listed)", TYPICAL, None),
        ("command + text, no schema", COMMAND, None),
        ("text only, no schema", TEXT_ONLY, None),
        ("file write: path + 12 KB content, no schema", FILE_WRITE, None),
    ]
    print(f"{'call':44} {'bytes':>6} {'median us':>10} {'p99 us':>8}")
    for label, arguments, schema in shapes:
        median, p99 = await measure(guard, call_for(arguments, schema), iterations)
        print(f"{label:44} {len(orjson.dumps(arguments)):6d} {median:10.1f} {p99:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20000)
    asyncio.run(run(parser.parse_args().iterations))


if __name__ == "__main__":
    main()
