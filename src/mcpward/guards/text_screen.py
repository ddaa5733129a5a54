"""Characters no argument needs: direction overrides, invisible characters, controls, backtick runs.

Bidi overrides and isolates reorder what a person reviewing a call sees ("Trojan Source");
zero-width, filler and tag characters smuggle text past a reader (tags U+E0000-E007F spell ASCII
invisibly, supplementary variation selectors hide one byte each); C0/C1 controls carry terminal
escapes and log forgery. Which characters count as invisible is `guards/invisible.py`, the set the
output guard strips, so what is removed from results is also refused in arguments (the variation
selectors U+FE00-FE0F are not in it: U+FE0F is part of ordinary emoji). One precompiled character
class finds any of them, so a clean string costs one regex scan.

Two legitimate uses of joiners stay allowed: ZWJ/ZWNJ between two non-Latin letters (Persian,
Arabic and Indic scripts need them) and ZWJ inside emoji sequences. Between ASCII characters,
or at either end of a string, they are what smuggling looks like and are refused.
"""

from __future__ import annotations

import re
import unicodedata

from mcpward.guards import invisible
from mcpward.guards.arg_types import Finding

_BIDI = invisible.class_body(map(ord, invisible.BIDI))
_INVISIBLE = invisible.CLASS
# C0 except tab/newline/CR, DEL, C1, and lone surrogates (not text at all; JSON can carry them).
_CONTROL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"
_ANY = re.compile(f"[{_BIDI}{_INVISIBLE}{_CONTROL}]")
_BIDI_ONE = re.compile(f"[{_BIDI}]")
_INVISIBLE_ONE = re.compile(f"[{_INVISIBLE}]")
_JOINERS = "\u200c\u200d"
# Emoji modifiers and presentation selectors that may sit next to a ZWJ in an emoji sequence.
_EMOJI_GLUE = "\ufe0f\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff"


def _char_name(ch: str) -> str:
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')})"


def _joiner_ok(value: str, i: int) -> bool:
    """A ZWJ/ZWNJ between two non-Latin letters or emoji is writing, not smuggling."""
    if i == 0 or i + 1 >= len(value):
        return False
    before, after = value[i - 1], value[i + 1]
    for ch in (before, after):
        if ord(ch) < 0x2FF:  # ASCII or Latin: no script there needs a joiner
            return False
        if ch not in _EMOJI_GLUE and unicodedata.category(ch)[0] not in "LMS":
            return False
    return True


_ASCII_OK = bytes(b for b in range(128) if b in (9, 10, 13) or 32 <= b < 127)
# The invisible characters Python calls printable (Hangul fillers are letters, the CGJ, the Khmer
# inherent vowels and the supplementary variation selectors are marks): `isprintable` misses them.
_PRINTABLE_INVISIBLE = re.compile(
    "[" + invisible.class_body(code for code in invisible.codes() if chr(code).isprintable()) + "]")


def clean_fast(value: str) -> bool:
    """True when `value` certainly has no forbidden character (C-speed checks, at most one regex scan).

    Forbidden characters are non-printable (Cc, Cf, Cs) except the few invisible ones Python counts as
    printable, which one small character class finds; ASCII text is checked byte-wise. False means
    "look closer", not "refused" (a tab or NBSP is non-printable)."""
    if len(value) < 128 and value.isprintable():  # short values: one C loop, no copy
        return value.isascii() or _PRINTABLE_INVISIBLE.search(value) is None
    if value.isascii():
        return not value.encode("ascii").translate(None, _ASCII_OK)
    return (value.replace("\n", " ").replace("\t", " ").replace("\r", " ").isprintable()
            and _PRINTABLE_INVISIBLE.search(value) is None)


def screen_characters(value: str) -> Finding | None:
    """The first forbidden character in `value`, or None."""
    if clean_fast(value):
        return None
    match = _ANY.search(value)
    while match is not None:
        ch, i = match.group(), match.start()
        if not (ch in _JOINERS and _joiner_ok(value, i)):
            if _BIDI_ONE.match(ch):
                return Finding("args.unicode.bidi", f"contains the direction control {_char_name(ch)}")
            if _INVISIBLE_ONE.match(ch):
                return Finding("args.unicode.invisible", f"contains the invisible character {_char_name(ch)}")
            what = "a lone surrogate" if 0xD800 <= ord(ch) <= 0xDFFF else f"the control character {_char_name(ch)}"
            return Finding("args.unicode.control", f"contains {what}")
        match = _ANY.search(value, i + 1)
    return None


class BacktickScreen:
    """Backtick-heavy payloads: long runs break out of Markdown fences in whatever shows the call to a
    person or a model, and backticks are command substitution in shells.

    Text may hold ordinary Markdown (a ``` fence, inline `code`), so for text the limit is a run longer
    than `max_run` or a string that is mostly backticks. For URL, path, command and code parameters a
    fence has no business at all, so a run of three is already refused there.
    """

    def __init__(self, max_run: int = 3, heavy_count: int = 16, heavy_share: float = 0.05) -> None:
        self.max_run = max_run
        self._text_run = re.compile(f"`{{{max_run + 1},}}")
        self._strict_run = re.compile("`{3,}")
        self.heavy_count, self.heavy_share = heavy_count, heavy_share

    def screen(self, value: str, strict: bool) -> Finding | None:
        count = value.count("`")
        if not count:
            return None
        if strict and self._strict_run.search(value):
            return Finding("args.backticks", "contains a run of three or more backticks (a Markdown fence)")
        if self._text_run.search(value):
            return Finding("args.backticks", f"contains a run of more than {self.max_run} backticks")
        if count > self.heavy_count and count > self.heavy_share * len(value):
            return Finding("args.backticks", f"is backtick-heavy ({count} backticks in {len(value)} characters)")
        return None
