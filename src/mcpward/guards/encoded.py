"""Secrets the plain scan cannot read as written: literal `\\uXXXX` escapes, base64 runs, and a key split
across two content blocks of one result.

Each helper takes the text's UTF-8 bytes and a `scan` (the output guard's matcher on bytes) and
returns only the findings the plain scan of the same text cannot make, as byte spans of the
original text; the caller counts them by mode and redacts them before its usual scan. Each is
skipped by a C-speed test when it cannot apply, and each bounds its own work, so the cost stays
linear in the size of the result.
"""

from __future__ import annotations

import binascii
import bisect
import re
from collections.abc import Callable, Sequence
from typing import cast

import re2  # type: ignore[import-untyped]

from mcpward.guards.redactor import Detector, Hit, _options

_UNANCHORED = re2._Anchor.UNANCHORED

Scan = Callable[[bytes], list[Hit]]

# ------------------------------------------------------------------------------------------ \uXXXX escapes

# A JSON string pasted into text keeps its escapes: `"ghp\u005f..."`, or a whole key written as
# `\u0041\u004b...`. Only escapes of printable ASCII are decoded (every rule is ASCII); `re` on bytes
# with a fixed-length pattern is linear.
_ESCAPE = re.compile(rb"\\u([0-9A-Fa-f]{4})")
_ESCAPE_LEN = 6


def unescaped(data: bytes, scan: Scan) -> list[Hit]:
    """Findings that need the text's `\\uXXXX` escapes decoded, as spans of `data` (the escapes
    inside them included). Texts without a backslash-u pay one `in` test."""
    if b"\\u" not in data:
        return []
    pieces: list[bytes] = []
    decoded_at: list[int] = []  # offset in the decoded text of each decoded escape
    prev = size = 0
    for match in _ESCAPE.finditer(data):
        code = int(match.group(1), 16)
        if not 0x20 <= code < 0x7F:
            continue
        pieces.append(data[prev:match.start()])
        size += match.start() - prev
        decoded_at.append(size)
        pieces.append(bytes((code,)))
        size += 1
        prev = match.end()
    if not decoded_at:
        return []
    pieces.append(data[prev:])
    out: list[Hit] = []
    grow = _ESCAPE_LEN - 1  # each decoded escape is this many bytes shorter than it was
    for hit in scan(b"".join(pieces)):
        first, last = bisect.bisect_left(decoded_at, hit.start), bisect.bisect_left(decoded_at, hit.end)
        if hit.detector.kind != "marker" and first < last:  # without an escape inside, the plain scan finds it
            out.append(Hit(hit.detector, hit.start + grow * first, hit.end + grow * last))
    return out


# ------------------------------------------------------------------------------------------ seams between blocks

SEAM_WINDOW = 256  # bytes each side of a seam: longer than any token rule's usual match
_SPACE = b" \t\r\n"


def across_seams(texts: Sequence[bytes], adjacent: Sequence[bool], scan: Scan) -> list[tuple[int, Hit]]:
    """Findings that cross the seam between text i and i+1 where `adjacent[i]` (two text blocks of
    one result: `AKIAABCD` + `EFGHIJKLMNOP`), each as (i, hit) with the hit's span in the bytes of
    text i followed directly by text i+1. Only a window around each seam is scanned; a seam with
    white space on either side reads the same as the usual joined scan and is skipped."""
    out: list[tuple[int, Hit]] = []
    for i, glued in enumerate(adjacent):
        left, right = texts[i], texts[i + 1] if glued else b""
        if not glued or not left or not right or left[-1] in _SPACE or right[0] in _SPACE:
            continue
        tail = left[-SEAM_WINDOW:]
        cut = len(tail)
        offset = len(left) - cut
        for hit in scan(tail + right[:SEAM_WINDOW]):
            if hit.start < cut < hit.end and hit.detector.kind != "marker":
                out.append((i, Hit(hit.detector, hit.start + offset, hit.end + offset)))
    return out


def merged(hits: Sequence[Hit]) -> list[Hit]:
    """Hits sorted by start, overlapping ones joined (the first one's rule names the union)."""
    out: list[Hit] = []
    for hit in sorted(hits, key=lambda h: h.start):
        if out and hit.start < out[-1].end:
            last = out[-1]
            if hit.end > last.end:
                out[-1] = Hit(last.detector, last.start, hit.end)
            continue
        out.append(hit)
    return out


# ------------------------------------------------------------------------------------------ base64 runs

# A secret inside base64 (a config file, a Kubernetes secret, a `data:` URL in a page): instead of
# decoding every long base64 run (runs of 16+ base64 characters are everywhere: paths, hashes, ids),
# one RE2 search looks for the base64 forms of the words and prefixes that start most secrets
# (`password`, `AKIA`, `ghp_`, `-----BEGIN`...). A word's base64 depends on where it falls in a
# 3-byte group: each word gives three literals, the characters that depend on the word alone. Only
# around a literal is the run decoded (bounded) and scanned for secrets. The search is its own pass
# over at most MAX_SEARCH bytes per result: added to the matcher's one pass, the literals slowed
# that pass by 10-40% on every text (measured); on their own they run at about 500 MB/s.
BASE64_ID = "base64-secret"
MIN_BASE64 = 16  # characters of a run worth decoding (12 bytes)
MAX_BASE64 = 48 * 1024  # characters decoded each side of a literal: bounded work on a huge run
_WINDOW = 512  # first look for the run's ends this close to the literal
WORDS: tuple[bytes, ...] = (
    b"password", b"Password", b"PASSWORD", b"passwd", b"secret", b"Secret", b"SECRET", b"token", b"Token", b"TOKEN",
    b"api_key", b"apikey", b"apiKey", b"ApiKey", b"API_KEY", b"Bearer ", b"bearer ", b"uthorization", b"AccountKey=",
    b"AKIA", b"ASIA", b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_", b"glpat-", b"xoxb-", b"xoxp-",
    b"xoxa-", b"xoxe-", b"xapp-", b"sk_live_", b"rk_live_", b"sk-ant-", b"sk-proj-", b"AIza", b"GOCSPX-", b"ya29.",
    b"-----BEGIN", b"PRIVATE KEY", b"npm_", b"pypi-Ag", b"shpat_", b"whsec_", b"AGE-SECRET-KEY", b"postgres://",
    b"postgresql://", b"mysql://", b"mongodb://", b"mongodb+srv://", b"redis://", b"amqp://",
)
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_MASK = bytes(0x61 if b in _ALPHABET else 0x20 for b in range(256))  # base64 characters -> "a", others -> " "


