"""`mcpward eval`: the poisoning scanner measured on the labelled corpora in ../shared/eval.

Positives (recall at HIGH = "hide" and at MEDIUM, per category, 95% Wilson intervals):
- MCP-SafetyBench rows of kind modified_existing_tool / added_tool with a description, per attack_category,
  scanned with the benchmark's real servers as the rest of the catalog (a modified tool sits on its own
  server; an added tool on a server of its own);
- Cisco YARA fixtures labelled malicious; the six poisoned DVMCP tools named in the corpus README;
- Cisco `malicious_overt_capability` tools, reported apart: a tool whose stated purpose is malicious is a
  different question from hidden instructions.
Negatives: every benign-mcp-tools tool file plus the Cisco fixtures labelled benign, de-duplicated by
(name, description). Next to each number, the keyword baseline (`ignore|important|crucial`).
Rug pulls: `changes.classify` on each malicious pair vs the real benign edits (benign additions apart).

The data is read where it lies and never copied; this module only counts.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcpward.integrity.scanner import Report, ScanContext, Scanner, Severity

POISONING = "mcp-tool-poisoning"
BENIGN = "benign-mcp-tools"
# DVMCP tools whose descriptions carry the poisoned <IMPORTANT>/<HIDDEN> blocks (corpus README).
DVMCP_POISONED = frozenset({
    ("challenge2", "get_company_data"), ("challenge2", "search_company_database"),
    ("challenge5", "enhanced_calculate"), ("challenge10", "get_user_profile"),
    ("challenge10", "malicious_check_system_status"),
})
DVMCP_SECOND_DEF = ("challenge5", "calculate")  # only its second definition is poisoned
BASELINE = re.compile(r"ignore|important|crucial", re.I)
ATTACKER_SERVER = "attacker"


@dataclass(frozen=True, slots=True)
class Case:
    group: str  # "MCP-SafetyBench: Tool Shadowing", "Cisco YARA fixtures", ...
    ident: str
    item: dict[str, Any]
    context: ScanContext | None = None


@dataclass(slots=True)
class Tally:
    n: int = 0
    high: int = 0
    medium: int = 0
    baseline: int = 0
    misses: list[str] = field(default_factory=list)  # ids not at HIGH (positives) / at HIGH (negatives)

    def add(self, report: Report, baseline: bool, ident: str, positive: bool) -> None:
        self.n += 1
        self.high += report.severity >= Severity.HIGH
        self.medium += report.severity >= Severity.MEDIUM
        self.baseline += baseline
        if (report.severity < Severity.HIGH) if positive else (report.severity >= Severity.HIGH):
            self.misses.append(ident)

    def merge(self, other: Tally) -> None:
        self.n += other.n
        self.high += other.high
        self.medium += other.medium
        self.baseline += other.baseline
        self.misses.extend(other.misses)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def pct(k: int, n: int) -> str:
    if not n:
        return "n/a"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


# ------------------------------------------------------------------------------------------- loading

def default_data_dir() -> Path:
    env = os.environ.get("MCPWARD_EVAL_DATA")
    return Path(env) if env else Path.cwd().parent / "shared" / "eval"


class CorpusError(Exception):
    """A corpus file that cannot be read: the message names the file and line."""


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    # A broken corpus must not be measured as if the line were absent.
                    raise CorpusError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
                if isinstance(row, dict):
                    yield row
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8") from None
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read: {exc.strerror}") from None


def _params_schema(params: Any) -> dict[str, Any]:
    """`params: [{name, annotation}]` (from Python signatures) or `arguments: [{name, type, desc}]` as a schema."""
    props: dict[str, Any] = {}
    for p in params if isinstance(params, list) else []:
        if isinstance(p, Mapping) and isinstance(p.get("name"), str):
            prop: dict[str, Any] = {"type": str(p.get("type") or "string")}
            desc = p.get("desc") or p.get("description")
            if isinstance(desc, str) and desc:
                prop["description"] = desc
            props[p["name"]] = prop
    return {"type": "object", "properties": props}


def tool_item(row: Mapping[str, Any]) -> dict[str, Any]:
    """A corpus row as an MCP tool definition."""
    item: dict[str, Any] = {"name": str(row.get("tool_name") or row.get("name") or row.get("fixture_name") or "tool"),
                            "description": str(row.get("description") or row.get("text") or "")}
    if isinstance(row.get("inputSchema"), Mapping):
        item["inputSchema"] = row["inputSchema"]
    elif "params" in row or "arguments" in row:
        item["inputSchema"] = _params_schema(row.get("params", row.get("arguments")))
    if isinstance(row.get("annotations"), Mapping):
        item["annotations"] = row["annotations"]
    return item


def real_servers(data: Path) -> dict[str, frozenset[str]]:
    """MCP-SafetyBench's real servers and their tool names (the catalog an attack lands in)."""
    servers: dict[str, set[str]] = {}
    for row in _jsonl(data / BENIGN / "mcp_safetybench_original_server_tools.jsonl"):
        servers.setdefault(str(row.get("server")), set()).add(str(row.get("tool_name")))
    return {k: frozenset(v) for k, v in servers.items()}


