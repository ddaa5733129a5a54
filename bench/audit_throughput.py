"""What the tamper-evident audit log costs: per record on the request path, and sustained records/s.

    .venv/bin/python bench/audit_throughput.py                 # about 20 seconds
    .venv/bin/python bench/audit_throughput.py --records 20000 --repeat 5

Records look like the gateway's (a `tools.call` record of ~9 fields: principal, server, tool, rule,
decision, counts, a result hash, a duration), every string through the config's redactor (secret
rules, PII, markers; cached as `RedactWith` does) and escaped, as in production.

Part 1, append: `AuditLog.append` alone (clean, serialise, queue) per record, median of runs; this
is what a request pays before its reply, besides waiting for the commit.
Part 2, a request's whole audit cost: C concurrent "requests" on one event loop, each appends a
record and awaits `durable()` (the reply waits for the commit), with fsync "commit" and "always";
records/s and the per-request latency from append to durable.
Part 3, one-writer throughput without an event loop (each append commits at once, as CLI commands
do) and `verify` speed.

The log lives in a temp dir on the same file system as the repository (not tmpfs, when /tmp is one),
so fsync costs what it costs here. Wall and CPU time are both reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mcpward.audit.chain import verify
from mcpward.audit.settings import AuditSettings, FsyncPolicy
from mcpward.audit.store import AuditLog, RedactWith
from mcpward.gateway import config as config_mod
from mcpward.guards import output

ROOT = Path(__file__).resolve().parent.parent


def fields(i: int) -> dict[str, Any]:
    return {"principal": f"api-key:user{i % 50}", "server": f"srv{i % 8}", "tool": f"tool_{i % 40}",
            "rule": "policy.allow", "decision": "allow", "bytes": 1000 + i % 977, "redacted": {"email": i % 3},
            "result_sha256": f"{(i * 2654435761) & 0xFFFFFFFF:08x}" * 8, "duration_ms": 1.25 + (i % 100) / 10}


def new_log(directory: Path, fsync: FsyncPolicy, name: str) -> AuditLog:
    redactor = output.redactor_for(config_mod.parse({}))
    return AuditLog(AuditSettings(path=directory / f"{name}.sqlite", fsync=fsync), redact=RedactWith(redactor))


def bench_append(directory: Path, n: int, repeat: int) -> tuple[float, float]:
    """Median microseconds per append (no commit inside the measured part: the loop never turns)."""
    log = new_log(directory, "commit", "append")
    samples, cpu_samples = [], []

    async def run() -> None:
        for i in range(200):  # warm-up: compile the redactor's programs, fill the string cache
            log.append("tools.call", fields(i))
        await log.durable()
        for _ in range(repeat):
            payloads = [fields(i) for i in range(n)]
            t0, c0 = time.perf_counter(), time.process_time()
            for p in payloads:
                log.append("tools.call", p)
            samples.append((time.perf_counter() - t0) / n * 1e6)
            cpu_samples.append((time.process_time() - c0) / n * 1e6)
            await log.durable()

    asyncio.run(run())
    log.close()
    return statistics.median(samples), statistics.median(cpu_samples)


def bench_requests(directory: Path, fsync: FsyncPolicy, concurrency: int, n: int) -> dict[str, float]:
    log = new_log(directory, fsync, f"req-{fsync}-{concurrency}")
    latencies: list[float] = []

    async def worker(count: int, base: int) -> None:
        for i in range(count):
            t0 = time.perf_counter()
            log.append("tools.call", fields(base + i))
            await log.durable()
            latencies.append(time.perf_counter() - t0)

    async def run() -> float:
        per = n // concurrency
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(per, w * per) for w in range(concurrency)))
        return time.perf_counter() - t0

    c0 = time.process_time()
    wall = asyncio.run(run())
    cpu = time.process_time() - c0
    log.close()
    latencies.sort()
    done = len(latencies)
    return {"rps": done / wall, "p50_us": latencies[done // 2] * 1e6, "p99_us": latencies[int(done * 0.99)] * 1e6,
            "cpu_us": cpu / done * 1e6}


def bench_no_loop(directory: Path, n: int) -> float:
    log = new_log(directory, "commit", "noloop")
    t0 = time.perf_counter()
    for i in range(n):
        log.append("tools.call", fields(i))
    rate = n / (time.perf_counter() - t0)
    log.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = ROOT / ".bench-out"
    base.mkdir(exist_ok=True)
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"log in {base} ({args.records} records per measurement)")
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        directory = Path(tmp)
        wall, cpu = bench_append(directory, args.records, args.repeat)
        print(f"\n1. append (clean + serialise + queue): median {wall:.2f} us/record wall, {cpu:.2f} us CPU")
        print("\n2. request path: append + await durable() (reply after commit)")
        print(f"   {'fsync':<7} {'concurrency':>11} {'records/s':>10} {'p50 us':>8} {'p99 us':>8} {'CPU us/rec':>10}")
        for fsync in ("commit", "always"):
            for concurrency in (1, 16, 64):
                n = args.records if fsync == "commit" or concurrency > 1 else min(args.records, 2000)
                r = bench_requests(directory, fsync, concurrency, n)
                print(f"   {fsync:<7} {concurrency:>11} {r['rps']:>10,.0f} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} "
                      f"{r['cpu_us']:>10.1f}")
        rate = bench_no_loop(directory, min(args.records, 5000))
        print(f"\n3. no event loop (a commit per record, fsync commit): {rate:,.0f} records/s")
        path = directory / "req-commit-64.sqlite"
        t0 = time.perf_counter()
        report = verify(path)
        took = time.perf_counter() - t0
        print(f"   verify: {report.records:,} records in {took * 1e3:.0f} ms ({report.records / took:,.0f} records/s), "
              f"ok={report.ok}")


if __name__ == "__main__":
    main()
