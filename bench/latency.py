"""Added latency and throughput per `tools/call`: direct vs mcpward vs peer proxies, stdio and HTTP, one run.

    .venv/bin/python bench/latency.py                     # everything (about 10 minutes on 2 cores)
    .venv/bin/python bench/latency.py --transports stdio --targets direct,mcpward --runs 1 --calls 300

Per (target, era, run) a fresh process: connect, 20 warm-up calls, N sequential timed calls,
then a throughput burst (stdio: a window of 8 pipelined calls on the one pipe; HTTP: 8
concurrent keep-alive clients). Runs are interleaved across targets; each metric is the
median over runs. "added" = target minus direct on the same transport and era.
Raw results (every sample) go to .bench-out/latency-<timestamp>.json and .bench-out/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from clients import BenchError, Era, HttpClient, Proc, StdioClient, Watchdog, http_concurrent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
RAW = str(BENCH / "raw_server.py")
MCPWARD = str(Path(PY).parent / "mcpward")
DEFAULT_FASTMCP_PY = ROOT / ".bench-out" / "venv-fastmcp" / "bin" / "python"
RUN_BUDGET_S = 180.0  # hard cap on one (target, era, run); the watchdog kills the process group
LABELS = {
    "direct": "direct (raw server)",
    "asyncio": "bare asyncio pass-through (floor)",
    "mcpward": "**mcpward** (defaults: every guard, the audit log, limits, metrics)",
    "mcpward-core": "**mcpward** core (optional guards, audit log, limits and metrics off)",
    "mcpward-stdio-up": "**mcpward** (HTTP front → stdio upstream)",
    "sdk": "SDK proxy (`mcp` 2.3.0 Server + Client)",
    "fastmcp": "fastmcp 4.1.2 `create_proxy` (default: fresh backend client per request)",
    "fastmcp-reuse": "fastmcp 4.1.2 `create_proxy` (one connected backend Client)",
}


@dataclass
class Target:
    key: str
    transport: str  # "stdio" | "http"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    target: str
    transport: str
    era: str
    run: int
    connect_ms: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    mean_us: float = 0.0
    cpu_us: float = 0.0  # the target process's own CPU per sequential call (not its upstream's)
    tput_calls: int = 0
    tput_s: float = 0.0
    calls_per_s: float = 0.0
    error: str | None = None
    samples_ns: list[int] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(proc: Proc, port: int, deadline: float) -> None:
    while time.perf_counter() < deadline:
        if not proc.alive():
            raise BenchError(f"target exited with {proc.popen.returncode} before listening (see {proc.log.name})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"port {port} not listening in time")


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


# The default per-principal bucket (100/min, burst 20) would refuse a benchmark's thousands of calls; the
# bucket is sized never to refuse, so it still counts every call. Everything else is the default (audit on).
# Every default guard stays on (the audit log, pinning, the argument and output guards, limits); the
# policy permits the echo tool (the default base refuses every call), and the bucket never refuses.
UNLIMITED = '\n[policy]\nbase = "permit-all"\n\n[limits]\nrate = 1000000\nburst = 1000000\n'
# The gateway core alone, as the peers are (they have no guards): what can be turned off is. The
# policy guard stays (the product has no "no policy" mode); permit-all makes it a cached decision.
CORE = ('\n[policy]\nbase = "permit-all"\n\n[guards.output]\nenabled = false\n\n[guards.secrets]\n'
        'enabled = false\n\n[guards.pii]\nenabled = false\n\n[guards.arguments]\n'
        'enabled = false\n\n[guards.errors]\nenabled = false\n\n[integrity]\nmode = "off"\n\n[audit]\n'
        'enabled = false\n\n[limits]\nenabled = false\n\n[telemetry]\nmetrics = false\n')


def write_configs(out: Path, upstream_port: int) -> tuple[Path, Path]:
    stdio_cfg = out / "mcpward-stdio.toml"
    stdio_cfg.write_text(f'[servers.raw]\ncommand = "{PY}"\nargs = ["{RAW}"]\nprefix = ""\n' + UNLIMITED)
    (out / "mcpward-core.toml").write_text(f'[servers.raw]\ncommand = "{PY}"\nargs = ["{RAW}"]\nprefix = ""\n' + CORE)
    http_cfg = out / "mcpward-http.toml"
    http_cfg.write_text(f'[servers.raw]\nurl = "http://127.0.0.1:{upstream_port}/mcp"\nallow_http = true\n'
                        'allow_private = true\nprefix = ""\n' + UNLIMITED)
    return stdio_cfg, http_cfg


def build_targets(args: argparse.Namespace, stdio_cfg: Path, http_cfg: Path, upstream_url: str) -> list[Target]:
    fpy = str(args.fastmcp_python)
    up = ["--", PY, RAW]
    stdio = {
        "direct": [PY, RAW],
        "asyncio": [PY, str(BENCH / "asyncio_proxy.py"), *up],
        "mcpward": [MCPWARD, "run", "-c", str(stdio_cfg)],
        "mcpward-core": [MCPWARD, "run", "-c", str(stdio_cfg.with_name("mcpward-core.toml"))],
        "sdk": [PY, str(BENCH / "sdk_proxy.py"), *up],
        "fastmcp": [fpy, str(BENCH / "fastmcp_proxy.py"), *up],
        "fastmcp-reuse": [fpy, str(BENCH / "fastmcp_proxy.py"), "--reuse", *up],
    }
    http = {  # "{port}" is filled in per start
        "direct": [PY, RAW, "--http", "{port}"],
        "mcpward": [MCPWARD, "serve", "-c", str(http_cfg), "--port", "{port}"],
        "mcpward-stdio-up": [MCPWARD, "serve", "-c", str(stdio_cfg), "--port", "{port}"],
        "sdk": [PY, str(BENCH / "sdk_proxy.py"), "--http", "{port}", "--url", upstream_url],
        "fastmcp": [fpy, str(BENCH / "fastmcp_proxy.py"), "--http", "{port}", "--url", upstream_url],
        "fastmcp-reuse": [fpy, str(BENCH / "fastmcp_proxy.py"), "--reuse", "--http", "{port}", "--url", upstream_url],
    }
    wanted = set(args.targets.split(","))
    targets: list[Target] = []
    for transport, table in (("stdio", stdio), ("http", http)):
        if transport not in args.transports.split(","):
            continue
        for key, argv in table.items():
            base = key.split("-")[0]
            if base in wanted:
                env = {"PYTHONPATH": str(args.mcpward_src)} if base == "mcpward" and args.mcpward_src else {}
                targets.append(Target(key, transport, argv, env))
    return targets


def measure(target: Target, era: Era, run: int, args: argparse.Namespace, out: Path) -> RunResult:
    res = RunResult(target.key, target.transport, era, run)
    port = free_port() if target.transport == "http" else None
    argv = [a.replace("{port}", str(port)) for a in target.argv]
    log = out / "logs" / f"{target.transport}-{target.key}-{era}-{run}.stderr"
    t0 = time.perf_counter()
    proc = Proc(argv, log, stdio=target.transport == "stdio", env={"PYTHONUNBUFFERED": "1", **target.env})
    dog = Watchdog(proc, RUN_BUDGET_S)
    client: StdioClient | HttpClient | None = None
    try:
        if port is None:
            client = StdioClient(proc, era)
        else:
            wait_port(proc, port, t0 + 60)
            client = HttpClient(port, era)
        client.connect()
        res.connect_ms = (time.perf_counter() - t0) * 1000
        for i in range(args.warmup):
            client.call_ns(f"warm-{i}")
        samples: list[int] = []
        stop_at = time.perf_counter() + args.call_seconds
        cpu0 = proc.cpu_ns()
        for i in range(args.calls):  # bounded in count and in time (a very slow peer gets fewer samples)
            samples.append(client.call_ns(f"hello-{i}"))
            if time.perf_counter() > stop_at:
                break
        res.cpu_us = (proc.cpu_ns() - cpu0) / len(samples) / 1000
        res.samples_ns = samples
        ordered = sorted(samples)
        res.p50_us = percentile(ordered, 50) / 1000
        res.p99_us = percentile(ordered, 99) / 1000
        res.mean_us = statistics.fmean(samples) / 1000
        deadline = time.perf_counter() + args.tput_seconds
        if isinstance(client, StdioClient):
            res.tput_calls, res.tput_s = client.pipelined(args.tput_calls, args.concurrency, deadline)
        else:
            assert port is not None
            res.tput_calls, res.tput_s = http_concurrent(port, era, args.concurrency, args.tput_calls, deadline)
        res.calls_per_s = res.tput_calls / res.tput_s if res.tput_s else 0.0
    except (BenchError, OSError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}" + (" [watchdog fired]" if dog.fired else "")
    finally:
        dog.cancel()
        if isinstance(client, HttpClient):
            client.close()
        proc.stop()
    return res


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.transport, r.era, r.target), []).append(r)
    rows: list[dict[str, Any]] = []
    for (transport, era, target), runs in groups.items():
        ok = [r for r in runs if r.error is None]
        row: dict[str, Any] = {"transport": transport, "era": era, "target": target, "runs_ok": len(ok),
                               "runs": len(runs), "errors": [r.error for r in runs if r.error]}
        if ok:
            for key in ("p50_us", "p99_us", "mean_us", "cpu_us", "calls_per_s", "connect_ms"):
                row[key] = statistics.median(getattr(r, key) for r in ok)
            row["p50_us_runs"] = [round(r.p50_us, 1) for r in ok]
            row["samples_min"] = min(len(r.samples_ns) for r in ok)
        rows.append(row)
    for row in rows:
        direct = next((d for d in rows if d["target"] == "direct" and d["transport"] == row["transport"]
                       and d["era"] == row["era"] and "p50_us" in d), None)
        if direct is not None and "p50_us" in row:
            row["added_p50_us"] = row["p50_us"] - direct["p50_us"]
            row["added_p99_us"] = row["p99_us"] - direct["p99_us"]
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"{args.calls} sequential `tools/call` after {args.warmup} warm-ups, median of {args.runs} runs; "
             f"throughput: {args.tput_calls} calls, {args.concurrency} in flight "
             "(stdio: pipelined on one pipe; HTTP: concurrent keep-alive clients).", ""]
    for transport in ("stdio", "http"):
        for era in ("modern", "legacy"):
            part = [r for r in rows if r["transport"] == transport and r["era"] == era]
            if not part:
                continue
            lines += [f"**{transport}, {era}** ({'2026-07-28 per-request _meta' if era == 'modern' else 'initialize'})",
                      "", "| path | p50 µs | p99 µs | added p50 µs | added p99 µs | CPU µs/call | calls/s | connect ms "
                      "| p50 per run |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
            for r in part:
                if "p50_us" not in r:
                    lines.append(f"| {LABELS[r['target']]} | failed: {r['errors'][0][:80]} | | | | | | | |")
                    continue
                added = (f"{r['added_p50_us']:+.0f} | {r['added_p99_us']:+.0f}" if "added_p50_us" in r
                         and r["target"] != "direct" else "— | —")
                runs = ", ".join(f"{x:.0f}" for x in r["p50_us_runs"])
                if r["samples_min"] < args.calls:
                    runs += f" (time cap: {r['samples_min']} calls)"
                lines.append(f"| {LABELS[r['target']]} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {added} | "
                             f"{r['cpu_us']:.0f} | {r['calls_per_s']:.0f} | {r['connect_ms']:.0f} | {runs} |")
            lines.append("")
    lines += verdict(rows)
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], goal_us: float = 150.0) -> list[str]:
    """One line per stdio era: mcpward's added p50 against the goal and against the same-run asyncio floor."""
    out: list[str] = []
    for era in ("modern", "legacy"):
        find = {r["target"]: r for r in rows if r["transport"] == "stdio" and r["era"] == era and "added_p50_us" in r}
        for key, name in (("mcpward-core", "mcpward core"), ("mcpward", "mcpward with defaults")):
            if key not in find:
                continue
            added = find[key]["added_p50_us"]
            line = (f"- stdio {era}: {name} adds {added:+.0f} µs at p50: goal ≤ {goal_us:.0f} µs "
                    f"{'**met**' if added <= goal_us else '**not met**'}")
            if "asyncio" in find:
                floor = find["asyncio"]["added_p50_us"]
                line += (f"; the bare asyncio floor adds {floor:+.0f} µs in this run "
                         f"({name} minus floor: {added - floor:+.0f} µs)")
            out.append(line + ".")
    return out


