"""The shared matcher: secret rules, PII candidates, injection markers and exact secret values.

Everything the output guards look for is compiled into one RE2 alternation per use ("profile": the
log filter needs only the secret rules), compiled once and cached, so a string is read by one
linear-time DFA pass whatever the number of rules (no Python `re`, no backtracking). Patterns run in
Latin-1 mode over the UTF-8 bytes: every pattern is ASCII, so the matches are the same, and negated
classes stay one byte range (a smaller, faster automaton). The fast pass has no capture groups; for
each match, an anchored RE2 Set on its span says which detector it was, that detector's own regex
gives its capture group (the part to redact: for `password = "..."` only the value), and its
optional `check` (entropy, Luhn, phone validity, JSON-decoding a JWT...) runs on that span only.

A rejected candidate resumes the search one character after its start, so a candidate that fails its
check (a Luhn-invalid number) can never hide a real secret that overlaps it (bounded: after
MAX_REJECTS in one text, the search resumes after the candidate).

Which strings of a result reach a model, and writing replacements back, is `result_strings.py`.
`neutralise_bytes()` removes terminal escapes and invisible characters before matching.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped]

from mcpward.guards import invisible

log = logging.getLogger("mcpward.guards.redactor")

# (data, match_start, match_end, span_start, span_end) -> the span to report, or None to reject.
# The span is usually (span_start, span_end); a check may widen it (an e-mail address is matched
# from its "@" and extended back over its local part).
Check = Callable[[bytes, int, int, int, int], "tuple[int, int] | None"]

MIN_EXACT = 6  # shorter configured values would redact ordinary words
EXACT_ID = "configured-secret"
# The DFA cache: a big alternation needs more than RE2's 8 MiB default to stay on the fast path.
MAX_MEM = 256 << 20
# After this many rejected candidates in one text, resume after a rejected candidate instead of
# one character after its start: bounded work on adversarial input (at worst an overlapping
# finding right behind a rejected candidate is missed).
MAX_REJECTS = 4000
_UNANCHORED = re2._Anchor.UNANCHORED
_SEP = b"\n\n"  # between unrelated strings scanned together
_PAIR = b"\n=\n"  # between a dict key and its value
_BOTH = re2._Anchor.ANCHOR_BOTH


def bytes_search(regex: Any) -> Callable[[bytes], bool]:
    """Whether a compiled `re2` regex matches anywhere in UTF-8 bytes: one call into its compiled
    program (what the wrapper does for a str, minus the offset bookkeeping a yes/no does not need)."""
    match = regex._regexp.Match

    def search(data: bytes) -> bool:
        return bool(match(_UNANCHORED, data, 0, len(data))[0][0] >= 0)

    return search


def accept(fn: Callable[[bytes, int, int, int, int], bool]) -> Check:
    """Turn a yes/no check into a Check that keeps the span."""

    def check(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
        return (s, e) if fn(data, m0, m1, s, e) else None

    return check


@dataclass(frozen=True, slots=True)
class Detector:
    id: str  # rule id; also the marker text: [REDACTED:<id>]
    kind: str  # "secret", "pii", "marker" (prompt-injection phrase) or "exact" (a configured value)
    category: str  # PII kind (card, email, ...), "secret" or "injection"
    pattern: str  # RE2 syntax (ASCII); at most one capture group, the span to report
    check: Check | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    detector: Detector
    start: int  # byte offsets into the UTF-8 text
    end: int


def _options(*, capture: bool) -> Any:
    # Latin-1 over UTF-8 bytes: every pattern is ASCII, so matching is the same, but a negated
    # class is one byte range instead of a UTF-8 automaton (a third of the program, a faster DFA).
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.encoding = re2.Options.Encoding.LATIN1
    options.never_capture = not capture
    options.log_errors = False  # a bad operator rule is reported as a ConfigError, not on stderr
    return options


@dataclass(frozen=True, slots=True)
class _Program:
    """One DFA pass finds the leftmost candidate; an anchored Set on its span says which detector it is."""

    find: Any  # re2._Regexp, no capture groups: the fast scan
    which: Any  # re2.Set of the same patterns, anchored at both ends
    each: tuple[Any, ...]  # per detector, its own regex with its capture group (or None)
    detectors: tuple[Detector, ...]


def validate_pattern(pattern: str) -> int:
    """The number of capture groups of a pattern; raises ValueError when RE2 refuses it or it has more than one."""
    try:
        pattern.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("patterns must be ASCII (use \\xNN escapes)") from None
    try:
        groups = int(re2.compile(pattern.encode(), _options(capture=True)).groups)
    except re2.error as exc:
        raise ValueError(f"not a valid RE2 pattern: {exc}") from None
    if groups > 1:
        raise ValueError("a rule may have at most one capture group (the part to redact); use (?:...) elsewhere")
    return groups


def _compile(detectors: Sequence[Detector]) -> _Program:
    which = re2.Set(_BOTH, _options(capture=False))
    each: list[Any] = []
    for det in detectors:
        pattern = det.pattern.encode("latin-1")
        which.Add(pattern)
        regex = re2.compile(pattern, _options(capture=True))
        each.append(regex if regex.groups else None)
    which.Compile()
    body = b"|".join(b"(?:" + d.pattern.encode("latin-1") + b")" for d in detectors) or b"[^\\x00-\\xff]"
    return _Program(re2.compile(body, _options(capture=False)), which, tuple(each), tuple(detectors))


def _next_char(data: bytes, pos: int) -> int:
    """The offset of the character after the one starting at `pos` (never inside a UTF-8 sequence)."""
    pos += 1
    end = len(data)
    while pos < end and 0x80 <= data[pos] < 0xC0:
        pos += 1
    return pos


@dataclass(frozen=True, slots=True)
class Profile:
    """Which detectors one use of the matcher needs; each profile gets its own (smaller, faster) program.

    Configured exact values are always included.
    """

    name: str
    kinds: frozenset[str]
    ids: frozenset[str] | None = None  # restrict to these detector ids (None: every detector of `kinds`)

    def includes(self, det: Detector) -> bool:
        return det.kind in self.kinds and (self.ids is None or det.id in self.ids)

    def without(self, category: str, detectors: Iterable[Detector]) -> Profile:
        """This profile minus one category (cached by name like any profile)."""
        ids = frozenset(d.id for d in detectors if self.includes(d) and d.category != category)
        return Profile(f"{self.name}-{category}", self.kinds, ids)


SECRETS = Profile("secrets", frozenset({"secret"}))


class Redactor:
    """The compiled matcher, one RE2 program per profile (built on first use, rebuilt when exact values change).

    Thread-safe: programs are swapped in whole; compiling takes a lock.
    """

    def __init__(self, detectors: Sequence[Detector]) -> None:
        ids = [d.id for d in detectors]
        if len(set(ids)) != len(ids):
            raise ValueError("detector ids must be unique")
        if EXACT_ID in ids:
            raise ValueError(f"{EXACT_ID!r} is reserved for configured values")
        self.detectors = tuple(detectors)
        self._exact: Detector | None = None
        self._exact_values: frozenset[str] = frozenset()
        self.exact_json_safe = True  # every exact value reads the same inside a JSON string
        self._programs: dict[str, _Program] = {}
        self._lock = threading.Lock()

    @property
    def exact_count(self) -> int:
        return len(self._exact_values)

    def add_exact(self, values: Iterable[str]) -> int:
        """Redact these literal values wherever they appear (configured secrets). Returns how many were new.

        Values shorter than MIN_EXACT characters are ignored: they would redact ordinary words.
        """
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_EXACT} - self._exact_values
        if not new:
            return 0
        with self._lock:
            self._exact_values = self._exact_values | new
            self.exact_json_safe = all(_json_safe(v) for v in self._exact_values)
            # Longest first: at the same start the first alternative wins, so a value that contains
            # another is redacted whole.
            ordered = sorted(self._exact_values, key=lambda v: (-len(v), v))
            self._exact = Detector(EXACT_ID, "exact", "secret", "|".join(_escape(v) for v in ordered),
                                   description="a secret value the gateway holds")
            self._programs = {}
        return len(new)

    def program(self, profile: Profile) -> _Program:
        program = self._programs.get(profile.name)
        if program is None:
            with self._lock:
                dets = [d for d in self.detectors if profile.includes(d)]
                if self._exact is not None:
                    dets.insert(0, self._exact)
                if CONTROL.kind in profile.kinds:
                    dets.insert(0, CONTROL)
                program = _compile(dets)
                self._programs = {**self._programs, profile.name: program}
        return program

    def scan(self, data: bytes, profile: Profile, allow: Callable[[Detector], bool] | None = None,
             limits: Mapping[str, int] | None = None) -> list[Hit]:
        """Every accepted finding in `data`, left to right, without overlaps.

        `allow` drops detectors (e.g. PII kinds a tool may return) before their check runs.
        `limits` caps the findings per category: once a category has that many, the scan goes on
        with a program without it (for findings that are only counted, dense logs stay cheap).
        A profile with the "control" kind stops at the first control or invisible character and
        returns only that hit (`CONTROL`): the caller neutralises the text and scans it again.
        That check rides on the same DFA pass instead of costing a pass of its own.
        """
        program = self.program(profile)
        find = program.find._regexp.Match
        which = program.which._set.Match
        detectors, each = program.detectors, program.each
        control = CONTROL.kind in profile.kinds
        hits: list[Hit] = []
        counts: dict[str, int] = {}
        pos, end = 0, len(data)
        rejects = 0
        while pos < end:
            m0, m1 = find(_UNANCHORED, data, pos, end)[0]
            if m0 < 0:
                break
            span: tuple[int, int] | None = None
            matched = which(data[m0:m1])
            index = min(matched) if matched else -1
            det = detectors[index] if index >= 0 else None
            if det is CONTROL:
                return [Hit(CONTROL, m0, m1)]
            if det is not None and (allow is None or allow(det)):
                s, e = m0, m1
                regex = each[index]
                if regex is not None:  # the detector reports its capture group, not the whole match
                    group = regex._regexp.Match(_BOTH, data, m0, m1)[1]
                    if group[0] >= 0:
                        s, e = group
                specific = _specific(program, data[s:e]) if det.id.startswith("generic-") else None
                if specific is not None:
                    # "key: AKIA...": the value is a known token format; name that rule (and skip
                    # the keyword rule's slower entropy checks unless the specific rule says no).
                    span = (s, e) if specific.check is None else specific.check(data, s, e, s, e)
                    if span is not None:
                        det = specific
                if specific is None or span is None:
                    span = (s, e) if det.check is None else det.check(data, m0, m1, s, e)
            if det is not None and span is not None and span[0] < span[1]:
                hits.append(Hit(det, span[0], span[1]))
                pos = max(m1, span[1]) if m1 > m0 else _next_char(data, m0)
                if control and needs_neutralising(data[m0:pos]):
                    # The finding covered a control character the scan would otherwise step over
                    # (a marker or a logged finding keeps its text, so it must be neutralised).
                    return [Hit(CONTROL, m0, pos)]
                if limits is not None and det.category in limits:
                    counts[det.category] = counts.get(det.category, 0) + 1
                    if counts[det.category] >= limits[det.category]:
                        profile = profile.without(det.category, self.detectors)
                        program = self.program(profile)
                        find, which = program.find._regexp.Match, program.which._set.Match
                        detectors, each = program.detectors, program.each
            else:
                rejects += 1
                if rejects > MAX_REJECTS and m1 > m0:
                    if control and needs_neutralising(data[m0:m1]):
                        return [Hit(CONTROL, m0, m1)]
                    pos = m1
                else:
                    pos = m0 + 1
                    if pos < end and data[pos] >= 0x80:
                        pos = _next_char(data, m0)
        return _propagate(data, hits) if hits else hits

    def scan_texts(self, texts: Sequence[bytes], pairs: Sequence[bool], profile: Profile,
                   allow: Callable[[Detector], bool] | None = None,
                   limits: Mapping[str, int] | None = None) -> list[list[Hit]]:
        """`scan` over many strings at once (one pass, one program start): the hits of each, in its offsets.

        The strings are joined with a blank line, so token rules stop at the seam; `pairs[i]` says text i
        is a dict key and text i+1 its value, joined as `key = value`, so `{"password": "..."}` in
        structured content reads as the assignment it is. A hit across a seam is cut at it.
        """
        if len(texts) == 1:
            return [self.scan(texts[0], profile, allow, limits)]
        data, starts = join(texts, pairs)
        return split_hits(self.scan(data, profile, allow, limits), starts, [len(t) for t in texts])

    def redact(self, text: str, profile: Profile = SECRETS) -> str | None:
        """`text` with every finding of `profile` replaced by its marker, or None when there is none."""
        data = encode(text)
        hits = self.scan(data, profile)
        return splice(data, hits) if hits else None


def _specific(program: _Program, value: bytes) -> Detector | None:
    """The first non-generic secret rule that matches this whole value, if any."""
    matched: list[int] = program.which._set.Match(value) or []
    for index in sorted(matched):
        det: Detector = program.detectors[index]
        if det.kind in ("secret", "exact") and not det.id.startswith("generic-"):
            return det
    return None


def join(texts: Sequence[Any], pairs: Sequence[bool]) -> tuple[Any, list[int]]:
    """Texts (all str or all bytes) joined with their seams, and where each one starts."""
    binary = bool(texts) and isinstance(texts[0], bytes)
    sep, pair = (_SEP, _PAIR) if binary else (_SEP.decode(), _PAIR.decode())
    parts: list[Any] = []
    starts: list[int] = []
    pos = 0
    last = len(texts) - 1
    for i, text in enumerate(texts):
        starts.append(pos)
        parts.append(text)
        pos += len(text)
        if i < last:
            seam = pair if pairs[i] else sep
            parts.append(seam)
            pos += len(seam)
    return (b"" if binary else "").join(parts), starts


def split_hits(found: Sequence[Hit], starts: Sequence[int], lengths: Sequence[int]) -> list[list[Hit]]:
    """Hits in a joined buffer, per text in that text's offsets (a hit across a seam is cut at it)."""
    per: list[list[Hit]] = [[] for _ in starts]
    last = len(starts) - 1
    for hit in found:
        i = bisect.bisect_right(starts, hit.start) - 1
        while i <= last and starts[i] < hit.end:
            s, e = max(hit.start, starts[i]), min(hit.end, starts[i] + lengths[i])
            if s < e:
                per[i].append(Hit(hit.detector, s - starts[i], e - starts[i]))
            i += 1
    return per


