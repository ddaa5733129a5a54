"""Normalisation before rule matching: what a model reads, not what a human sees.

A tool description can hide instructions from a reviewer in ways a model still reads: zero-width and
bidi characters split or reorder words, Unicode tag characters carry invisible ASCII, ANSI escapes hide
text in a terminal, and base64 / hex / URL-encoded runs or HTML comments carry a payload that a renderer
drops. `normalise()` turns a field into plain NFKC text with the invisible characters removed (each
reported), and lists the decoded payloads so the scanner can rescan them as extra "layers".

What a model reads through and a regex does not is folded too (`_FOLD`): HTML entities are decoded,
Cyrillic and Greek look-alikes become the Latin letters they imitate, typographic quotes become ASCII
quotes, and accents and combining marks on Latin letters are dropped ("Ignoŕe" reads "Ignore"). A Latin
word written with another script's look-alike letters is itself reported (`obfuscation.mixed-script`).
Markup (emphasis, backticks, inline HTML tags) stays in the text (some rules need the quotes and backticks
around a tool's name); the text without it is a "markup" layer, matched as if it were the field's own text.

Every decode is bounded: a run must be at least MIN_RUN long, a decoded text is cut at MAX_DECODED
bytes, at most MAX_DECODES payloads per field, and decoding goes at most MAX_DEPTH levels deep. The
bounds fail closed: the first readable payload past MAX_DECODES, and a readable payload cut at
MAX_DECODED, also come back as an "excess" layer (TOO_MANY, TOO_LONG) that the scanner reports as a HIGH
finding; so does, in the scanner, a payload still encoded at the last level.
"""

from __future__ import annotations

import binascii
import codecs
import html
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field

MIN_RUN = 24  # shorter base64/hex runs are ids and hashes, not sentences
MAX_DECODED = 4096  # bytes (URL-encoding: characters) of a payload read: a longer one is reported (TOO_LONG)
MAX_DECODES = 8  # per field and level; the next readable payload is reported (TOO_MANY)
MAX_DEPTH = 2  # base64 in base64 is decoded; a third level is reported, not decoded (scanner._layer)
TOO_MANY = "excess.count"  # layers of payloads past a bound: reported, not rescanned
TOO_LONG = "excess.size"
MARKUP = "markup"  # the field's text without markup: matched like the text, not as a hidden payload
# A base64 payload cut into chunks (by spaces or line breaks, or across fields): a text is looked at for
# one only when a lower-case letter is followed by an upper-case letter, a digit, "+" or "/" at least
# CHUNK_SWITCHES times (base64 does that about every fourth character, prose hardly ever).
CHUNK_SWITCHES = 4
MAX_CHUNKS = 256  # chunks read per run; the next ones start a run of their own


class _Cut(str):
    """A decoded payload cut at MAX_DECODED (its readable start): `_keep` reports it as TOO_LONG."""

    __slots__ = ()


# Zero-width, joiners, word joiner and invisible operators, BOM, soft hyphen, Mongolian vowel separator,
# Hangul fillers: a reader never sees them, a tokenizer does.
_ZERO_WIDTH = "\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u115f\u1160\u3164\uffa0"
# Bidi embedding, override and isolate controls (the Trojan Source characters) and marks.
_BIDI = "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_INVISIBLE = re.compile(
    "[" + _ZERO_WIDTH + _BIDI + "\U000e0000-\U000e007f\ufe00-\ufe0f\U000e0100-\U000e01ef]+"
)
_TAGS = re.compile("[\U000e0020-\U000e007e]+")
# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other two-character escapes, and 8-bit CSI.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]"
)
# C0/C1 controls other than tab, newline and carriage return (ESC handled above).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9a\x9c-\x9f]+")
_BASE64 = re.compile(rf"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{{{MIN_RUN},}}={{0,2}}")
_HEX = re.compile(rf"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{{2}}){{{MIN_RUN // 2},}}(?![0-9A-Fa-f])")
_HEX_ESCAPES = re.compile(r"(?:\\x[0-9A-Fa-f]{2}){8,}")
_URL_ENCODED = re.compile(r"(?:[^\s%]{0,40}%[0-9A-Fa-f]{2}){4,}[^\s%]{0,40}")
_HTML_COMMENT = re.compile(rf"<!--(.{{0,{MAX_DECODED}}}?)(?:-->|$)", re.S)
_WORDS = re.compile(r"[A-Za-z]{2,}")
# Markup a renderer hides and a model reads through: emphasis (runs of * or _ opening or closing a word,
# never inside an identifier such as id_rsa or before a glob such as *.pem; `_emphasis` decides), ~~,
# backticks, and inline HTML tags (a short tag list: "<path>" or "<user>" in a usage line is a
# placeholder, not markup). Inline tags go without a trace ("Ig<b></b>nore"); block tags leave a space.
_EMPHASIS = re.compile(r"[*_]{1,3}")  # a class first: the engine skips to it (an alternation tried every position)
_INLINE_TAGS = ("a|abbr|b|bdi|bdo|cite|code|del|dfn|em|font|i|ins|kbd|mark|q|s|samp|small|span|strike|strong"
                "|sub|sup|tt|u|var|wbr")
