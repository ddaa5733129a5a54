"""The scanner's result types: severities, findings, reports and the catalog context.

Kept apart from scanner.py so the shadowing check can build findings without importing the scanner;
scanner.py re-exports them (the public interface is `mcpward.integrity.scanner`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3  # "hide": hidden or held for approval by default


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str  # stable id, e.g. "poisoning.concealment.do-not-tell-user"
    category: str
    severity: Severity
    field: str  # "name", "description", "inputSchema.properties.q.description", "instructions", ...
    start: int  # evidence span in the normalised text of that field
    end: int
    evidence: str  # clipped to ~120 characters, control characters escaped
    layer: str = "text"  # "text" | "base64" | "hex" | "url" | "html-comment" | "ansi" | ...
    weight: float = dataclasses.field(default=0.5, compare=False)  # share of the combined score

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "category": self.category, "severity": self.severity.name.lower(),
                "field": self.field, "start": self.start, "end": self.end, "evidence": self.evidence,
                "layer": self.layer}


@dataclass(frozen=True, slots=True)
class Report:
    findings: tuple[Finding, ...]
    score: float  # 0..1, combined evidence
    severity: Severity  # the verdict: max of findings, escalated by combined evidence

    def labels(self) -> frozenset[str]:
        """Policy attributes: risk level, one label per category, and "shadowing" when any."""
        out = {f"risk:{self.severity.name.lower()}"}
        for f in self.findings:
            out.add(f"poisoning:{f.category}")
            if f.category == "shadowing":
                out.add("shadowing")
        return frozenset(out)

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.name.lower(), "score": round(self.score, 4),
                "labels": sorted(self.labels()), "findings": [f.to_json() for f in self.findings]}


@dataclass(frozen=True, slots=True)
class ScanContext:
    """What the rest of the catalog looks like, for the cross-server checks.

    A context is a snapshot: `others` must not change while the context is used (the scanner computes the
    catalog's key once per context; build a new context when a list changes, as the gateway does)."""

    server: str  # the scanned item's server
    others: Mapping[str, frozenset[str]]  # other server name -> its upstream tool/prompt names
    # A prepared `shadowing.CatalogIndex` of `others`, kept by a long-lived caller; None: built per catalog.
    index: Any = field(default=None, compare=False)
    # The scanner's key of `others`, filled on first use (scanner.catalog_key; not part of the value).
    key: Any = field(default=None, init=False, repr=False, compare=False)
    # (shadowing checker, its index of `others`), filled on first use: one lookup per context, not per item.
    prepared: Any = field(default=None, init=False, repr=False, compare=False)


EMPTY = Report((), 0.0, Severity.NONE)
