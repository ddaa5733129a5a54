"""Numbers and strings that orjson cannot carry exactly, kept exact in transit.

orjson reads an integer beyond 64 bits as a float and a decimal with more digits than a double holds
as its nearest double, so a forwarded message would say a different number; it refuses a string with
a lone surrogate escape (`"\\ud83d"`, what JavaScript writes for a string cut inside an emoji)
outright. The gateway promises that nothing a client or server relies on is lost, so:

- `needs_slow_parse` looks at the raw frame (two C-speed passes, no Python loop) for a run of 16 or
  more digits and dots, the only way a number token can hold more than the 15 significant digits a
  double always round-trips; ordinary frames never leave orjson.
- `loads` (the slow path) uses the standard library: integers stay Python ints (exact, and still
  integers to the schema validator), a decimal that a double would change becomes an `ExactFloat`
  (a float that remembers its token), a lone surrogate stays in the string.
- `dumps` is orjson for everything else and writes those values back as their original text.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

# A double always round-trips 15 significant digits (DBL_DIG): fewer than 16 digits and dots in a row
# cannot hold a number orjson changes. Leading zeros and the dot count too: a superset, that is all.
NUMBER_BYTES = bytes(48 if chr(b) in "0123456789." else 32 for b in range(256))
_LONG_RUN = b"0" * 16
_LONG_RUN_TEXT = re.compile(r"[0-9.]{16}")
# Every 8th byte of a run of 16 holds two samples in a row: a frame whose sample has no two numeric
# bytes in a row has no such run, and the sample is an eighth of the frame (the common case's cost).
STRIDE = 8
SAMPLE_RUN = b"00"
# A surrogate written as a JSON escape: orjson accepts a valid pair and refuses a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF8_BOM = b"\xef\xbb\xbf"
# What the slow path raises instead of the standard library's own error types.
_PARSE_FAILURES = (ValueError, RecursionError, UnicodeDecodeError)


class ExactFloat(float):
    """A decimal whose exact text a double cannot hold: the float is its nearest value (for the guards
    that compare it), `text` is the token as it arrived (for the wire)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactFloat:
        made = super().__new__(cls, text)
        made.text = text
        return made

    def __reduce__(self) -> tuple[type[ExactFloat], tuple[str]]:
        # copy/deepcopy/pickle rebuild it from its text, not from the rounded float
        return ExactFloat, (self.text,)


def needs_slow_parse(data: bytes | str) -> bool:
    """Whether the frame may hold a number orjson would change (false positives only cost time)."""
    if isinstance(data, bytes):
        if data[::STRIDE].translate(NUMBER_BYTES).find(SAMPLE_RUN) < 0:
            return False
        return data.translate(NUMBER_BYTES).find(_LONG_RUN) >= 0
    return _LONG_RUN_TEXT.search(data) is not None


def has_surrogate_escape(data: bytes | str) -> bool:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return _SURROGATE_ESCAPE.search(text) is not None


def _number(text: str) -> float:
    value = float(text)
    # A token the double keeps (same digits back) stays a plain float; inf/nan never come from a token
    # orjson would have kept either, so they also keep their text.
    if value != value or value in (float("inf"), float("-inf")) or not _same_number(text, value):
        return ExactFloat(text)
    return value


def _same_number(text: str, value: float) -> bool:
    """Whether writing `value` back (its shortest form, as orjson does) names the same number as the
    token: `0.10` -> `0.1` is the same number, `3.14159265358979323846` -> `3.141592653589793` is not."""
    return Decimal(text) == Decimal(repr(value))


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A key is written by orjson itself (no escape hatch for keys): a lone surrogate in one becomes
    # U+FFFD, the one lossy case, documented in docs/conformance.md.
    return {(_LONE_SURROGATE.sub("\ufffd", k) if not k.isascii() else k): v for k, v in pairs}


def loads(data: bytes | str) -> Any:
    """Parse like orjson, but keep what orjson cannot: raises ValueError on bad JSON."""
    if isinstance(data, bytes):
        if data.startswith(_UTF8_BOM):
            raise ValueError("unexpected byte-order mark")
        text = data.decode("utf-8")  # strict: orjson refuses invalid UTF-8 too
    else:
        text = data
    try:
        return json.loads(text, parse_float=_number, object_pairs_hook=_object,
                          parse_constant=_refuse_constant)
    except _PARSE_FAILURES as exc:
        raise ValueError(str(exc).split(":")[0]) from None


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; orjson refuses them, so must the slow path.
    raise ValueError(f"{name} is not valid JSON")


def _escaped(text: str) -> str:
    """A JSON string literal for text holding lone surrogates: those as \\u escapes, the rest as is."""
    body = json.dumps(text, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", body)


def _exact(value: Any) -> Any:
    """orjson's `default`: OPT_PASSTHROUGH_SUBCLASS sends every subclass of a built-in type here (plain
    values never come), so the gateway's own dict/str/int subclasses are written as their base type."""
    if isinstance(value, ExactFloat):
        return orjson.Fragment(value.text)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):  # an IntEnum or a _Wide: the number itself, at any size
        return orjson.Fragment(int.__repr__(value))
    if isinstance(value, str):
        plain = str.__str__(value)
        return orjson.Fragment(_escaped(plain)) if _LONE_SURROGATE.search(plain) else plain
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


class _Wide(int):
    """An integer beyond 64 bits, tagged so orjson hands it to `_exact`."""


class _Loose(str):
    """A string with a lone surrogate, tagged so orjson hands it to `_exact`."""


def _tag(value: Any) -> Any:
    """A copy of value with what orjson refuses natively (big ints, lone surrogates) tagged."""
    if isinstance(value, dict):
        return {(_LONE_SURROGATE.sub("\ufffd", k) if isinstance(k, str) and not k.isascii() else k): _tag(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tag(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < 1 << 64:
        return _Wide(value)
    if isinstance(value, str) and not value.isascii() and _LONE_SURROGATE.search(value):
        return _Loose(value)
    return value


def dumps(value: Any, option: int = 0) -> bytes:
    """orjson.dumps that writes exact numbers back as their text and keeps lone surrogates escaped.
    Raises orjson.JSONEncodeError for what JSON cannot hold (and for nesting orjson refuses)."""
    try:  # plain orjson first: the common case pays no `default` and no passthrough
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        pass
    opts = option | orjson.OPT_PASSTHROUGH_SUBCLASS
    try:
        return orjson.dumps(value, option=opts, default=_exact)
    except orjson.JSONEncodeError as exc:
        # Only a big integer or a lone surrogate gets here (everything else fails the same way twice).
        reason = str(exc)
        if "64-bit" not in reason and "surrogates" not in reason:
            raise
    try:
        tagged = _tag(value)
    except RecursionError:
        raise orjson.JSONEncodeError("Recursion limit reached") from None
    return orjson.dumps(tagged, option=opts, default=_exact)


def plain(value: Any) -> Any:
    """value with every ExactFloat as a plain float, for libraries that take only exact built-in types
    (jsonschema_rs refuses any subclass). A copy only where one was found; call it when such a library
    refuses a value (`Unsupported type`), so ordinary messages never pay for the walk."""
    if isinstance(value, ExactFloat):
        return float(value)
    if isinstance(value, dict):
        items = {k: plain(v) for k, v in value.items()}
        return items if any(items[k] is not v for k, v in value.items()) else value
    if isinstance(value, list):
        values = [plain(v) for v in value]
        return values if any(a is not b for a, b in zip(values, value, strict=True)) else value
    return value
