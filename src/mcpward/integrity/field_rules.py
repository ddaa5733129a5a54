"""The rules matched on one normalised field, and on the join of an item's descriptions.

`FieldRules.field` turns one field (`normalise.Normalised`) into findings: the marks normalisation made,
the rules on the text and on the text without markup, an excessive length, and the rules on each decoded
payload (two levels deep; a third level is reported, not decoded). `FieldRules.joined` reads an item's
descriptions joined by one space, for a sentence split across several fields. The scanner (`scanner.py`)
decides which fields need this at all; this module only matches.
"""

from __future__ import annotations

from mcpward.integrity import normalise as norm
from mcpward.integrity.model import Finding, Severity
from mcpward.integrity.rules import RuleSet

# Findings normalisation reports itself: (category, severity, weight) per Mark rule.
MARKS: dict[str, tuple[str, Severity, float]] = {
    "invisible.zero-width": ("invisible-content", Severity.MEDIUM, 0.45),
    "invisible.bidi": ("invisible-content", Severity.HIGH, 0.7),
    "invisible.tags": ("invisible-content", Severity.HIGH, 0.9),
    "invisible.variation-selectors": ("invisible-content", Severity.MEDIUM, 0.5),
    "ansi.escape": ("invisible-content", Severity.MEDIUM, 0.5),
    "control": ("invisible-content", Severity.LOW, 0.3),
    # A Latin word spelt with Cyrillic or Greek look-alikes: nobody writes that by accident.
    "obfuscation.mixed-script": ("obfuscation", Severity.MEDIUM, 0.5),
}
LONG_TEXT = 4000  # characters in one field: the longest benign description in the eval corpora is 3,866
JOINED = "joined"  # the layer of a finding made on an item's joined descriptions
JOIN_REACH = 160  # characters read each side of a join (the longest rule match on the eval corpora: 112)
_EXCESS = frozenset({norm.TOO_MANY, norm.TOO_LONG})
Strings = list[tuple[str, str, bool]]  # (where, text, is a name) of an item's strings
Descs = tuple[tuple[str, str], ...]  # (where, normalised text) of each description, for the joined pass


def descriptions(strings: Strings, seen: dict[str, str]) -> Descs:
    """The descriptions among an item's strings, as the rules read them (`_desc_text`)."""
    out = []
    for where, raw, is_name in strings:
        if raw and not is_name and (where == "description" or where.endswith(".description")):
            out.append((where, _desc_text(raw, seen)))
    return tuple(out)


def _desc_text(raw: str, seen: dict[str, str]) -> str:
    """A description's normalised text (`seen` holds those of non-ASCII texts normalised already)."""
    if raw.isascii() and "&" not in raw:
        return raw  # nothing to fold; what normalising strips from it is reported field by field
    text = seen.get(raw)
    return text if text is not None else norm.normalise(raw, decode=False).text


