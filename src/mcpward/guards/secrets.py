"""Secret rules: the data file, the value checks the rules name, and the `[guards.secrets]` settings.

The rules live in `secret_rules.toml` (gitleaks-class coverage, written for RE2). A rule that needs
more than a pattern names a check here: Shannon entropy and character classes for keyword rules,
JSON-decoding for JWTs, base64-decoding for encoded keys. Checks run only on matched spans.

Config:

    [guards.secrets]
    enabled = true          # redaction of secrets in results (log redaction is always on)
    mode = "redact"         # redact | block (refuse the result, naming the rule) | log (audit only)
    disable = []            # rule ids to turn off, e.g. ["generic-secret"]
    rules = "more.toml"     # extra rules in the same format, relative to the config file
"""

from __future__ import annotations

import base64
import binascii
import math
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import re2  # type: ignore[import-untyped]

from mcpward.gateway.config import ConfigError, GatewayConfig, TableReader
from mcpward.guards.redactor import Check, Detector, accept, validate_pattern

MODES = ("redact", "block", "log")
RULE_ID = re2.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


# ------------------------------------------------------------------------------------------ value checks


def shannon(value: str) -> float:
    """Bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_PLACEHOLDER_WORDS = ("xxx", "***", "...", "your", "example", "changeme", "change_me", "placeholder", "redacted",
                      "password", "passwd", "sample", "<", ">", "${", "{{", "%(", "$(")
_PLACEHOLDER_START = ("$", "%", "{", "[", "#", "/", "./", "../", "~/", "\\")
_HEX = frozenset("0123456789abcdefABCDEF")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_./-")


def _is_identifier_path(value: str) -> bool:
    """`os.environ.get(...)`, `self.password`, `settings.SECRET_KEY`: code, not a value."""
    head = value.split("(", 1)[0]
    parts = head.split(".")
    if not all(p.isidentifier() for p in parts) or (len(parts) == 1 and "(" not in value):
        return False
    return "(" in value or not any(ch.isdigit() for ch in head)  # "n83.bat47Fy4" is a value, not a name


def _is_date(value: str) -> bool:
    return len(value) >= 10 and value[4] == "-" and value[7] == "-" and value[:4].isdigit() and value[5:7].isdigit()


def _is_wordish(value: str) -> bool:
    """Letters and separators only: a word, a name or a slug, not a credential."""
    return all(ch in _WORD_CHARS for ch in value)


def is_placeholder(value: str) -> bool:
    """Obviously not a real secret: a template, variable reference, path, call, date or dummy."""
    low = value.lower()
    if any(w in low for w in _PLACEHOLDER_WORDS) or value.startswith(_PLACEHOLDER_START):
        return True
    if len(set(value)) <= 2:  # "********", "aaaa", "----"
        return True
    if value.endswith(("(", "[", "{")):  # code cut at a quote: os.environ['PW'], getenv("PW")
        return True
    if value[:2] in ("0x", "0X") and all(ch in _HEX for ch in value[2:]):
        return True
    return _is_date(value) or _is_identifier_path(value) or "://" in value


def char_classes(value: str) -> int:
    """How many of: lower-case letters, upper-case letters, digits, other characters."""
    return ((value.upper() != value) + (value.lower() != value) + any(map(str.isdigit, value))
            + (not value.isalnum()))


def password_like(value: str) -> bool:
    """A value assigned to a password-like name: anything that is not a word, number or placeholder.
    (`& ; ,` belong to a password: only the trailing punctuation of code is left off for the test,
    so `password = getpass();` is still a call, not a value.)"""
    value = value.rstrip(").,;]}")
    if len(value) < 4 or is_placeholder(value) or value.isdigit() or _is_wordish(value):
        return False
    return any(ch.isalnum() for ch in value)


def secret_like(value: str, *, min_length: int = 8, min_bits: float = 3.0) -> bool:
    """A value assigned to a token/key-like name: long enough, mixed and random-looking."""
    value = value.rstrip(").,]}")
    if len(value) < min_length or is_placeholder(value) or _is_wordish(value) or value.isdigit():
        return False
    if value.endswith(":"):  # a label ("DemoToken:"), the value comes after it
        return False
    if char_classes(value) < 2:
        return False
    # Short strings cannot reach a high entropy: scale the bar with the length.
    return shannon(value) >= min(min_bits, 0.8 * math.log2(len(value)))


def _text(data: bytes, start: int, end: int) -> str:
    return data[start:end].decode("utf-8", "replace")


# An HTML entity (`&amp;`, `&#39;`) ends a password value: in escaped markup the `&` is the markup's.
_ENTITY = re2.compile(rb"&(?:[A-Za-z]{2,8}|#\d{1,7}|#[xX][0-9A-Fa-f]{1,6});")


MAX_QUOTED = 128  # a quoted value runs to its closing quote within this many bytes
_SEAM = b"\n=\n"  # how a structured key is joined to its value (`redactor.join`)


def _quoted_end(data: bytes, s: int, e: int) -> int:
    """Where a value the rule cut at a space really ends. A value opened by a quote runs to its
    closing quote on the same line (`password: "correct horse battery"` is one passphrase, not
    "correct" and the rest left visible); a structured value (`{"password": "a b c"}`, joined as
    `key = value`) runs to the end of its line. Bounded by MAX_QUOTED; otherwise the rule's end."""
    if e >= len(data) or data[e] not in b" \t":
        return e
    limit = min(len(data), s + MAX_QUOTED)
    if s > 0 and data[s - 1] in b"\"'":
        close = data.find(data[s - 1:s], e, limit)
        return close if close > 0 and b"\n" not in data[e:close] else e
    if data[max(0, s - 3):s] == _SEAM:
        close = data.find(b"\n", e, limit)
        if close < 0 and limit == len(data):
            close = limit
        return close if close > 0 else e
    return e


