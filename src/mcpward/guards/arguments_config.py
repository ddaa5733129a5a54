"""`[guards.arguments]`: the argument guard's settings, read and checked at startup."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from mcpward.gateway.config import ConfigError, GatewayConfig, TableReader
from mcpward.guards.arg_types import Kind
from mcpward.guards.path_screen import load_patterns, normalise_root

MODES = ("block", "log")
FAMILIES = ("schema", "limit", "unicode", "backticks", "url", "path", "command", "code")


@dataclass(slots=True)
class ServerArguments:
    roots: tuple[str, ...] | None = None  # None: the global roots apply
    allow_private_urls: bool | None = None


@dataclass(slots=True)
class ArgumentSettings:
    mode: str = "block"
    modes: dict[str, str] = field(default_factory=dict)  # family -> mode
    max_string: int = 8192
    # Content-kind parameters (file and message bodies) only; still bounded by max_total. 128 KiB: a
    # large source file or document, well under the total so one body cannot be the whole request.
    max_content: int = 131072
    max_items: int = 1000
    max_depth: int = 15
    max_total: int = 262144
    max_schema_bytes: int = 262144
    additional_properties: str = "allow"
    allow_private_urls: bool = False
    # data: is inline content, not a fetch: no address to steer, so it is not an SSRF vector.
    url_schemes: tuple[str, ...] = ("http", "https", "data")
    resolve_timeout: float = 2.0
    dns_cache_seconds: float = 30.0
    resolver_map: dict[str, list[str]] | None = None  # replaces DNS entirely when set
    roots: tuple[str, ...] = ()
    sensitive_patterns: list[str] | None = None  # None: the built-in list
    shell_chaining: bool = True
    max_backtick_run: int = 3
    servers: dict[str, ServerArguments] = field(default_factory=dict)
    # (server, upstream tool) -> argument name or dotted path -> kind, from [servers.<s>.tools.<t>] params.
    param_kinds: dict[tuple[str, str], dict[str, Kind]] = field(default_factory=dict)

    @property
    def content_limit(self) -> int:
        """Bytes a content-kind string may have: never less than what every string may have."""
        return max(self.max_string, self.max_content)

    def mode_for(self, family: str) -> str:
        return self.modes.get(family, self.mode)

    def roots_for(self, server: str | None) -> tuple[str, ...]:
        own = self.servers.get(server or "")
        return own.roots if own is not None and own.roots is not None else self.roots

    def allow_private_for(self, server: str | None) -> bool:
        own = self.servers.get(server or "")
        if own is not None and own.allow_private_urls is not None:
            return own.allow_private_urls
        return self.allow_private_urls


def _choice(r: TableReader, name: str, default: str, choices: tuple[str, ...]) -> str:
    value: str = r.get(name, str, default)
    if value not in choices:
        raise r.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _roots(r: TableReader) -> tuple[str, ...]:
    out = []
    for i, root in enumerate(r.strings("roots")):
        if not root.startswith("/") and not (len(root) > 2 and root[1] == ":"):
            raise r.fail(f"roots[{i}]", f"must be an absolute path, got {root!r}")
        out.append(normalise_root(root))
    return tuple(out)


def parse(cfg: GatewayConfig) -> ArgumentSettings | None:
    """The settings, or None when `enabled = false`. Raises ConfigError with the key at fault."""
    r = TableReader(cfg.source, "guards.arguments", cfg.guards.get("arguments") or {})
    if not isinstance(r.table, dict):
        raise ConfigError(cfg.source, "guards.arguments", "expected a table")
    if not r.get("enabled", bool, True):
        r.seen.update(r.table)  # the rest is irrelevant when off
        return None
    s = ArgumentSettings()
    s.mode = _choice(r, "mode", "block", MODES)
    modes = r.string_map("modes")
    for family, mode in modes.items():
        if family not in FAMILIES:
            raise r.fail(f"modes.{family}", f"unknown check family; expected one of {', '.join(FAMILIES)}")
        if mode not in MODES:
            raise r.fail(f"modes.{family}", f"must be one of {', '.join(MODES)}, got {mode!r}")
    s.modes = modes
    s.max_string = r.integer("max_string", s.max_string, 1, 64 * 1024 * 1024)
    s.max_content = r.integer("max_content", s.max_content, 1, 256 * 1024 * 1024)
    s.max_items = r.integer("max_items", s.max_items, 1, 10_000_000)
    s.max_depth = r.integer("max_depth", s.max_depth, 1, 200)
    s.max_total = r.integer("max_total", s.max_total, 16, 256 * 1024 * 1024)
    s.max_schema_bytes = r.integer("max_schema_bytes", s.max_schema_bytes, 256, 64 * 1024 * 1024)
    s.additional_properties = _choice(r, "additional_properties", "allow", ("allow", "deny"))
    s.allow_private_urls = r.get("allow_private_urls", bool, False)
    schemes = r.strings("url_schemes") if "url_schemes" in r.table else list(s.url_schemes)
    if not schemes:
        raise r.fail("url_schemes", "must name at least one scheme")
    s.url_schemes = tuple(x.lower().rstrip(":") for x in schemes)
    s.resolve_timeout = r.number("resolve_timeout", s.resolve_timeout, 0.05, 60)
    s.dns_cache_seconds = r.number("dns_cache_seconds", s.dns_cache_seconds, 0, 3600)
    s.resolver_map = _resolver_map(r) if "resolver_map" in r.table else None
    s.roots = _roots(r)
    s.shell_chaining = r.get("shell_chaining", bool, True)
    s.max_backtick_run = r.integer("max_backtick_run", 3, 1, 1000)
    sensitive = r.get("sensitive_paths_file", str, None)
    if sensitive is not None:
        path = (cfg.base_dir / sensitive) if not Path(sensitive).is_absolute() else Path(sensitive)
        try:
            s.sensitive_patterns = load_patterns(path.read_text("utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as exc:
            raise r.fail("sensitive_paths_file", f"cannot read {path}: {exc}") from None
    servers = r.get("servers", dict, {})
    for name, table in servers.items():
        if name not in cfg.servers:
            raise r.fail(f"servers.{name}", "no such server in [servers]")
        if not isinstance(table, dict):
            raise r.fail(f"servers.{name}", "expected a table")
        sr = TableReader(cfg.source, r.key(f"servers.{name}"), table)
        own = ServerArguments()
        if "roots" in table:
            own.roots = _roots(sr)
        if "allow_private_urls" in table:
            own.allow_private_urls = sr.get("allow_private_urls", bool, False)
        sr.reject_unknown()
        s.servers[name] = own
    r.reject_unknown()
    for server in cfg.servers.values():
        for tool, override in server.tools.items():
            if override.param_kinds:
                s.param_kinds[(server.name, tool)] = dict(override.param_kinds)  # type: ignore[arg-type]
    return s


def _resolver_map(r: TableReader) -> dict[str, list[str]]:
    table = r.get("resolver_map", dict, {})
    out: dict[str, list[str]] = {}
    for name, value in table.items():
        addresses = [value] if isinstance(value, str) else value
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
            raise r.fail(f"resolver_map.{name}", "expected an address or a list of addresses")
        for address in addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise r.fail(f"resolver_map.{name}", f"{address!r} is not an IP address") from None
        out[name.lower().rstrip(".")] = list(addresses)
    return out
