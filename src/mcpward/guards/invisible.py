"""The one definition of "a character a reader cannot see", shared by the argument and output guards.

The output guard strips these from what a model reads; the argument guard refuses an argument
that holds one (bidi controls as `args.unicode.bidi`, the rest as `args.unicode.invisible`). Both
sides must agree: a character that is stripped on the way out but accepted on the way in is a
channel for smuggling text past whoever reviews a call.

Not included, on purpose: the variation selectors U+FE00-FE0F (U+FE0F makes an emoji an emoji,
U+FE0E makes it text: ordinary writing) and the Mongolian free variation selectors U+180B-180D/180F
(Mongolian needs them). The supplementary variation selectors U+E0100-E01EF are included: one per
byte hides a whole message after an emoji. Their one ordinary use, ideographic variation sequences
(a rare glyph variant of a kanji, mostly in Japanese names), is lost: the output guard already
stripped them, and the argument side now matches it.
"""

from __future__ import annotations

from collections.abc import Iterable

# Direction controls (embeddings, overrides, isolates, marks): they reorder what a reader sees.
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"

# Single invisible characters: zero-width space/joiners, word joiner and invisible operators, the
# BOM, the soft hyphen, the combining grapheme joiner, Hangul fillers (they render as nothing),
# Khmer inherent vowels (deprecated, invisible), the deprecated format controls U+206A-206F,
# interlinear annotation controls, shorthand and musical format controls.
SINGLES = ("\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064"
           "\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0\ufff9\ufffa\ufffb"
           "\U0001bca0\U0001bca1\U0001bca2\U0001bca3"
           "\U0001d173\U0001d174\U0001d175\U0001d176\U0001d177\U0001d178\U0001d179\U0001d17a")

# Whole blocks: Unicode tags (they spell ASCII invisibly) and the supplementary variation selectors.
RANGES: tuple[tuple[int, int], ...] = ((0xE0000, 0xE007F), (0xE0100, 0xE01EF))


def class_body(codes: Iterable[int]) -> str:
    """A regex character class body (Python `re`) for these code points, runs merged into ranges:
    a class of hundreds of single characters makes every search tens of times slower."""
    parts: list[str] = []
    ordered = sorted(set(codes))
    start = 0
    for i, code in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != code + 1:
            first = ordered[start]
            parts.append(f"\\U{first:08x}" if first == code else f"\\U{first:08x}-\\U{code:08x}")
            start = i + 1
    return "".join(parts)


def codes() -> list[int]:
    """Every code point of the set except the bidi controls."""
    return [*map(ord, SINGLES), *(c for a, b in RANGES for c in range(a, b + 1))]


# The set without the bidi controls as a regex character class body.
CLASS = class_body(codes())

