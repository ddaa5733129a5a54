"""Scan speed of the tool-poisoning scanner: 10,000 tools from 100 servers.

    .venv/bin/python bench/integrity_scan.py            # uses ../shared/eval/benign-mcp-tools when present
    .venv/bin/python bench/integrity_scan.py --synthetic   # generated tools only
    .venv/bin/python bench/integrity_scan.py --per-item    # scan_item per tool (before the list entry point)

Tools are synthesised from the real benign corpus when it is there (each real tool is copied with a
per-server suffix on its name and a per-copy word in its description, so every definition is distinct
and the content cache cannot help the cold pass), else generated. Each server's list is scanned with one
`Scanner.scan_items` call and the full catalog as ScanContext (every server's names), as the gateway's
integrity guard scans what a server lists on a refresh (`--per-item`: one `scan_item` per tool instead).

Reported: rule compile time (once per process), cold scan (first sight of every definition, with a new
Scanner: its catalog index and RE2 caches start empty), warm re-scan (the same unchanged lists again:
content cache hits), median of --repeat runs, as CPU time of this process (time.process_time: what other
jobs on a shared machine disturb least) and wall time, with the load average before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from mcpward.integrity.scanner import ScanContext, Scanner

ROOT = Path(__file__).resolve().parent.parent
SERVERS, PER_SERVER = 100, 100


def real_tools() -> list[dict[str, Any]]:
    data = Path(os.environ.get("MCPWARD_EVAL_DATA", ROOT.parent / "shared" / "eval")) / "benign-mcp-tools"
    out: list[dict[str, Any]] = []
    for name in ("docker_mcp_registry_tools.dev.jsonl", "livemcpbench_tools.dev.jsonl"):
        path = data / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                tool = {"name": row["tool_name"], "description": row.get("description") or ""}
                if isinstance(row.get("inputSchema"), dict):
                    tool["inputSchema"] = row["inputSchema"]
                out.append(tool)
    return out


def generated(i: int) -> dict[str, Any]:
    # Hash-derived names: sequential ones (tool_1, tool_2) are one edit apart and rightly flagged as look-alikes.
    name = "tool_" + hashlib.sha256(str(i).encode()).hexdigest()[:10]
    return {"name": name, "description": f"Fetches record {i} from the store and returns it as JSON. "
            "Supports filtering by date range and pagination via a cursor.",
            "inputSchema": {"type": "object", "properties": {
                "id": {"type": "string", "description": "Record id"},
                "cursor": {"type": "string", "description": "Opaque pagination cursor"},
                "limit": {"type": "integer", "default": 50, "description": "Maximum rows"}}}}


def catalog(synthetic: bool) -> dict[str, list[dict[str, Any]]]:
    base = [] if synthetic else real_tools()
    servers: dict[str, list[dict[str, Any]]] = {}
    n = 0
    for s in range(SERVERS):
        tools = []
        for _ in range(PER_SERVER):
            if base:
                src = base[n % len(base)]
                tool = dict(src, name=f"{src['name']}_{s:02d}x{s:02d}", description=f"{src['description']} (copy {n})")
            else:
                tool = generated(n)
            tools.append(tool)
            n += 1
        servers[f"server{s:03d}"] = tools
    return servers


def run(servers: dict[str, list[dict[str, Any]]], scanner: Scanner, per_item: bool) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to scan every tool of every server against the whole catalog."""
    names = {s: frozenset(t["name"] for t in tools) for s, tools in servers.items()}
    cpu, wall = time.process_time(), time.perf_counter()
    for server, tools in servers.items():
        context = ScanContext(server, names)
        if per_item:
            for tool in tools:
                scanner.scan_item("tools", tool, context)
        else:
            scanner.scan_items("tools", tools, context)
    return time.process_time() - cpu, time.perf_counter() - wall


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="generated tools only")
    parser.add_argument("--per-item", action="store_true", help="scan_item per tool, not scan_items per list")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    servers = catalog(args.synthetic)
    total = sum(len(t) for t in servers.values())
    before = load()
    colds: list[tuple[float, float]] = []
    warms: list[tuple[float, float]] = []
    compiles: list[float] = []
    for _ in range(args.repeat):
        t0 = time.process_time()
        scanner = Scanner()
        compiles.append(time.process_time() - t0)
        colds.append(run(servers, scanner, args.per_item))
        warms.append(run(servers, scanner, args.per_item))
    source = "generated" if args.synthetic or not real_tools() else "real benign corpus, copied per server"
    how = "scan_item per tool" if args.per_item else "scan_items per server list"
    print(f"{total} tools from {len(servers)} servers ({source}; {how}), median of {args.repeat}; "
          f"load average {before} before, {load()} after")
    print(f"  compile rules : {1000 * statistics.median(compiles):8.1f} ms CPU")
    for label, times in (("cold scan    ", colds), ("warm re-scan ", warms)):
        cpu = statistics.median(t[0] for t in times)
        wall = statistics.median(t[1] for t in times)
        runs = ", ".join(f"{1000 * t[0]:.0f}" for t in times)
        print(f"  {label} : {1000 * cpu:8.1f} ms CPU ({1e6 * cpu / total:.1f} us/tool), {1000 * wall:8.1f} ms wall"
              f"  [CPU ms per run: {runs}]")


if __name__ == "__main__":
    main()
