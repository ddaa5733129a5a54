"""One result's pass through the output guard's detectors: its strings scanned together, what was found,
and the replacements to write back (`guards/output.py` decides what a result becomes)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from mcpward.guards.encoded import MAX_SEARCH, across_seams, in_base64, merged, unescaped
from mcpward.guards.redactor import (
    CONTROL,
    SECRETS,
    Detector,
    Hit,
    Profile,
    encode,
    fold,
    foldable,
    join,
    needs_neutralising,
    neutralise_bytes,
    splice,
    split_hits,
    unfolded,
)
from mcpward.guards.result_strings import Slot
from mcpward.protocol import exact

if TYPE_CHECKING:
    from mcpward.guards.output import OutputGuard


@dataclass(slots=True)
class Scope:
    """What applies to one server/tool: PII kinds allowed through and the size cap."""

    allow_pii: frozenset[str]
    max_bytes: int


class Pass:
    """One result: its strings, what was found in them, and the replacements to write back."""

    __slots__ = ("base64_budget", "block", "found", "guard", "logged", "markers", "neutralised", "redacted", "scope",
                 "shortened", "structured_bytes")

    def __init__(self, guard: OutputGuard, scope: Scope) -> None:
        # Built on every result: plain assignments of literals (a dataclass calls a factory per field).
        self.guard = guard
        self.scope = scope
        self.redacted: dict[str, int] = {}
        self.logged: dict[str, int] = {}
        self.markers: set[str] = set()
        self.found: set[str] = set()  # "secret"/"pii": what kinds of data the result held
        self.neutralised = 0
        self.block: tuple[str, str] | None = None  # (rule, what)
        self.shortened = False  # a string longer than the cap allows was cut before the scan
        self.structured_bytes = -1  # serialised size of structuredContent, when `json_clean` measured it
        self.base64_budget = MAX_SEARCH  # bytes of this result still to search for base64 secrets

    def allow(self, det: Detector) -> bool:
        return det.kind != "pii" or det.category not in self.scope.allow_pii

    def run(self, slots: list[Slot], max_chars: int | None) -> dict[int, str]:
        """Neutralise, match and redact all strings in one scan; returns slot index -> new text.

        The scan itself reports the first control or invisible character (the guard's profile has
        the "control" kind when neutralising is on): only then are the strings neutralised and
        scanned again, so clean text is read once, by one DFA pass.
        """
        if len(slots) == 1:
            return self._run_one(slots[0].text, max_chars)
        replaced: dict[int, str] = {}
        texts = [slot.text for slot in slots]
        if max_chars is not None:
            for i, text in enumerate(texts):
                if len(text) > max_chars:
                    # Longer than the size cap can keep: only what may survive the cut is scanned
                    # (with a margin, so a secret across the cut is still found whole).
                    texts[i] = replaced[i] = text[:max_chars]
                    self.shortened = True
        for i, text in enumerate(texts):
            if not text.isascii() and foldable(encode(text)) and (unfolded_text := self._fold(text)) is not text:
                texts[i] = replaced[i] = unfolded_text
            if "\\" in text and "\\u" in text and (plain := self._unescape(texts[i])) is not texts[i]:
                texts[i] = replaced[i] = plain
        last = len(slots) - 1
        pairs = [slot.is_key and i < last and slots[i + 1].container is slot.container
                 and slots[i + 1].key == slot.key for i, slot in enumerate(slots)]
        encoded: list[bytes] | None = None
        joined, starts = join(texts, pairs)
        if joined.isascii():  # one encode; byte offsets are character offsets
            data, lengths = joined.encode(), [len(t) for t in texts]
        else:
            encoded = [encode(t) for t in texts]
            data, starts = join(encoded, pairs)
            lengths = [len(b) for b in encoded]
        found = self._base64(data)
        if found:  # runs never cross a seam (a line break is not base64): redact them per text, join again
            if encoded is None:
                encoded = [data[s:s + n] for s, n in zip(starts, lengths, strict=True)]
            for i, mine in enumerate(split_hits(found, starts, lengths)):
                if mine:
                    replaced[i] = splice(encoded[i], mine)
                    encoded[i] = encode(replaced[i])
            data, starts = join(encoded, pairs)
            lengths = [len(b) for b in encoded]
        hits = self._scan(data, self.guard.profile)
        if hits and hits[0].detector is CONTROL:
            if encoded is None:
                encoded = [data[s:s + n] for s, n in zip(starts, lengths, strict=True)]
            for i, raw in enumerate(encoded):
                if needs_neutralising(raw):
                    cleaned, count = neutralise_bytes(raw)
                    if count:
                        encoded[i] = cleaned
                        replaced[i] = cleaned.decode("utf-8", "surrogatepass")
                        self.neutralised += count
            data, starts = join(encoded, pairs)
            lengths = [len(b) for b in encoded]
            hits = self._scan(data, self.guard.plain_profile)
        seams = self._seams(slots, data, starts, lengths)
        if not hits and not seams:
            return replaced
        for i, mine in enumerate(split_hits(hits, starts, lengths)):
            keep = self._sort(mine) if mine else []
            if i in seams:
                keep = merged(keep + seams[i])
            if keep:
                replaced[i] = splice(data[starts[i]:starts[i] + lengths[i]], keep)
        return replaced

    def _seams(self, slots: list[Slot], data: bytes, starts: list[int], lengths: list[int]) -> dict[int, list[Hit]]:
        """What only reading two adjacent text blocks as one shows (a key split across them), counted
        by mode, as the pieces to redact in each block: slot index -> hits in its own offsets."""
        adjacent = [a.key == "text" and b.key == "text" and not a.is_key and not b.is_key
                    for a, b in pairwise(slots)]
        if not any(adjacent):
            return {}
        texts = [data[s:s + n] for s, n in zip(starts, lengths, strict=True)]
        pieces: dict[int, list[Hit]] = {}
        for i, hit in across_seams(texts, adjacent, lambda glued: self._scan(glued, self.guard.plain_profile)):
            if self._sort([hit]):
                cut = len(texts[i])
                pieces.setdefault(i, []).append(Hit(hit.detector, hit.start, cut))
                pieces.setdefault(i + 1, []).append(Hit(hit.detector, 0, hit.end - cut))
        return pieces

    def _run_one(self, text: str, max_chars: int | None) -> dict[int, str]:
        """`run` for one string (most results are one text block): the same steps, nothing to join."""
        replaced: dict[int, str] = {}
        if max_chars is not None and len(text) > max_chars:
            text = replaced[0] = text[:max_chars]  # see `run`: only what may survive the cut is scanned
            self.shortened = True
        data = encode(text)
        if foldable(data) and (unfolded_text := self._fold(text)) is not text:
            text = replaced[0] = unfolded_text
            data = encode(text)
        # One backslash test first: a single-character search is memchr, "\\u" alone reads text full
        # of "u" at a fifth of that speed (4.4 ms per 4 MB of log).
        if "\\" in text and "\\u" in text and (plain := self._unescape(text)) is not text:
            text = replaced[0] = plain
            data = encode(text)
        found = self._base64(data)
        if found:
            text = replaced[0] = splice(data, found)
            data = encode(text)
        guard = self.guard
        hits = self._scan(data, guard.profile)
        if hits and hits[0].detector is CONTROL:
            if needs_neutralising(data):
                cleaned, count = neutralise_bytes(data)
                if count:
                    data = cleaned
                    replaced[0] = cleaned.decode("utf-8", "surrogatepass")
                    self.neutralised += count
            hits = self._scan(data, guard.plain_profile)
        if hits:
            keep = self._sort(hits)
            if keep:
                replaced[0] = splice(data, keep)
        return replaced

    def _fold(self, text: str) -> str:
        """`text` with what only its folded form shows (a fullwidth key, one split by variation
        selectors) handled by mode, redacted whole; the usual scan then reads the rest."""
        folded, gaps = fold(text)
        found = [h for h in self._scan(folded, self.guard.plain_profile) if h.detector.kind != "marker"]
        keep = self._sort(unfolded(text, folded, gaps, found)) if found else []
        return splice(encode(text), keep) if keep else text

    def _unescape(self, text: str) -> str:
        """`text` with what only decoding its literal `\\uXXXX` escapes shows (`ghp\\u005f...`, a
        whole key escaped) handled by mode, the escaped span redacted; the usual scan reads the rest."""
        data = encode(text)
        found = unescaped(data, lambda plain: self._scan(plain, self.guard.plain_profile))
        keep = self._sort(found) if found else []
        return splice(data, keep) if keep else text

    def _base64(self, data: bytes) -> list[Hit]:
        """Base64 runs whose decoded bytes hold a secret (`encoded.in_base64`), counted by mode: the
        ones to redact. Searched up to MAX_SEARCH bytes per result, only when secrets are looked for."""
        budget = self.base64_budget
        if budget <= 0 or "secret" not in self.guard.plain_profile.kinds:
            return []
        self.base64_budget = budget - len(data)
        found = in_base64(data, lambda raw: self.guard.redactor.scan(raw, SECRETS), budget)
        return self._sort(found) if found else []

    def json_clean(self, value: Any) -> bool:
        """True when one scan of `value` serialised finds nothing (so its strings need no walk).

        Holds only where the JSON text reads like the strings themselves: no escaped control
        characters or line breaks (a rule may need the real character), nothing to neutralise
        (the scan reports that as a hit), no configured secret that JSON would escape. Otherwise
        the caller walks the strings.
        """
        try:
            data = exact.dumps(value)
        except TypeError:
            return False
        self.structured_bytes = len(data)
        if b"\\" in data or not self.guard.redactor.exact_json_safe:
            return False  # an escape sequence (\n, \", \u001b...): walk the strings instead
        if not data.isascii() and (b"\xef\xbc" in data or b"\xef\xbd" in data or b"\xef\xb8" in data):
            return False  # maybe fullwidth letters or variation selectors (`fold`): walk the strings
        if self._scan(data, self.guard.profile):
            return False
        # A base64 secret found here is counted when the walk reads its string.
        secrets = "secret" in self.guard.plain_profile.kinds and self.base64_budget > 0
        return not (secrets and in_base64(data, lambda raw: self.guard.redactor.scan(raw, SECRETS), self.base64_budget))

    def _scan(self, data: bytes, profile: Profile) -> list[Hit]:
        guard = self.guard
        return guard.redactor.scan(data, profile, self.allow if self.scope.allow_pii else None, guard.log_limits)

    def _sort(self, hits: list[Hit]) -> list[Hit]:
        """Count each finding by its mode; the ones to redact."""
        keep: list[Hit] = []
        guard = self.guard
        for hit in hits:
            det = hit.detector
            if det.kind == "marker":
                self.markers.add(det.id.removeprefix("injection-"))
                continue
            mode = guard.secret_mode if det.kind in ("secret", "exact") else guard.pii_modes[det.category]
            self.found.add("pii" if det.kind == "pii" else "secret")
            if mode == "redact":
                keep.append(hit)
                self.redacted[det.id] = self.redacted.get(det.id, 0) + 1
            else:
                self.logged[det.id] = self.logged.get(det.id, 0) + 1
                if mode == "block" and self.block is None:
                    rule = f"secrets.{det.id}" if det.kind in ("secret", "exact") else f"pii.{det.category}"
                    self.block = (rule, det.description or det.id)
        return keep
