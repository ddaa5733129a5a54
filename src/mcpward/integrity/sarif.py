"""SARIF 2.1.0 for `mcpward scan --sarif`: one run, every rule described, one result per finding.

Levels: high -> error, medium -> warning, low -> note. `security-severity` (what GitHub code scanning
sorts by) is 8.0 / 5.0 / 2.0. A finding's physical location is the config file (relative to the
working directory when it is inside it, so CI annotations land on the right file; a `file://` URI
otherwise) with the line where the server is named; its logical location is the JSON path of the
offending value. Secrets never appear: findings carry masked values only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mcpward import __version__
from mcpward.integrity.launch import RULES, Finding

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {"high": "error", "medium": "warning", "low": "note"}
SECURITY_SEVERITY = {"high": "8.0", "medium": "5.0", "low": "2.0"}


def _artifact(file: str, root: Path) -> dict[str, Any]:
    path = Path(file)
    try:
        absolute = path.resolve()
        relative = absolute.relative_to(root.resolve())
    except (OSError, ValueError):
        return {"uri": path.absolute().as_uri() if path.is_absolute() or path.exists() else file}
    return {"uri": relative.as_posix(), "uriBaseId": "%SRCROOT%"}


def _fingerprint(f: Finding) -> str:
    # Stable across runs and line moves: the same rule on the same value of the same server.
    return hashlib.sha256(f"{f.rule}\0{f.file}\0{f.server}\0{f.path}".encode()).hexdigest()[:32]


def to_sarif(findings: Iterable[Finding], root: Path | None = None,
             notifications: Iterable[str] = ()) -> dict[str, Any]:
    root = Path.cwd() if root is None else root
    rule_ids = list(RULES)
    rules = [{
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.split(".", 1)[-1].split("-")),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.title},
        "help": {"text": f"{rule.title}. See docs/scan.md for the check and how to fix it."},
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {"tags": ["security", "mcp"], "security-severity": SECURITY_SEVERITY[rule.severity]},
    } for rule in RULES.values()]
    results = []
    for f in findings:
        region = {"startLine": f.line} if f.line else None
        physical: dict[str, Any] = {"artifactLocation": _artifact(f.file, root)}
        if region:
            physical["region"] = region
        results.append({
            "ruleId": f.rule,
            "ruleIndex": rule_ids.index(f.rule) if f.rule in RULES else -1,
            "level": LEVELS[f.severity],
            "message": {"text": f"{f.server}: {f.message}"},
            "locations": [{
                "physicalLocation": physical,
                "logicalLocations": [{"name": f.server, "fullyQualifiedName": f.path, "kind": "object"}],
            }],
            "partialFingerprints": {"mcpwardFinding/v1": _fingerprint(f)},
            "properties": {"severity": f.severity, "client": f.client, "security-severity":
                           SECURITY_SEVERITY[f.severity]},
        })
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "mcpward", "version": __version__, "semanticVersion": __version__,
                            "rules": rules}},
        "originalUriBaseIds": {"%SRCROOT%": {"uri": root.resolve().as_uri() + "/"}},
        "results": results,
        "columnKind": "unicodeCodePoints",
    }
    notes = [{"level": "error", "message": {"text": text}} for text in notifications]
    run["invocations"] = [{"executionSuccessful": not notes, "toolExecutionNotifications": notes}]
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
