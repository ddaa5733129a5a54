"""Sandbox start-up overhead: spawn to first response, sandboxed (bwrap) vs not, same run.

    .venv/bin/python bench/sandbox_startup.py [--runs 30] [--pause 0.2] [--stages] [--only sh]

Each run starts a server through the gateway's own launcher (secrets, plan, seccomp, cgroups,
barrier: everything a real start does), sends one JSON-RPC request and waits for the answer, then
stops it. Three variants, interleaved (plain, bwrap cold, bwrap warm, plain, ...) so machine noise
hits them alike:
- plain: `backend = "none"`;
- bwrap cold: `[sandbox] warm = false`, so every start creates its cgroups and its forked
  child joins them before it execs bwrap (a server's first start always goes this way);
- bwrap warm: the default; after a start the launcher prepares a warm slot (cgroups plus a stub
  already inside them) for the next one, so this measures restarts and further sessions.
A pause between runs lets the previous run's clean-up and the slot refill finish first (both run
off the spawn path in a gateway too; here they would otherwise compete for the 2 vCPUs with the
start being measured). Two servers: a shell one-liner that answers one line (isolates what the
sandbox adds) and the Python MCP fixture (what a real server's start costs). Goal: under 10 ms
added for bwrap. `--stages` adds where the time goes inside each sandboxed start.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcpward.gateway.config import parse
from mcpward.sandbox import barrier as barrier_mod
from mcpward.sandbox import bwrap as bwrap_mod
from mcpward.sandbox.launcher import Launcher

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = ('read line; printf \'%s\\n\' \'{"jsonrpc":"2.0","id":1,"result":{}}\'; read never')
SERVERS = {
    "sh": ("/bin/sh", ["-c", RESPONDER], {"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    "python-mcp": (sys.executable, [str(ROOT / "tests" / "fixtures" / "fault_server.py")],
                   {"jsonrpc": "2.0", "id": 1, "method": "server/discover",
                    "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}),
}
VARIANTS = ("plain", "cold", "warm")

# --------------------------------------------------------------------------------------------- stage timing
# Stage name -> milliseconds spent in it during the current start (filled only with --stages).
_stage: dict[str, float] = {}


def _timed_async(owner: Any, attr: str, stage: str) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(owner, attr)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _stage[stage] = _stage.get(stage, 0.0) + (time.perf_counter() - start) * 1000

    setattr(owner, attr, wrapper)


def _timed_sync(owner: Any, attr: str, stage: str) -> None:
    original: Callable[..., Any] = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return original(*args, **kwargs)  # a warm-slot refill in a worker thread: not on the spawn path
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _stage[stage] = _stage.get(stage, 0.0) + (time.perf_counter() - start) * 1000

    setattr(owner, attr, wrapper)


def instrument() -> None:
    """Wrap the start's steps with timers (the launcher's private steps: this is a measuring tool)."""
    _timed_async(Launcher, "_resolve", "secrets")
    _timed_sync(Launcher, "plan", "plan")
    _timed_async(Launcher, "_verify_artifacts", "verify artifacts")
    _timed_sync(barrier_mod.CgroupSet, "create", "cgroup create")
    _timed_sync(Launcher, "_bwrap", "seccomp+cache+cgroups (link)")
    _timed_async(bwrap_mod.BwrapSpawner, "_warm_launch", "hand to warm stub")
    _timed_async(bwrap_mod.BwrapSpawner, "_child_pid", "bwrap exec to child pid")
    _timed_sync(bwrap_mod, "_map_ids", "uid/gid maps")
    _timed_sync(barrier_mod.CgroupSet, "attach", "cgroup attach")
    _timed_async(barrier_mod.Barrier, "on_child", "barrier (cgroups, egress)")


# --------------------------------------------------------------------------------------------- runs
def config(state: Path, warm: bool) -> dict[str, object]:
    servers: dict[str, object] = {}
    for name, (command, args, _) in SERVERS.items():
        servers[f"{name}-plain"] = {"command": command, "args": args,
                                    "sandbox": {"backend": "none", "acknowledge_unsandboxed": True}}
        servers[f"{name}-bwrap"] = {"command": command, "args": args, "sandbox": {"backend": "bwrap"}}
    return {"servers": servers, "sandbox": {"state_dir": str(state), "warm": warm}}


async def one(launcher: Launcher, name: str, request: dict[str, object]) -> tuple[float, dict[str, float]]:
    """(spawn-to-first-response in ms, stages of this start)."""
    server = launcher.cfg.servers[name]
    got: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _stage.clear()
    start = time.perf_counter()
    link = await launcher.link(server, 1 << 20)
    linked = time.perf_counter()
    link.on_message = lambda _m: got.done() or got.set_result(None)  # type: ignore[method-assign]
    await link.open()
    opened = time.perf_counter()
    await link.send(request)
    await asyncio.wait_for(got, 30)
    end = time.perf_counter()
    stages = dict(_stage)
    stages["link() total"] = (linked - start) * 1000
    stages["open() total (spawn + barrier)"] = (opened - linked) * 1000
    stages["released to first response"] = (end - opened) * 1000
    await link.close()
    return (end - start) * 1000, stages


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


async def main(runs: int, pause: float, stages: bool, only: str | None) -> None:
    import logging

    logging.disable(logging.WARNING)
    if stages:
        instrument()
    with tempfile.TemporaryDirectory() as tmp:
        launchers = {"cold": Launcher(parse(config(Path(tmp) / "cold", warm=False))),
                     "warm": Launcher(parse(config(Path(tmp) / "warm", warm=True)))}
        launchers["plain"] = launchers["cold"]
        print(f"{runs} interleaved runs per variant, {pause * 1000:.0f} ms pause between runs; "
              "p50 and p90 in ms (spawn to first response)\n")
        rows = []
        breakdown: dict[str, dict[str, dict[str, list[float]]]] = {}
        for name, (_c, _a, request) in SERVERS.items():
            if only and name != only:
                continue
            load_before = Path("/proc/loadavg").read_text().split()[:3]
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            breakdown[name] = {v: {} for v in VARIANTS[1:]}
            warm_hits = 0
            for i in range(runs + 2):  # the first 2 rounds warm up: probe, seccomp filter, page cache, first slot
                for variant in VARIANTS:
                    suffix = "plain" if variant == "plain" else "bwrap"
                    pool = launchers[variant].warm
                    ready = pool.ready if pool is not None else 0
                    elapsed, st = await one(launchers[variant], f"{name}-{suffix}", request)
                    if i >= 2:
                        times[variant].append(elapsed)
                        if variant == "warm" and ready:
                            warm_hits += 1
                        if variant != "plain":
                            for key, value in st.items():
                                breakdown[name][variant].setdefault(key, []).append(value)
                    await asyncio.sleep(pause)
            load_after = Path("/proc/loadavg").read_text().split()[:3]
            p50 = {k: statistics.median(v) for k, v in times.items()}
            rows.append(f"| {name} | {p50['plain']:.1f} | {p50['cold']:.1f} ({p50['cold'] - p50['plain']:+.1f}) "
                        f"| {p50['warm']:.1f} ({p50['warm'] - p50['plain']:+.1f}) | {p90(times['plain']):.1f} "
                        f"| {p90(times['cold']):.1f} | {p90(times['warm']):.1f} | {warm_hits}/{runs} "
                        f"| {' '.join(load_before)} → {' '.join(load_after)} |")
        print("| server | plain p50 | bwrap cold p50 (added) | bwrap warm p50 (added) | plain p90 | cold p90 "
              "| warm p90 | warm slot used | load avg before → after |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        if stages:
            for name, per_variant in breakdown.items():
                print(f"\nstages, {name} (p50 / p90 ms, summed per start; only steps that ran are listed)\n")
                print("| stage | cold p50 | cold p90 | warm p50 | warm p90 |")
                print("|---|---|---|---|---|")
                keys = list(dict.fromkeys([*per_variant["cold"], *per_variant["warm"]]))
                for key in keys:
                    cells = []
                    for variant in ("cold", "warm"):
                        values = per_variant[variant].get(key, [])
                        values += [0.0] * (runs - len(values))  # a step that did not run cost nothing
                        cells += [f"{statistics.median(values):.2f}", f"{p90(values):.2f}"]
                    print(f"| {key} | " + " | ".join(cells) + " |")
        for launcher in (launchers["cold"], launchers["warm"]):
            await launcher.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between runs")
    parser.add_argument("--stages", action="store_true", help="also time the steps of each sandboxed start")
    parser.add_argument("--only", choices=sorted(SERVERS), help="one server only")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.pause, args.stages, args.only))