def _password_value(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
    """The value's span if it is password-like: `& ; ,` belong to a password, but not an HTML entity
    nor the `;` or `,` that ends a statement or a list item (`pw = "x";`, `PW: x,`). A quoted value
    runs to its closing quote, spaces included (`_quoted_end`)."""
    e = _quoted_end(data, s, e)
    entity = _ENTITY.search(data, s, e)
    if entity is not None:
        e = entity.start()
    while e > s and data[e - 1] in b";,":
        e -= 1
    return (s, e) if password_like(_text(data, s, e)) else None


def _not_placeholder(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    return not is_placeholder(_text(data, s, e))


_STRONG_NAMES = ("secret", "token", "api", "access", "auth", "credential", "private", "client", "signature",
                 "salt", "nonce", "session", "bearer")


def _secret_value(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    name_and_separator = _text(data, m0, s).lower()
    value = _text(data, s, e)
    # A bare whitespace separator ("token abc...") or a name that only says "key" is weak
    # evidence: ask for a longer, more random value.
    bare = not any(ch in name_and_separator for ch in ":=>") and " is " not in name_and_separator
    weak = bare or not any(word in name_and_separator for word in _STRONG_NAMES)
    if weak:
        return (secret_like(value, min_length=20 if bare else 16, min_bits=3.3)
                and any(ch.isdigit() for ch in value) and any(ch.isalpha() for ch in value))
    return secret_like(value) and any(not ch.isalpha() for ch in value)


def _header_value(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    value = _text(data, s, e)
    return len(value) >= 8 and not is_placeholder(value) and not _is_wordish(value)


def _url_credentials(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    url = _text(data, s, e)
    userinfo = url.split("://", 1)[1].split("@", 1)[0]
    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
    low = password.lower()
    return bool(password) and not password.startswith(("$", "{", "<", "%(")) and "${" not in low and "{{" not in low


def _b64decode(text: str) -> bytes | None:
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None)
    except (binascii.Error, ValueError):
        return None


def _jwt(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    header, payload = _text(data, s, e).split(".")[:2]
    for part in (header, payload):
        raw = _b64decode(part.rstrip("="))
        if raw is None:
            return False
        try:
            if not isinstance(orjson.loads(raw), dict):
                return False
        except orjson.JSONDecodeError:
            return False
    return True


def _base64_private_key(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    raw = _b64decode(_text(data, s, e))
    return raw is not None and b"PRIVATE KEY" in raw and b"ENCRYPTED" not in raw


def _jfrog_reference_token(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    raw = _b64decode(_text(data, s, e))
    return raw is not None and bool(re2.match(rb"^reftkn:\d{2}:\d{10}:", raw))


def _jira_pat(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    # Base64 of "<12-digit id>:<random>"; the first 20 characters decode the id and the colon.
    raw = _b64decode(_text(data, s, s + 20))
    return raw is not None and bool(re2.match(rb"^\d{12}:", raw))


_DUMMY_WORDS = ("example", "sample", "dummy", "012345", "123456", "234567", "345678", "456789", "987654", "876543",
                "765432", "654321", "abcdef", "bcdefg")


_BINARY = frozenset("01_-")


def is_dummy(value: str) -> bool:
    """Documentation-style values: EXAMPLE in the token, counting runs, only 0s and 1s."""
    low = value.lower()
    for word in _DUMMY_WORDS:  # a plain loop: half the cost of any() over a generator, on every token found
        if word in low:
            return True
    return set(value) <= _BINARY


def _not_dummy(data: bytes, m0: int, m1: int, s: int, e: int) -> bool:
    return not is_dummy(_text(data, s, e))


def _npmrc_line(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
    """Matched from "/:_authToken": the line must start with "//host" (an .npmrc registry entry)."""
    line = data[data.rfind(b"\n", 0, m0) + 1:m0].lstrip()
    if not line.startswith(b"//") or len(line) < 3 or line[2:3] == b"/":
        return None
    return (s, e)


_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _atlas_token(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
    """Terraform Cloud tokens are matched from ".atlasv1.": take the 14 characters in front too."""
    if data[m0:m0 + 1] != b".":
        return (s, e)  # a Vault token (hvs./hvb.), matched whole
    start = m0 - 14
    if start < 0 or not all(b in _ALNUM for b in data[start:m0]) or (start > 0 and data[start - 1] in _ALNUM):
        return None
    return (start, e)


def _dropbox_long_lived(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
    """Matched from its run of ten "A"s: take the 11 characters in front too."""
    start = m0 - 11
    if start < 0 or not all(b in _ALNUM for b in data[start:m0]) or (start > 0 and data[start - 1] in _ALNUM):
        return None
    return (start, e)


CHECKS: dict[str, Check] = {
    "dropbox_long_lived": _dropbox_long_lived,
    "npmrc_line": _npmrc_line,
    "atlas_token": _atlas_token,
    "not_dummy": accept(_not_dummy),
    "password_value": _password_value,
    "secret_value": accept(_secret_value),
    "header_value": accept(_header_value),
    "not_placeholder": accept(_not_placeholder),
    "url_credentials": accept(_url_credentials),
    "jwt": accept(_jwt),
    "base64_private_key": accept(_base64_private_key),
    "jfrog_reference_token": accept(_jfrog_reference_token),
    "jira_pat": accept(_jira_pat),
}


# ------------------------------------------------------------------------------------------ rule file


def load_rules(text: str, source: str) -> list[Detector]:
    """Parse a rule file; raises ValueError naming the rule and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: invalid TOML: {exc}") from None
    rules = data.get("rule", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ValueError(f"{source}: expected [[rule]] tables")
    out: list[Detector] = []
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        where = f"{source}: rule[{i}]"
        unknown = set(rule) - {"id", "regex", "check", "description", "keep_examples"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        rid, regex, check = rule.get("id"), rule.get("regex"), rule.get("check")
        if not isinstance(rid, str) or not RULE_ID.search(rid):
            raise ValueError(f"{where}: 'id' must be 2-63 characters of a-z, 0-9 and '-'")
        if rid in seen:
            raise ValueError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        if not isinstance(regex, str) or not regex:
            raise ValueError(f"{where} ({rid}): 'regex' must be a non-empty string")
        try:
            validate_pattern(regex)
        except ValueError as exc:
            raise ValueError(f"{where} ({rid}): {exc}") from None
        if check is not None and check not in CHECKS:
            raise ValueError(f"{where} ({rid}): unknown check {check!r}; known: {', '.join(sorted(CHECKS))}")
        keep = rule.get("keep_examples", False)
        if not isinstance(keep, bool):
            raise ValueError(f"{where} ({rid}): 'keep_examples' must be true or false")
        out.append(Detector(rid, "secret", "secret", regex, _compose(CHECKS[check] if check else None, keep),
                            str(rule.get("description", ""))))
    return out


def _compose(check: Check | None, keep_examples: bool) -> Check | None:
    """The rule's check, then (unless the rule keeps them) drop documentation-style dummy values."""
    if keep_examples:
        return check
    if check is None:
        return CHECKS["not_dummy"]

    def both(data: bytes, m0: int, m1: int, s: int, e: int) -> tuple[int, int] | None:
        span = check(data, m0, m1, s, e)
        return span if span is not None and not is_dummy(_text(data, span[0], span[1])) else None

    return both


def builtin_rules() -> list[Detector]:
    text = resources.files("mcpward.guards").joinpath("secret_rules.toml").read_text("utf-8")
    return load_rules(text, "secret_rules.toml")


# ------------------------------------------------------------------------------------------ config


@dataclass(slots=True)
class SecretSettings:
    enabled: bool = True
    mode: str = "redact"
    detectors: list[Detector] = field(default_factory=builtin_rules)


def settings(cfg: GatewayConfig) -> SecretSettings:
    """Parse `[guards.secrets]`; raises ConfigError with the key and the problem."""
    r = TableReader(cfg.source, "guards.secrets", _table(cfg, "secrets"))
    out = SecretSettings(enabled=r.get("enabled", bool, True), mode=r.get("mode", str, "redact"))
    if out.mode not in MODES:
        raise r.fail("mode", f"must be one of {', '.join(MODES)}, got {out.mode!r}")
    extra = r.get("rules", str, None)
    if extra is not None:
        path = Path(extra) if Path(extra).is_absolute() else cfg.base_dir / extra
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise r.fail("rules", f"cannot read {path}: {exc.strerror}") from None
        try:
            added = load_rules(text, str(path))
        except ValueError as exc:
            raise r.fail("rules", str(exc)) from None
        known = {d.id for d in out.detectors}
        for det in added:
            if det.id in known:
                raise r.fail("rules", f"rule id {det.id!r} is already a built-in rule")
        # Operator rules go before the keyword rules, which must stay last.
        keyword = [d for d in out.detectors if d.id.startswith("generic-")]
        out.detectors = [d for d in out.detectors if not d.id.startswith("generic-")] + added + keyword
    disabled = r.strings("disable")
    known = {d.id for d in out.detectors}
    for rid in disabled:
        if rid not in known:
            raise r.fail("disable", f"no rule named {rid!r}")
    out.detectors = [d for d in out.detectors if d.id not in set(disabled)]
    r.reject_unknown()
    return out


def _table(cfg: GatewayConfig, section: str) -> dict[str, Any]:
    table = cfg.guards.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(cfg.source, f"guards.{section}", "expected a table")
    return table
