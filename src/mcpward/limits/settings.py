"""The `[limits]` table: per-principal rate, per-tool rate and cost quotas, circuit breakers.

Everything is checked at load with errors that name the key. A limit that silently fell back to
a default (a typo in a budget, a storage URI that quietly became memory) would leave the gateway
open to exactly the denial-of-wallet it is meant to stop.
"""

from __future__ import annotations

import math
import re
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fnmatch import translate
from pathlib import Path
from typing import Any, Literal

from mcpward.gateway.config import GatewayConfig, TableReader
from mcpward.secrets.refs import SecretError, SecretRefError, parse_ref

Period = Literal["second", "minute", "hour", "day", "month"]
PERIODS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400}
Per = Literal["principal", "gateway"]
OnStorageError = Literal["refuse", "allow"]
DEFAULT_EXEMPT = ("ping", "initialize", "server/discover")
MAX_RATE = 1_000_000  # requests per minute; beyond this a moving window is the wrong tool anyway
MAX_BUDGET = 10**12
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.*?\[\]!/:-]{1,256}$")


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    enabled: bool = True
    window_seconds: float = 60.0
    min_calls: int = 10  # no verdict from fewer samples: one slow call out of three is noise
    error_rate: float = 0.10  # opens when the share of errors is above this
    p99_seconds: float = 2.0  # opens when the 99th percentile latency is above this
    open_seconds: float = 300.0
    # A half-open probe that never reports (cancelled, refused by a later guard) frees its slot
    # after this long, so a lost probe cannot hold the breaker half-open for ever.
    probe_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class ToolRule:
    """One `[limits.tools."<glob>"]` table. Each exposed tool it matches gets its own bucket and budget."""

    pattern: str
    regex: re.Pattern[str] = field(repr=False)
    rate: int | None = None  # per principal per tool, requests per minute
    burst: int | None = None
    cost: int = 1  # units one call spends from the budget
    budget: int | None = None  # units per period; None = no quota
    period: Period = "day"
    per: Per = "principal"
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    @property
    def specificity(self) -> tuple[int, int, int, str]:
        """Higher wins: an exact name, then more literal characters, then the longer pattern.
        The pattern text breaks the last tie so the choice never depends on table order."""
        literal = sum(1 for ch in self.pattern if ch not in "*?[]!")
        exact = 1 if not any(ch in self.pattern for ch in "*?[") else 0
        return exact, literal, len(self.pattern), self.pattern


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    enabled: bool = True
    storage: str = "memory://"
    storage_password: str | None = field(default=None, repr=False)  # the resolved value, never shown
    storage_ca_cert: str | None = None  # PEM file of a private CA for rediss://; None = the system's CAs
    storage_timeout: float = 0.5  # seconds a Redis round trip may take before it counts as unavailable
    on_storage_error: OnStorageError = "refuse"
    rate: int = 100  # per principal, requests per minute
    burst: int = 20
    exempt: frozenset[str] = frozenset(DEFAULT_EXEMPT)
    tools: tuple[ToolRule, ...] = ()
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    @property
    def uses_redis(self) -> bool:
        return not self.storage.startswith("memory:")