def _propagate(data: bytes, hits: list[Hit]) -> list[Hit]:
    """A value a rule found to be a secret is redacted wherever else it appears in the same text.

    `password: s3cr3t!` tells that "s3cr3t!" is a secret; the same characters elsewhere on the page
    ("login s3cr3t!") leak it just as well although no rule matches there.
    """
    values = {data[h.start:h.end]: h.detector for h in hits
              if h.detector.kind in ("secret", "exact") and h.end - h.start >= MIN_EXACT}
    if not values:
        return hits
    extra: list[Hit] = []
    for value, det in values.items():
        if data.count(value) < 2:
            continue  # only where it was found (the common case, one C-speed check)
        at = data.find(value)
        while at >= 0:
            end = at + len(value)
            if not any(h.start < end and at < h.end for h in hits) and not any(
                    h.start < end and at < h.end for h in extra):
                extra.append(Hit(det, at, end))
            at = data.find(value, end)
    if not extra:
        return hits
    return sorted(hits + extra, key=lambda h: h.start)


def _json_safe(value: str) -> bool:
    return '"' not in value and "\\" not in value and all(ord(ch) >= 0x20 for ch in value)


def _escape(value: str) -> str:
    """A literal for a Latin-1 pattern over UTF-8 bytes: ASCII escaped, other bytes as \\xNN."""
    out: list[str] = []
    for byte in value.encode("utf-8", "surrogatepass"):
        ch = chr(byte)
        out.append(ch if ch.isalnum() and byte < 0x80 else f"\\x{byte:02x}")
    return "".join(out)