def literals(words: Sequence[bytes] = WORDS) -> dict[bytes, int]:
    """Each word's three base64 literals, with where each starts in its 4-character group."""
    out: dict[bytes, int] = {}
    for word in words:
        for pad in range(3):
            encoded = binascii.b2a_base64(b"\0" * pad + word + b"\0\0", newline=False)
            lo, hi = 8 * pad, 8 * (pad + len(word))
            inside = [j for j in range(len(encoded)) if 6 * j >= lo and 6 * j + 6 <= hi]
            if len(inside) >= 4:
                out[encoded[inside[0]:inside[-1] + 1]] = inside[0] % 4
    return out


MAX_SEARCH = 320 * 1024  # bytes of a result searched for base64 literals: the default cap plus its scan margin
BASE64 = Detector(BASE64_ID, "secret", "secret", "", description="a secret inside a base64 run")


def _literal_search() -> tuple[Callable[[bytes, int, int], tuple[int, int]], dict[bytes, int]]:
    found = literals()
    pattern = "|".join(re2.escape(lit.decode()) for lit in sorted(found, key=lambda x: (-len(x), x)))
    regex = re2.compile(pattern.encode(), _options(capture=False))._regexp.Match

    def search(data: bytes, pos: int, end: int) -> tuple[int, int]:
        return cast("tuple[int, int]", regex(_UNANCHORED, data, pos, end)[0])

    return search, found


_SEARCH, _PHASE = _literal_search()


def in_base64(data: bytes, scan: Scan, budget: int = MAX_SEARCH) -> list[Hit]:
    """The base64 runs in the first `budget` bytes of `data` whose decoded bytes hold a secret (by
    `scan`): one hit each, the whole run (at most MAX_BASE64 characters each side of its literal)."""
    out: list[Hit] = []
    check = _Base64Check(_PHASE, scan)
    pos, end = 0, min(len(data), budget)
    while pos < end:
        m0, m1 = _SEARCH(data, pos, end)
        if m0 < 0:
            break
        span = check(data, m0, m1)
        if span is None:
            pos = m0 + 1
        else:
            out.append(Hit(BASE64, max(span[0], pos), span[1]))
            pos = span[1]
    return out


def _run_edge(data: bytes, start: int, end: int, backwards: bool) -> int:
    """Where the base64 run through `start` (backwards) or `end` (forwards) stops, at most
    MAX_BASE64 characters away: a short window first, the bounded one only for a long run."""
    for reach in (_WINDOW, MAX_BASE64):
        if backwards:
            low = max(0, start - reach)
            gap = data[low:start].translate(_MASK).rfind(b" ")
            if gap >= 0 or low == 0 or reach == MAX_BASE64:
                return low + gap + 1
        else:
            high = min(len(data), end + reach)
            gap = data[end:high].translate(_MASK).find(b" ")
            if gap >= 0 or high == len(data) or reach == MAX_BASE64:
                return end + gap if gap >= 0 else high
    return start  # not reached: the last reach always returns


class _Base64Check:
    """Decode the run around a literal and scan the bytes for secrets. A run with several literals
    is decoded once: a rejected run is remembered and its other literals skipped."""

    def __init__(self, phase: dict[bytes, int], scan: Scan) -> None:
        self.phase = phase
        self.scan = scan
        self.rejected = (0, 0)

    def __call__(self, data: bytes, m0: int, m1: int) -> tuple[int, int] | None:
        low, high = self.rejected
        if low <= m0 < high:
            return None
        start, end = _run_edge(data, m0, m1, True), _run_edge(data, m0, m1, False)
        if end - start < MIN_BASE64:
            return None
        # Decode from the first group boundary of the run: the literal says where groups start.
        first = start + (m0 - self.phase.get(data[m0:m1], 0) - start) % 4
        raw = _decode(data[first:end])
        if raw and any(_counts(h, raw) for h in self.scan(raw)):
            for _ in range(2):  # its "=" padding goes too
                end += end < len(data) and data[end] == 0x3D
            return (start, end)
        self.rejected = (start, end)
        return None


def _counts(hit: Hit, raw: bytes) -> bool:
    """A finding in decoded base64 that makes the run a secret. An encrypted private key does not,
    as for the `base64-private-key` rule (its passphrase is the secret, not the armoured block)."""
    if hit.detector.id == "private-key":
        return b"ENCRYPTED" not in raw[hit.start:hit.end]
    return hit.detector.kind in ("secret", "exact")


def _decode(run: bytes) -> bytes | None:
    run = run[:len(run) - len(run) % 4]
    try:
        return binascii.a2b_base64(run, strict_mode=False)
    except (binascii.Error, ValueError):
        return None
