"""What changed between a pinned definition and what a server lists now, and how much it matters.

Severity, from least to most worrying:
- cosmetic: only whitespace, case or punctuation changed, outside URLs, host names, paths and e-mail
  addresses, and outside enum, const and default values;
- edit: wording changed, nothing the scanner worries about; or a URL, host, path or e-mail address in
  the text changed, even by one dot or case; or an enum, const or default value changed;
- new-parameters: the tool takes arguments it did not take before;
- widened-schema: a constraint went away (enum, pattern, maxLength, const, format, a required
  field, `additionalProperties: false`, a narrower type), or annotations now claim less safety;
- new-instructions: the new text carries scanner findings the old one did not (hidden
  instructions, concealment, exfiltration...), or the server's instructions changed, or the server's
  launch (command, arguments, directory, env names, URL, header names) changed.

`score` ranks changes for review (0..1+); `diff` is a field-by-field, word-level diff a person reads.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcpward.integrity.scanner import Report, Scanner


class ChangeSeverity(enum.IntEnum):
    COSMETIC = 0
    EDIT = 1
    NEW_PARAMETERS = 2
    WIDENED_SCHEMA = 3
    NEW_INSTRUCTIONS = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(slots=True)
class Change:
    severity: ChangeSeverity
    score: float
    reasons: list[str] = field(default_factory=list)
    diff: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.label, "score": round(self.score, 3), "reasons": self.reasons}


CONSTRAINTS = ("enum", "const", "pattern", "maxLength", "maxItems", "maximum", "exclusiveMaximum", "format",
               "minLength", "minimum", "exclusiveMinimum", "maxProperties", "propertyNames")
SAFER_WHEN_TRUE = ("readOnlyHint", "idempotentHint")
SAFER_WHEN_FALSE = ("destructiveHint", "openWorldHint")
_WORD = re.compile(r"\w+", re.UNICODE)
# A URL (scheme://...), an e-mail address, a path (/a, ~/a, ./a, ../a, C:\a) or a dotted host name.
_LOCATOR = re.compile(r"[a-z][a-z0-9+.-]*://\S+|[^\s@]+@[^\s@]+|(?:~|\.{1,2}|\b[a-z]:)?[/\\][^\s]*"
                      r"|\b[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
# A leaf under an enum, const or default key (the key itself, or an element of its list or object); not a
# parameter that happens to be called "default" (a key under `properties`).
_VALUE_PATH = re.compile(r"(?:^|(?<!properties)\.)(?:enum|const|default)(?:$|[.\[])")
_MISSING = object()
_FINDING_SCORE = {3: 1.0, 2: 0.7, 1: 0.5}  # Severity HIGH / MEDIUM / LOW of a new finding


def classify(kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any], scanner: Scanner | None = None,
             *, old_instructions: str | None = None, new_instructions: str | None = None,
             old_launch: Mapping[str, Any] | None = None, new_launch: Mapping[str, Any] | None = None) -> Change:
    """Compare two pinned views (see fingerprint.pinned_view). `old=None` means a new definition.

    Pass `old_launch` and `new_launch` (the server's launch as the lock file shows it) when the server's
    identity digest changed: a server launched differently is a different program, whatever it lists."""
    candidates: list[tuple[ChangeSeverity, float, str]] = []
    if old is None:
        candidates.append((ChangeSeverity.EDIT, 0.1, "new definition"))
        old = {}
    launch_changed = old_launch is not None and new_launch is not None
    if launch_changed:
        # Equal as shown means a redacted value (a secret argument) or a field the old lock did not record.
        what = "server launch changed" if old_launch != new_launch else "server identity changed (a redacted value)"
        candidates.append((ChangeSeverity.NEW_INSTRUCTIONS, 0.8, what))
    candidates += _text_changes(old, new)
    candidates += _value_changes(old, new)
    if kind == "tools":
        candidates += _schema_changes(old.get("inputSchema"), new.get("inputSchema"))
        candidates += _annotation_changes(old.get("annotations"), new.get("annotations"))
    elif kind == "prompts":
        candidates += _prompt_argument_changes(old.get("arguments"), new.get("arguments"))
    if (old_instructions or "") != (new_instructions or ""):
        candidates.append((ChangeSeverity.NEW_INSTRUCTIONS, 0.6, "server instructions changed"))
    if scanner is not None:
        candidates += _new_findings(scanner, kind, old, new, old_instructions, new_instructions)
    if not candidates and dict(old) != dict(new):
        # Something pinned changed that no check above reads (a key, a number, a nesting): a person looks at
        # it as an edit, never as "nothing".
        candidates.append((ChangeSeverity.EDIT, 0.1, "definition changed"))
    if not candidates:
        return Change(ChangeSeverity.COSMETIC, 0.0, ["no change a model reads"], "")
    candidates.sort(key=lambda c: (c[1], c[0]), reverse=True)
    top_severity = max(c[0] for c in candidates)
    score = candidates[0][1] + 0.05 * (len(candidates) - 1)
    reasons = list(dict.fromkeys(c[2] for c in candidates))
    text = render_diff(old, new)
    if (old_instructions or "") != (new_instructions or ""):
        text += render_diff({"instructions": old_instructions or ""}, {"instructions": new_instructions or ""})
    if launch_changed:
        text += render_diff({"launch": dict(old_launch or {})}, {"launch": dict(new_launch or {})})
    return Change(top_severity, score, reasons, text)


def _text_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[ChangeSeverity, float, str]]:
    before, after = _strings(old), _strings(new)
    out: list[tuple[ChangeSeverity, float, str]] = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path, ""), after.get(path, "")
        if a == b or _VALUE_PATH.search(path):
            continue  # enum, const and default values: see _value_changes
        if _fold(a) == _fold(b):
            if _locators(a) != _locators(b):
                # One dot or slash in a URL, host, path or address is another place.
                out.append((ChangeSeverity.EDIT, 0.3, f"{path}: URL, host, path or e-mail address changed"))
            else:
                out.append((ChangeSeverity.COSMETIC, 0.02, f"{path}: whitespace, case or punctuation"))
            continue
        old_words = set(_WORD.findall(a.lower()))
        new_words = _WORD.findall(b.lower())
        novel = [w for w in new_words if w not in old_words]
        novelty = len(novel) / max(len(new_words), 1)
        out.append((ChangeSeverity.EDIT, 0.1 + 0.2 * novelty, f"{path}: text edited"))
    return out


def _fold(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _locators(text: str) -> list[str]:
    """The URLs, e-mail addresses, paths and dotted host names of a text, exactly as written (case kept:
    a path's case matters), less trailing sentence punctuation."""
    return [token.rstrip(".,;:!?)]}'\"") for token in _LOCATOR.findall(text)]


def _value_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[ChangeSeverity, float, str]]:
    """enum, const and default values, of any type: a value a model passes (or is told is the choice) is never
    a matter of wording, so "read" -> "READ" or false -> true is at least an edit."""
    before, after = _leaves(old), _leaves(new)
    out: list[tuple[ChangeSeverity, float, str]] = []
    for path in sorted(set(before) | set(after)):
        if not _VALUE_PATH.search(path):
            continue
        a, b = before.get(path, _MISSING), after.get(path, _MISSING)
        if a != b or type(a) is not type(b):
            out.append((ChangeSeverity.EDIT, 0.3, f"{path}: value changed"))
    return out


def _strings(value: Any, path: str = "") -> dict[str, str]:
    """Every string a model reads, by path (descriptions, titles, defaults, enum values...)."""
    found: dict[str, str] = {}
    if isinstance(value, str):
        found[path or "."] = value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            found.update(_strings(inner, f"{path}.{key}" if path else str(key)))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found.update(_strings(inner, f"{path}[{i}]"))
    return found


def _properties(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        return {}
    props = schema.get("properties")
    return dict(props) if isinstance(props, Mapping) else {}


def _schema_changes(old: Any, new: Any, where: str = "inputSchema") -> list[tuple[ChangeSeverity, float, str]]:
    out: list[tuple[ChangeSeverity, float, str]] = []
    if not isinstance(new, Mapping):
        return out
    old = old if isinstance(old, Mapping) else {}
    old_props, new_props = _properties(old), _properties(new)
    added = sorted(set(new_props) - set(old_props))
    if added:
        score = min(0.35 + 0.05 * (len(added) - 1), 0.5)
        out.append((ChangeSeverity.NEW_PARAMETERS, score, f"{where}: new parameters {', '.join(added)}"))
    for key in CONSTRAINTS:
        if key in old and key not in new:
            out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: {key} removed"))
    out += _bound_changes(old, new, where)
    if "type" in old and "type" not in new:
        out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: type removed"))
    old_enum, new_enum = old.get("enum"), new.get("enum")
    if isinstance(old_enum, list) and isinstance(new_enum, list) and any(v not in old_enum for v in new_enum):
        out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: enum accepts new values"))
    if old.get("additionalProperties") is False and new.get("additionalProperties") is not False:
        out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: additionalProperties no longer false"))
    dropped = set(_list(old.get("required"))) - set(_list(new.get("required")))
    if dropped:
        out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: no longer required: {', '.join(sorted(dropped))}"))
    if _types(old) and _types(new) - _types(old):
        out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: type widened"))
    for name in sorted(set(old_props) & set(new_props)):
        out += _schema_changes(old_props[name], new_props[name], f"{where}.{name}")
    out += _nested_changes(old, new, where)
    return out


# Bounds whose higher value accepts more (and, below, whose lower value does).
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains")
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("$defs", "definitions", "patternProperties")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bound_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                   where: str) -> list[tuple[ChangeSeverity, float, str]]:
    """A bound that moved outwards (maximum 10 -> 1e9) lets a model pass what was refused before."""
    out: list[tuple[ChangeSeverity, float, str]] = []
    for keys, upper in ((_UPPER, True), (_LOWER, False)):
        for key in keys:
            a, b = _number(old.get(key)), _number(new.get(key))
            if a is not None and b is not None and (b > a if upper else b < a):
                out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: {key} widened"))
    return out


def _nested_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                    where: str) -> list[tuple[ChangeSeverity, float, str]]:
    """The schemas inside a schema (array items, extra properties, alternatives, definitions) are read
    as the outer one is: a constraint dropped there widens what a model may send as much."""
    out: list[tuple[ChangeSeverity, float, str]] = []
    for key in ("items", "additionalProperties", "not", "contains"):
        if isinstance(new.get(key), Mapping):
            out += _schema_changes(old.get(key), new[key], f"{where}.{key}")
    for key in _SUBSCHEMA_LISTS:
        before, after = _list(old.get(key)), _list(new.get(key))
        if key != "allOf" and len(after) > len(before) and before:
            out.append((ChangeSeverity.WIDENED_SCHEMA, 0.4, f"{where}: {key} has new alternatives"))
        for i, branch in enumerate(after):
            out += _schema_changes(before[i] if i < len(before) else {}, branch, f"{where}.{key}[{i}]")
    for key in _SUBSCHEMA_MAPS:
        before_map, after_map = _mapping(old.get(key)), _mapping(new.get(key))
        added = sorted(set(after_map) - set(before_map))
        if added:
            out.append((ChangeSeverity.NEW_PARAMETERS, 0.35, f"{where}.{key}: new schemas {', '.join(added)}"))
        for name in sorted(set(after_map) & set(before_map)):
            out += _schema_changes(before_map[name], after_map[name], f"{where}.{key}.{name}")
    return out


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    return {t for t in _list(kind) if isinstance(t, str)}