def positives(data: Path, *, with_context: bool = True) -> list[Case]:
    catalog = real_servers(data) if with_context else {}
    owner = {name: server for server, names in catalog.items() for name in names}
    out: list[Case] = []
    for row in _jsonl(data / POISONING / "mcp_safetybench_attacks.dev.jsonl"):
        if row.get("kind") not in ("modified_existing_tool", "added_tool") or not row.get("description"):
            continue
        item = tool_item(row)
        context = None
        if catalog:
            modified = row["kind"] == "modified_existing_tool"
            home = owner.get(item["name"], ATTACKER_SERVER) if modified else ATTACKER_SERVER
            context = ScanContext(home, catalog)
        out.append(Case(f"MCP-SafetyBench: {row.get('attack_category')}", str(row.get("id")), item, context))
    for row in _jsonl(data / POISONING / "cisco_yara_fixtures.jsonl"):
        if row.get("label") == "malicious":
            out.append(Case("Cisco YARA fixtures", str(row.get("id")), tool_item(row)))
    seen_second: set[tuple[str, str]] = set()
    for row in _jsonl(data / POISONING / "dvmcp_challenge_tools.jsonl"):
        key = (str(row.get("challenge")), str(row.get("tool_name")))
        if key == DVMCP_SECOND_DEF:
            if key not in seen_second:
                seen_second.add(key)
                continue
        elif key not in DVMCP_POISONED:
            continue
        out.append(Case("DVMCP poisoned tools", str(row.get("id")), tool_item(row)))
    return out


def overt(data: Path) -> list[Case]:
    return [Case(f"Cisco overt: {row.get('category')}", str(row.get("id")), tool_item(row))
            for row in _jsonl(data / POISONING / "cisco_mcp_scanner_tools.jsonl")
            if row.get("label") == "malicious_overt_capability"]


def negatives(data: Path) -> list[Case]:
    """Benign tools, de-duplicated by (name, description); the first source seen keeps the row."""
    out: list[Case] = []
    seen: set[tuple[str, str]] = set()
    sources = sorted((data / BENIGN).glob("*.jsonl")) if (data / BENIGN).is_dir() else []
    for path in sources:
        if "changes" in path.name:
            continue
        for row in _jsonl(path):
            item = tool_item(row)
            key = (item["name"], item["description"])
            if key in seen:
                continue
            seen.add(key)
            out.append(Case(f"benign: {path.name.split('.')[0]}", str(row.get("id")), item))
    for row in _jsonl(data / POISONING / "cisco_yara_fixtures.jsonl"):
        if row.get("label") == "benign":
            item = tool_item(row)
            if (item["name"], item["description"]) not in seen:
                out.append(Case("benign: cisco_yara_fixtures", str(row.get("id")), item))
    return out


# ------------------------------------------------------------------------------------------- running

def _tally(scanner: Scanner, cases: list[Case], positive: bool) -> dict[str, Tally]:
    groups: dict[str, Tally] = {}
    for case in cases:
        report = scanner.scan_item("tools", case.item, case.context)
        base = bool(BASELINE.search(case.item.get("description", "")))
        groups.setdefault(case.group, Tally()).add(report, base, case.ident, positive)
    return groups


def _total(groups: Mapping[str, Tally]) -> Tally:
    total = Tally()
    for t in groups.values():
        total.merge(t)
    return total