def load_settings(cfg: GatewayConfig, resolve_secret: Callable[[str], str] | None = None) -> LimitsSettings:
    r = TableReader(cfg.source, "limits", cfg.limits)
    enabled = r.get("enabled", bool, True)
    storage = _storage_uri(r)
    password = _password(r, resolve_secret)
    if password is not None and storage.startswith("memory:"):
        raise r.fail("storage_password", "only a redis:// or rediss:// storage takes a password")
    ca_cert = _ca_cert(r, storage, cfg.base_dir)
    timeout = r.number("storage_timeout", 0.5, 0.01, 30)
    on_error = r.get("on_storage_error", str, "refuse")
    if on_error not in ("refuse", "allow"):
        raise r.fail("on_storage_error", f"must be 'refuse' or 'allow', got {on_error!r}")
    rate, burst = _rate_pair(r, 100)
    if rate is None or burst is None:  # unreachable: a default rate always yields both
        raise r.fail("rate", "is required")
    exempt = frozenset(r.strings("exempt")) if "exempt" in r.table else frozenset(DEFAULT_EXEMPT)
    breaker = _breaker(TableReader(cfg.source, r.key("breaker"), r.get("breaker", dict, {})), BreakerSettings())
    tools_table: dict[str, Any] = r.get("tools", dict, {})
    r.reject_unknown()
    rules = []
    for pattern, table in tools_table.items():
        key = f"tools.{_quote(pattern)}"
        if not isinstance(table, dict):
            raise r.fail(key, "expected a table")
        if not _TOOL_NAME.fullmatch(pattern):
            raise r.fail(key, "a tool pattern is an exposed tool name or an fnmatch glob (*, ?, [..])")
        rules.append(_tool_rule(TableReader(cfg.source, r.key(key), table), pattern, breaker))
    rules.sort(key=lambda rule: rule.specificity, reverse=True)
    return LimitsSettings(enabled=enabled, storage=storage, storage_password=password, storage_ca_cert=ca_cert,
                          storage_timeout=timeout,
                          on_storage_error=on_error, rate=rate, burst=burst, exempt=exempt, tools=tuple(rules),
                          breaker=breaker)


def bucket_window(rate: int, burst: int) -> int:
    """Seconds of the moving window that holds `burst` calls, rounded up so the sustained rate
    is never above `rate` per minute (the limits library counts windows in whole seconds)."""
    return max(1, math.ceil(60 * burst / rate))


def _quote(pattern: str) -> str:
    return f'"{pattern}"'


def _storage_uri(r: TableReader) -> str:
    raw: str = r.get("storage", str, "memory://")
    if raw in ("memory", "memory://"):
        return "memory://"
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError:
        raise r.fail("storage", "not a valid URI; expected memory:// or redis://host:port/db") from None
    if parts.scheme not in ("redis", "rediss"):
        raise r.fail("storage", "expected memory://, redis://host:port/db or rediss://host:port/db")
    if parts.username or parts.password or "@" in parts.netloc:
        # The URI is logged and shown in errors; a password belongs in a secret reference.
        raise r.fail("storage", "credentials in the URI are refused; put the password in "
                                "storage_password as a secret reference (secret:NAME)")
    if parts.query or parts.fragment or raw.endswith(("?", "#")):
        # coredis reads options from the query and lets them win over ours: ?ssl_cert_reqs=none
        # would turn certificate checks off, ?password= would put a credential in the URI.
        raise r.fail("storage", "a query string or fragment is refused; TLS and the password have keys "
                                "of their own (storage_ca_cert, storage_password)")
    if not parts.hostname:
        raise r.fail("storage", "the URI names no host")
    if port is not None and not 0 < port < 65536:
        raise r.fail("storage", "port out of range")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise r.fail("storage", f"the database is a number (redis://host:port/0), got {db!r:.20}")
    return raw


def _ca_cert(r: TableReader, storage: str, base_dir: Path) -> str | None:
    raw = r.get("storage_ca_cert", str, None)
    if raw is None:
        return None
    path = str(base_dir / Path(raw).expanduser())  # a relative path reads from the config's directory
    if not storage.startswith("rediss:"):
        raise r.fail("storage_ca_cert", "only a rediss:// storage uses a CA certificate")
    try:
        ssl.create_default_context(cafile=path)  # loaded now, so a bad file fails the load, not a call
    except (OSError, ssl.SSLError) as exc:
        raise r.fail("storage_ca_cert", f"cannot load {path!r:.200} as PEM CA certificates: "
                                        f"{type(exc).__name__}") from None
    return path


