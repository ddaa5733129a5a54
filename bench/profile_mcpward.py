"""Profile mcpward's per-call hot path with cProfile while the raw client drives echo calls.

    .venv/bin/python bench/profile_mcpward.py                          # stdio front -> stdio upstream
    .venv/bin/python bench/profile_mcpward.py --front http --upstream http --era legacy

Runs `mcpward run|serve` under `python -m cProfile`, sends warm-ups plus N sequential calls,
stops it gracefully (stdin EOF / SIGINT) so the profile is written, and prints the top
functions by own time and by cumulative time. cProfile inflates Python-heavy code, so read
the ranking, not the absolute numbers. Output: .bench-out/profile-<front>-<upstream>-<era>.prof
"""

from __future__ import annotations

import argparse
import io
import pstats
import signal
import sys
import time
from pathlib import Path

from clients import Era, HttpClient, Proc, StdioClient, Watchdog
from latency import PY, RAW, ROOT, free_port, wait_port, write_configs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--front", choices=("stdio", "http"), default="stdio")
    p.add_argument("--upstream", choices=("stdio", "http"), default="stdio")
    p.add_argument("--era", choices=("modern", "legacy"), default="modern")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--core", action="store_true", help="The core-only config (optional guards, audit, limits off).")
    p.add_argument("--out", type=Path, default=ROOT / ".bench-out")
    args = p.parse_args()
    era: Era = args.era
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    prof = out / f"profile-{args.front}-{args.upstream}-{args.era}{'-core' if args.core else ''}.prof"
    up_port = free_port()
    stdio_cfg, http_cfg = write_configs(out, up_port)
    cfg = stdio_cfg if args.upstream == "stdio" else http_cfg
    if args.core:
        if args.upstream != "stdio":
            p.error("--core profiles the stdio upstream config")
        cfg = stdio_cfg.with_name("mcpward-core.toml")
    upstream = None
    if args.upstream == "http":
        upstream = Proc([PY, RAW, "--http", str(up_port)], out / "logs" / "profile-upstream.stderr", False)
        wait_port(upstream, up_port, time.perf_counter() + 30)
    port = free_port()
    sub = ["run", "-c", str(cfg)] if args.front == "stdio" else ["serve", "-c", str(cfg), "--port", str(port)]
    argv = [PY, "-m", "cProfile", "-o", str(prof), "-m", "mcpward.cli.main", *sub]
    proc = Proc(argv, out / "logs" / "profile-mcpward.stderr", stdio=args.front == "stdio")
    dog = Watchdog(proc, 300)
    try:
        if args.front == "stdio":
            client: StdioClient | HttpClient = StdioClient(proc, era)
        else:
            wait_port(proc, port, time.perf_counter() + 60)
            client = HttpClient(port, era)
        client.connect()
        for i in range(max(1, min(args.calls, 100_000))):
            client.call_ns(f"p{i}")
        if isinstance(client, HttpClient):
            client.close()
            proc.popen.send_signal(signal.SIGINT)  # uvicorn re-raises it after a clean shutdown; cProfile still writes
            proc.popen.wait(30)
    finally:
        dog.cancel()
        proc.stop()
        if upstream is not None:
            upstream.stop()
    if not prof.exists():
        print(f"no profile written (see {out / 'logs' / 'profile-mcpward.stderr'})", file=sys.stderr)
        return 1
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats = pstats.Stats(str(prof), stream=buf)
        stats.sort_stats(order).print_stats(args.top)
        text = buf.getvalue().replace(str(ROOT) + "/", "")
        text = text.replace(str(Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"), "")
        text = text.replace(sys.base_prefix + "/lib/", "")
        print(f"===== by {order} =====\n" + text[text.find("   ncalls"):])
    return 0


if __name__ == "__main__":
    sys.exit(main())
