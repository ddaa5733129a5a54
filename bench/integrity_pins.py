"""Cost of the integrity guard on list refreshes: 10,000 tools from 100 servers.

    .venv/bin/python bench/integrity_pins.py [--repeat 5]

Measures `IntegrityGuard.on_published` as the gateway calls it for every page a server lists:
- first sight in tofu mode (fingerprint, scan, judge, one lock-file write per server);
- the first re-list after that: every server that listed before the last one re-checks its
  definitions against the now complete catalog (shadowing), with the content scan cached;
- a steady re-list of the same, unchanged lists (fingerprint only: no scan, no judging, no write);
- the per-call check (`on_request` of a pinned tool).
Tools are generated (distinct names, descriptions and schemas); the lock file lives in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mcpward.gateway import config as config_mod
from mcpward.gateway.context import system_context
from mcpward.guards.base import Call, Listed
from mcpward.integrity.guard import IntegrityGuard
from mcpward.integrity.settings import read_settings

SERVERS, PER_SERVER = 100, 100
WORDS = ["list", "read", "write", "search", "create", "update", "fetch", "file", "issue", "record", "page",
         "user", "project", "note", "event"]


def tool(server: int, i: int) -> dict[str, Any]:
    verb, noun = WORDS[i % len(WORDS)], WORDS[(i * 7 + server) % len(WORDS)]
    return {"name": f"{verb}_{noun}_{i}", "description": f"{verb.title()} a {noun} in workspace {server}; "
            f"returns the {noun} as JSON with its id, title and timestamps. Use page to continue.",
            "inputSchema": {"type": "object", "properties": {
                "id": {"type": "string", "description": f"The {noun} id"},
                "page": {"type": "integer", "minimum": 1, "description": "Page number"}}, "required": ["id"]},
            "annotations": {"readOnlyHint": verb in ("list", "read", "search", "fetch")}}


def listed(server: int) -> list[Listed]:
    name = f"s{server:03d}"
    return [Listed(name, t["name"], {**t, "name": f"{name}__{t['name']}"}) for t in (tool(server, i)
                                                                                 for i in range(PER_SERVER))]


def make_guard(directory: Path) -> IntegrityGuard:
    servers = {f"s{i:03d}": {"command": "srv", "args": [str(i)]} for i in range(SERVERS)}
    cfg = config_mod.parse({"servers": servers, "integrity": {"hold_destructive": False}},
                           str(directory / "mcpward.toml"), directory)
    return IntegrityGuard(cfg, read_settings(cfg))


def run_once() -> tuple[float, float, float, float]:
    lists = [listed(s) for s in range(SERVERS)]
    with tempfile.TemporaryDirectory() as tmp:
        guard = make_guard(Path(tmp))
        start = time.perf_counter()
        for server, items in enumerate(lists):
            guard.on_published(f"s{server:03d}", "tools", items)
        cold = time.perf_counter() - start
        timings = []
        for _ in range(2):
            fresh = [listed(s) for s in range(SERVERS)]  # new dict objects, same content: what a re-list delivers
            start = time.perf_counter()
            for server, items in enumerate(fresh):
                guard.on_published(f"s{server:03d}", "tools", items)
            timings.append(time.perf_counter() - start)
        settle, warm = timings
        call = Call(system_context(), "tools/call", {"name": "s000__read_file_0"}, "s000", lists[0][0].name,
                    lists[0][0].item["name"])
        n = 20_000

        async def calls() -> float:
            begin = time.perf_counter()
            for _ in range(n):
                await guard.on_request(call)
            return (time.perf_counter() - begin) / n

        per_call = asyncio.run(calls())
    return cold, settle, warm, per_call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [run_once() for _ in range(args.repeat)]
    cold = statistics.median(r[0] for r in runs)
    settle = statistics.median(r[1] for r in runs)
    warm = statistics.median(r[2] for r in runs)
    per_call = statistics.median(r[3] for r in runs)
    total = SERVERS * PER_SERVER
    print(f"{total} tools from {SERVERS} servers, median of {args.repeat} runs")
    print(f"first sight (tofu: fingerprint, scan, judge, lock writes): {cold * 1000:.0f} ms "
          f"({cold / total * 1e6:.1f} us per tool)")
    print(f"first re-list (shadowing re-checked, content cached):    {settle * 1000:.0f} ms "
          f"({settle / total * 1e6:.1f} us per tool)")
    print(f"steady re-list, nothing changed:                         {warm * 1000:.0f} ms "
          f"({warm / total * 1e6:.1f} us per tool)")
    print(f"per call (on_request of a pinned tool):                  {per_call * 1e6:.2f} us")


if __name__ == "__main__":
    main()