def _annotation_changes(old: Any, new: Any) -> list[tuple[ChangeSeverity, float, str]]:
    old = old if isinstance(old, Mapping) else {}
    new = new if isinstance(new, Mapping) else {}
    out: list[tuple[ChangeSeverity, float, str]] = []
    for hint in SAFER_WHEN_TRUE:
        if old.get(hint) is True and new.get(hint) is not True:
            out.append((ChangeSeverity.WIDENED_SCHEMA, 0.45, f"annotations: {hint} no longer true"))
    for hint in SAFER_WHEN_FALSE:
        if old.get(hint) is False and new.get(hint) is not False:
            out.append((ChangeSeverity.WIDENED_SCHEMA, 0.45, f"annotations: {hint} no longer false"))
    return out


def _prompt_argument_changes(old: Any, new: Any) -> list[tuple[ChangeSeverity, float, str]]:
    def names(args: Any) -> set[str]:
        return {a["name"] for a in _list(args) if isinstance(a, Mapping) and isinstance(a.get("name"), str)}

    added = sorted(names(new) - names(old))
    if not added:
        return []
    return [(ChangeSeverity.NEW_PARAMETERS, 0.35, f"arguments: new {', '.join(added)}")]


def _new_findings(scanner: Scanner, kind: str, old: Mapping[str, Any], new: Mapping[str, Any],
                  old_instructions: str | None, new_instructions: str | None,
                  ) -> list[tuple[ChangeSeverity, float, str]]:
    before = _finding_keys(scanner.scan_item(kind, old)) if old else set()
    after = scanner.scan_item(kind, new)
    reports = [(after, before)]
    if new_instructions and new_instructions != old_instructions:
        old_keys = _finding_keys(scanner.scan_instructions(old_instructions)) if old_instructions else set()
        reports.append((scanner.scan_instructions(new_instructions), old_keys))
    out: list[tuple[ChangeSeverity, float, str]] = []
    for report, known in reports:
        for finding in report.findings:
            if (finding.rule, finding.field) in known:
                continue
            score = _FINDING_SCORE.get(int(finding.severity), 0.0)
            if score:
                out.append((ChangeSeverity.NEW_INSTRUCTIONS, score,
                            f"{finding.field}: new {finding.category} ({finding.rule})"))
    return out