def splice(data: bytes, hits: Sequence[Hit]) -> str:
    """`data` with each hit replaced by its marker, decoded back to str."""
    out: list[bytes] = []
    prev = 0
    for hit in hits:
        out.append(data[prev:hit.start])
        out.append(b"[REDACTED:" + hit.detector.id.encode() + b"]")
        prev = hit.end
    out.append(data[prev:])
    return b"".join(out).decode("utf-8", "surrogatepass")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------------------ folding

# Fullwidth ASCII (U+FF01-FF5E) reads as the ASCII it stands for, and variation selectors
# (U+FE00-FE0F) are invisible: a fullwidth "AKIA..." or one split by U+FE0F carries a key past rules for
# ASCII. Such texts are matched once more, folded (integrity's scanner applies NFKC; this is the part
# of it that matters for the rules). What calls for it: a fullwidth letter or digit, or a selector,
# `:` or `=` right after an ASCII letter or digit, found by one RE2 pass over the UTF-8 bytes. Chinese
# and Japanese text is full of fullwidth punctuation and emoji carry selectors: neither alone hides
# a token, and folding (one translate of the whole text) is the costly part.
_FOLDABLE = bytes_search(re2.compile(
    b"\\xef\\xbc[\\x90-\\x99\\xa1-\\xba]|\\xef\\xbd[\\x81-\\x9a]"
    b"|[0-9A-Za-z]\\xef(?:\\xb8[\\x80-\\x8f]|\\xbc[\\x9a\\x9d])", _options(capture=False)))