_BLOCK_TAGS = "br|div|p|li|ul|ol|h[1-6]|hr|pre|blockquote|table|tr|td|th|section|details|summary"
_TAG = re.compile(rf"</?(?:({_INLINE_TAGS})|{_BLOCK_TAGS})(?:\s[^<>]{{0,200}})?/?>", re.I)
# Markup worth a look (`_markup` decides): a superset test, written as SUSPECT's last alternatives.
_TAG_START = re.compile(r"<[/A-Za-z]")
# An underscore at a word's edge: not after a letter, digit or "_", or not before one (most "_" are inside
# identifiers). Every alternative starts with "_", so the engine skips from one "_" to the next.
_EDGE_UNDERSCORE = re.compile(r"_(?:(?![A-Za-z0-9_])|(?<![A-Za-z0-9_]_))")
# Entities with their semicolon only: "?a=1&copy=2" in a URL is not an entity to a model either.
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
# Anything normalisation would change or decode in ASCII text: controls and ESC, a comment, an escape,
# a percent-encoding, or a run long enough to be base64/hex. Text without any is already normal.
SUSPECT = re.compile(
    rf"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|<!--|\\x[0-9A-Fa-f]{{2}}|%[0-9A-Fa-f]{{2}}|[A-Za-z0-9+/_-]{{{MIN_RUN},}}"
    r"|[*`&]|~~|<[/A-Za-z]|_(?:(?![A-Za-z0-9_])|(?<![A-Za-z0-9_]_))"
    rf"|\A(?=(?s:.){{{MIN_RUN + 1}}})(?s:.*?[a-z][A-Z0-9+/]){{{CHUNK_SWITCHES}}}"
)


# The same test without a regex walking every letter: a byte table marks controls "c" and base64/hex
# characters "a" (anything else, every byte of a non-ASCII character included, becomes a space), so a
# long run is a substring search. SUSPECT stays the definition; `suspect` is checked against it in tests.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_RUN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_MARKS_TABLE = bytes(
    ord("c") if b in _CONTROL_BYTES else ord("a") if b in _RUN_BYTES else ord(" ") for b in range(256)
)
_LONG_RUN = b"a" * MIN_RUN
_HEX_TABLE = bytes(ord("a") if bytes([b]) in b"0123456789ABCDEFabcdef" else ord(" ") for b in range(256))
_HEX_ESCAPE = re.compile(r"\\x[0-9A-Fa-f]{2}")
# SUSPECT's chunk alternative as a byte table: lower-case letters "l", upper-case, digits, "+" and "/" "u".
_CASE_TABLE = bytes(ord("l") if 0x61 <= b <= 0x7A else ord("u") if 0x41 <= b <= 0x5A or 0x30 <= b <= 0x39
                    or b in b"+/" else ord(" ") for b in range(256))
# A chunk: base64 characters with a digit, "+", "/" or a lower-to-upper switch (padding at its end); a run
# is two or more separated by whitespace, each tried only where a token starts (no quadratic retries).
_CHUNK_LIKE = re.compile(r"[A-Za-z0-9+/_-]*(?:[0-9+/]|[a-z][A-Z])[A-Za-z0-9+/_-]*={0,2}")
_CHUNK_TOKEN = r"(?<![A-Za-z0-9+/_=-])" + _CHUNK_LIKE.pattern
_CHUNK_RUN = re.compile(rf"{_CHUNK_TOKEN}(?:\s{{1,16}}{_CHUNK_TOKEN}){{1,{MAX_CHUNKS - 1}}}(?![A-Za-z0-9+/_=-])")
_CHUNK = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


