"""`mcpward.toml`: loading and validation with errors that name file, key and problem."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

StartMode = Literal["eager", "lazy"]
SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
# A principal key as the gateway forms it (context.Principal.key): kind, a colon, the subject.
PRINCIPAL_KEY = re.compile(r"^(local-user|api-key|oauth):[^\x00-\x1f\x7f]{1,256}$")


class ConfigError(Exception):
    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source, self.key, self.problem = source, key, problem


ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")


@dataclass(slots=True)
class ToolOverride:
    """What the operator says about one tool; it wins over what the server claims."""

    annotations: dict[str, bool] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # extra risk labels the policy can use
    allow_pii: list[str] = field(default_factory=list)  # PII kinds this tool may return unredacted
    param_kinds: dict[str, str] = field(default_factory=dict)  # argument name -> url/path/command/code/text
    max_result_bytes: int | None = None


@dataclass(slots=True)
class PrincipalCredentials:
    """What one principal's own connection to a server adds to the server's settings
    ([servers.<name>.principals."<kind>:<subject>"])."""

    env: dict[str, str] = field(default_factory=dict)  # stdio servers
    headers: dict[str, str] = field(default_factory=dict)  # remote servers
    secrets: dict[str, Any] = field(default_factory=dict)  # stdio servers; read by sandbox/settings.py


@dataclass(slots=True)
class ServerConfig:
    name: str
    prefix: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    start: StartMode = "eager"
    timeout: float = 60.0
    max_in_flight: int = 32
    priority: int = 0
    max_sessions: int = 8
    allow_private: bool = False
    # Read by sandbox/settings.py: [servers.<name>.sandbox] and [servers.<name>.secrets].
    sandbox: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)
    # Operator overrides per upstream tool name ([servers.<name>.tools.<tool>]).
    tools: dict[str, ToolOverride] = field(default_factory=dict)
    # Per-principal credentials: when set, each listed principal gets its own connection with its
    # own credentials, and any other principal is refused (never handed someone else's).
    principals: dict[str, PrincipalCredentials] = field(default_factory=dict)
    principal: str | None = None  # on a config made by for_principal(): whose connection this is
    # With principals: a principal's connection unused this long (seconds) is stopped, and at most this
    # many live at once (gateway/principal_pool.py). Bounded so principals cannot pile up processes.
    principal_idle_timeout: float = 600.0
    max_principal_connections: int = 16

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    def for_principal(self, key: str) -> ServerConfig | None:
        """This server as one principal's own connection sees it, or None when the principal has no
        credentials here. Started on demand: a principal's process is not kept alive after a crash."""
        creds = self.principals.get(key)
        if creds is None:
            return None
        return replace(self, env={**self.env, **creds.env}, headers={**self.headers, **creds.headers},
                       principals={}, principal=key, start="lazy")


@dataclass(slots=True)
class GatewayConfig:
    source: str = "<defaults>"
    separator: str = "__"
    max_message_bytes: int = 4 * 1024 * 1024
    probe_timeout: float = 5.0
    http_host: str = "127.0.0.1"
    http_port: int = 8811
    http_path: str = "/mcp"
    allow_non_loopback: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    # Legacy HTTP sessions one principal may hold open (transport/http_sessions.py). Without [auth]
    # every local client is the one principal `anonymous`, so they all share this many.
    max_sessions_per_principal: int = 32
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    # Sections read by the modules that own them (policy/, guards/), each with a TableReader,
    # so every key is still checked and unknown keys are still refused.
    policy: dict[str, Any] = field(default_factory=dict)
    guards: dict[str, Any] = field(default_factory=dict)
    integrity: dict[str, Any] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, Any] | None = None  # auth/settings.py; None: no [auth] table (an empty one is an error there)
    limits: dict[str, Any] = field(default_factory=dict)  # limits/settings.py
    audit: dict[str, Any] = field(default_factory=dict)  # audit/settings.py
    telemetry: dict[str, Any] = field(default_factory=dict)  # telemetry/settings.py
    anomaly: dict[str, Any] = field(default_factory=dict)  # audit/anomaly.py
    interceptors: list[dict[str, Any]] = field(default_factory=list)
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths in the config resolve from here


