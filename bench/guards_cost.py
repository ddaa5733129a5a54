"""What the output guards cost: per typical 1 KiB result, and redaction throughput on multi-MB outputs.

    .venv/bin/python bench/guards_cost.py                # everything (about a minute)
    .venv/bin/python bench/guards_cost.py --mb 2 --skip-detect-secrets

Part 1, latency: the default output guards (one OutputGuard: neutralising, secrets, PII, injection
markers, size cap; the error guard has no result hook) on typical ~1 KiB `tools/call` results,
called in-process as the gateway calls them; median and p99 of many calls after a warm-up. Then
the whole default chain from `mcpward.guards.setup.build_chain` (request and result
hooks) is measured the same way, each call carrying the tool's listed definition as the gateway sets
it (`call.definition`: the argument guard validates against its inputSchema on every call).

Part 2, throughput: redaction of multi-MB text, (a) the real LiveMCPBench tool outputs from
../shared/eval (read at run time, repeated to the size asked), (b) a synthetic application log
(seeded, so every run scans the same bytes). Secret redaction alone (the rule set plus exact values,
what detect-secrets does), the full output scan (secrets, PII, markers and, in the same pass, control
and invisible characters) and the whole guard on one huge text block. detect-secrets 1.5.0 scans
the same text in the same run (its default plugins, via `SecretsCollection.scan_file`).

CPU time (process_time) is reported next to wall time: the bench machine is shared, and CPU time
is what the guard itself costs. Throughput figures are medians of `--runs` interleaved runs (each
run times every figure once), with the CPU range and the load average at the runs' starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from mcpward.gateway.config import parse
from mcpward.gateway.context import system_context
from mcpward.guards import output
from mcpward.guards.base import Call, GuardChain, Listed
from mcpward.guards.redactor import CONTROL, SECRETS, Hit, encode, neutralise_bytes, splice

ROOT = Path(__file__).resolve().parent.parent
EVAL = Path(os.environ.get("MCPWARD_EVAL", ROOT.parent / "shared" / "eval"))

# ------------------------------------------------------------------------------------------ inputs


def typical_results() -> dict[str, dict[str, Any]]:
    """~1 KiB results of the kinds tools return: prose, a JSON listing, a log excerpt with one secret."""
    prose = ("The repository contains three packages. The core package implements the scheduler and the "
             "worker pool; the api package exposes the HTTP endpoints documented in docs/api.md; the cli "
             "package wraps both for local use. Tests live next to the code they cover and run with pytest. "
             "Recent changes moved configuration loading into its own module and added retries with "
             "exponential backoff to the upstream client. Open issues mention a race in the shutdown path "
             "when a worker is still draining its queue, and a request to support TOML configuration files "
             "in addition to YAML. The maintainers plan a release once the shutdown fix lands and the "
             "changelog is updated. Build status is green on the main branch; coverage is 87 percent. ")
    listing = {"items": [{"id": 1000 + i, "name": f"report-{i:02d}.pdf", "size": 48213 + 977 * i,
                          "modified": f"2025-07-{10 + i:02d}T09:{i:02d}:00Z", "owner": "finance", "shared": i % 2 == 0}
                         for i in range(7)], "next": None}
    listing_text = json.dumps(listing)
    log = "\n".join(f"2025-07-21T12:57:{i:02d}Z INFO worker-{i % 4} processed batch {4100 + i} in {12 + i} ms"
                    for i in range(14))
    log += "\n2025-07-21T12:57:15Z DEBUG using key AKIAQWADE5R42RDZ4JEM for the upload"
    return {
        "prose 1 KiB": {"content": [{"type": "text", "text": prose[:1024]}]},
        "JSON listing 1 KiB (text + structuredContent)": {"content": [{"type": "text", "text": listing_text[:1024]}],
                                                           "structuredContent": listing},
        "log excerpt 1 KiB with an AWS key": {"content": [{"type": "text", "text": log[:1024]}]},
    }


def real_outputs(target: int) -> str:
    rows = [json.loads(line) for line in (EVAL / "benign-tool-io" / "livemcpbench_tool_calls.dev.jsonl")
            .read_text("utf-8").splitlines() if line.strip()]
    base = "\n".join(row["output"] for row in rows)
    return (base * (target // len(base.encode()) + 1))[:target]


def synthetic_log(target: int, seed: int = 7) -> str:
    """An application log: requests, users, addresses, ids, stack traces, JSON payloads (seeded)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "order", "invoice", "customer", "shipment", "retry", "timeout",
             "cache", "index", "query", "session", "upload", "download", "report", "worker", "queue", "batch",
             "schedule"]
    out: list[str] = []
    size = 0
    n = 0
    while size < target:
        n += 1
        ts = (f"2025-07-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
              f"{rng.randint(0, 59):02d}Z")
        kind = rng.random()
        if kind < 0.5:
            line = (f"{ts} INFO [worker-{rng.randint(1, 16)}] {rng.choice(['GET', 'POST', 'PUT'])} "
                    f"/api/v1/{rng.choice(words)}/{rng.randint(1, 99999)}?page={rng.randint(1, 9)} "
                    f"{rng.choice([200, 200, 201, 404, 500])} {rng.randint(1, 900)}ms "
                    f"client=10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}")
        elif kind < 0.7:
            line = (f"{ts} DEBUG {rng.choice(words)} {rng.choice(words)}: "
                    + json.dumps({"id": f"{rng.getrandbits(128):032x}", "count": rng.randint(0, 1000),
                                  "ratio": rng.random(), "tags": rng.sample(words, 3)}))
        elif kind < 0.85:
            line = f"{ts} WARN " + " ".join(rng.choice(words) for _ in range(rng.randint(6, 18)))
        elif kind < 0.95:
            line = (f"Traceback (most recent call last):\n  File \"/srv/app/{rng.choice(words)}.py\", line "
                    f"{rng.randint(1, 900)}, in handle\n    result = self.{rng.choice(words)}(request)\n"
                    f"ValueError: bad {rng.choice(words)} {rng.randint(1, 99)}")
        else:
            line = (f"{ts} INFO user {rng.choice(words)}.{rng.choice(words)}@example.org logged in from "
                    f"203.0.113.{rng.randint(1, 254)}")
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)[:target]