# Cheap necessary tests run before the two str regexes, which cost ~180 instructions a character on
# non-ASCII text: the UTF-8 forms of every _INVISIBLE character (a byte pattern that skips most bytes
# by their first one), and _CONTROL's characters, all below U+00A0, kept by a Latin-1 encoding.
_INVISIBLE_BYTES = re.compile(
    rb"\xc2\xad|\xd8\x9c|\xe1(?:\x85[\x9f\xa0]|\xa0\x8e)|\xe2(?:\x80[\x8b-\x8f\xaa-\xae]|\x81[\xa0-\xa4\xa6-\xa9])"
    rb"|\xe3\x85\xa4|\xef(?:\xb8[\x80-\x8f]|\xbb\xbf|\xbe\xa0)|\xf3\xa0[\x80-\x87]"
)
_CONTROL_MARKS = bytes(
    ord("c") if b <= 0x08 or b in (0x0B, 0x0C) or 0x0E <= b <= 0x1A or 0x1C <= b <= 0x1F or 0x7F <= b <= 0x9A
    or 0x9C <= b <= 0x9F else ord(" ") for b in range(256)
)


# Look-alike letters of other scripts that a reader takes for Latin ones (Cyrillic, Greek, a few
# Armenian and IPA): a small table of the letters that matter in English words, not all of Unicode's
# confusables. Folded everywhere; reported only inside a word that also has ASCII letters.
_HOMOGLYPHS = {
    **dict(zip("аеорсухіјѕԁһԛԝӏүкАВЕКМНОРСТХІЈЅУҮԚԜ",
               "aeopcyxijsdhqwlykABEKMHOPCTXIJSYYQW", strict=True)),
    **dict(zip("οαινρυκΑΒΕΖΗΙΚΜΝΟΡΤΥΧօսɑɡ", "oaivpukABEZHIKMNOPTYXouag", strict=True)),
}
_QUOTES = {**dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u02bc\u02bb\u02b9", "'"),
           **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u02ba", '"')}
_MARK_RANGES = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))


def _fold_table() -> dict[int, str | None]:
    """str.translate table: look-alikes and quotes to ASCII, accented Latin letters to their base letter
    (NFKC has already composed "r" + U+0301 into one letter), leftover combining marks deleted."""
    table: dict[int, str | None] = {ord(k): v for k, v in {**_HOMOGLYPHS, **_QUOTES}.items()}
    for low, high in ((0x00C0, 0x024F), (0x1E00, 0x1EFF)):
        for code in range(low, high + 1):
            parts = unicodedata.normalize("NFD", chr(code))
            if len(parts) > 1 and parts[0].isascii() and parts[0].isalpha():
                table[code] = parts[0]
    table.update({0xF8: "o", 0xD8: "O", 0x131: "i", 0x142: "l", 0x111: "d"})  # ø Ø dotless-i ł đ: no NFD
    for low, high in _MARK_RANGES:
        table.update(dict.fromkeys(range(low, high + 1)))
    return table


_FOLD = _fold_table()
# Whether a text holds anything _FOLD changes: one character-class search, far cheaper than translate().


def _char_class(codes: list[int]) -> str:
    """A regex class of the code points, as ranges (a class of single characters compiles slowly)."""
    parts: list[str] = []
    start = prev = codes[0]
    for code in [*codes[1:], -1]:
        if code != prev + 1:
            parts.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
            start = code
        prev = code
    return "[" + "".join(parts) + "]"


_FOLDABLE = re.compile(_char_class(sorted(_FOLD)))
_LOOKALIKE = re.compile("[" + "".join(_HOMOGLYPHS) + "]")
_WORD = re.compile(r"[^\W\d_]+")
_LATIN = re.compile("[A-Za-z]")


def _fold(text: str, marks: list[Mark]) -> str:
    """`text` through _FOLD; each Latin word with look-alike letters of another script becomes a Mark
    (positions in the folded text: only deleted combining marks shift them, and only slightly)."""
    if not _FOLDABLE.search(text):
        return text
    if _LOOKALIKE.search(text):
        for m in _WORD.finditer(text):
            word = m.group()
            if not word.isascii() and _LATIN.search(word) and _LOOKALIKE.search(word):
                marks.append(Mark("obfuscation.mixed-script", m.start(), m.end(), escape(word, 40)))
    return text.translate(_FOLD)