def joined_order(descs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Descriptions in the order of their paths: the caches key an item by its JSON with sorted keys, so the
    joined pass must not depend on the order a server wrote its properties in."""
    return sorted(descs) if len(descs) > 1 else descs


def chunk_values(strings: Strings) -> list[tuple[str, str]]:
    """The values among `strings` that may be chunks of a split base64 payload, in the order of their paths
    (stable: an enum keeps its order), when there are enough of them to make one."""
    out = []
    size = 0
    for where, raw, is_name in strings:
        if not is_name and " " not in raw and norm.chunk_like(raw):
            out.append((where, raw))
            size += len(raw)
    if len(out) < 2 or size < norm.MIN_RUN:
        return []
    out.sort(key=lambda entry: entry[0])
    return out


def bound(rule: str, field: str, start: int, end: int, evidence: str, layer: str = "text") -> Finding:
    """A scan bound was hit and content past it went unread: HIGH (fail closed), naming the bound."""
    return Finding(f"poisoning.{rule}", rule.split(".", 1)[0], Severity.HIGH, field, start, end, evidence, layer,
                   0.8)


def rule_text(n: norm.Normalised) -> tuple[str, bool]:
    """What the RE2 Sets test for one normalised field, and whether normalisation found something that
    needs the per-field scan (a mark or a payload). The field without markup (`normalise.MARKUP`) is
    tested with the field, joined as `RuleSet.maybe` joins fields: no rule hit on either, no finding."""
    odd = bool(n.marks)
    text = n.text
    for layer in n.layers:
        if layer.layer == norm.MARKUP:
            text = f"{text}\n\n{layer.text}"
        else:
            odd = True
    return text, odd


def join_windows(texts: list[str]) -> list[tuple[int, str, list[int]]]:
    """The places where `texts`, joined by one space, run into each other: (offset in the join, the window's
    text, the joins inside it as offsets in the window). A window reaches JOIN_REACH characters to each
    side of a join (cut back to a word's edge, so a cut never makes a word boundary a rule could use), and
    windows that overlap are merged: the work is bounded by the number of joins, not by the fields' length."""
    if len(texts) < 2:
        return []
    joined = " ".join(texts)
    joins: list[int] = []
    pos = -1
    for text in texts[:-1]:
        pos += len(text) + 1
        joins.append(pos)
    if len(texts[0]) <= JOIN_REACH and len(texts[-1]) <= JOIN_REACH:
        for text in texts:
            if len(text) > 2 * JOIN_REACH:
                break
        else:  # the windows of every join overlap and reach both ends (the usual case): the whole join
            return [(0, joined, joins)]
    windows: list[tuple[int, str, list[int]]] = []
    start = end = -1
    inside: list[int] = []
    for j in joins:
        lo, hi = max(0, j - JOIN_REACH), min(len(joined), j + 1 + JOIN_REACH)
        if inside and lo <= end:
            end = hi
            inside.append(j)
            continue
        if inside:
            windows.append(_window(joined, start, end, inside))
        start, end, inside = lo, hi, [j]
    if inside:
        windows.append(_window(joined, start, end, inside))
    return windows


def join_text(texts: list[str]) -> str:
    """What the joined pass matches, as one string: the join windows, separated by blank lines ("" when
    there is no join). The scanner remembers a clean one like a clean field."""
    return "\n\n".join(text for _, text, _ in join_windows(texts))


def _touched(fields: list[tuple[str, str]], start: int, end: int) -> list[str]:
    """The fields, joined by one space, that the span [start, end) of their join covers part of."""
    out = []
    pos = 0
    for where, text in fields:
        if pos < end and start < pos + len(text):
            out.append(where)
        pos += len(text) + 1
    return out


def _window(joined: str, start: int, end: int, joins: list[int]) -> tuple[int, str, list[int]]:
    if start > 0 and not joined[start - 1].isspace():
        cut = joined.find(" ", start, joins[0])
        start = joins[0] if cut < 0 else cut + 1
    if end < len(joined) and not joined[end].isspace():
        cut = joined.rfind(" ", joins[-1] + 1, end)
        end = joins[-1] + 1 if cut < 0 else cut
    return start, joined[start:end], [j - start for j in joins]


class FieldRules:
    """Matches one rule set on fields (`field`) and on joined descriptions (`joined`)."""

    __slots__ = ("rules",)

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules

    def field(self, where: str, n: norm.Normalised, name: bool, text_rules: bool) -> list[Finding]:
        """One field's findings from its normalised form; `name`/`text_rules` False when a joined pass
        already showed that no rule of that scope matches."""
        out: list[Finding] = []
        for mark in n.marks:
            category, severity, weight = MARKS[mark.rule]
            out.append(Finding(f"poisoning.{mark.rule}", category, severity, where, mark.start, mark.end,
                               mark.evidence, "ansi" if mark.rule.startswith("ansi") else "text", weight))
        text = n.text
        if name:
            out.extend(self.match("name", where, text, "text", 0, 0))
        if text_rules:
            out.extend(self.match("text", where, text, "text", 0, 0))
        if len(text) > LONG_TEXT:
            out.append(Finding("poisoning.excessive-length.long-field", "excessive-length", Severity.LOW, where,
                               LONG_TEXT, len(text), f"{len(text)} characters", weight=0.25))
        for layer in n.layers:
            if layer.layer == norm.MARKUP:
                if text_rules:
                    out.extend(self._markup(where, layer, out))
                continue
            out.extend(self._layer(where, layer, out))
        return out

    def joined(self, fields: list[tuple[str, str]], known: set[str]) -> list[Finding]:
        """Rules that match only across the join of two or more descriptions (fields as (where, text), in
        the order they are joined): a sentence split over several parameters. A finding's field names
        every field its match touches ("a + b"), its span is in the fields joined by one space, and a rule
        in `known` (already found in a field of the item) is not counted again."""
        windows = join_windows([text for _, text in fields])
        if not windows or not self.rules.maybe("text", [text for _, text, _ in windows]):
            return []
        out: list[Finding] = []
        for offset, text, joins in windows:
            for rule, s, e in self.rules.match("text", text):
                if rule.id in known or not any(s < j and j + 1 < e for j in joins):
                    continue
                lo, hi = offset + s, offset + e
                known.add(rule.id)
                where = " + ".join(_touched(fields, lo, hi))
                out.append(Finding(rule.id, rule.category, Severity(rule.severity), where, lo, hi,
                                   norm.escape(text[s:e]), JOINED, rule.weight))
        return out

    def split_payloads(self, fields: list[tuple[str, str]]) -> list[Finding]:
        """A base64 payload cut across several fields (enum values, defaults, vendor keys): the values that
        may be chunks (`normalise.chunk_like`), in the order given, joined by one space and read for chunked
        payloads. Only a payload spanning two or more fields is reported here (one inside a field is that
        field's), as on a field, named after every field it spans."""
        joined = " ".join(text for _, text in fields)
        out: list[Finding] = []
        for layer in norm.chunk_layers(joined):
            touched = _touched(fields, layer.start, layer.end)
            if len(touched) > 1:
                out.extend(self._layer(" + ".join(touched), layer, []))
        return out

    def _markup(self, where: str, layer: norm.Layer, so_far: list[Finding]) -> list[Finding]:
        """Rules that match the field only once its markup is gone ("**Do not** tell", "Ig<b></b>nore"):
        findings as on the text itself (what a model reads is the words, not the asterisks), spans in
        the field without markup; a rule already found on the text is not counted twice."""
        known = {f.rule for f in so_far if f.layer == "text"}
        return [f for f in self.match("text", where, layer.text, "text", 0, 0) if f.rule not in known]

    def match(self, scope: str, where: str, text: str, layer: str, start: int, end: int) -> list[Finding]:
        """Rule hits; in a decoded layer the span is the encoded run's (start, end) in the field."""
        found = []
        for rule, s, e in self.rules.match(scope, text):
            span = (s, e) if layer == "text" else (start, end)
            found.append(Finding(rule.id, rule.category, Severity(rule.severity), where, span[0], span[1],
                                 norm.escape(text[s:e]), layer, rule.weight))
        return found

    def _layer(self, where: str, layer: norm.Layer, so_far: list[Finding]) -> list[Finding]:
        if layer.layer == "html-comment":
            # The comment's text was already matched as part of the field; what matters is that
            # instructions sit where a rendered description does not show them.
            inside = [f for f in so_far if f.layer == "text" and f.severity >= Severity.MEDIUM
                      and layer.start <= f.start < layer.end]
            if inside:
                return [Finding("poisoning.encoded-payload.instructions-in-comment", "encoded-payload", Severity.HIGH,
                                where, layer.start, layer.end, norm.escape(layer.text), "html-comment", 0.8)]
            return [Finding("poisoning.encoded-payload.html-comment", "encoded-payload", Severity.LOW, where,
                            layer.start, layer.end, norm.escape(layer.text), "html-comment", 0.2)]
        if layer.layer in _EXCESS:
            return [self._excess(where, layer, layer)]
        out = self._decoded(where, layer)
        inner = norm.normalise(layer.text)
        for sub in inner.layers:  # the second level (MAX_DEPTH), no further
            if sub.layer in ("html-comment", norm.MARKUP):
                continue  # its text is part of the payload, matched above
            if sub.layer in _EXCESS:
                out.append(self._excess(where, layer, sub))
                continue
            level2 = norm.Layer(f"{layer.layer}+{sub.layer}", layer.start, layer.end, sub.text)
            out.extend(self._decoded(where, level2))
            # Still encoded at the last level: a third decode is not made, so what it holds is not read.
            deeper = [x for x in norm.normalise(sub.text).layers if x.layer not in ("html-comment", norm.MARKUP)]
            if deeper:
                out.append(bound("excessive-encoding.decode-depth", where, layer.start, layer.end,
                                 norm.escape(f"encoded more than {norm.MAX_DEPTH} levels deep: {deeper[0].text}"),
                                 f"{level2.layer}+{deeper[0].layer}"))
        return out

    @staticmethod
    def _excess(where: str, outer: norm.Layer, layer: norm.Layer) -> Finding:
        """A payload normalisation did not decode because a bound was hit (TOO_MANY, TOO_LONG); `outer` is
        the field-level layer whose span locates it (the payload itself at the first level)."""
        if layer.layer == norm.TOO_MANY:
            rule, why = "excessive-encoding.payload-count", f"more than {norm.MAX_DECODES} encoded payloads"
        else:
            rule, why = "excessive-encoding.payload-size", f"an encoded payload over {norm.MAX_DECODED} bytes"
        return bound(rule, where, outer.start, outer.end, norm.escape(f"{why}: {layer.text}"), layer.layer)

    def _decoded(self, where: str, layer: norm.Layer) -> list[Finding]:
        text = norm.normalise(layer.text, decode=False).text
        hits = self.match("text", where, text, layer.layer, layer.start, layer.end)
        if not hits:
            return []
        # Instructions nobody can read without decoding them are worse than the same words in the open.
        hidden = Finding("poisoning.encoded-payload.hidden-instructions", "encoded-payload", Severity.HIGH, where,
                         layer.start, layer.end, norm.escape(text), layer.layer, 0.8)
        return [*hits, hidden]