def foldable(data: bytes) -> bool:
    """Whether UTF-8 `data` calls for the folded scan (C-speed tests first: ASCII, then any U+Fxxx)."""
    return not data.isascii() and b"\xef" in data and _FOLDABLE(data)


# Fullwidth to ASCII, variation selectors deleted: one `str.translate` (C speed; the characters
# keep their count but for the selectors, whose places `fold` reports).
_FOLD_TABLE: dict[int, int | None] = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FOLD_TABLE.update(dict.fromkeys(range(0xFE00, 0xFE10)))
_SELECTOR = re.compile("[\ufe00-\ufe0f]")


def fold(text: str) -> tuple[bytes, list[int]]:
    """`text` folded, as UTF-8, and where each dropped selector was, in folded character offsets."""
    gaps = [m.start() - k for k, m in enumerate(_SELECTOR.finditer(text))]
    return encode(text.translate(_FOLD_TABLE)), gaps


def unfolded(text: str, folded: bytes, gaps: Sequence[int], hits: Sequence[Hit]) -> list[Hit]:
    """The hits of a scan of `folded` that only folding revealed (their text differs from the
    original's), as byte spans of `encode(text)`, selectors inside them included. Offsets are
    carried forward from hit to hit (hits come sorted), so many hits cost one pass over the text."""
    out: list[Hit] = []
    fold_byte = fold_char = text_char = text_byte = 0
    for hit in hits:
        fs = fold_char + len(folded[fold_byte:hit.start].decode("utf-8", "surrogatepass"))
        found = folded[hit.start:hit.end].decode("utf-8", "surrogatepass")
        fold_byte, fold_char = hit.start, fs
        ts = fs + bisect.bisect_right(gaps, fs)
        te = fs + len(found) - 1 + bisect.bisect_right(gaps, fs + len(found) - 1) + 1
        if text[ts:te] == found:
            continue  # the usual scan finds it
        bs = text_byte + len(encode(text[text_char:ts]))
        text_char, text_byte = ts, bs
        out.append(Hit(hit.detector, bs, bs + len(encode(text[ts:te]))))
    return out