def _unentity(text: str) -> str:
    """HTML character references decoded ("tell&nbsp;the&nbsp;user", "&#73;gnore")."""
    return _ENTITY.sub(lambda m: html.unescape(m.group()), text) if "&" in text else text


def _edge_underscore(text: str) -> bool:
    return _EDGE_UNDERSCORE.search(text) is not None


def _markup_suspect(text: str) -> bool:
    """SUSPECT's markup alternatives: emphasis, backticks, an entity, a tag may be there (substring tests
    first: this runs on every new string)."""
    return ("`" in text or "*" in text or "&" in text or "~~" in text
            or ("<" in text and _TAG_START.search(text) is not None)
            or ("_" in text and _edge_underscore(text)))


def _emphasis(m: re.Match[str]) -> str:
    """A run of * or _ that opens a word (after a space or punctuation, before a letter) or closes one
    (after a letter or a sentence mark, before a space or punctuation) is emphasis: dropped."""
    text, start, end = m.string, m.start(), m.end()
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    if not (before.isalnum() or before in "_*") and after.isalpha():
        return ""
    if (before.isalpha() or before in ".,!?:;") and not (after.isalnum() or after in "_*"):
        return ""
    return m.group()


def _markup(out: Normalised) -> None:
    """Add the "markup" layer: the text without emphasis, backticks and inline HTML tags, when that differs."""
    text = out.text
    if not _markup_suspect(text):
        return
    bare = text.replace("`", "").replace("~~", "")
    if "*" in bare or ("_" in bare and _edge_underscore(bare)):
        bare = _EMPHASIS.sub(_emphasis, bare)
    if "<" in bare:
        bare = _TAG.sub(lambda m: "" if m.group(1) else " ", bare)
    if bare != text:
        out.layers.append(Layer(MARKUP, 0, len(text), bare))


def _has_control(text: str) -> bool:
    """`_CONTROL.search(text)` is not None (what it matches survives a Latin-1 encoding as itself)."""
    return text.encode("latin-1", "ignore").translate(_CONTROL_MARKS).find(b"c") >= 0