def rug_pulls(scanner: Scanner, data: Path) -> dict[str, Any] | None:
    """Change scores of the malicious pairs against the real benign edits (None without changes.py).

    The benign file also holds tools a release added (no approved version): an addition is classified
    against nothing, which is another question, so its scores are reported apart and never set the bar."""
    try:
        from mcpward.integrity.changes import classify
    except ImportError:
        return None
    classify_fn: Callable[..., Any] = classify
    malicious = []
    for row in _jsonl(data / POISONING / "rug_pull_pairs.dev.jsonl"):
        before = {"name": row.get("tool_name"), "description": row.get("approved_description") or ""}
        after = {"name": row.get("tool_name"), "description": row.get("changed_description") or ""}
        malicious.append(float(classify_fn("tools", before, after, scanner).score))
    edits: list[float] = []
    added: list[float] = []
    for row in _jsonl(data / BENIGN / "docker_mcp_registry_benign_changes.jsonl"):
        old_row, new_row = row.get("approved"), row.get("changed")
        new = tool_item(new_row) if isinstance(new_row, Mapping) else None
        old = tool_item(old_row) if isinstance(old_row, Mapping) else None
        if new is not None:
            (edits if old is not None else added).append(float(classify_fn("tools", old, new, scanner).score))
    if not malicious or not edits:
        return None
    median, top = statistics.median(edits), max(edits)
    return {"malicious": len(malicious), "benign": len(edits), "benign_median": round(median, 4),
            "benign_max": round(top, 4),
            "above_median": rate(sum(s > median for s in malicious), len(malicious)),
            "above_max": rate(sum(s > top for s in malicious), len(malicious)),
            "benign_added": {"n": len(added), "median": round(statistics.median(added), 4) if added else None,
                             "max": round(max(added), 4) if added else None}}


@dataclass(slots=True)
class Result:
    recall: dict[str, Tally]
    recall_no_context: Tally
    overt: dict[str, Tally]
    benign: dict[str, Tally]
    rug_pull: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        def block(t: Tally) -> dict[str, Any]:
            return {"n": t.n, "high": rate(t.high, t.n), "medium": rate(t.medium, t.n),
                    "baseline": rate(t.baseline, t.n)}

        total, benign, overt_total = _total(self.recall), _total(self.benign), _total(self.overt)
        return {
            "recall": {"total": block(total), "without_context": block(self.recall_no_context),
                       "by_category": {k: block(v) for k, v in sorted(self.recall.items())}},
            "overt_capability": {"total": block(overt_total),
                                 "by_category": {k: block(v) for k, v in sorted(self.overt.items())}},
            "false_positives": {"total": block(benign),
                                "by_source": {k: block(v) for k, v in sorted(self.benign.items())},
                                "high_ids": benign.misses},
            "misses_at_high": total.misses,
            "rug_pull": self.rug_pull,
        }


def evaluate(data: Path, scanner: Scanner | None = None) -> Result:
    scanner = scanner or Scanner()
    recall = _tally(scanner, positives(data), True)
    no_context = _total(_tally(scanner, positives(data, with_context=False), True))
    return Result(recall, no_context, _tally(scanner, overt(data), True), _tally(scanner, negatives(data), False),
                  rug_pulls(scanner, data))


def render(result: Result) -> str:
    """The Markdown table docs/detection.md shows."""
    lines = ["| set | n | hide (HIGH) | flag (>= MEDIUM) | keyword baseline |", "|---|---|---|---|---|"]

    def row(name: str, t: Tally) -> None:
        lines.append(f"| {name} | {t.n} | {pct(t.high, t.n)} | {pct(t.medium, t.n)} | {pct(t.baseline, t.n)} |")

    for name, t in sorted(result.recall.items()):
        row(name, t)
    row("**all poisoned (recall)**", _total(result.recall))
    row("all poisoned, no catalog context", result.recall_no_context)
    for name, t in sorted(result.benign.items()):
        row(name, t)
    row("**all benign (false positives)**", _total(result.benign))
    row("Cisco overt-malicious tools (reported, not tuned)", _total(result.overt))
    if result.rug_pull:
        rp = result.rug_pull
        lines.append("")
        lines.append(f"Rug pulls: {rp['malicious']} malicious edits vs {rp['benign']} benign edits "
                     f"(median benign score {rp['benign_median']}, max {rp['benign_max']}): "
                     f"{pct(rp['above_median']['k'], rp['malicious'])} score above the benign median, "
                     f"{pct(rp['above_max']['k'], rp['malicious'])} above the benign maximum.")
        added = rp.get("benign_added") or {}
        if added.get("n"):
            lines.append(f"Benign tool additions, scored apart (no approved version to compare): {added['n']} "
                         f"(median score {added['median']}, max {added['max']}).")
    else:
        lines.append("")
        lines.append("Rug pulls: not measured (mcpward.integrity.changes or the pair files are missing).")
    return "\n".join(lines)