# ------------------------------------------------------------------------------------------ injection markers

# Prompt-injection markers: phrases that address the model rather than the reader. Bounded
# patterns (no unbounded gaps), matched case-insensitively in the same RE2 pass as the secrets.
# They catch the classic wrappers ("ignore previous instructions", <IMPORTANT>, "*** NEW IMPORTANT
# INSTRUCTIONS ***", exfiltration through a markdown image URL); a paraphrased instruction with no
# marker ("write a script that renames all files") is not caught: docs/detection.md has the numbers.
MARKERS: tuple[tuple[str, str], ...] = (
    ("ignore-instructions",
     r"(?i:\b(?:ignore|disregard|forget|override|bypass|skip)\s+(?:(?:all|any|the|your|my|these|those|every)\s+)*"
     r"(?:previous|prior|above|earlier|preceding|former|original|initial|system|existing)\s+"
     r"(?:instructions?|prompts?|directions?|directives?|messages?|requests?|rules|guidelines|context|commands?|tasks?))"),
    ("new-instructions",
     r"(?i:\*{2,3}\s*(?:new|updated|important|urgent)\s+(?:important\s+)?(?:instructions?|task)\s*\*{2,3}"
     r"|\bnew\s+important\s+instructions\b|\b(?:your|the)\s+new\s+(?:task|instructions?)\s+(?:is|are)\b"
     r"|\burgent\s+new\s+task\b)"),
    ("instruction-tag", r"(?i:<\s*/?\s*(?:important|system|instructions?|admin|secret|hidden)\s*>)"),
    ("system-prompt",
     r"(?i:\b(?:reveal|print|show|output|repeat|leak|disclose|display)\s+(?:(?:your|the|all|me|us|full|entire)\s+)*"
     r"(?:system\s+prompt|initial\s+instructions|hidden\s+(?:prompt|instructions))|\bsystem\s+prompt\s*:)"),
    ("tool-coercion",
     r"(?i:\byou\s+must\s+(?:now\s+|first\s+|always\s+|also\s+)?(?:call|invoke|run|execute)\b"
     r"|\byou\s+must\s+(?:now\s+|first\s+|always\s+|also\s+)?use\s+(?:the\s+)?[\w-]+\s+tool\b"
     r"|\bbefore\s+(?:using|calling)\s+(?:this|any|the)\s+(?:other\s+)?tools?\b)"),
    ("conceal-from-user",
     r"(?i:\b(?:do\s+not|don't|never)\s+(?:tell|inform|mention\s+(?:this\s+)?to|reveal\s+(?:this\s+)?to|show)\s+"
     r"(?:this\s+to\s+)?the\s+user\b)"),
    # An image URL whose query is a slot for the model to fill ("?q=[QUERY]", "?d={data}"): plain
    # images with query strings (CDN resizing) are everywhere in fetched pages and are not flagged.
    ("markdown-image-exfil",
     r"!\[[^\]\n]*\]\(\s*https?://[^)\s?]+\?[^)\s]*=\s*(?:\[|\{|<|\$|%7[Bb]|%3[Cc]|%5[Bb])"),
    ("mode-switch",
     r"(?i:\b(?:developer|debug|god|admin|jailbreak|dan)\s+mode\s+(?:is\s+|has\s+been\s+)?(?:enabled|activated|on)\b"
     r"|\bno\s+limits?\s+ai\b|\bdo\s+anything\s+now\b)"),
    ("chat-template",
     r"<\|im_start\|>|<\|im_end\|>|<\|system\|>|\[INST\]|<<SYS>>|<\|begin_of_text\|>|<\|start_header_id\|>"),
    ("override-task",
     r"(?i:\bregardless\s+of\s+(?:any|all|your|the)\s+(?:previous|prior|earlier)\s+(?:input|instructions?|prompts?)"
     r"|\bif\s+you\s+are\s+(?:told|asked)\s+to\s+summari[sz]e\b|\binstead\s+of\s+(?:answering|summari[sz]ing)\b)"),
    ("reassigned-task",
     r"(?i:\b(?:gave|given)\s+you\s+(?:your\s+)?instructions\b|\bforgot\s+to\s+(?:ask|tell)\s+you\s+to\b"
     r"|\byour\s+(?:new|real|actual|true)\s+(?:task|goal|objective)\s+is\b"
     r"|\byou\s+are\s+(?:now\s+)?(?:operating|running)\s+(?:in|as)\s+(?:\w+\s+){0,3}(?:mode|pipeline)\b"
     r"|\bgrant\s+(?:temporary\s+)?(?:administrative|admin|root)\s+(?:privileges|access)\b)"),
    ("ai-addressed",
     r"(?i:\b(?:attention|note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:ai|assistant|llm|agent|model)\b"
     r"|\b(?:dear|hey|hi)\s+(?:ai|assistant|claude|chatgpt|gpt|llm)\s*[,!:])"),
)


