"""Sandbox start-up overhead: spawn to first response, sandboxed (bwrap) vs not, same run.

    .venv/bin/python bench/sandbox_startup.py [--runs 30]

Each run starts a server through the gateway's own launcher (secrets, plan, seccomp, cgroups,
barrier: everything a real start does), sends one JSON-RPC request and waits for the answer, then
stops it. Runs are interleaved (plain, sandboxed, plain, ...) so machine noise hits both alike.
Two servers: a shell one-liner that answers one line (isolates what the sandbox adds) and the
Python MCP fixture (what a real server's start costs). Goal: under 10 ms added for bwrap.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mcpward.gateway.config import parse
from mcpward.sandbox.launcher import Launcher

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = ('read line; printf \'%s\\n\' \'{"jsonrpc":"2.0","id":1,"result":{}}\'; read never')
SERVERS = {
    "sh": ("/bin/sh", ["-c", RESPONDER], {"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    "python-mcp": (sys.executable, [str(ROOT / "tests" / "fixtures" / "fault_server.py")],
                   {"jsonrpc": "2.0", "id": 1, "method": "server/discover",
                    "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}),
}


def config(state: Path) -> dict[str, object]:
    servers: dict[str, object] = {}
    for name, (command, args, _) in SERVERS.items():
        servers[f"{name}-plain"] = {"command": command, "args": args,
                                    "sandbox": {"backend": "none", "acknowledge_unsandboxed": True}}
        servers[f"{name}-bwrap"] = {"command": command, "args": args, "sandbox": {"backend": "bwrap"}}
    return {"servers": servers, "sandbox": {"state_dir": str(state)}}


async def one(launcher: Launcher, name: str, request: dict[str, object]) -> float:
    server = launcher.cfg.servers[name]
    got: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    start = time.perf_counter()
    link = await launcher.link(server, 1 << 20)
    link.on_message = lambda _m: got.done() or got.set_result(None)  # type: ignore[method-assign]
    await link.open()
    await link.send(request)
    await asyncio.wait_for(got, 30)
    elapsed = time.perf_counter() - start
    await link.close()
    return elapsed * 1000


async def main(runs: int) -> None:
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Launcher(parse(config(Path(tmp))))
        print(f"{runs} interleaved runs per variant; medians and p90 in ms (spawn to first response)\n")
        print("| server | plain p50 | bwrap p50 | added p50 | plain p90 | bwrap p90 |")
        print("|---|---|---|---|---|---|")
        for name, (_c, _a, request) in SERVERS.items():
            times: dict[str, list[float]] = {"plain": [], "bwrap": []}
            for _ in range(2):  # warm-up: probe, seccomp filter, page cache
                for variant in times:
                    await one(launcher, f"{name}-{variant}", request)
            for _ in range(runs):
                for variant in times:
                    times[variant].append(await one(launcher, f"{name}-{variant}", request))
            p50 = {k: statistics.median(v) for k, v in times.items()}
            p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in times.items()}
            print(f"| {name} | {p50['plain']:.1f} | {p50['bwrap']:.1f} | {p50['bwrap'] - p50['plain']:+.1f} "
                  f"| {p90['plain']:.1f} | {p90['bwrap']:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(main(parser.parse_args().runs))