# ------------------------------------------------------------------------------------------ timing

BATCH = 500  # calls per CPU-time sample


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def rate_cell(nbytes: int, samples: list[tuple[float, float]]) -> str:
    """Median wall MB/s, then CPU MB/s as median (min-max) over the runs."""
    wall = statistics.median(nbytes / w / 1e6 for w, _ in samples)
    cpu = sorted(nbytes / c / 1e6 for _, c in samples)
    return f"{wall:,.0f} MB/s (CPU {statistics.median(cpu):,.0f}, {cpu[0]:,.0f}-{cpu[-1]:,.0f})"


async def per_call(hook: Callable[[dict[str, Any]], Any], result: dict[str, Any], n: int) -> tuple[float, float, float]:
    """(median, p99, CPU) microseconds of one awaited call, each on a fresh copy of `result` (as the gateway
    parses a fresh result per request; the guards may change it in place). Copies are made untimed.

    Median and p99 are wall time per call. CPU is the median, over batches of BATCH calls, of the
    process CPU time per call: on a shared machine a call that is preempted costs wall time but no
    CPU time, so this is the figure that says what the guards themselves cost.
    """
    copies = [orjson.loads(orjson.dumps(result)) for _ in range(n + 500)]
    for i in range(500):
        await hook(copies[i])
    samples = []
    batches = []
    cpu = time.process_time_ns()
    for i in range(500, n + 500):
        arg = copies[i]
        t = time.perf_counter_ns()
        await hook(arg)
        samples.append((time.perf_counter_ns() - t) / 1000)
        if (i - 499) % BATCH == 0:
            now = time.process_time_ns()
            batches.append((now - cpu) / BATCH / 1000)
            cpu = time.process_time_ns()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)], statistics.median(batches or [0.0])