def marker_detectors() -> list[Detector]:
    return [Detector(f"injection-{mid}", "marker", "injection", pattern, description="prompt-injection marker")
            for mid, pattern in MARKERS]


# ------------------------------------------------------------------------------------------ neutralising

# Characters a reader cannot see: one definition shared with the argument guard (guards/invisible.py),
# which refuses in arguments what is stripped here; its two blocks (tags, supplementary variation
# selectors) are `invisible.RANGES`.
_INVISIBLE = invisible.BIDI + invisible.SINGLES
_REPLACE: dict[int, str] = {ord(ch): "" for ch in _INVISIBLE}
_REPLACE.update({c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)})  # ESC becomes ␛
_REPLACE[0x7F] = "\u2421"  # ␡
_REPLACE.update({c: "\ufffd" for c in range(0x80, 0xA0)})  # C1 controls
_CLASS = ("".join(f"\\x{{{c:x}}}" for c in sorted(_REPLACE))
          + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in invisible.RANGES))
# One pass over the UTF-8 bytes finds terminal control sequences (CSI: colours, cursor moves, screen
# clears; OSC: titles, hyperlinks, clipboard writes; other ESC pairs; the 8-bit CSI) and single
# control or invisible characters; only what it finds is rewritten.
_NEUTRALISE = re2.compile("\\x1b\\[[0-?]*[ -/]*[@-~]|\\x1b\\][^\\x07\\x1b]*(?:\\x07|\\x1b\\\\)|\\x1b[@-Z\\\\-_]"
                          "|\\x{9b}[0-?]*[ -/]*[@-~]|[" + _CLASS + "]")