def machine(src: Path | None) -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "mcpward": version([MCPWARD, "--version"]),
            "git": version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
            "mcpward_src": f"snapshot {src.parent.name}" if src else "work tree, " + ("src/ has uncommitted changes"
                           if version(["git", "-C", str(ROOT), "status", "--porcelain", "src"]) else "src/ clean"),
            "cpus": sorted(os.sched_getaffinity(0)),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_end": os.getloadavg()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tput-calls", type=int, default=2000, help="calls in the throughput burst")
    p.add_argument("--call-seconds", type=float, default=15.0, help="time cap of the sequential calls")
    p.add_argument("--tput-seconds", type=float, default=5.0, help="time cap of the throughput burst")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight during the burst")
    p.add_argument("--transports", default="stdio,http")
    p.add_argument("--eras", default="modern,legacy")
    p.add_argument("--targets", default="direct,asyncio,mcpward,sdk,fastmcp")
    p.add_argument("--fastmcp-python", type=Path, default=DEFAULT_FASTMCP_PY)
    p.add_argument("--out", type=Path, default=ROOT / ".bench-out")
    p.add_argument("--mcpward-src", type=Path, default=None,
                   help="benchmark the mcpward package under this directory (PYTHONPATH) instead of the working tree")
    args = p.parse_args()
    args.calls, args.runs = max(1, min(args.calls, 100_000)), max(1, min(args.runs, 20))
    if "fastmcp" in args.targets.split(",") and not args.fastmcp_python.exists():
        print(f"note: {args.fastmcp_python} missing, skipping fastmcp (bench/run.sh creates it)", file=sys.stderr)
        args.targets = ",".join(t for t in args.targets.split(",") if t != "fastmcp")
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)

    load_start = os.getloadavg()
    upstream_port = free_port()
    stdio_cfg, http_cfg = write_configs(out, upstream_port)
    targets = build_targets(args, stdio_cfg, http_cfg, f"http://127.0.0.1:{upstream_port}/mcp")
    upstream: Proc | None = None
    results: list[RunResult] = []
    try:
        if any(t.transport == "http" and t.key != "direct" for t in targets):
            upstream = Proc([PY, RAW, "--http", str(upstream_port)], out / "logs" / "http-upstream.stderr", False)
            wait_port(upstream, upstream_port, time.perf_counter() + 30)
        for run in range(1, args.runs + 1):
            for target in targets:
                for era in args.eras.split(","):
                    r = measure(target, cast(Era, era), run, args, out)
                    results.append(r)
                    status = r.error or f"p50 {r.p50_us:.0f} µs, p99 {r.p99_us:.0f} µs, {r.calls_per_s:.0f}/s"
                    print(f"run {run} {target.transport:5} {era:6} {target.key:16} {status}", file=sys.stderr)
    finally:
        if upstream is not None:
            upstream.stop()

    rows = summarize(results)
    table = markdown(rows, args)
    info = {**machine(args.mcpward_src), "loadavg_start": load_start}
    table += (f"\nMachine: {info['nproc']} cores ({info['cpu']}; this run on CPUs {info['cpus']}), "
              f"Python {info['python']}, {info['mcpward']} ({info['mcpward_src']}; work tree HEAD {info['git']}); "
              f"load average {load_start[0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end.\n")
    report = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()},
              "summary": rows, "runs": [asdict(r) for r in results], "markdown": table}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"latency-{stamp}.json", "latest.json"):
        (out / name).write_text(json.dumps(report, indent=1))
    print(table)
    print(f"raw results: {out / f'latency-{stamp}.json'}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