def _finding_keys(report: Report) -> set[tuple[str, str]]:
    return {(f.rule, f.field) for f in report.findings}


# --------------------------------------------------------------------------- diff
def render_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Field by field; long strings word by word with [-removed-] and {+added+} marks."""
    before, after = _leaves(old), _leaves(new)
    lines: list[str] = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        if a is None:
            lines.append(f"+ {path}: {_show(b)}")
        elif b is None:
            lines.append(f"- {path}: {_show(a)}")
        elif isinstance(a, str) and isinstance(b, str) and len(a) + len(b) > 80:
            lines.append(f"~ {path}: {word_diff(a, b)}")
        else:
            lines.append(f"~ {path}: {_show(a)} -> {_show(b)}")
    return "".join(line + "\n" for line in lines)


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, inner in value.items():
            found.update(_leaves(inner, f"{path}.{key}" if path else str(key)))
    elif isinstance(value, list) and not all(isinstance(v, str | int | float | bool) for v in value):
        for i, inner in enumerate(value):
            found.update(_leaves(inner, f"{path}[{i}]"))
    else:
        found[path or "."] = value
    return found


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else '"' + value + '"'
    return _escape(text)


def _escape(text: str) -> str:
    # A diff is printed on a terminal: control characters must be visible, never interpreted.
    return "".join(ch if ch.isprintable() or ch == " " else f"\\u{ord(ch):04x}" for ch in text)


def word_diff(old: str, new: str) -> str:
    a, b = list(_tokens(old)), list(_tokens(new))
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append("".join(a[i1:i2]))
            continue
        if i2 > i1:
            out.append("[-" + "".join(a[i1:i2]) + "-]")
        if j2 > j1:
            out.append("{+" + "".join(b[j1:j2]) + "+}")
    return _escape("".join(out))


def _tokens(text: str) -> Iterator[str]:
    yield from re.findall(r"\s+|\w+|[^\w\s]", text)
