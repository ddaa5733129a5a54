"""The credentials of an `exec` or `http` interceptor: its `env` or `headers` table.

A value is text, a whole secret reference (`secret:NAME`, `env:NAME`, `file:PATH`, `vault:...`) or
text with `${ref}` parts (`"Bearer ${secret:HOOK_TOKEN}"`), as in `[anomaly] webhook_headers`. At
load, references are checked for syntax and a literal value that looks like a credential is refused
(a config file is read by more people than the secret store). The references are resolved when the
hook first runs, through the gateway's secret resolver, which adds every value it returns to the
output redactor first: a value can then reach no log line, audit record, span or client. Resolving
at first use, not at load, keeps `mcpward check` from needing the secret store.

Values go where the hook reads them and nowhere else: an exec hook's environment (never argv), an
http hook's request headers.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from mcpward.gateway.config import ConfigError, TableReader
from mcpward.secrets.refs import SCHEMES, SecretError, SecretRefError, find_refs, has_refs, interpolate, parse_ref

if TYPE_CHECKING:
    from mcpward.guards.redactor import Redactor

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an RFC 9110 token
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is allowed in a header value
# Variables the gateway sets for every hook: a hook's `env` cannot replace them.
OWN_ENV = frozenset({"MCPWARD_INTERCEPTOR"})
# Headers the gateway sets or the HTTP framing owns: a hook's `headers` cannot replace them.
OWN_HEADERS = frozenset({"host", "content-type", "content-length", "transfer-encoding", "connection", "accept"})
REFERENCE_HINT = "use a secret reference (secret:NAME, env:NAME, file:PATH or vault:PATH#KEY), alone or as ${...}"

Resolve = Callable[[str], str]


class CredentialFailure(Exception):
    """A reference could not be resolved, or resolved to a value the hook cannot be given. The message
    names the key and the reference, never a value."""


class Credentials:
    """One hook's `env` or `headers`: checked at load, resolved once on first use."""

    def __init__(self, key: str, texts: dict[str, str], resolve: Resolve, header: bool) -> None:
        self.key, self.texts, self.resolve, self.header = key, texts, resolve, header
        self._values: dict[str, str] | None = None
        self._lock = asyncio.Lock()

    async def values(self) -> dict[str, str]:
        """The resolved values; CredentialFailure when one cannot be had (tried again next time)."""
        if self._values is None:
            async with self._lock:
                if self._values is None:
                    # A secret store may block (Vault over HTTP, a keyring): off the event loop.
                    self._values = await asyncio.to_thread(self._resolve_all)
        return self._values

    def _resolve_all(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, text in self.texts.items():
            try:
                value = resolve_text(text, self.resolve)
            except (SecretError, SecretRefError) as exc:
                raise CredentialFailure(f"{self.key}.{name}: secret {exc}") from None
            except Exception as exc:  # an unknown error may carry anything: its type only
                raise CredentialFailure(f"{self.key}.{name}: resolving failed ({type(exc).__name__})") from None
            if CONTROL.search(value) if self.header else "\0" in value:
                raise CredentialFailure(f"{self.key}.{name}: the resolved value contains a "
                                        f"{'control character' if self.header else 'NUL character'}")
            out[name] = value
        return out


def is_whole_ref(text: str) -> bool:
    scheme, colon, _ = text.partition(":")
    return bool(colon) and scheme in SCHEMES


def resolve_text(text: str, resolve: Resolve) -> str:
    if is_whole_ref(text):
        return resolve(text)
    refs = find_refs(text)
    return interpolate(text, {ref: resolve(str(ref)) for ref in refs}) if refs else text


def read_credentials(r: TableReader, key: str, resolve: Resolve) -> Credentials | None:
    """`env` (exec) or `headers` (http) of one interceptor table, checked; None when absent."""
    texts = r.string_map(key)
    if not texts:
        return None
    header = key == "headers"
    for name, text in texts.items():
        _check_name(r, key, name, header)
        try:
            if is_whole_ref(text):
                parse_ref(text)
                continue
            find_refs(text)
        except SecretRefError as exc:
            raise r.fail(f"{key}.{name}", str(exc)) from None
        if header and CONTROL.search(text):
            raise r.fail(f"{key}.{name}", "the value contains a control character (CR/LF would split the request)")
        if not has_refs(text) and literal_credential(name, text, header):
            raise r.fail(f"{key}.{name}", f"holds a literal credential; {REFERENCE_HINT}")
    return Credentials(r.key(key), dict(texts), resolve, header)


def _check_name(r: TableReader, key: str, name: str, header: bool) -> None:
    if header:
        if not HEADER_NAME.match(name):
            raise r.fail(f"{key}.{name[:64]}", "not a valid HTTP header name")
        if name.lower() in OWN_HEADERS:
            raise r.fail(f"{key}.{name}", "is set by the gateway; a hook's headers cannot replace it")
    else:
        if not ENV_NAME.match(name):
            raise r.fail(f"{key}.{name[:64]}", "not a valid environment variable name")
        if name in OWN_ENV:
            raise r.fail(f"{key}.{name}", "is set by the gateway; a hook's env cannot replace it")


def literal_credential(name: str, value: str, header: bool) -> bool:
    """A value written in the config that looks like a credential: the config scanner's test
    (`scan.plaintext-secret`): a secret-named setting with a credential-like value, any value of an
    authentication header, or a token of a known format under any name."""
    from mcpward.guards.redactor import SECRETS, encode
    from mcpward.integrity.launch import AUTH_HEADERS, auth_header_credential, literal_secret

    if literal_secret(name, value):
        return True
    if header and name.lower() in AUTH_HEADERS and auth_header_credential(value) is not None:
        return True
    return any(hit.detector.id != "url-credentials" for hit in _secret_rules().scan(encode(value), SECRETS))


@functools.cache
def _secret_rules() -> Redactor:
    from mcpward.guards import secrets
    from mcpward.guards.redactor import Redactor

    return Redactor(secrets.builtin_rules())


__all__ = ["ConfigError", "CredentialFailure", "Credentials", "read_credentials"]
