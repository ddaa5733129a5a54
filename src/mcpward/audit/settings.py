"""The `[audit]` table: where the hash-chained log lives, how hard it syncs, and its optional HMAC key.

Checked at load like every other table: an audit log that silently went somewhere else, or lost
its key, is worse than a gateway that does not start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mcpward.gateway.config import ConfigError, GatewayConfig, TableReader

FsyncPolicy = Literal["commit", "always"]
FSYNC_POLICIES = ("commit", "always")
DEFAULT_PATH = "mcpward-audit.sqlite"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    enabled: bool = True
    path: Path = Path(DEFAULT_PATH)
    # "commit": each record is in the write-ahead journal before its reply (survives a process crash,
    # SIGKILL) and reaches SQLite (WAL, synchronous=NORMAL) in batches; a power loss may take the last
    # records. "always": a synchronous=FULL commit before the reply, survives power loss too.
    fsync: FsyncPolicy = "commit"
    key_ref: str | None = None  # a secret reference; the value is resolved by `resolve_key`, never stored here
    jsonl: Path | None = None  # a JSON-lines mirror of every committed record, for log shippers
    lock_timeout: float = 5.0  # seconds to wait for another writer (e.g. `mcpward tools approve`)
    source: str = "<defaults>"


def load_settings(cfg: GatewayConfig) -> AuditSettings:
    """Validate `[audit]`; every problem is a ConfigError naming `audit.<key>`."""
    r = TableReader(cfg.source, "audit", cfg.audit)
    enabled = r.get("enabled", bool, True)
    path = _path(r, "path", r.get("path", str, DEFAULT_PATH), cfg.base_dir)
    fsync = r.get("fsync", str, "commit")
    if fsync not in FSYNC_POLICIES:
        raise r.fail("fsync", f"must be 'commit' or 'always', got {fsync!r:.40}")
    key_ref = r.get("key", str, None)
    if key_ref is not None:
        _check_ref(r, key_ref)
    raw_jsonl = r.get("jsonl", str, None)
    jsonl = _path(r, "jsonl", raw_jsonl, cfg.base_dir) if raw_jsonl is not None else None
    if jsonl is not None and jsonl == path:
        raise r.fail("jsonl", "must be a different file from audit.path")
    lock_timeout = r.number("lock_timeout", 5.0, 0.05, 600)
    r.reject_unknown()
    return AuditSettings(enabled=enabled, path=path, fsync=fsync, key_ref=key_ref, jsonl=jsonl,
                         lock_timeout=lock_timeout, source=cfg.source)


def resolve_key(settings: AuditSettings, resolve: Callable[[str], str]) -> bytes | None:
    """The HMAC key named by `audit.key` (`resolve` turns a reference into its value), or None.
    ConfigError (naming the reference, never the value) when it cannot be resolved: a keyed log must
    not quietly fall back to a plain hash chain."""
    if settings.key_ref is None:
        return None
    from mcpward.secrets.refs import SecretError, SecretRefError

    try:
        value = resolve(settings.key_ref)
    except (SecretRefError, SecretError) as exc:
        raise ConfigError(settings.source, "audit.key", f"cannot resolve the audit key: {exc}") from None
    key = value.encode("utf-8")
    if len(key) < 16:
        raise ConfigError(settings.source, "audit.key", f"{settings.key_ref}: the audit key must be at least 16 bytes")
    return key


def config_key(cfg: GatewayConfig, settings: AuditSettings) -> bytes | None:
    """`resolve_key` with the config's own `[secrets]` (for CLI commands, which build nothing else)."""
    if settings.key_ref is None:
        return None
    from mcpward.secrets.refs import parse_ref
    from mcpward.secrets.resolve import SecretResolver
    from mcpward.secrets.settings import load_settings as load_secret_settings

    resolver = SecretResolver(load_secret_settings(cfg.secrets, cfg.source, cfg.base_dir))
    return resolve_key(settings, lambda text: resolver.resolve(parse_ref(text)))


def key_fingerprint(key: bytes | None) -> str:
    """What the log's meta table and verify reports show of a key: 16 hex of its SHA-256, never the key."""
    return hashlib.sha256(key).hexdigest()[:16] if key is not None else ""


def _path(r: TableReader, name: str, text: str, base_dir: Path) -> Path:
    if not text or "\x00" in text:
        raise r.fail(name, "must be a non-empty path")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def _check_ref(r: TableReader, text: str) -> None:
    from mcpward.secrets.refs import SecretRefError, parse_ref

    try:
        parse_ref(text)
    except SecretRefError as exc:
        raise r.fail("key", f"not a secret reference: {exc}") from None
