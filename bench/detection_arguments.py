"""Detection quality of the argument guard on the external corpora in ../shared/eval.

    .venv/bin/python bench/detection_arguments.py            # print the tables
    .venv/bin/python bench/detection_arguments.py --write    # also replace the section in docs/detection.md

Reads the corpora at run time (never copies them): each attack payload goes into a parameter of
the matching kind, through the real guard with its default settings, and every real benign
tool call (LiveMCPBench agent runs) goes through the same guard with kinds from the argument
names, as the guard classifies them when a tool was never listed. DNS is a static map (no
network): every name resolves to the documentation address 93.184.215.14 except names that look
like metadata or loopback services.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from stats import pct  # bench/stats.py: this script runs from bench/

from mcpward.gateway.context import system_context
from mcpward.guards.arguments import ArgumentGuard
from mcpward.guards.arguments_config import ArgumentSettings
from mcpward.guards.base import Call, Refusal

ROOT = Path(__file__).resolve().parent.parent
EVAL = Path(os.environ.get("MCPWARD_EVAL", ROOT.parent / "shared" / "eval"))
PAYLOADS = EVAL / "argument-injection-payloads" / "payloads.dev.jsonl"
BENIGN = EVAL / "benign-tool-io" / "livemcpbench_tool_calls.dev.jsonl"
DOC = ROOT / "docs" / "detection.md"
MARK = "<!-- section: arguments (bench/detection_arguments.py) -->"
PUBLIC = "93.184.215.14"
# SSRF rows whose target is a public outside host (attacker server, redirector, reference link), not an
# internal one: a screen for internal targets should let most of them through. Scored apart. (A row
# whose public URL embeds an internal one, `...?consumerUri=http://169.254.169.254/`, is not one of them.)
OUTSIDE_HOSTS = {"evil.com", "example.com", "nicob.net", "www.tcpipguide.com", "1.1.1.1", "www.googleapis.com",
                 "rancher.com"}
KIND_OF = {"command_injection": "command", "path_traversal": "path", "path_traversal_lfi": "path",
           "path_traversal_template_{FILE}": "path", "sensitive_file_path": "path", "ssrf_url": "url"}


async def bench_resolver(host: str) -> list[str]:
    if re.search(r"metadata|instance-data", host):
        return ["169.254.169.254"]
    if re.search(r"localhost|loopback", host):
        return ["127.0.0.1"]
    return [PUBLIC]


async def refusal_of(guard: ArgumentGuard, arguments: dict[str, Any], server: str = "bench",
                     tool: str = "tool") -> Refusal | None:
    call = Call(ctx=system_context(), method="tools/call", params={"name": tool, "arguments": arguments},
                server=server, target=tool, exposed=f"{server}__{tool}", definition=None)
    try:
        await guard.on_request(call)
    except Refusal as refusal:
        return refusal
    return None


async def refused(guard: ArgumentGuard, arguments: dict[str, Any], server: str = "bench",
                  tool: str = "tool") -> str | None:
    found = await refusal_of(guard, arguments, server, tool)
    return None if found is None else found.rule


def outside_host(payload: str) -> bool:
    host = re.sub(r"^[a-z]+://", "", payload).split("/")[0].split(":")[0].split("?")[0]
    return host in OUTSIDE_HOSTS


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        sys.exit(f"corpus not found: {path} (set MCPWARD_EVAL to the eval directory)")
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def guard_with(**changes: Any) -> ArgumentGuard:
    settings = ArgumentSettings()
    for key, value in changes.items():
        setattr(settings, key, value)
    return ArgumentGuard(settings, bench_resolver)


async def attacks(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[str, list[int]]]:
    guard, rooted = guard_with(), guard_with(roots=("/srv/data",))
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    missed: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
        category, payload = row["category"], row["payload"]
        kind = KIND_OF.get(category)
        if kind is None:
            continue
        if "{FILE}" in category:
            payload = payload.replace("{FILE}", "etc/passwd")
        name = {"command": "command", "path": "path", "url": "url"}[kind]
        label = category
        if category == "ssrf_url" and outside_host(payload):
            label = "ssrf_url (outside host)"
        hit = await refused(guard, {name: payload})
        groups[label][0] += hit is not None
        groups[label][1] += 1
        if hit is None:
            missed[label].append(payload)
        if category == "sensitive_file_path":
            rooted_hit = await refused(rooted, {name: payload})
            groups["sensitive_file_path (roots declared)"][0] += rooted_hit is not None
            groups["sensitive_file_path (roots declared)"][1] += 1
    table = ["| category | parameter kind | refused / rows | recall [95% CI] |", "|---|---|---|---|"]
    for label in sorted(groups):
        k, n = groups[label]
        base = label.split(" ")[0]
        table.append(f"| `{label}` | {KIND_OF[base]} | {k} / {n} | {pct(k, n)} |")
    examples = []
    for label in sorted(missed):
        sample = ", ".join(f"`{m[:50]}`" for m in missed[label][:6])
        what = "not refused, as intended for public hosts" if "outside" in label else "missed"
        examples.append(f"- `{label}` ({len(missed[label])} {what}), e.g. {sample}")
    return table, examples, dict(groups)


def goals(groups: dict[str, list[int]], default: BenignResult) -> list[str]:
    """The issue's goals against what was measured, stated from the numbers (never by hand)."""
    lines = []
    for label, (k, n) in sorted(groups.items()):
        if "outside" in label or "roots declared" in label:
            continue
        rate = 100 * k / n
        verdict = "met" if rate >= 95 else f"**missed by {95 - rate:.1f} points**"
        lines.append(f"- recall >= 95% for `{label}`: {rate:.1f}%, {verdict}")
    hits, n, rules, _ = default
    rate = 100 * hits / n
    verdict = "met" if rate <= 0.5 else f"**missed by {rate - 0.5:.1f} points**"
    lines.append(f"- <= 0.5% of real benign calls refused (defaults): {rate:.1f}%, {verdict} "
                 f"({', '.join(f'{r} {c}' for r, c in rules.most_common()) or 'no refusals'})")
    return lines


