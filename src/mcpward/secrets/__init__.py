"""Secrets by reference: config values say where a secret is (`secret:`, `env:`, `file:`, `vault:`),
never what it is. See docs/secrets.md."""

from mcpward.secrets.refs import SCHEMES, SecretError, SecretRef, SecretRefError, find_refs, interpolate, parse_ref
from mcpward.secrets.resolve import SecretResolver
from mcpward.secrets.settings import SecretSettings, VaultSettings, load_settings
from mcpward.secrets.store import SecretStore, StoreError, open_store

__all__ = [
    "SCHEMES",
    "SecretError",
    "SecretRef",
    "SecretRefError",
    "SecretResolver",
    "SecretSettings",
    "SecretStore",
    "StoreError",
    "VaultSettings",
    "find_refs",
    "interpolate",
    "load_settings",
    "open_store",
    "parse_ref",
]
