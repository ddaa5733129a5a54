"""Turning references into values, with errors that say which reference failed and why.

Every failure is a SecretError: missing, empty, unreadable, refused by Vault. A value is never
empty (an empty secret is always a mistake, and a server started with one fails in confusing
ways), and never part of an error message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from mcpward.secrets.files import SecretFileError, read_secret_file
from mcpward.secrets.refs import SecretError, SecretRef, find_refs, interpolate
from mcpward.secrets.settings import ENV_STORE_PREFIX, SecretSettings
from mcpward.secrets.store import PassphrasePrompt, SecretStore, StoreError, open_store
from mcpward.secrets.vault import VaultReader, VaultReadError

# Told every value the resolver hands out (see `redaction_values`): the gateway passes its output
# redactor's `add_exact`, so a secret it resolved for its own use never reaches a log or a client.
OnValues = Callable[[Iterable[str]], object]


def redaction_values(value: str) -> list[str]:
    """What to redact for one resolved value: the value, and the credential after an auth scheme
    ("Bearer abc..." -> also "abc..."), which an HTTP client logs or echoes apart from its scheme."""
    out = [value]
    scheme, _, credential = value.partition(" ")
    credential = credential.strip()
    if credential and scheme.isalpha():
        out.append(credential)
    return out


class SecretResolver:
    """Built once from `[secrets]`; safe to call from several threads (resolving blocks: file reads,
    a KDF on the first `secret:` read, HTTP to Vault, so call it from a worker thread in async code).

    `on_values`, when given, is called with `redaction_values(value)` for every value resolved
    (the Vault token included) before it is returned."""

    def __init__(self, settings: SecretSettings, environ: Mapping[str, str] | None = None,
                 prompt: PassphrasePrompt | None = None, on_values: OnValues | None = None) -> None:
        self.settings = settings
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self._prompt = prompt
        self._on_values = on_values
        self._store: SecretStore | None = None
        self._vault = VaultReader(settings.vault, self._vault_token)
        # Re-entrant: a vault: reference resolves its token reference through this same object.
        self._lock = threading.RLock()

    @property
    def store(self) -> SecretStore:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings, self.environ, self._prompt)
            return self._store

    def resolve(self, ref: SecretRef) -> str:
        with self._lock:
            value = self._resolve(ref)
        if not value:
            raise SecretError(ref, "is empty")
        self._held(value)
        return value

    def _held(self, value: str) -> None:
        if self._on_values is not None:
            self._on_values(redaction_values(value))

    def resolve_all(self, refs: list[SecretRef]) -> dict[SecretRef, str]:
        return {ref: self.resolve(ref) for ref in refs}

    def expand(self, text: str) -> str:
        """`text` with its `${...}` references resolved (SecretRefError for bad syntax, SecretError for a
        reference that cannot be resolved)."""
        return interpolate(text, self.resolve_all(find_refs(text)))

    def _resolve(self, ref: SecretRef) -> str:
        if ref.scheme == "env":
            if ref.target not in self.environ:
                raise SecretError(ref, f"the environment variable {ref.target} is not set in the gateway's environment")
            return self.environ[ref.target]
        if ref.scheme == "file":
            try:
                return read_secret_file(self._file_path(ref.target),
                                        allow_world_readable=self.settings.allow_world_readable)
            except SecretFileError as exc:
                raise SecretError(ref, str(exc)) from None
        if ref.scheme == "secret":
            return self._from_store(ref)
        if ref.scheme == "vault":
            try:
                return self._vault.read(ref)
            except VaultReadError as exc:
                raise SecretError(ref, str(exc)) from None
            except SecretError as exc:  # the token's own reference failed
                raise SecretError(ref, f"no Vault token: {exc}") from None
        raise SecretError(ref, f"unknown scheme {ref.scheme!r}")

    def _from_store(self, ref: SecretRef) -> str:
        try:
            store = self.store
            value = store.get(ref.target)
        except StoreError as exc:
            raise SecretError(ref, str(exc)) from None
        if value is None:
            hint = f" (the variable {ENV_STORE_PREFIX}{ref.target} is not set)" if store.kind == "env" \
                else f"; add it with `mcpward secret set {ref.target}`"
            raise SecretError(ref, f"not found in {store.location}{hint}")
        return value

    def _file_path(self, target: str) -> Path:
        path = Path(target).expanduser()
        return path if path.is_absolute() else self.settings.base_dir / path

    def _vault_token(self) -> str:
        vault = self.settings.vault
        if vault.token is not None:
            return self.resolve(vault.token)
        path = vault.token_file or Path(self.environ.get("HOME") or Path.home()) / ".vault-token"
        try:
            token = read_secret_file(path, allow_world_readable=self.settings.allow_world_readable).strip()
        except SecretFileError as exc:
            hint = "" if vault.token_file else " (set secrets.vault.token = \"env:VAULT_TOKEN\", or log in with " \
                                               "the vault CLI to create it)"
            raise VaultReadError(f"no Vault token: {exc}{hint}") from None
        self._held(token)
        return token
