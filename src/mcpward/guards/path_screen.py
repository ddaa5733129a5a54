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

A `file:` URL is checked as every path a server might open for it (`file_url_paths`): RFC 8089's
`file:/p`, `file:///p`, `file://localhost/p`, any case of the scheme, backslashes for slashes,
tab/newline inside and spaces or controls around it (URL parsers drop them), a query or fragment
cut off or kept. A host other than the local machine is a UNC share (`//host/p`), and is also
checked as `/p` (a server that ignores the host opens that). Any of them refused: refused.

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
from mcpward.guards.url_screen import as_parsed

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
_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "[::1]", "::1"})
_DRIVE_HOST = re.compile(r"^[a-zA-Z][:|]$")  # `file://c:/x`, and the old `file://c|/x`


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


def file_url_paths(decoded: str) -> list[str]:
    """The paths a server might open for a `file:` URL (forward slashes, not yet normalised), or []
    when `decoded` is not one. Lenient readings are included on purpose: the caller refuses the value
    if any of them is refused, so a server that parses more loosely than RFC 8089 gains nothing."""
    url = as_parsed(decoded.replace("\\", "/"))
    if url[:5].lower() != "file:":
        return []
    rest = url[5:]
    readings = [rest]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut >= 0:  # a URL parser drops the query and fragment; a naive server keeps them in the name
        readings.append(rest[:cut])
    paths: list[str] = []
    for reading in readings:
        if reading.startswith("//") and not reading.startswith("///"):
            host, slash, tail = reading[2:].partition("/")
            tail = slash + tail or "/"
            if host.lower() in _LOCAL_HOSTS:
                paths.append(tail)
            elif _DRIVE_HOST.match(host):
                paths.append(host[0] + ":" + tail)
            else:  # a share on another host, or (a server ignoring the host) a local path
                paths.extend(("//" + host + tail, tail))
        elif reading.startswith("///"):
            paths.append(reading[2:])  # `file:///p` is `/p`; `file:////host/share` is a UNC path
        else:
            paths.append(reading)  # `file:/p`, and the relative `file:p` some servers accept
    # `/c|/x` is an old spelling of the drive `c:`
    return [p[:2] + ":" + p[3:] if p[:1] == "/" and p[2:3] == "|" and p[1:2].isalpha() else p for p in paths]


def normalise(decoded: str) -> str:
    """Forward slashes, no `.` segments, no doubled slashes (case kept). A `file:` URL becomes its
    path (the first reading of `file_url_paths`; `PathScreen.check` judges every reading)."""
    path = decoded.replace("\\", "/").strip()
    if ":" in path and (readings := file_url_paths(path)):
        path = readings[0].strip()
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
    if ":" not in value:  # the pattern cannot match without one (the common case: a plain path)
        return None
    # As a URL parser reads it: `ph\tp://` is `php://` to a WHATWG parser, so it is routed as one.
    match = _URL_SCHEME.match(as_parsed(value))
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
        lowered = normalised.lower()
        if ":" in lowered[1:3]:  # a drive letter maybe (_for_matching's own test, saving the call without one)
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
        # `traversal` cannot find anything without one of these (its "2e2e" test is case-insensitive,
        # so any spelling of it holds a "2e" or a "2E"): most paths skip the call.
        if "\x00" in decoded or ".." in decoded or ".." in value or "2e" in value or "2E" in value:
            found = self.traversal(value, decoded)
            if found:
                return found
        found = self._judge(normalise(decoded), roots)
        if found is None and ":" in decoded:
            # A `file:` URL: `normalise` gave its first reading; the others must pass too.
            for reading in file_url_paths(decoded)[1:]:
                found = self._judge(normalise(reading), roots)
                if found is not None:
                    break
        # `unbase64` needs at least 8 characters, a multiple of 4 (tested here: most paths are not).
        if found is None and len(value) >= 8 and not len(value) % 4 and (inner := self.unbase64(value)) is not None:
            found = self.check(inner, roots)
            if found is not None:
                return Finding(found.rule, f"is base64 for a path that {found.message}")
        return found

    def _judge(self, normalised: str, roots: tuple[str, ...]) -> Finding | None:
        return self.sensitive(normalised) or (self.outside_roots(normalised, roots) if roots else None)


def is_absolute(path: str) -> bool:
    return path.startswith(("/", "~")) or bool(_DRIVE.match(path))


def normalise_root(root: str) -> str:
    """A declared root in the form paths are compared in (`~` is not expanded: say what you mean)."""
    return normalise(str(Path(root))) if root else root