def _marked(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass").translate(_MARKS_TABLE)


def _chunky(text: str, data: bytes | None = None) -> bool:
    """SUSPECT's chunk alternative: longer than a chunked payload's shortest form (MIN_RUN characters and a
    space), with CHUNK_SWITCHES lower-to-upper (or digit, "+", "/") switches. `data`: its ASCII bytes."""
    if len(text) <= MIN_RUN:
        return False
    if data is None:
        data = text.encode("ascii") if text.isascii() else text.encode("utf-8", "surrogatepass")
    return data.translate(_CASE_TABLE).count(b"lu") >= CHUNK_SWITCHES


def chunk_like(token: str) -> bool:
    """A token that may be a chunk of base64 rather than a word (`_CHUNK_TOKEN`; not "Decode" or "JSON")."""
    return _CHUNK_LIKE.fullmatch(token) is not None


_Payload = tuple[int, int, str | None]  # a run's span and what it decodes to (None: nothing readable)


def chunk_layers(text: str) -> list[Layer]:
    """base64 cut into chunks (`_chunk_payloads`), as layers; at most MAX_DECODES, like `_decodes`."""
    found: list[Layer] = []
    for start, end, decoded in _chunk_payloads(text):
        _keep(found, "base64", start, end, decoded)
    return found


def _chunk_payloads(text: str) -> list[_Payload]:
    """Each run of two or more chunk-like tokens separated by whitespace, joined and decoded when MIN_RUN
    long, also without up to two tokens at either end (a word next to a payload may look like a chunk)."""
    out: list[_Payload] = []
    for m in _CHUNK_RUN.finditer(text):
        run = list(_CHUNK.finditer(text, m.start(), m.end()))
        tries = [(lead, tail) for lead in range(min(3, len(run) - 1)) for tail in range(min(3, len(run) - 1 - lead))]
        for lead, tail in tries:  # at most nine decodes per run
            part = run[lead : len(run) - tail]
            joined = "".join(t.group() for t in part)
            decoded = _b64(joined) if len(joined) >= MIN_RUN else None
            if decoded:
                out.append((part[0].start(), part[-1].end(), decoded))
                break
    return out


def suspect(text: str) -> bool:
    """`SUSPECT.search(text) is not None`, at C speed: something normalising would strip or decode."""
    return _markup_suspect(text) or _encoded(text)


def _encoded(text: str) -> bool:
    """`suspect` but markup: something to strip or decode (what gates `_decodes`)."""
    if "<!--" in text or ("\\x" in text and _HEX_ESCAPE.search(text)) or ("%" in text and _PERCENT.search(text)):
        return True
    marked = _marked(text)
    # find(), not `in`: bytes.__contains__ first tries its operand as an int and builds a TypeError
    # message before it searches, which cost more than the search on every field.
    return marked.find(b"c") >= 0 or marked.find(_LONG_RUN) >= 0 or _chunky(text)


def plain(text: str) -> bool:
    """ASCII that normalising leaves as it is and in which there is nothing to decode (`suspect`
    written out: this runs for every new string of every item)."""
    if not text.isascii() or "<!--" in text:
        return False
    if ("\\x" in text and _HEX_ESCAPE.search(text)) or ("%" in text and _PERCENT.search(text)):
        return False
    if _markup_suspect(text):
        return False
    data = text.encode("ascii")
    marked = data.translate(_MARKS_TABLE)
    return marked.find(b"c") < 0 and marked.find(_LONG_RUN) < 0 and not _chunky(text, data)


def unless_plain(text: str) -> Normalised | None:
    """None when `plain(text)`, else `normalise(text)`: the scanner's test and normalisation in one pass
    over an ASCII text (tool names with a long identifier run are not plain, and only their runs need
    decoding)."""
    if not text.isascii() or "<!--" in text:
        return normalise(text)
    if ("\\x" in text and _HEX_ESCAPE.search(text)) or ("%" in text and _PERCENT.search(text)):
        return normalise(text)
    if _markup_suspect(text):
        return normalise(text)
    data = text.encode("ascii")
    marked = data.translate(_MARKS_TABLE)
    if marked.find(b"c") >= 0:
        return normalise(text)
    if marked.find(_LONG_RUN) < 0 and not _chunky(text, data):
        return None
    # ASCII without a control character: what `normalise` returns for it, from the marks made here.
    return Normalised(text, [], _decodes(text, marked))


@dataclass(frozen=True, slots=True)
class Mark:
    """Something normalisation found or removed: the scanner turns each into a finding."""

    rule: str  # "invisible.zero-width", "invisible.bidi", "invisible.tags", "ansi.escape", "control"
    start: int  # in the normalised text: where the removed characters were
    end: int
    evidence: str


@dataclass(frozen=True, slots=True)
class Layer:
    """A decoded payload to rescan; (start, end) is the encoded run in the normalised text."""

    layer: str  # "base64" | "hex" | "url" | "html-comment" | "unicode-tags" | TOO_MANY | TOO_LONG
    start: int
    end: int
    text: str


@dataclass(slots=True)
class Normalised:
    text: str
    marks: list[Mark] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)


def escape(text: str, limit: int = 120) -> str:
    """Evidence for a report: clipped, with control and invisible characters made visible."""
    clipped = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    if clipped.isascii() and clipped.isprintable():
        return clipped
    out = []
    for ch in clipped:
        if ch in "\t\n" or (ch.isprintable() and not _INVISIBLE.match(ch)):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _strip(text: str, pattern: re.Pattern[str], rule: str, marks: list[Mark]) -> str:
    """Remove every match, recording where it was in the text that remains."""
    parts: list[str] = []
    pos = 0
    out_len = 0
    for m in pattern.finditer(text):
        parts.append(text[pos : m.start()])
        out_len += m.start() - pos
        marks.append(Mark(rule, out_len, out_len, escape(m.group())))
        pos = m.end()
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def _invisible_rule(run: str) -> str:
    if any(ch in _BIDI for ch in run):
        return "invisible.bidi"
    if any("\U000e0000" <= ch <= "\U000e007f" for ch in run):
        return "invisible.tags"
    if any("\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef" for ch in run):
        return "invisible.variation-selectors"
    return "invisible.zero-width"


def _emoji_glue(text: str, m: re.Match[str]) -> bool:
    """One variation selector or joiner right after a symbol is how emoji are written ("\u26a0\ufe0f",
    family emoji with ZWJ), not hidden content."""
    run = m.group()
    if len(run) > 2 or any(ch not in "\u200d\ufe0e\ufe0f" for ch in run) or m.start() == 0:
        return False
    before = text[m.start() - 1]
    return not before.isascii() and not before.isalnum()


