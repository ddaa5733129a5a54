"""The `[secrets]` table: where `secret:` names live, how their file is keyed, and how to reach Vault."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The module, not its names: config.py may import this package to read [secrets], and a module
# reference survives that import cycle where `from ... import TableReader` would not.
from mcpward.gateway import config as gwconfig
from mcpward.secrets.refs import VAULT_SEGMENT, SecretRef, SecretRefError, parse_ref

StoreKind = Literal["file", "keyring", "env"]
KeyKind = Literal["keyring", "passphrase"]
STORE_KINDS: tuple[StoreKind, ...] = ("file", "keyring", "env")
KEY_KINDS: tuple[KeyKind, ...] = ("keyring", "passphrase")
PASSPHRASE_ENV = "MCPWARD_SECRETS_PASSPHRASE"
ENV_STORE_PREFIX = "MCPWARD_SECRET_"
KEYRING_SERVICE = "mcpward"


def default_store_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "mcpward" / "secrets.enc"


@dataclass(frozen=True, slots=True)
class VaultSettings:
    address: str | None = None  # None: no Vault configured, so a vault: reference fails
    mount: str = "secret"
    token: SecretRef | None = None  # a reference to the token; None: the token file
    token_file: Path | None = None  # None: ~/.vault-token, as the vault CLI and hvac use
    namespace: str | None = None
    timeout: float = 5.0
    allow_http: bool = False
    ca_cert: Path | None = None


@dataclass(frozen=True, slots=True)
class SecretSettings:
    source: str = "<defaults>"
    store: StoreKind = "file"
    path: Path = field(default_factory=default_store_path)
    key: KeyKind | None = None  # None: follow an existing file, else the keyring when it is usable
    allow_world_readable: bool = False
    vault: VaultSettings = field(default_factory=VaultSettings)
    base_dir: Path = field(default_factory=Path.cwd)


def load_settings(table: dict[str, Any], source: str, base_dir: Path) -> SecretSettings:
    """Validate `[secrets]`; every problem is a ConfigError naming `secrets.<key>`."""
    r = gwconfig.TableReader(source, "secrets", table)
    store = r.get("store", str, "file")
    if store not in STORE_KINDS:
        raise r.fail("store", f"must be one of {', '.join(repr(s) for s in STORE_KINDS)}, got {store!r:.40}")
    raw_path = r.get("path", str, None)
    key = r.get("key", str, None)
    if key is not None and key not in KEY_KINDS:
        raise r.fail("key", f"must be 'keyring' or 'passphrase', got {key!r:.40}")
    if store != "file":
        for name, value in (("path", raw_path), ("key", key)):
            if value is not None:
                raise r.fail(name, f"applies only to store = 'file' (store is {store!r})")
    if raw_path is not None and (not raw_path or "\x00" in raw_path):
        raise r.fail("path", "must be a non-empty path")
    path = _path(raw_path, base_dir) if raw_path is not None else default_store_path()
    allow_world_readable = r.get("allow_world_readable", bool, False)
    vault = _vault(gwconfig.TableReader(source, "secrets.vault", r.get("vault", dict, {})), base_dir)
    r.reject_unknown()
    return SecretSettings(source=source, store=store, path=path, key=key,
                          allow_world_readable=allow_world_readable, vault=vault, base_dir=base_dir)


def _path(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def _vault(r: gwconfig.TableReader, base_dir: Path) -> VaultSettings:
    if not r.table:
        return VaultSettings()
    address = r.get("address", str, None)
    if address is None:
        raise r.fail("address", "is required in [secrets.vault] (e.g. \"https://vault.example.com:8200\")")
    allow_http = r.get("allow_http", bool, False)
    _check_address(r, address, allow_http)
    mount = r.get("mount", str, "secret")
    if not mount or not all(VAULT_SEGMENT.fullmatch(s) for s in mount.split("/")):
        raise r.fail("mount", f"must be '/'-separated segments matching {VAULT_SEGMENT.pattern}")
    token: SecretRef | None = None
    token_text = r.get("token", str, None)
    if token_text is not None:
        try:
            token = parse_ref(token_text)
        except SecretRefError as exc:
            raise r.fail("token", f"must be a secret reference such as \"env:VAULT_TOKEN\", never the token "
                                  f"itself: {exc}") from None
        if token.scheme == "vault":
            raise r.fail("token", "a vault: reference cannot supply the token used to reach Vault")
    token_file = r.get("token_file", str, None)
    if token_file is not None and token is not None:
        raise r.fail("token_file", "set either token or token_file, not both")
    namespace = r.get("namespace", str, None)
    if namespace is not None and not all(VAULT_SEGMENT.fullmatch(s) for s in namespace.split("/")):
        raise r.fail("namespace", f"must be '/'-separated segments matching {VAULT_SEGMENT.pattern}")
    timeout = r.number("timeout", 5.0, 0.1, 120.0)
    ca_cert = r.get("ca_cert", str, None)
    r.reject_unknown()
    return VaultSettings(address=address.rstrip("/"), mount=mount, token=token,
                         token_file=_path(token_file, base_dir) if token_file else None,
                         namespace=namespace, timeout=timeout, allow_http=allow_http,
                         ca_cert=_path(ca_cert, base_dir) if ca_cert else None)


def _check_address(r: gwconfig.TableReader, address: str, allow_http: bool) -> None:
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("https", "http"):
        raise r.fail("address", f"scheme must be https, got {parts.scheme or 'none'!r}")
    host = (parts.hostname or "").lower()
    if not host:
        raise r.fail("address", "no host")
    if parts.scheme == "http" and not (allow_http and gwconfig.is_loopback_host(host)):
        # The Vault token travels in a header: plain http is only for a dev server on this machine.
        raise r.fail("address", "plain http is refused (the token would cross the network in clear); use https, "
                                "or set allow_http = true for a Vault on a loopback address")
    if parts.username or parts.password:
        raise r.fail("address", "credentials in the URL are refused; use token = \"env:VAULT_TOKEN\"")
    if parts.query or parts.fragment:
        raise r.fail("address", "must not have a query or fragment")
    if parts.path not in ("", "/"):
        raise r.fail("address", "must be the server's base URL without a path (the /v1/... API paths are added)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise r.fail("address", str(exc)) from None
