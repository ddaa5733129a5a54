"""User-space instructions per steady-state `tools/call` of `mcpward run` over stdio, counted by callgrind.

    .venv/bin/python bench/instructions.py                         # core config, modern era, 400 calls
    .venv/bin/python bench/instructions.py --config defaults --era legacy
    .venv/bin/python bench/instructions.py --src /tmp/snapshot/src  # another commit's src (git archive)

Why: on a shared VM, timings of two commits a few per cent apart swing more than the difference;
an instruction count does not move with load. The gateway runs under valgrind with instrumentation
off; the client connects and makes warm-up calls, then `callgrind_control -i on` counts a window of
N calls only, so start-up and exit (billions of instructions, varying by tens of millions between
runs) stay out of the number. The upstream runs unsandboxed (`backend = "none"`): bwrap cannot start
under valgrind, and the sandbox is not on the per-call path. Kernel time (the pipe reads and writes,
the event loop's waits) is not counted: `strace -c` or the CPU column of bench/latency.py cover it.
Needs valgrind (`callgrind_control` included).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from clients import Proc, StdioClient
from latency import PY, free_port, write_configs

UNSANDBOXED = 'prefix = ""\nsandbox = { backend = "none", acknowledge_unsandboxed = true }\n'


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("core", "defaults"), default="core")
    p.add_argument("--era", choices=("modern", "legacy"), default="modern")
    p.add_argument("--calls", type=int, default=400, help="calls in the counted window")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--src", help="PYTHONPATH for the gateway (a git-archive snapshot of another commit's src/)")
    args = p.parse_args()
    if shutil.which("callgrind_control") is None:
        p.error("valgrind (with callgrind_control) is not installed")
    with tempfile.TemporaryDirectory(prefix="mcpward-ir-") as tmp:
        out = Path(tmp)
        stdio_cfg, _ = write_configs(out, free_port())
        base = stdio_cfg.with_name("mcpward-core.toml") if args.config == "core" else stdio_cfg
        cfg = out / "unsandboxed.toml"
        cfg.write_text(base.read_text().replace('prefix = ""\n', UNSANDBOXED, 1))
        dump = out / "callgrind.out"
        env = {"PYTHONPATH": args.src} if args.src else {}
        proc = Proc(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dump}",
                     PY, "-m", "mcpward.cli.main", "run", "-c", str(cfg)], out / "gateway.stderr", stdio=True, env=env)
        try:
            client = StdioClient(proc, args.era)
            client.connect()
            for i in range(args.warmup):
                client.call_ns(f"warm {i}")
            pid = str(proc.popen.pid)
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            for i in range(args.calls):
                client.call_ns(f"call {i}")
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        finally:
            proc.stop()
        # callgrind_control -d writes callgrind.out.1 (the window); the dump at exit goes to callgrind.out.
        dumps = sorted(out.glob("callgrind.out.*"))
        text = dumps[0].read_text(errors="replace") if dumps else ""
        match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
        if match is None:
            print(f"no callgrind dump of the window in {out}", file=sys.stderr)
            return 1
        total = int(match.group(1))
    print(f"{args.config} config, {args.era}: {total / args.calls:,.0f} instructions per call "
          f"(a window of {args.calls} calls after {args.warmup} warm-up calls; load {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