def detect_secrets_rate(text: str) -> float | None:
    try:
        from detect_secrets import SecretsCollection
        from detect_secrets.settings import default_settings
    except ImportError:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False, encoding="utf-8") as f:
        f.write(text)
        name = f.name
    try:
        with default_settings():
            collection = SecretsCollection()
            t = time.perf_counter()
            collection.scan_file(name)
            return len(encode(text)) / (time.perf_counter() - t) / 1e6
    finally:
        os.unlink(name)


# The upstream's own definition, as listed; the gateway passes this one object as `call.definition`
# on every call (so the argument guard validates the arguments against its inputSchema each time).
UPSTREAM_TOOL = {"name": "t", "description": "Reads a file of the project and returns its text.",
                 "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
                 "annotations": {"readOnlyHint": True}}


def default_chain() -> tuple[tempfile.TemporaryDirectory[str], GuardChain, dict[str, Any]]:
    """Every default guard, as `mcpward run` builds them, with `[policy] base = "permit-all"` so the timed
    call is allowed (the policy is still evaluated on every call). The integrity guard (on by default)
    pins in a temporary lock file (the caller cleans it up) and has seen the tool listed, as the
    gateway's list refresh does before any call."""
    from mcpward.guards.setup import build_chain

    tmp = tempfile.TemporaryDirectory()
    chain = build_chain(parse({"servers": {"bench": {"command": "unused"}}, "policy": {"base": "permit-all"}},
                              str(Path(tmp.name) / "mcpward.toml"), Path(tmp.name)))
    chain.published("bench", "tools", [Listed("bench", "t", {**UPSTREAM_TOOL, "name": "bench__t"})])
    return tmp, chain, UPSTREAM_TOOL


def chain_call(ctx: Any) -> Call:
    """A fresh `tools/call` as the gateway builds one per request."""
    return Call(ctx=ctx, method="tools/call", params={"name": "t", "arguments": {"path": "README.md"}},
                server="bench", target="t", exposed="bench__t", definition=UPSTREAM_TOOL)


# ------------------------------------------------------------------------------------------ main


async def latency_part(calls: int) -> list[str]:
    cfg = parse({"servers": {"bench": {"command": "unused"}}})
    guard = output.from_config(cfg)
    assert guard is not None
    ctx = system_context()
    rows = ["| 1 KiB result | output guard, median | p99 | CPU per call |", "|---|---|---|---|"]
    for label, result in typical_results().items():
        call = Call(ctx=ctx, method="tools/call", params={"name": "t", "arguments": {}}, server="bench",
                    target="t", exposed="bench__t")

        async def hook(fresh: dict[str, Any], call: Call = call) -> Any:
            return await guard.on_result(call, fresh)

        med, p99, cpu = await per_call(hook, result, calls)
        rows.append(f"| {label} | {med:.1f} us | {p99:.1f} us | {cpu:.1f} us |")
    tmp, chain, _ = default_chain()
    names = ", ".join(type(g).__name__ for g in chain.guards) or "empty"
    rows.append("")
    rows.append(f"Whole chain from `setup.build_chain` with `[policy] base = \"permit-all\"` ({names}), "
                "request and result hooks; each call carries the tool's listed definition as the gateway "
                "passes it (`call.definition`: the arguments are validated against its inputSchema), "
                "arguments `{\"path\": \"README.md\"}`:")
    rows.append("")
    rows.append("| 1 KiB result | chain, median | p99 | CPU per call |")
    rows.append("|---|---|---|---|")
    for label, result in typical_results().items():
        async def full(fresh: dict[str, Any]) -> Any:
            call = chain_call(ctx)
            await chain.request(call)
            return await chain.result(call, fresh)

        med, p99, cpu = await per_call(full, result, calls)
        rows.append(f"| {label} | {med:.1f} us | {p99:.1f} us | {cpu:.1f} us |")
    tmp.cleanup()
    return rows


