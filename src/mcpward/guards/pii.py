"""PII detectors (candidates for the shared RE2 program plus their validity checks) and `[guards.pii]`.

Kinds and why they are found the way they are:
- card: 13-19 digits, bare or grouped with one kind of separator, a known brand prefix and a valid
  Luhn checksum. Luhn-invalid numbers are never reported.
- ssn: US social security numbers written 3-2-4 with one consistent separator, or any 9-digit form
  right after an "SSN"/"social security" label. Area 000/666/9xx, group 00, serial 0000 and the
  publicly voided numbers are invalid. Unlabelled bare 9-digit numbers are not reported: too many
  ordinary ids look like that.
- iban: country code, check digits, 11-30 more characters; valid only with a correct mod-97 checksum.
- email: RFC-ish local part @ a dotted domain; asset names such as `logo@2x.png` are not addresses.
- phone: a formatted number (international "+..." or a national form with separators/parentheses)
  that `phonenumbers` says is valid, in the number's own country for "+" numbers and in the
  configured regions otherwise. Bare digit runs are not phone numbers here (ids, timestamps).
  Lower confidence, own rule id `pii-phone-country`: a number right after a word that names a
  country and a phone label ("my Japanese number is 090-...", "CN mobile: 138..."), valid in that
  country's numbering plan (the text says whose number it is, so `phone_regions` need not list it).
- ip: every syntactically valid IPv4/IPv6 address (public and private: a private address maps an
  internal network, a public one may identify a person), except IPv6 candidates without a single
  decimal digit (C++ `a::b` scopes). Part of a longer dotted run (`1.2.3.4.5`) is a version number,
  not an address. The unspecified address "::" alone is found only right after an address label
  (`src=::`, `ipv6 ::`; own rule id `pii-ip-unspecified`): bare, it is more often a C++ scope, a
  Haskell type annotation or a reStructuredText literal marker.

Defaults: card, ssn, iban redact; email, phone, ip only log (audit), because they are common in
legitimate output (`git log`, server logs, contact tools). Per tool, `allow_pii` lists kinds the tool
may return untouched (an e-mail tool returning addresses is not a leak).

    [guards.pii]
    enabled = true
    card = "redact"   # redact | block | log | off, for each of card ssn iban email phone ip
    phone_regions = ["US"]
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import phonenumbers

from mcpward.gateway.config import ConfigError, GatewayConfig, TableReader
from mcpward.guards.redactor import Check, Detector, accept
from mcpward.guards.result_strings import Slot

KINDS = ("card", "ssn", "iban", "email", "phone", "ip")
KIND_MODES = ("redact", "block", "log", "off")
DEFAULT_MODES = {"card": "redact", "ssn": "redact", "iban": "redact", "email": "log", "phone": "log", "ip": "log"}


# ------------------------------------------------------------------------------------------ checks


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_brand_ok(digits: str) -> bool:
    """Issuer prefixes of the card networks (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay, Maestro)."""
    n = len(digits)
    first = digits[0]
    if first == "4":
        return n in (13, 16, 19)
    two, four = int(digits[:2]), int(digits[:4])
    if first == "2":
        return 2221 <= four <= 2720 and n == 16
    if first == "3":
        return (two in (34, 37) and n == 15) or (two in (30, 36, 38, 39) and 14 <= n <= 19) or \
            (3528 <= four <= 3589 and 16 <= n <= 19)
    if first in "56":
        return 12 <= n <= 19
    return False


def valid_card(text: str) -> bool:
    seps = {ch for ch in text if not ch.isdigit()}
    if len(seps) > 1:
        return False
    digits = "".join(ch for ch in text if ch.isdigit())
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and card_brand_ok(digits) and luhn(digits)


VOIDED_SSNS = frozenset({"078051120", "219099999", "123456789", "457555462"})


def valid_ssn(text: str) -> bool:
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) != 9 or digits in VOIDED_SSNS or len(set(digits)) == 1:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def valid_iban(text: str) -> bool:
    iban = "".join(text.split()).upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


_ASSET_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "js", "mjs", "css", "ts",
                             "tsx", "jsx", "py", "json", "txt", "html", "htm", "md", "map", "woff", "woff2", "ttf",
                             "otf", "pdf", "zip", "gz", "tar", "xml", "yaml", "yml", "toml", "lock", "exe", "dll"})


def valid_email(text: str) -> bool:
    local, _, domain = text.rpartition("@")
    if not local or local[0] == "." or local[-1] == "." or ".." in local:
        return False
    return domain.rsplit(".", 1)[-1].lower() not in _ASSET_SUFFIXES


NANP_REGIONS = frozenset({"US", "CA", "PR", "GU", "VI", "AS", "MP", "AG", "AI", "BB", "BM", "BS", "DM", "DO", "GD",
                          "JM", "KN", "KY", "LC", "MS", "SX", "TC", "TT", "VC", "VG"})


def _nanp_plausible(digits: str) -> bool:
    """Area code and exchange both start 2-9 (with an optional leading country code 1)."""
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return len(digits) == 10 and digits[0] >= "2" and digits[3] >= "2"


@functools.lru_cache(maxsize=4096)
def valid_phone(text: str, regions: tuple[str, ...]) -> bool:
    """A number `phonenumbers` calls valid: in its own country for "+" numbers, else in one of `regions`.

    Cached: parsing costs ~60 us and the same numbers recur in a session's outputs.
    """
    international = text.lstrip().startswith("+")
    # The only regions are North American: skip the parser for what cannot be a NANP number.
    if not international and all(r in NANP_REGIONS for r in regions) \
            and not _nanp_plausible("".join(ch for ch in text if ch.isdigit())):
        return False
    for region in ((None,) if international else regions):
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _valid_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or p[0] != "0") for p in parts)


def valid_ip(text: str) -> bool:
    if ":" not in text:
        return _valid_ipv4(text)  # 1.2.3.04 is not an address (a leading zero is octal to some parsers)
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return text != "::" and any(ch.isdigit() for ch in text)


def _word(b: int) -> bool:
    return 48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b == 95


def _standalone(data: bytes, s: int, e: int, inner: bytes) -> bool:
    """Not glued to letters/digits (or to `inner`, characters that would continue the token)."""
    if s > 0 and (_word(data[s - 1]) or data[s - 1] in inner):
        return False
    return not (e < len(data) and (_word(data[e]) or data[e] in inner))


def _ip_ok(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    text = data[s:e].decode("ascii", "replace")
    if ":" in text:  # IPv6: not glued to hex digits, more colons, or a dotted tail that did not parse
        if not _standalone(data, s, e, b":") or (e + 1 < len(data) and data[e] == 0x2E and 48 <= data[e + 1] <= 57):
            return False
    else:  # IPv4: not part of a longer dotted run such as a version number 1.2.3.4.5
        if s > 1 and data[s - 1] == 0x2E and 48 <= data[s - 2] <= 57:
            return False
        if e + 1 < len(data) and data[e] == 0x2E and 48 <= data[e + 1] <= 57:
            return False
    return valid_ip(text)


_HEXCOLON = frozenset(b"0123456789abcdefABCDEF:")
_NOT_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)


def _ipv6_compressed(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
    """Matched from its "::" (so the scan does not follow every hex letter): extend back over the head."""
    start = s
    while start > 0 and s - start < 40 and data[start - 1] in _HEXCOLON:
        start -= 1
    return (start, e) if _ip_ok(data, start, e, start, e) else None


def _span_check(fn: Any) -> Check:
    def check(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
        return bool(fn(data[s:e].decode("utf-8", "replace")))

    return accept(check)


_LOCAL = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")


def _email_check(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
    """The match starts at "@" (a pattern that starts at every word would slow the whole scan):
    extend back over the local part here."""
    start = s
    while start > 0 and s - start < 64 and data[start - 1] in _LOCAL:
        start -= 1
    if start == s or (start > 0 and data[start - 1] in _LOCAL):
        return None  # no local part, or one longer than 64 characters
    return (start, e) if valid_email(data[start:e].decode("ascii", "replace")) else None


def _load_country_words() -> dict[str, str]:
    """Lower-case country names and adjectives -> ISO region (data/phone_countries.txt)."""
    words: dict[str, str] = {}
    text = resources.files("mcpward.guards").joinpath("data/phone_countries.txt").read_text("utf-8")
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2:
            for word in parts[1:]:
                words[word] = parts[0]
    return words


COUNTRY_WORDS = _load_country_words()
# Words between the country and the label that say nothing about whose number it is.
_PHONE_WORDS = frozenset({"phone", "mobile", "cell", "cellphone", "telephone", "landline", "contact", "home",
                          "work", "office", "business", "personal", "private", "fax", "whatsapp"})


def _region_of(word: bytes) -> str | None:
    """The region a word names: a listed name/adjective (any case) or an upper-case ISO code ("CN")."""
    text = word.decode("ascii", "replace")
    if len(text) == 2:
        # Only upper case: "in", "it", "me", "no" are words, "IN", "IT" are codes.
        return text if text.isupper() and text in phonenumbers.SUPPORTED_REGIONS else None
    return COUNTRY_WORDS.get(text.lower())


@functools.lru_cache(maxsize=4096)
def valid_phone_in(text: str, region: str) -> bool:
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(text, region)))
    except phonenumbers.NumberParseException:
        return False


def _country_phone(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    """The match is `<label> <number>`; the country is the nearest word before the label that is not
    itself a phone word ("my Japanese mobile number" -> Japanese); the number must be valid there."""
    raw = data[s:e]
    digits = len(raw.translate(None, _NOT_DIGITS))
    if not 7 <= digits <= 15 or not _standalone(data, s, e, b""):
        return False
    words = data[max(0, m0 - 48):m0].split()
    for word in reversed(words[-3:]):
        word = word.strip(b"'\"(,:")
        if word.lower() in _PHONE_WORD_BYTES:
            continue
        region = _region_of(word)
        return region is not None and valid_phone_in(raw.decode("ascii"), region)
    return False


_PHONE_WORD_BYTES = frozenset(w.encode() for w in _PHONE_WORDS)


def _unspecified_ip(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    """`::` after an address label: not glued to an address character; written as an assignment
    (`src=::`, `bind: ::`), or after a space and followed by no word (`ipv6 ::` ends the phrase;
    `host :: String` is a Haskell type annotation, `ip::tcp` a C++ scope)."""
    if e < len(data) and (_word(data[e]) or data[e] in b":.%-"):
        return False
    if data[m0:s].rstrip().endswith((b"=", b":")):
        return True
    rest = data[e:e + 16].lstrip(b" \t")
    return not rest or not (_word(rest[0]) or rest[0] in b"[(")


def detectors(phone_regions: tuple[str, ...] = ("US",)) -> list[Detector]:
    """The PII candidates, in priority order (a card beats a phone reading of the same digits)."""

    @accept
    def phone(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
        raw = data[s:e]
        digits = len(raw.translate(None, _NOT_DIGITS))
        return 7 <= digits <= 15 and _standalone(data, s, e, b"") and valid_phone(raw.decode("ascii"), phone_regions)

    return [
        Detector("pii-card", "pii", "card",
                 r"(?:^|[^\w.,])([2-6]\d{12,18}|[2-6]\d{3}(?:(?: \d{4}){3}(?: \d{3})?|(?:-\d{4}){3}(?:-\d{3})?"
                 r"| \d{6} \d{4,5}|-\d{6}-\d{4,5}))\b",
                 _span_check(valid_card), "payment card number"),
        Detector("pii-ssn", "pii", "ssn", r"\b(?:\d{3}-\d{2}-\d{4}|\d{3}\.\d{2}\.\d{4}|\d{3} \d{2} \d{4})\b",
                 accept(_ssn_check), "US social security number"),
        Detector("pii-ssn-labelled", "pii", "ssn",
                 # The label may be a quoted JSON key: `"ssn":"078051123"`.
                 r"(?i:\bssn|\bsocial\s+security(?:\s+(?:number|no\.?|#))?|\bss#)\"?[\s:#=.-]{0,20}\"?"
                 r"(\d{9}|\d{3}-\d{6}|\d{5}-\d{4})\b",
                 accept(_ssn_check), "US social security number after an SSN label"),
        Detector("pii-iban", "pii", "iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
                 _span_check(valid_iban), "IBAN"),
        Detector("pii-email", "pii", "email",
                 r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                 r"\.(?:[A-Za-z]{2,24}|xn--[A-Za-z0-9-]+)\b",
                 _email_check, "e-mail address"),
        Detector("pii-phone-country", "pii", "phone",
                 r"(?i:\b(?:number|phone|mobile|cell(?:phone)?|telephone|tel|landline)(?:\s+(?:is|no\.?|number))?"
                 r"\s*[:=#.]?\s*)(\+?\d[\d .()-]{5,20}\d)\b",
                 accept(_country_phone), "phone number labelled with its country (lower confidence)"),
        Detector("pii-phone", "pii", "phone",
                 r"\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,5}"
                 r"|\(\d{2,4}\) ?\d{3,4}[ .-]?\d{3,4}"
                 r"|\b\d{3}[.-]\d{3}[.-]\d{4}"
                 r"|\b0\d{1,4}[- ]\d{3,4}(?:[- ]?\d{3,4})?",
                 phone, "phone number"),
        Detector("pii-ip", "pii", "ip",
                 r"\b(?:\d{1,3}\.){3}\d{1,3}\b"
                 r"|\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){7}\b"
                 r"|\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){5}:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b",
                 accept(_ip_ok), "IP address"),
        Detector("pii-ipv6", "pii", "ip",
                 r"::(?:[0-9A-Fa-f]{1,4}:)*(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?",
                 _ipv6_compressed, "IPv6 address written with ::"),
        Detector("pii-ip-unspecified", "pii", "ip",
                 r"(?i:\b(?:ipv6|ip|address|addr|src|dst|source|destination|bind|listen|host|gateway)\b)"
                 r"(?:[ \t]+|[ \t]*[:=][ \t]*)(::)",
                 accept(_unspecified_ip), "the unspecified IPv6 address after an address label"),
    ]


def _ssn_check(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    return _ssn_edges(data, s, e) and valid_ssn(data[s:e].decode("ascii", "replace"))


def _ssn_edges(data: bytes, s: int, e: int) -> bool:
    """Not glued to letters or digits; a hyphen next to the number is a separator when no digit is
    beyond it: `id-078-05-1123-x` is an SSN in a slug, but `1-234-56-7890` and `234-56-7890-12` are
    parts of longer digit runs (phone numbers, serials)."""
    if s > 0:
        before = data[s - 1]
        if _word(before) or (before == 0x2D and s > 1 and 48 <= data[s - 2] <= 57):
            return False
    if e < len(data):
        after = data[e]
        if _word(after) or (after == 0x2D and e + 1 < len(data) and 48 <= data[e + 1] <= 57):
            return False
    return True


# Integers this long may be a card or an SSN sent as a JSON number.
BIG_NUMBER = 10**8


def number_slots(container: Any, key: Any, out: list[Slot]) -> None:
    """Integers of 9 digits or more in a JSON value (a card or an SSN sent as a number), as their
    decimal text, each after its dict key (so `{"ssn": 123456789}` reads as the labelled value). A
    replacement writes the marker string in place of the number."""
    stack: list[tuple[Any, Any]] = [(container, key)]
    while stack:
        parent, k = stack.pop()
        value = parent[k]
        kind = type(value)
        if kind is int and not -BIG_NUMBER < value < BIG_NUMBER:
            if type(parent) is dict and type(k) is str:
                out.append(Slot(parent, k, k, True))
            out.append(Slot(parent, k, str(value)))
        elif kind is dict:
            stack.extend((value, name) for name in value)
        elif kind is list:
            stack.extend((value, i) for i in range(len(value)))


# ------------------------------------------------------------------------------------------ config


@dataclass(slots=True)
class PiiSettings:
    enabled: bool = True
    modes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODES))
    phone_regions: tuple[str, ...] = ("US",)


def settings(cfg: GatewayConfig) -> PiiSettings:
    """Parse `[guards.pii]`; raises ConfigError with the key and the problem."""
    table = cfg.guards.get("pii", {})
    if not isinstance(table, dict):
        raise ConfigError(cfg.source, "guards.pii", "expected a table")
    r = TableReader(cfg.source, "guards.pii", table)
    out = PiiSettings(enabled=r.get("enabled", bool, True))
    for kind in KINDS:
        mode = r.get(kind, str, DEFAULT_MODES[kind])
        if mode not in KIND_MODES:
            raise r.fail(kind, f"must be one of {', '.join(KIND_MODES)}, got {mode!r}")
        out.modes[kind] = mode
    regions = r.strings("phone_regions") or ["US"]
    supported = phonenumbers.SUPPORTED_REGIONS
    for region in regions:
        if region not in supported:
            raise r.fail("phone_regions", f"{region!r} is not a region phonenumbers knows (ISO 3166 code, e.g. 'US')")
    out.phone_regions = tuple(regions)
    r.reject_unknown()
    for server in cfg.servers.values():
        for tool, override in server.tools.items():
            for kind in override.allow_pii:
                if kind not in KINDS:
                    raise ConfigError(cfg.source, f"servers.{server.name}.tools.{tool}.allow_pii",
                                      f"unknown PII kind {kind!r}; expected some of {', '.join(KINDS)}")
    return out
