"""Path-kind arguments: traversal, sensitive paths, and (when declared) roots.

A path is decoded the ways a server might decode it before it is judged: percent-decoding
repeated until stable (`%252e` -> `%2e` -> `.`, and the odd `%%32%65`), IIS `%u002e`, overlong
UTF-8 (`%c0%ae`), `0x2e` spelled out, fullwidth and look-alike slashes (NFKC, U+2215/2216/2044),
backslashes as separators. Then:

- traversal: any all-dots segment (`..`, and `...` which some servers treat as two levels up),
  a null byte (`%00` truncates the path in C code), `..2f` with the percent stripped;
- sensitive: the path matches a pattern of `data/sensitive_paths.txt` (or the operator's file);
- outside roots: with roots declared, an absolute path that, normalised, is not inside one.
  Relative paths stay allowed (they cannot climb: traversal is refused first).

A base64-looking value that decodes to text is checked again as that text (LFI filters decode).
A `scheme://` value in a path parameter is the guard's business, not this module's: http(s)
goes to the URL screen, `file://` is a path, anything else (php://, zip://...) is refused.

The guard sees strings, not the server's file system: a symlink inside a root that points out
of it is the sandbox's business (it mounts only the roots).
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import re2  # type: ignore[import-untyped]

from mcpward.guards.arg_types import Finding
from mcpward.guards.redactor import bytes_search

_PERCENT_U = re.compile(r"%u([0-9a-fA-F]{4})")
_HEX_SPELLED = re.compile(r"0x(2e|2f|5c)", re.IGNORECASE)
_OVERLONG2 = re.compile(rb"[\xc0\xc1][\x00-\xff]")
_OVERLONG3 = re.compile(rb"\xe0[\x80-\x9f][\x80-\xbf]")
_LOOKALIKE_SLASHES = str.maketrans({"\u2215": "/", "\u2044": "/", "\u2216": "\\", "\uff3c": "\\"})
_DOTS_SEGMENT = re.compile(r"(?:^|[^\w.\- ])\.{2,}(?:[^\w.\- ]|$)")
_STRIPPED_PERCENT = re.compile(r"\.\.(?:2f|5c)|(?:2e){2}(?:2f|5c)", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]{8,}={0,2}$")
_DRIVE = re.compile(r"^[a-zA-Z]:/")
_SLASH_DRIVE = re.compile(r"^/?([a-zA-Z]):/?")  # `/C:\x`, `c:x` (drive-relative) -> `c:/x`
_URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")


def _overlong(match: re.Match[bytes]) -> bytes:
    b = match.group()
    if len(b) == 2:
        return bytes([((b[0] & 0x1F) << 6 | (b[1] & 0x3F)) & 0x7F])
    return bytes([((b[1] & 0x3F) << 6 | (b[2] & 0x3F)) & 0x7F])


def decode(value: str, rounds: int = 4) -> str:
    """The path a lenient server might end up with."""
    if value.isascii() and "%" not in value and "0x" not in value.lower():
        return value  # nothing to decode (the common case)
    current = value
    for _ in range(rounds):
        step = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), current)
        step = _HEX_SPELLED.sub(lambda m: chr(int(m.group(1), 16)), step)
        if "%" in step:
            raw = urllib.parse.unquote_to_bytes(step)
            raw = _OVERLONG3.sub(_overlong, _OVERLONG2.sub(_overlong, raw))
            step = raw.decode("utf-8", "replace")
        if step == current:
            break
        current = step
    return unicodedata.normalize("NFKC", current).translate(_LOOKALIKE_SLASHES)


def normalise(decoded: str) -> str:
    """Forward slashes, no `.` segments, no doubled slashes, `file://` dropped (case kept)."""
    path = decoded.replace("\\", "/").strip()
    if path[:7].lower() == "file://":
        path = path[7:]
    if not path:
        return path
    if "//" not in path and "/." not in path and path[0] != "." and path[-1] != "/":
        # No empty, "." or ".." part and no trailing slash: `normpath` would return it unchanged.
        return path
    unc = path.startswith("//")
    path = posixpath.normpath(path)
    return "/" + path.lstrip("/") if unc else path


def _pattern_regex(line: str) -> str:
    body = line.rstrip("/").lower()
    if body.startswith("/"):
        prefix, body = "^/", body[1:]
    elif _DRIVE.match(body + "/"):
        prefix = "^"
    else:
        prefix = "(?:^|/)"
    parts = [re.escape(part).replace(r"\*", "[^/]*") for part in body.split("/")]
    return prefix + "/".join(parts) + "(?:/|$)"


def load_patterns(lines: Iterable[str]) -> list[str]:
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


def default_patterns() -> list[str]:
    text = resources.files("mcpward.guards").joinpath("data/sensitive_paths.txt").read_text("utf-8")
    return load_patterns(text.splitlines())


def url_scheme(value: str) -> str | None:
    """The scheme of a `scheme://...` value (a URL or a stream wrapper such as php://), else None."""
    if "://" not in value:  # the pattern cannot match without it (the common case: a plain path)
        return None
    match = _URL_SCHEME.match(value.strip())
    return match.group(1).lower() if match else None


def _for_matching(normalised: str) -> str:
    """Lower case, and any drive letter as `c:` so one pattern covers every drive."""
    lowered = normalised.lower()
    if ":" not in lowered[1:3]:  # a drive letter's colon is the 2nd or (after a slash) the 3rd character
        return lowered
    return _SLASH_DRIVE.sub("c:/", lowered, count=1) if _SLASH_DRIVE.match(lowered) else lowered


class PathScreen:
    def __init__(self, patterns: list[str] | None = None) -> None:
        self.patterns = default_patterns() if patterns is None else patterns
        sensitive = [p for p in self.patterns if not p.startswith("!")]
        exceptions = [p[1:] for p in self.patterns if p.startswith("!")]
        self._one = [(p, re.compile(_pattern_regex(p))) for p in sensitive]
        # One linear-time automaton answers "any sensitive pattern?" in a single pass (on UTF-8 bytes).
        self._any = bytes_search(re2.compile("|".join(f"(?:{_pattern_regex(p)})" for p in sensitive))) \
            if sensitive else None
        self._except = bytes_search(re2.compile("|".join(f"(?:{_pattern_regex(p)})" for p in exceptions))) \
            if exceptions else None

    @staticmethod
    def traversal(value: str, decoded: str) -> Finding | None:
        if "\x00" in decoded:
            return Finding("args.path.traversal", "contains a null byte (it truncates the path in C code)")
        # The substring tests are what each pattern cannot match without (a C-speed screen, exact):
        # a dots segment needs "..", an encoded one ".." or "2e2e" (case-insensitive).
        if ".." in decoded and _DOTS_SEGMENT.search(decoded.replace("\\", "/")):
            return Finding("args.path.traversal", "contains a '..' segment (after decoding)")
        if (".." in value or "2e2e" in value.lower()) and _STRIPPED_PERCENT.search(value):
            return Finding("args.path.traversal", "contains an encoded '../' with the '%' left out")
        return None

    @staticmethod
    def unbase64(value: str) -> str | None:
        """The text a base64-looking value decodes to (LFI filters decode it), else None."""
        if len(value) < 8 or len(value) % 4 or not _BASE64.match(value):
            return None
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return text if text.isprintable() else None

    def sensitive(self, normalised: str) -> Finding | None:
        if self._any is None or not normalised:
            return None
        lowered = _for_matching(normalised)
        # Encoded as the `re2` wrapper encodes a str (strict UTF-8: a lone surrogate raises as before).
        data = lowered.encode("utf-8")
        if not self._any(data):
            return None
        if self._except is not None and self._except(data):
            return None
        for pattern, regex in self._one:
            if regex.search(lowered):
                return Finding("args.path.sensitive", f"names a sensitive path (matches {pattern})")
        return None

    @staticmethod
    def outside_roots(normalised: str, roots: tuple[str, ...]) -> Finding | None:
        if not roots or not is_absolute(normalised):
            return None
        for root in roots:
            if normalised == root or normalised.startswith(root.rstrip("/") + "/"):
                return None
        return Finding("args.path.outside-roots", "is an absolute path outside the declared roots")

    def check(self, value: str, roots: tuple[str, ...] = ()) -> Finding | None:
        decoded = decode(value)
        found = self.traversal(value, decoded)
        if found:
            return found
        normalised = normalise(decoded)
        found = self.sensitive(normalised) or self.outside_roots(normalised, roots)
        if found is None and (inner := self.unbase64(value)) is not None:
            found = self.check(inner, roots)
            if found is not None:
                return Finding(found.rule, f"is base64 for a path that {found.message}")
        return found


def is_absolute(path: str) -> bool:
    return path.startswith(("/", "~")) or bool(_DRIVE.match(path))


def normalise_root(root: str) -> str:
    """A declared root in the form paths are compared in (`~` is not expanded: say what you mean)."""
    return normalise(str(Path(root))) if root else root