class TableReader:
    """Typed access to one TOML table that reports precise, keyed errors."""

    def __init__(self, source: str, prefix: str, table: dict[str, Any]) -> None:
        self.source, self.prefix, self.table = source, prefix, table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(name, f"expected {_kind_names(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.fail(name, f"expected {_kind_names(kinds)}, got {type(value).__name__} {value!r:.40}")
        return value

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = float(self.get(name, (int, float), default))
        if not minimum <= value <= maximum:
            raise self.fail(name, f"must be between {minimum:g} and {maximum:g}, got {value:g}")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value: int = self.get(name, int, default)
        if not minimum <= value <= maximum:
            raise self.fail(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.get(name, list, [])
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{name}[{i}]", f"expected a string, got {type(item).__name__}")
        return list(value)

    def string_map(self, name: str) -> dict[str, str]:
        value = self.get(name, dict, {})
        for k, v in value.items():
            if not isinstance(v, str):
                raise self.fail(f"{name}.{k}", f"expected a string, got {type(v).__name__}")
        return dict(value)

    def reject_unknown(self) -> None:
        for name in self.table:
            if name not in self.seen:
                raise self.fail(name, "unknown key (check the spelling; see docs/configuration.md)")


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "an array", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load(path: str | Path) -> GatewayConfig:
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "", "the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return parse(data, source, Path(path).resolve().parent)


def parse(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> GatewayConfig:
    top = TableReader(source, "", data)
    gateway = TableReader(source, "gateway", top.get("gateway", dict, {}))
    servers_table: dict[str, Any] = top.get("servers", dict, {})
    cfg = GatewayConfig(source=source)
    cfg.policy = top.get("policy", dict, {})
    cfg.guards = top.get("guards", dict, {})
    cfg.integrity = top.get("integrity", dict, {})
    cfg.sandbox = top.get("sandbox", dict, {})
    cfg.secrets = top.get("secrets", dict, {})
    cfg.auth = top.get("auth", dict, None)
    cfg.limits = top.get("limits", dict, {})
    cfg.audit = top.get("audit", dict, {})
    cfg.telemetry = top.get("telemetry", dict, {})
    cfg.anomaly = top.get("anomaly", dict, {})
    interceptors = top.get("interceptors", list, [])
    for i, item in enumerate(interceptors):
        if not isinstance(item, dict):
            raise top.fail(f"interceptors[{i}]", "expected a table ([[interceptors]])")
    cfg.interceptors = list(interceptors)
    top.reject_unknown()
    if base_dir is not None:
        cfg.base_dir = base_dir

    cfg.separator = gateway.get("separator", str, cfg.separator)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,4}", cfg.separator):
        raise gateway.fail("separator", "must be 1-4 characters from [A-Za-z0-9_.-]")
    cfg.max_message_bytes = gateway.integer("max_message_bytes", cfg.max_message_bytes, 1024, 256 * 1024 * 1024)
    cfg.probe_timeout = gateway.number("probe_timeout", cfg.probe_timeout, 0.1, 120)
    cfg.http_host = gateway.get("host", str, cfg.http_host)
    cfg.http_port = gateway.integer("port", cfg.http_port, 0, 65535)
    cfg.http_path = gateway.get("path", str, cfg.http_path)
    if not cfg.http_path.startswith("/"):
        raise gateway.fail("path", "must start with '/'")
    cfg.allow_non_loopback = gateway.get("allow_non_loopback", bool, False)
    cfg.allowed_hosts = gateway.strings("allowed_hosts")
    cfg.allowed_origins = gateway.strings("allowed_origins")
    cfg.max_sessions_per_principal = gateway.integer("max_sessions_per_principal", cfg.max_sessions_per_principal,
                                                     1, 1000)  # 1000: the gateway-wide cap (http_sessions.py)
    default_start = gateway.get("start", str, "eager")
    if default_start not in ("eager", "lazy"):
        raise gateway.fail("start", f"must be 'eager' or 'lazy', got {default_start!r}")
    default_timeout = gateway.number("request_timeout", 60.0, 0.1, 86400)
    gateway.reject_unknown()

    for name, table in servers_table.items():
        if not SERVER_NAME.match(name):
            raise ConfigError(source, f"servers.{name}", "a server name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
        if not isinstance(table, dict):
            raise ConfigError(source, f"servers.{name}", "expected a table")
        cfg.servers[name] = _server(TableReader(source, f"servers.{name}", table), name, default_start, default_timeout,
                                    cfg.separator)
    return cfg


def _server(r: TableReader, name: str, default_start: str, default_timeout: float, separator: str) -> ServerConfig:
    server = ServerConfig(name=name, prefix=r.get("prefix", str, name))
    if server.prefix and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", server.prefix):
        raise r.fail("prefix", "must be empty or 1-64 characters from [A-Za-z0-9_.-]")
    server.command = r.get("command", str, None)
    server.url = r.get("url", str, None)
    if (server.command is None) == (server.url is None):
        raise r.fail("command", "set exactly one of 'command' (a stdio server) or 'url' (a remote HTTP server)")
    server.start = r.get("start", str, default_start)
    if server.start not in ("eager", "lazy"):
        raise r.fail("start", f"must be 'eager' or 'lazy', got {server.start!r}")
    server.timeout = r.number("timeout", default_timeout, 0.1, 86400)
    server.max_in_flight = r.integer("max_in_flight", 32, 1, 10000)
    server.max_sessions = r.integer("max_sessions", 8, 1, 1000)
    server.priority = r.integer("priority", 0, -1000, 1000)
    server.sandbox = r.get("sandbox", dict, {})
    server.secrets = r.get("secrets", dict, {})
    if server.command is not None:
        if not server.command.strip():
            raise r.fail("command", "must not be empty")
        server.args = r.strings("args")
        server.env = r.string_map("env")
        for key in server.env:
            if not ENV_NAME.match(key):
                raise r.fail(f"env.{key}", "not a valid environment variable name")
        _check_refs(r, "env", server.env)
        server.cwd = r.get("cwd", str, None)
        if server.cwd is not None and not Path(server.cwd).is_dir():
            raise r.fail("cwd", f"no such directory: {server.cwd}")
    else:
        server.headers = r.string_map("headers")
        _check_refs(r, "headers", server.headers)
        server.allow_private = r.get("allow_private", bool, False)
        check_url(r, server.url or "", allow_http=r.get("allow_http", bool, False), allow_private=server.allow_private)
    tools = r.get("tools", dict, {})
    for tool, table in tools.items():
        if not isinstance(table, dict):
            raise r.fail(f"tools.{tool}", "expected a table")
        head = f"{server.prefix}{separator}"
        if server.prefix and tool.startswith(head) and len(tool) > len(head):
            # Overrides match the upstream's own name: one filed under the exposed name would never
            # match, and the server's claims would stand (a lying readOnlyHint would win).
            raise r.fail(f"tools.{tool}", f"is the exposed name; overrides are keyed by the server's own "
                                          f"tool name: write [servers.{name}.tools.{tool[len(head):]}]")
        server.tools[tool] = _tool_override(TableReader(r.source, r.key(f"tools.{tool}"), table))
    for key, table in r.get("principals", dict, {}).items():
        server.principals[key] = _principal_credentials(r, server, key, table)
    server.principal_idle_timeout = r.number("principal_idle_timeout", server.principal_idle_timeout, 1, 86400)
    server.max_principal_connections = r.integer("max_principal_connections", server.max_principal_connections,
                                                  1, 1000)
    if server.principals:
        _no_shared_secrets(r, server)
    else:
        for key in ("principal_idle_timeout", "max_principal_connections"):
            if key in r.table:  # a setting that could never apply is a mistake worth naming
                raise r.fail(key, "applies only to a server with per-principal credentials (principals)")
    r.reject_unknown()
    return server


def _principal_credentials(r: TableReader, server: ServerConfig, key: str, table: Any) -> PrincipalCredentials:
    name = f'principals."{key}"'
    if not PRINCIPAL_KEY.match(key):
        raise r.fail(name, "expected a principal such as \"api-key:ci\", \"oauth:alice\" or \"local-user:alice\"")
    if not isinstance(table, dict):
        raise r.fail(name, "expected a table with the principal's own env and secrets (stdio) or headers (remote)")
    p = TableReader(r.source, r.key(name), table)
    creds = PrincipalCredentials()
    if server.command is not None:
        creds.env = p.string_map("env")
        for var in creds.env:
            if not ENV_NAME.match(var):
                raise p.fail(f"env.{var}", "not a valid environment variable name")
        _check_refs(p, "env", creds.env)
        creds.secrets = p.get("secrets", dict, {})
        if "headers" in table:
            raise p.fail("headers", "headers are for remote (url) servers; a stdio server takes env and secrets")
    else:
        creds.headers = p.string_map("headers")
        _check_refs(p, "headers", creds.headers)
        for field_name in ("env", "secrets"):
            if field_name in table:
                raise p.fail(field_name, "a remote (url) server takes headers; env and secrets are for stdio servers")
    p.reject_unknown()
    return creds


def _check_refs(r: TableReader, table_name: str, values: dict[str, str]) -> None:
    """Every `${...}` in these values is a valid secret reference: a bad one is a load error naming the
    key, not a traceback at the server's first start (and `mcpward check`/`doctor` see it too)."""
    from mcpward.secrets.refs import SecretRefError, find_refs

    for var, text in values.items():
        try:
            find_refs(text)
        except SecretRefError as exc:
            raise r.fail(f"{table_name}.{var}", str(exc)) from None


def _no_shared_secrets(r: TableReader, server: ServerConfig) -> None:
    """With per-principal credentials, a secret in the server's own settings would reach every
    principal's connection: it is refused, so no credential is shared by accident."""
    from mcpward.secrets.refs import has_refs

    why = "with per-principal credentials, secrets go in each principals table (here every principal would share it)"
    if server.secrets:
        raise r.fail("secrets", why)
    for table_name, values in (("env", server.env), ("headers", server.headers)):
        for var, text in values.items():
            if has_refs(text):
                raise r.fail(f"{table_name}.{var}", why)


PARAM_KINDS = ("url", "host", "path", "command", "code", "text", "content")  # guards/arg_types.py KINDS


def _tool_override(r: TableReader) -> ToolOverride:
    out = ToolOverride()
    annotations = r.get("annotations", dict, {})
    for key, value in annotations.items():
        if key not in ANNOTATION_HINTS:
            raise r.fail(f"annotations.{key}", f"unknown annotation; expected one of {', '.join(ANNOTATION_HINTS)}")
        if not isinstance(value, bool):
            raise r.fail(f"annotations.{key}", "expected true or false")
    out.annotations = dict(annotations)
    out.labels = r.strings("labels")
    out.allow_pii = r.strings("allow_pii")
    out.param_kinds = r.string_map("params")
    for name, kind in out.param_kinds.items():
        if kind not in PARAM_KINDS:
            raise r.fail(f"params.{name}", f"unknown parameter kind {kind!r}; expected one of {', '.join(PARAM_KINDS)}")
    if "max_result_bytes" in r.table:
        out.max_result_bytes = r.integer("max_result_bytes", 0, 256, 64 * 1024 * 1024)
    r.reject_unknown()
    return out


def check_url(r: TableReader, url: str, *, allow_http: bool, allow_private: bool,
              loopback_ok: bool = False) -> None:
    """A remote endpoint the operator named (an upstream server, an http interceptor).

    `loopback_ok`: the endpoint may be on this machine (plain http and a loopback address
    allowed without opting in), as a local hook is; an upstream server must opt in instead.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise r.fail("url", f"scheme must be https, got {parts.scheme or 'none'!r}")
    host = (parts.hostname or "").lower()
    local = loopback_ok and is_loopback_host(host)
    if parts.scheme == "http" and not allow_http and not local:
        if loopback_ok:
            raise r.fail("url", "plain http is allowed only to a loopback address; use https or set allow_http = true")
        raise r.fail("url", "plain http is refused; use https or set allow_http = true for a trusted local server")
    if parts.username or parts.password:
        raise r.fail("url", "credentials in the URL are refused; use headers with a secret reference")
    if not host:
        raise r.fail("url", "no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise r.fail("url", str(exc)) from None
    if not allow_private and not local and _is_non_public(host):
        raise r.fail("url", f"{host} is a loopback/private/link-local address; set allow_private = true to allow it")


def is_loopback_host(host: str) -> bool:
    """`localhost` names and loopback addresses, IPv4-mapped ones included."""
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_address_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolution_problem(host: str, port: int, resolver: Resolver = system_resolver) -> str | None:
    """Why a named endpoint must not be dialled (it does not resolve, or resolves to a non-public
    address), or None. Checked before connecting to an upstream or an http interceptor."""
    try:
        addresses = await resolver(host, port)
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    for address in addresses:
        if is_non_public_address(address):
            return f"{host} resolves to the non-public address {address}; set allow_private = true to allow it"
    return None


def is_non_public_address(address: str) -> bool:
    # The egress proxy's test, which the connection itself applies too (transport/vetted_dial.py): so
    # the config check, the probe check and the connect agree (IPv4 inside NAT64, 6to4 and Teredo forms,
    # metadata addresses that are globally routable).
    from mcpward.sandbox.egress_policy import classify_address

    return classify_address(ipaddress.ip_address(address.split("%")[0]))[0] is not None


def _is_non_public(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost") or host.endswith(".internal"):
        return True
    try:
        return is_non_public_address(host.strip("[]"))
    except ValueError:
        # A name: it is resolved and its addresses checked before the gateway connects.
        return False