def _readable(text: str) -> bool:
    """A decoded payload worth rescanning: mostly printable, with some words in it."""
    if not text:
        return False
    if text.isascii() and text.isprintable():
        printable = len(text)  # the common case, without a loop over every character
    else:
        printable = sum(1 for ch in text if ch.isprintable() or ch in "\t\n\r")
    return printable >= 0.9 * len(text) and len(_WORDS.findall(text)) >= 2


def _decode_bytes(raw: bytes) -> str | None:
    cut = len(raw) > MAX_DECODED
    raw = raw[:MAX_DECODED]
    if raw.isascii():
        text = raw.decode("ascii")
    else:
        # Most runs that look like base64 are identifiers whose bytes are not UTF-8: decoding with
        # replacement says so without raising. A U+FFFD there is the decoder's unless the bytes spell one
        # (or the cut split a character: the incremental decoder leaves that character out).
        text = raw.decode("utf-8", "replace")
        if "\ufffd" in text:
            if b"\xef\xbf\xbd" not in raw and not cut:
                return None
            try:
                text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=not cut)
            except UnicodeDecodeError:
                return None
    if not _readable(text):
        return None
    return _Cut(text) if cut else text


def _b64(run: str) -> str | None:
    body = run.rstrip("=")
    if body.isalpha() and body.islower():
        return None  # a long lower-case word is not base64 anyone wrote on purpose
    if len(body) % 4 == 1:
        return None  # no base64 has this length (the decoder would refuse it): skip raising and catching
    data = (body + "=" * (-len(body) % 4)).encode("ascii")
    if "-" in body or "_" in body:
        data = data.translate(_URLSAFE)  # the URL-safe alphabet, as b64decode(altchars="-_") reads it
    try:
        raw = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return _decode_bytes(raw)


def _decodes(text: str, marked: bytes | None = None) -> list[Layer]:
    """Encoded payloads in `text`, decoded one level (`marked`: `_marked(text)` of an ASCII text without
    a control character, when the caller made it already)."""
    found: list[Layer] = []
    # Each pattern runs only when the text holds what it cannot match without (most text holds none):
    # a cheap substring or run test instead of five regex scans per field.
    if "<!--" in text:
        for m in _HTML_COMMENT.finditer(text):
            body = m.group(1).strip()
            if body:
                _add(found, "html-comment", m, body)
    runs_only = marked is not None  # ASCII without controls: its marks are run bytes "a" and spaces
    if marked is None:
        marked = _marked(text)
    singles: list[_Payload] = []
    if marked.find(_LONG_RUN) >= 0:
        if runs_only:
            # A _BASE64 match is then a whole run of at least MIN_RUN marks and up to two "=" after it:
            # the runs are found in the marks, not by the regex trying every position.
            start = marked.find(_LONG_RUN)
            while start >= 0:
                end = marked.find(b" ", start)
                end = len(text) if end < 0 else end
                stop = end + 2 if text.startswith("==", end) else end + 1 if text.startswith("=", end) else end
                singles.append((start, stop, _b64(text[start:stop])))
                start = marked.find(_LONG_RUN, end)
        else:
            singles.extend((m.start(), m.end(), _b64(m.group())) for m in _BASE64.finditer(text))
    chunks = _chunk_payloads(text) if _chunky(text) else []
    for start, end, decoded in singles:
        # A run read whole inside a chunked payload that holds what it decodes to is that payload's part
        # (eight payloads in a row are one run of chunks too, and must not count as nine).
        if not (decoded and any(s <= start and end <= e and d and decoded in d for s, e, d in chunks)):
            _keep(found, "base64", start, end, decoded)
    for start, end, decoded in chunks:
        _keep(found, "base64", start, end, decoded)
    # A hex run is a run of 24 hex digits at least: looked for in a byte table first (long names and
    # identifiers make most base64-length runs, and few of them are hex).
    if marked.find(_LONG_RUN) >= 0 and text.encode("utf-8", "surrogatepass").translate(_HEX_TABLE).find(_LONG_RUN) >= 0:
        for m in _HEX.finditer(text):
            _add(found, "hex", m, _decode_bytes(bytes.fromhex(m.group())))
    if "\\x" in text:
        for m in _HEX_ESCAPES.finditer(text):
            _add(found, "hex", m, _decode_bytes(bytes.fromhex(m.group().replace("\\x", ""))))
    if "%" in text:
        for m in _URL_ENCODED.finditer(text):
            decoded = urllib.parse.unquote(m.group(), errors="strict") if "%" in m.group() else None
            if decoded and decoded != m.group() and _readable(decoded[:MAX_DECODED]):
                _add(found, "url", m, decoded)
    return found