_SUSPECT = re2.compile("[" + _CLASS + "]")


# The same characters as UTF-8 byte sequences for the matcher's Latin-1 DFA (profile kind "control"):
# the output guard's one scan finds them too, and neutralises only when it did. The last two
# alternatives are the tags U+E0000-E007F and the variation selectors U+E0100-E01EF.
CONTROL = Detector("control-character", "control", "control",
                   "|".join("".join(f"\\x{b:02x}" for b in chr(c).encode()) for c in sorted(_REPLACE))
                   + "|\\xf3\\xa0[\\x80\\x81\\x84-\\x86][\\x80-\\xbf]|\\xf3\\xa0\\x87[\\x80-\\xaf]",
                   description="a control or invisible character")
_ASCII_OK = bytes(b for b in range(0x80) if (b >= 0x20 and b != 0x7F) or b in (0x09, 0x0A, 0x0D))


def needs_neutralising(data: bytes) -> bool:
    """Cheap test on the UTF-8 bytes: any control or invisible character at all?"""
    if data.isascii():
        return bool(data.translate(None, _ASCII_OK))  # what is left are control characters
    return _SUSPECT.search(data) is not None


def neutralise_bytes(data: bytes) -> tuple[bytes, int]:
    """Escape sequences removed; control characters made visible (ESC becomes ␛); invisible ones removed.

    Returns the new bytes and how many sequences/characters were changed.
    """
    out: list[bytes] = []
    prev = count = 0
    for match in _NEUTRALISE.finditer(data):
        start, end = match.span()
        out.append(data[prev:start])
        piece = data[start:end].decode("utf-8", "replace")
        if len(piece) == 1:
            code = ord(piece)
            out.append(_REPLACE.get(code, "").encode())  # a character of invisible.RANGES: removed
        prev = end
        count += 1
    out.append(data[prev:])
    return b"".join(out), count


def neutralise(text: str) -> tuple[str, int]:
    """`neutralise_bytes` on a str."""
    data, count = neutralise_bytes(encode(text))
    return data.decode("utf-8", "surrogatepass"), count
