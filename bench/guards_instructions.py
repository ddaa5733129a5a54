"""Instructions per call of the default guard chain and of each guard's hook, counted by callgrind.

    .venv/bin/python bench/guards_instructions.py                 # every part, every 1 KiB result
    .venv/bin/python bench/guards_instructions.py --parts chain,OutputGuard.res --results prose

Why: `bench/guards_cost.py` times the same calls, but on this shared VM a few microseconds of
difference drown in the noise; an instruction count does not move with load. Each part runs in a
fresh interpreter under callgrind twice, with --small and --large calls after the same warm-up; the
difference divided by the extra calls is the cost of one call, start-up and imports cancelled out.
A loop that only builds the call and awaits nothing ("empty") is counted the same way; its count
is subtracted from every part, so a part's number is its hook alone (the chain: all hooks). The
chain, the call and the 1 KiB results are those of `bench/guards_cost.py`.
Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from guards_cost import chain_call, default_chain, typical_results

from mcpward.gateway.context import system_context

HERE = Path(__file__).resolve().parent
PARTS = ("chain", "IntegrityGuard.req", "PolicyGuard.req", "ArgumentGuard.req", "OutputGuard.res")
WARMUP = 300


def inner(part: str, calls: int, result_label: str) -> None:
    """What runs under callgrind: the warm-up, then `calls` calls of `part`."""
    import logging

    logging.disable(logging.WARNING)  # the permit-all notice, once per process
    tmp, chain, _ = default_chain()
    guards = {type(g).__name__: g for g in chain.guards}
    result = typical_results()[result_label]
    copies = [orjson.loads(orjson.dumps(result)) for _ in range(WARMUP + calls)]
    ctx = system_context()

    async def one(fresh: dict[str, Any]) -> None:
        call = chain_call(ctx)
        if part == "chain":
            await chain.request(call)
            await chain.result(call, fresh)
        elif part.endswith(".req"):
            await guards[part[:-4]].on_request(call)
        elif part.endswith(".res"):
            await guards[part[:-4]].on_result(call, fresh)

    async def run() -> None:
        for i in range(WARMUP):
            await one(copies[i])
        gc.freeze()  # what the warm-up made is not the calls' garbage
        for i in range(WARMUP, WARMUP + calls):
            await one(copies[i])

    asyncio.run(run())
    tmp.cleanup()


def count(part: str, calls: int, result_label: str) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          str(Path(__file__)), "--inner", part, str(calls), result_label],
                         capture_output=True, text=True, check=True, cwd=HERE)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no callgrind total for {part}:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def per_call(part: str, small: int, large: int, result_label: str) -> float:
    return (count(part, large, result_label) - count(part, small, result_label)) / (large - small)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--inner":
        inner(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    labels = list(typical_results())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    p.add_argument("--results", default="", help="comma-separated prefixes of the result labels (default: all)")
    p.add_argument("--small", type=int, default=500)
    p.add_argument("--large", type=int, default=3000)
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed")
    parts = [x for x in args.parts.split(",") if x]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s): {', '.join(unknown)}")
    wanted = [w for w in args.results.split(",") if w]
    chosen = [label for label in labels if not wanted or any(label.startswith(w) for w in wanted)]
    print(f"Instructions per call (callgrind, calls {args.large} minus {args.small}, the empty loop subtracted)")
    print()
    print("| 1 KiB result | " + " | ".join(parts) + " |")
    print("|---|" + "---|" * len(parts))
    for label in chosen:
        empty = per_call("empty", args.small, args.large, label)
        cells = [f"{(per_call(part, args.small, args.large, label) - empty) / 1000:.1f}k" for part in parts]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