def _password(r: TableReader, resolve_secret: Callable[[str], str] | None) -> str | None:
    ref_text = r.get("storage_password", str, None)
    if ref_text is None:
        return None
    try:
        parse_ref(ref_text)
    except SecretRefError as exc:
        # The message never echoes the text: it may be a pasted password.
        raise r.fail("storage_password", f"must be a secret reference, not a value: {exc}") from None
    if resolve_secret is None:
        raise r.fail("storage_password", "a secret reference needs the gateway's secret resolver")
    try:
        value = resolve_secret(ref_text)
    except SecretError as exc:
        raise r.fail("storage_password", f"cannot resolve: {exc}") from None
    except Exception as exc:  # a resolver bug must not leak a value through its message
        raise r.fail("storage_password", f"cannot resolve {ref_text}: {type(exc).__name__}") from None
    if not value:
        raise r.fail("storage_password", f"{ref_text} resolved to an empty value")
    return value


def _rate_pair(r: TableReader, default_rate: int | None) -> tuple[int | None, int | None]:
    rate = r.get("rate", int, default_rate)
    burst = r.get("burst", int, None)
    if rate is None:
        if burst is not None:
            raise r.fail("burst", "needs a rate")
        return None, None
    if not 1 <= rate <= MAX_RATE:
        raise r.fail("rate", f"must be between 1 and {MAX_RATE} requests per minute, got {rate}")
    if burst is None:
        burst = max(1, math.ceil(rate / 5))  # 100/min -> 20: a fifth of a minute's calls at once
    if not 1 <= burst <= rate:
        # A moving window cannot grant more at once than it grants per minute (see docs/limits.md).
        raise r.fail("burst", f"must be between 1 and rate ({rate}), got {burst}")
    return rate, burst


def _breaker(r: TableReader, base: BreakerSettings) -> BreakerSettings:
    out = replace(
        base,
        enabled=r.get("enabled", bool, base.enabled),
        window_seconds=r.number("window_seconds", base.window_seconds, 1, 86400),
        min_calls=r.integer("min_calls", base.min_calls, 1, 100_000),
        error_rate=r.number("error_rate", base.error_rate, 0, 1),
        p99_seconds=r.number("p99_seconds", base.p99_seconds, 0.001, 86400),
        open_seconds=r.number("open_seconds", base.open_seconds, 0.1, 86400),
        probe_timeout=r.number("probe_timeout", base.probe_timeout, 0.1, 86400),
    )
    r.reject_unknown()
    return out


def _tool_rule(r: TableReader, pattern: str, default_breaker: BreakerSettings) -> ToolRule:
    rate, burst = _rate_pair(r, None)
    budget = r.get("budget", int, None)
    if budget is not None and not 1 <= budget <= MAX_BUDGET:
        raise r.fail("budget", f"must be between 1 and {MAX_BUDGET}, got {budget}")
    cost = r.get("cost", int, None)
    if cost is not None:
        if budget is None:
            raise r.fail("cost", "a cost needs a budget to spend it from")
        if not 1 <= cost <= budget:
            raise r.fail("cost", f"must be between 1 and the budget ({budget}), got {cost}")
    period = r.get("period", str, "day")
    if period not in PERIODS:
        raise r.fail("period", f"must be one of {', '.join(PERIODS)}, got {period!r:.20}")
    per = r.get("per", str, "principal")
    if per not in ("principal", "gateway"):
        raise r.fail("per", f"must be 'principal' or 'gateway', got {per!r:.20}")
    if budget is None:
        for key in ("period", "per"):
            if key in r.table:
                raise r.fail(key, "only applies with a budget")
    breaker_table = r.get("breaker", dict, {})
    breaker = _breaker(TableReader(r.source, r.key("breaker"), breaker_table), default_breaker)
    r.reject_unknown()
    return ToolRule(pattern=pattern, regex=re.compile(translate(pattern)), rate=rate, burst=burst,
                    cost=cost or 1, budget=budget, period=period, per=per, breaker=breaker)