BenignResult = tuple[int, int, collections.Counter[str], list[str]]


async def benign(rows: list[dict[str, Any]], guard: ArgumentGuard) -> BenignResult:
    rules: collections.Counter[str] = collections.Counter()
    which: list[str] = []
    hits = 0
    for row in rows:
        found = await refusal_of(guard, row["arguments"], row["server_name"], row["tool_name"])
        if found is not None:
            hits += 1
            rules[found.rule] += 1
            # the refusal message names the parameter and the reason, never the value
            which.append(f"`{row['server_name']}/{row['tool_name']}`: {found.message[:110]}")
    return hits, len(rows), rules, which


async def cost(rows: list[dict[str, Any]], guard: ArgumentGuard, passes: int = 7) -> float:
    """Median over `passes` of the mean CPU microseconds per benign call (process time, so other work
    on a shared machine counts less; DNS answers come from the static map, warm cache)."""
    for row in rows:
        await refused(guard, row["arguments"], row["server_name"], row["tool_name"])
    means = []
    for _ in range(passes):
        start = time.process_time()
        for row in rows:
            await refused(guard, row["arguments"], row["server_name"], row["tool_name"])
        means.append((time.process_time() - start) / len(rows) * 1e6)
    return statistics.median(means)


async def run() -> str:
    attack_rows, benign_rows = load(PAYLOADS), load(BENIGN)
    table, examples, groups = await attacks(attack_rows)
    default = await benign(benign_rows, guard_with())
    # What the content kind buys: the same calls when file bodies get no larger limit than any string.
    flat = await benign(benign_rows, guard_with(max_content=ArgumentSettings().max_string))
    micros = await cost(benign_rows, guard_with())
    lines = [
        "## Argument guard", "",
        "Measured with `.venv/bin/python bench/detection_arguments.py` on `payloads.dev.jsonl` "
        f"({len(attack_rows)} rows) and `livemcpbench_tool_calls.dev.jsonl` ({len(benign_rows)} real calls), default "
        "settings unless a row says otherwise, no schema (kinds from parameter names), DNS from a static map "
        f"(every name -> {PUBLIC} except metadata/localhost-looking names). Payloads go into a parameter of the "
        "matching kind (`command`, `path` with `{FILE}` = `etc/passwd`, `url`).", "",
        "### Goals", "", *goals(groups, default), "",
        "### Recall per category", "", *table, "",
        "`sensitive_file_path (roots declared)`: the same rows with `roots = [\"/srv/data\"]`, where any absolute path "
        "outside the root is refused as well; the corpus README calls these rows relevant for roots rules.", "",
        "Misses (first few of each):", "", *examples, "",
        "The `command_injection` rows still passed are plain commands: listing a directory, printing the working "
        "directory or the system name, sleeping, locating a program, downloading a file. A parameter whose purpose "
        "is to run commands runs exactly these for real (the benign calls below locate programs and list "
        "directories in `command` parameters), so the screen does not refuse them; what may call such a tool at "
        "all is the policy's decision, and what the command can reach is the sandbox's. Refused beyond shell "
        "structure: reconnaissance and account commands, listing the user-profile root (every account's home), "
        "program names built from wildcards, braces or variables, string literals repeated thousands of times "
        "(overflow probes), metadata targets and ambiguous IP encodings in URLs, sensitive paths.", "",
        "`ssrf_url (outside host)`: rows whose target is a public attacker, redirector or reference host "
        f"({', '.join(sorted(OUTSIDE_HOSTS))}); an internal-target screen is not meant to refuse them, and those "
        "refused were refused for their scheme. A public redirector that bounces to an internal address is out of "
        "reach of any argument check; the sandbox egress proxy sees the real connection.", "",
        "### Real benign calls refused", "",
        "| configuration | calls refused / calls | rate [95% CI] | by rule |", "|---|---|---|---|",
        _benign_row("defaults", default),
        _benign_row(f"`max_content = {ArgumentSettings().max_string}` (file bodies get no larger limit)", flat), "",
        "Benign calls refused with the defaults:", "", *(f"- {w}" for w in default[3] or ["none"]), "",
        f"With the defaults, strings over `max_string` ({ArgumentSettings().max_string} bytes) are allowed only in "
        f"content-kind parameters (file and message bodies: `content`, `body`, `markdown`, ...), up to `max_content` "
        f"({ArgumentSettings().max_content} bytes) and within `max_total`; the second row shows the calls that "
        "limit would refuse without the content kind.", "",
        "The benign file has no tool schemas, so schema validation is not exercised here, and the static DNS map "
        "answers every name with a public address, so `args.url.unresolvable` cannot occur here (a deployment "
        "refuses URLs whose host does not resolve; scheme-less values such as `owner/repo` are never resolved).", "",
        f"Mean guard cost over these real calls: {micros:.1f} us CPU per call (median of 7 passes; warm schema-less "
        f"path, static DNS map; load average {_load()} on this machine while measuring).", "",
    ]
    return "\n".join(lines)


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def _benign_row(label: str, result: BenignResult) -> str:
    hits, n, rules, _ = result
    by_rule = ", ".join(f"`{r}` {c}" for r, c in rules.most_common()) or "none"
    return f"| {label} | {hits} / {n} | {pct(hits, n)} | {by_rule} |"


def write(section: str) -> None:
    text = DOC.read_text("utf-8")
    start = text.index(MARK) + len(MARK)
    end = text.find("<!-- section:", start)
    end = len(text) if end < 0 else end
    DOC.write_text(text[:start] + "\n" + section + "\n" + text[end:], "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the argument section of docs/detection.md")
    args = parser.parse_args()
    section = asyncio.run(run())
    print(section)
    if args.write:
        write(section)


if __name__ == "__main__":
    main()
