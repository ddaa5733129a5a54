"""Secret references: `secret:NAME`, `env:NAME`, `file:PATH`, `vault:PATH#KEY`, and `${...}` in strings.

A reference is configuration text, never a value, so it is safe to log and to show in an error.
Parse errors, though, describe what is wrong without echoing the text: an operator who pasted a
real token where a reference belongs (`${sk-live-...}`) must not find it in a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

SCHEMES = ("secret", "env", "file", "vault")
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
# A Vault path segment may not start with '.', which rules out '.' and '..' (they would walk the
# API URL out of the KV mount, e.g. to sys/).
VAULT_SEGMENT = re.compile(r"[A-Za-z0-9_@+=,~-][A-Za-z0-9_.@+=,~-]{0,127}")
VAULT_KEY = re.compile(r"[^\s#{}\x00-\x1f\x7f]{1,256}")
MAX_FILE_PATH = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME_WORD = re.compile(r"[a-z][a-z0-9]{0,15}")


class SecretRefError(ValueError):
    """A reference that does not parse. The message never repeats the reference text."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    scheme: str
    target: str
    key: str | None = None  # the Vault key after '#'; None for every other scheme

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}" + (f"#{self.key}" if self.key is not None else "")


class SecretError(Exception):
    """A reference that could not be turned into a value. Names the reference and why, never a value."""

    def __init__(self, ref: SecretRef, reason: str) -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref, self.reason = ref, reason


def parse_ref(text: str) -> SecretRef:
    """`scheme:target` -> SecretRef, or SecretRefError naming the rule that is broken."""
    scheme, colon, rest = text.partition(":")
    if not colon:
        raise SecretRefError(f"a secret reference is 'scheme:target' with a scheme from {_scheme_list()}; "
                             "this one has no ':'")
    if scheme not in SCHEMES:
        shown = f"'{scheme}'" if _SCHEME_WORD.fullmatch(scheme) else "(not shown)"
        raise SecretRefError(f"unknown secret scheme {shown}; expected {_scheme_list()}")
    if not rest:
        raise SecretRefError(f"{scheme}: reference has nothing after '{scheme}:'")
    if scheme == "secret":
        _check_name(rest, SECRET_NAME, "a secret name", "[A-Za-z_][A-Za-z0-9_.-]{0,127}")
        return SecretRef(scheme, rest)
    if scheme == "env":
        _check_name(rest, ENV_NAME, "an environment variable name", "[A-Za-z_][A-Za-z0-9_]*")
        return SecretRef(scheme, rest)
    if scheme == "file":
        if len(rest) > MAX_FILE_PATH:
            raise SecretRefError(f"file: path is longer than {MAX_FILE_PATH} characters")
        if control := _CONTROL.search(rest):
            raise SecretRefError(f"file: path contains a control character at offset {control.start()}")
        return SecretRef(scheme, rest)
    return _vault(rest)


def _vault(rest: str) -> SecretRef:
    path, hash_sign, key = rest.partition("#")
    if not hash_sign or not key:
        raise SecretRefError("vault: reference needs a key: vault:PATH#KEY (a KV v2 secret is a map of keys)")
    segments = path.split("/")
    if not path or any(not s for s in segments):
        raise SecretRefError("vault: path must be non-empty segments separated by single '/', "
                             "without a leading or trailing '/'")
    for i, segment in enumerate(segments):
        if not VAULT_SEGMENT.fullmatch(segment):
            raise SecretRefError(f"vault: path segment {i + 1} must match {VAULT_SEGMENT.pattern} "
                                 "(no '.' or '..' segments, no spaces)")
    if not VAULT_KEY.fullmatch(key):
        raise SecretRefError("vault: key must be 1-256 characters without spaces, control characters, '#', '{' or '}'")
    return SecretRef("vault", path, key)


def _check_name(value: str, pattern: re.Pattern[str], what: str, rule: str) -> None:
    if not pattern.fullmatch(value):
        raise SecretRefError(f"{what} must match {rule} (got {len(value)} characters that do not)")


def _scheme_list() -> str:
    return ", ".join(f"{s}:" for s in SCHEMES)


# `${...}` interpolation. `$${` is a literal `${`. Any other `${` must hold a valid reference:
# a `${HOME}` that silently stayed literal would surprise whoever expected it expanded.
_Piece = str | SecretRef


def _scan(text: str) -> Iterator[_Piece]:
    i = 0
    literal: list[str] = []
    while True:
        at = text.find("$", i)
        if at < 0:
            literal.append(text[i:])
            break
        if text.startswith("$${", at):
            literal.append(text[i:at] + "${")
            i = at + 3
            continue
        if not text.startswith("${", at):
            literal.append(text[i:at + 1])
            i = at + 1
            continue
        end = text.find("}", at + 2)
        if end < 0:
            raise SecretRefError(f"'${{' at character {at + 1} is never closed with '}}' "
                                 "(write $${ for a literal ${)")
        inner = text[at + 2:end]
        if ":" not in inner:
            raise SecretRefError(f"'${{...}}' at character {at + 1} is not a secret reference: it needs a scheme "
                                 f"({_scheme_list()}); write $${{ for a literal ${{")
        try:
            ref = parse_ref(inner)
        except SecretRefError as exc:
            raise SecretRefError(f"'${{...}}' at character {at + 1}: {exc}") from None
        literal.append(text[i:at])
        yield "".join(literal)
        literal = []
        yield ref
        i = end + 1
    yield "".join(literal)


def find_refs(text: str) -> list[SecretRef]:
    """The distinct references in `${...}` interpolations of `text`, in order of first appearance."""
    found: dict[SecretRef, None] = {}
    for piece in _scan(text):
        if isinstance(piece, SecretRef):
            found.setdefault(piece)
    return list(found)


def has_refs(text: str) -> bool:
    """Whether `text` embeds a secret reference; a malformed `${...}` counts as one (fail closed:
    nothing can tell what it would hold)."""
    try:
        return bool(find_refs(text))
    except SecretRefError:
        return True


def interpolate(text: str, values: Mapping[SecretRef, str]) -> str:
    """`text` with every `${ref}` replaced by its value and every `$${` by `${`.

    A reference missing from `values` raises SecretError: a half-filled string must not reach a server.
    """
    out: list[str] = []
    for piece in _scan(text):
        if isinstance(piece, SecretRef):
            if piece not in values:
                raise SecretError(piece, "was not resolved")
            out.append(values[piece])
        else:
            out.append(piece)
    return "".join(out)