def throughput_part(megabytes: float, runs: int, with_ds: bool) -> list[str]:
    cfg = parse({})
    guard = output.from_config(cfg)
    assert guard is not None
    redactor = guard.redactor
    big = output.OutputGuard(cfg, redactor, output.OutputSettings(max_result_bytes=64 * 1024 * 1024),
                             *_settings(cfg))
    ctx = system_context()
    call = Call(ctx=ctx, method="tools/call", params={}, server="bench", target="t", exposed="bench__t")
    target = int(megabytes * 1e6)

    def redacts(hit: Hit) -> bool:
        det = hit.detector
        mode = guard.secret_mode if det.kind in ("secret", "exact") else guard.pii_modes.get(det.category, "")
        return mode == "redact"

    texts = (("LiveMCPBench tool outputs", real_outputs(target)), ("synthetic application log", synthetic_log(target)))
    figures: list[tuple[str, int, dict[str, Callable[[], object]]]] = []
    for label, text in texts:
        data = encode(text)

        def secrets_only(data: bytes = data) -> object:
            hits = redactor.scan(data, SECRETS)
            return splice(data, hits) if hits else None

        def full_scan(data: bytes = data) -> object:
            # As the guard scans: the same pass reports control/invisible characters; only then is
            # the text neutralised and scanned again. Only findings whose mode is `redact` are
            # replaced: log-only ones (e-mail, phone, IP by default) are counted, the text is kept.
            hits = redactor.scan(data, guard.profile, None, guard.log_limits)
            if hits and hits[0].detector is CONTROL:
                data = neutralise_bytes(data)[0]
                hits = redactor.scan(data, guard.plain_profile, None, guard.log_limits)
            keep = [h for h in hits if redacts(h)]
            return splice(data, keep) if keep else None

        result = {"content": [{"type": "text", "text": text}]}

        def whole(result: dict[str, Any] = result) -> object:
            return asyncio.run(big.on_result(call, result))

        figures.append((label, len(data), {"secrets": secrets_only, "scan": full_scan, "guard": whole}))
    # Interleaved: every run times each figure once, so a burst of load on the shared machine
    # slows all figures of that run alike instead of one figure's every sample.
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _, _, fns in figures:
        for fn in fns.values():
            fn()  # warm-up (compiles the profile's program, fills the DFA cache)
    loads = []
    for _ in range(runs):
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
        for label, _, fns in figures:
            for name, fn in fns.items():
                samples.setdefault((label, name), []).append(timed(fn))
    rows = [f"Median of {runs} interleaved runs (load average {min(loads):.2f}-{max(loads):.2f} at their starts).",
            "",
            "| text | secret redaction | output scan (secrets, PII, markers, control characters) | "
            "whole output guard | detect-secrets 1.5.0 | mcpward secrets / detect-secrets |",
            "|---|---|---|---|---|---|"]
    for (label, n, _), (_, text) in zip(figures, texts, strict=True):
        ds = detect_secrets_rate(text) if with_ds else None
        secrets_wall = statistics.median(n / w / 1e6 for w, _ in samples[(label, "secrets")])
        ratio = f"{secrets_wall / ds:,.0f}x" if ds else "n/a"
        ds_cell = f"{ds:.2f} MB/s" if ds else "not run"
        cells = " | ".join(rate_cell(n, samples[(label, name)]) for name in ("secrets", "scan", "guard"))
        rows.append(f"| {label}, {n / 1e6:.1f} MB | {cells} | {ds_cell} | {ratio} |")
    return rows


def _settings(cfg: Any) -> tuple[Any, Any]:
    from mcpward.guards import pii, secrets

    return secrets.settings(cfg), pii.settings(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=4.0, help="size of each multi-MB text (default 4)")
    parser.add_argument("--runs", type=int, default=5,
                        help="interleaved timed runs per throughput figure (the median is reported)")
    parser.add_argument("--calls", type=int, default=20000, help="timed calls per latency figure")
    parser.add_argument("--skip-detect-secrets", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="only part 1 (a short run: about a minute less)")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load:.2f} at start", file=sys.stderr)
    lines = asyncio.run(latency_part(args.calls))
    if not args.latency_only:
        lines.append("")
        lines += throughput_part(args.mb, args.runs, not args.skip_detect_secrets)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
