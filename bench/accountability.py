"""What authentication, limits and the audit log add per `tools/call` over HTTP, and audit records/s.

    .venv/bin/python bench/accountability.py                  # 3 interleaved runs, 1,000 calls each
    .venv/bin/python bench/accountability.py --runs 1 --calls 300
    .venv/bin/python bench/accountability.py --blocks 40             # both gateways up at once, alternating blocks

Two gateways in front of the same raw stdio server (bench/raw_server.py), started alternately:
- "off": no [auth], `[limits] enabled = false`, `[audit] enabled = false`, metrics off;
- "on": an API key on every request, limits on (memory storage: the principal's bucket plus a
  per-tool rate and a cost quota, all sized never to refuse), the audit log on (fsync "commit":
  every reply waits for its record to be written to the journal), metrics on, the anomaly rules on.
Per run: connect, 50 warm-up calls, N sequential timed calls on one keep-alive connection, then
8 concurrent clients for a throughput burst (each call is one audit record, so calls/s of the
"on" gateway is the audit log's sustained records/s under a real load). "added" = on - off,
median over runs; "gateway CPU" is the gateway process's on-CPU time per timed call (/proc schedstat),
the steadier measure on a shared VM. Raw samples go to .bench-out/accountability-latest.json.

`--blocks N`: this VM's speed moves by up to 2x over seconds, more than the difference measured, so
runs minutes apart cannot settle it. This mode starts both gateways once, warms both, then
alternates N pairs of short blocks (`--block-calls`, default 200 sequential calls; the order inside
each pair alternates too) and reports the median and quartiles of the per-pair differences of p50
latency and gateway CPU: each pair sees the same machine within about half a second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clients import HttpClient, Proc, http_concurrent
from latency import free_port, percentile, wait_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
MCPWARD = str(Path(PY).parent / "mcpward")
RAW = BENCH / "raw_server.py"
KEY = "mcpw_benchbenchbenchbenchbenchbenchbenchbench0"  # a bench-only key; its digest goes in the config

COMMON = f'[servers.raw]\ncommand = "{PY}"\nargs = ["{RAW}"]\nprefix = ""\n\n[policy]\nbase = "permit-all"\n\n' \
         '[sandbox]\nstate_dir = "sandbox-state"\n\n'
OFF = COMMON + '[limits]\nenabled = false\n\n[audit]\nenabled = false\n\n[telemetry]\nmetrics = false\n'


def on_config() -> str:
    from mcpward.auth.api_keys import key_digest

    return COMMON + (f'[auth.api_keys.bench]\nsha256 = "{key_digest(KEY)}"\n\n'
                     '[limits]\nrate = 1000000\nburst = 1000000\n\n'
                     '[limits.tools."echo"]\nrate = 1000000\nburst = 1000000\ncost = 1\nbudget = 1000000000\n'
                     'period = "day"\n\n[audit]\nfsync = "commit"\n')


def _start(name: str, config: Path, token: str | None, warmup: int) -> tuple[Proc, HttpClient, int]:
    """A gateway serving `config`, connected and warmed up; (its process, a client, its port)."""
    port = free_port()
    proc = Proc([MCPWARD, "serve", "-c", str(config), "--port", str(port)], config.parent / f"{name}.log", stdio=False)
    try:
        wait_port(proc, port, time.perf_counter() + 60)
        client = HttpClient(port, "modern", token=token)
        client.connect()
        for i in range(warmup):
            client.call_ns(f"warm {i}")
    except BaseException:
        proc.stop()
        raise
    return proc, client, port


def one_run(name: str, config: Path, calls: int, token: str | None) -> dict[str, Any]:
    proc, client, port = _start(name, config, token, warmup=50)
    try:
        cpu_before = proc.cpu_ns()
        samples = sorted(client.call_ns(f"call {i}") for i in range(calls))
        # The gateway's own CPU per call over the timed calls (all its threads, /proc schedstat): on a
        # shared VM this moves less than latency does, and every us of it is latency on one CPU.
        cpu_us = (proc.cpu_ns() - cpu_before) / calls / 1000
        client.close()
        done, seconds = http_concurrent(port, "modern", 8, 4000, time.perf_counter() + 60.0, token)
        return {"p50_us": percentile(samples, 50) / 1000, "p99_us": percentile(samples, 99) / 1000,
                "cpu_us": cpu_us, "calls_per_s": done / seconds, "samples_ns": samples}
    finally:
        proc.stop()


def blocks(configs: dict[str, Path], pairs: int, calls: int) -> None:
    started: dict[str, tuple[Proc, HttpClient]] = {}
    try:
        for name in ("off", "on"):
            proc, client, _port = _start(name, configs[name], KEY if name == "on" else None, warmup=200)
            started[name] = proc, client
        diffs: dict[str, list[float]] = {"p50_us": [], "cpu_us": []}
        for pair in range(pairs):
            one: dict[str, dict[str, float]] = {}
            for name in (("off", "on") if pair % 2 == 0 else ("on", "off")):
                proc, client = started[name]
                cpu_before = proc.cpu_ns()
                samples = sorted(client.call_ns(f"call {i}") for i in range(calls))
                one[name] = {"p50_us": percentile(samples, 50) / 1000,
                             "cpu_us": (proc.cpu_ns() - cpu_before) / calls / 1000}
            for key in diffs:
                diffs[key].append(one["on"][key] - one["off"][key])
        load = _load()
    finally:
        for proc, client in started.values():
            client.close()
            proc.stop()
    for key, label in (("p50_us", "p50 latency"), ("cpu_us", "gateway CPU per call")):
        q1, q2, q3 = statistics.quantiles(diffs[key], n=4)
        print(f"added {label}: median {q2:+.1f} us, quartiles {q1:+.1f} .. {q3:+.1f} us "
              f"({pairs} pairs of {calls} calls; load {load})")
    out = ROOT / ".bench-out"
    out.mkdir(exist_ok=True)
    (out / "accountability-blocks-latest.json").write_text(json.dumps(diffs))


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=0, help="pairs of alternating blocks, both gateways up")
    parser.add_argument("--block-calls", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="mcpward-bench-") as tmp:
        configs = {"off": Path(tmp) / "off.toml", "on": Path(tmp) / "on.toml"}
        configs["off"].write_text(OFF)
        configs["on"].write_text(on_config())
        if args.blocks:
            blocks(configs, args.blocks, args.block_calls)
            return
        for run in range(args.runs):
            for name in ("off", "on"):
                result = one_run(name, configs[name], args.calls, KEY if name == "on" else None)
                results[name].append(result)
                print(f"run {run + 1} {name:>3}: p50 {result['p50_us']:7.1f} us  p99 {result['p99_us']:7.1f} us  "
                      f"gateway CPU {result['cpu_us']:6.1f} us/call  {result['calls_per_s']:7.0f} calls/s "
                      f"(8 clients)  load {_load()}", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("p50_us", "p99_us", "cpu_us", "calls_per_s")}
           for name, rs in results.items()}
    # Paired differences (each "on" run against the "off" run just before it): their spread says how
    # far one median can be trusted on a VM whose speed moves between runs.
    paired = [on["cpu_us"] - off["cpu_us"] for off, on in zip(results["off"], results["on"], strict=True)]
    print(f"\nadded by auth + limits + audit: p50 {med['on']['p50_us'] - med['off']['p50_us']:+.1f} us, "
          f"p99 {med['on']['p99_us'] - med['off']['p99_us']:+.1f} us per call (median of {args.runs} runs)")
    print(f"gateway CPU added per call: {statistics.median(paired):+.1f} us (median of paired runs; "
          f"per run: {', '.join(f'{d:+.0f}' for d in paired)})")
    print(f"audit records/s sustained by the 'on' gateway under 8 clients: {med['on']['calls_per_s']:.0f}")
    out = ROOT / ".bench-out"
    out.mkdir(exist_ok=True)
    (out / "accountability-latest.json").write_text(json.dumps({"median": med, "runs": results}))


if __name__ == "__main__":
    main()