def _add(found: list[Layer], layer: str, m: re.Match[str], decoded: str | None) -> None:
    _keep(found, layer, m.start(), m.end(), decoded)


def _keep(found: list[Layer], layer: str, start: int, end: int, decoded: str | None) -> None:
    """Keep a readable payload, up to MAX_DECODES; past that bound, or for a payload cut at MAX_DECODED, also
    a TOO_MANY or TOO_LONG layer (the first of each: its span and text are the finding's evidence), so that
    a payload left unread is reported rather than passed."""
    if not decoded:
        return
    if len(found) < MAX_DECODES:
        found.append(Layer(layer, start, end, decoded[:MAX_DECODED]))  # a cut payload's start is read too
        if not isinstance(decoded, _Cut) and len(decoded) <= MAX_DECODED:
            return
        excess = TOO_LONG
    else:
        excess = TOO_MANY
    if all(f.layer != excess for f in found):
        found.append(Layer(excess, start, end, decoded[:MAX_DECODED]))


def _tags_payload(text: str) -> list[Layer]:
    """Unicode tag characters spell invisible ASCII (U+E0041 is an invisible 'A')."""
    out = []
    for m in _TAGS.finditer(text):
        ascii_text = "".join(chr(ord(ch) - 0xE0000) for ch in m.group())
        if _readable(ascii_text):
            out.append(Layer("unicode-tags", 0, 0, ascii_text[:MAX_DECODED]))
    return out


def normalise(raw: str, *, decode: bool = True) -> Normalised:
    """NFKC text with invisible characters, ANSI escapes and stray controls removed (each a Mark), HTML
    entities decoded, look-alikes, quotes and accents folded (`_fold`), plus the decoded payloads (html
    comments, base64, hex, URL-encoding, tag-character text) and the text without markup as layers."""
    if raw.isascii():
        marked = _marked(raw)
        if marked.find(b"c") < 0 and ("&" not in raw or not _ENTITY.search(raw)):
            # ASCII without a control character, ESC or entity (the byte table marks the first two):
            # nothing to fold, strip or reveal. `_decodes` finds nothing where `suspect` is False, so it
            # needs no gate here; `_markup` tests for markup itself.
            plain_out = Normalised(raw, [], _decodes(raw, marked) if decode else [])
            if decode:
                _markup(plain_out)
            return plain_out
    marks: list[Mark] = []
    # Tag characters are astral: a text without a surrogate pair in UTF-16 has none (cheaper than max()).
    tag_layers = (_tags_payload(raw) if len(raw.encode("utf-16-le", "surrogatepass")) > 2 * len(raw)
                  and max(raw) >= "\U000e0000" else [])
    # Entities first: what they spell (an ESC, a zero-width space, a no-break space) is then stripped or
    # folded like the character itself.
    text = _unentity(raw)
    if "\x1b" in text or "\x9b" in text:
        text = _strip(text, _ANSI, "ansi.escape", marks)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        if _INVISIBLE_BYTES.search(text.encode("utf-8", "surrogatepass")) and _INVISIBLE.search(text):
            parts: list[str] = []
            pos = out_len = 0
            for m in _INVISIBLE.finditer(text):
                parts.append(text[pos : m.start()])
                out_len += m.start() - pos
                if not _emoji_glue(text, m):
                    marks.append(Mark(_invisible_rule(m.group()), out_len, out_len, escape(m.group(), 40)))
                pos = m.end()
            parts.append(text[pos:])
            text = "".join(parts)
        text = _fold(text, marks)
    if _has_control(text):
        text = _strip(text, _CONTROL, "control", marks)
    out = Normalised(text, marks)
    if tag_layers:
        out.layers.extend(tag_layers)
    if decode:
        if _encoded(text):
            out.layers.extend(_decodes(text))
        _markup(out)
    return out
