"""The `[sandbox]` table and each server's `[servers.<name>.sandbox]` and `[servers.<name>.secrets]`.

Everything is checked at load, with errors that name the key: a sandbox that silently lost a
limit or a secret that silently became empty is worse than a server that does not start.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcpward.gateway.config import ConfigError, GatewayConfig, ServerConfig, TableReader
from mcpward.sandbox.egress_policy import EgressPolicy, parse_policy

Backend = Literal["auto", "bwrap", "docker", "podman", "none"]
BACKENDS = ("auto", "bwrap", "docker", "podman", "none")
SecretDelivery = Literal["file", "env"]
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Where the dedicated per-server uids of a root gateway come from: above the ranges distributions
# hand to people and system services, below the 2^31 some tools mishandle.
DEFAULT_UID_BASE = 610000
UID_SPAN = 50000


@dataclass(frozen=True, slots=True)
class Limits:
    memory: int | None = 1 << 30  # bytes; a cgroup limit, or 4x as RLIMIT_AS when no cgroup is writable
    pids: int | None = 256
    cpu: float | None = None  # cores; None = no CPU quota (a quota adds latency to every call)
    nofile: int = 1024
    file_size: int | None = 1 << 30
    tmp_size: int = 128 << 20  # the sandbox's /tmp (tmpfs): charged to memory, capped here


@dataclass(frozen=True, slots=True)
class Egress:
    """A server's egress allowlist, parsed and checked once, at load; each start serves this policy."""

    policy: EgressPolicy = field(default_factory=EgressPolicy)

    @property
    def allow(self) -> tuple[str, ...]:
        return self.policy.allow

    @property
    def enabled(self) -> bool:
        return bool(self.policy.allow)


@dataclass(frozen=True, slots=True)
class SecretDecl:
    """One secret a server declares: where its value comes from and how the server gets it."""

    name: str
    ref: str  # the reference text (`secret:NAME`, `env:NAME`, `file:PATH`, `vault:PATH#KEY`)
    deliver: SecretDelivery = "file"


@dataclass(frozen=True, slots=True)
class SandboxProfile:
    backend: Backend = "auto"
    acknowledge_unsandboxed: bool = False
    image: str | None = None  # docker/podman
    ro: tuple[Path, ...] = ()
    rw: tuple[Path, ...] = ()
    auto_bind: bool = True  # bind the command's install root and each script argument's directory read-only
    cache: bool = True  # a persistent per-server package cache (npm, uv, pip) bound read-write at /cache
    run_as: int | None = None  # uid when the gateway runs as root
    limits: Limits = field(default_factory=Limits)
    egress: Egress = field(default_factory=Egress)
    secrets: tuple[SecretDecl, ...] = ()
    # Per-principal credentials: principal key -> what that principal's own process gets.
    principal_secrets: dict[str, tuple[SecretDecl, ...]] = field(default_factory=dict)
    verify: dict[str, str] = field(default_factory=dict)  # path -> "sha256:<hex>", checked before each start


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """Gateway-wide: the default backend, strict mode, where per-server state lives."""

    backend: Backend = "auto"
    strict: bool = False  # refuse `backend = "none"` outright
    state_dir: Path = field(default_factory=lambda: Path("~/.local/state/mcpward").expanduser())
    uid_base: int = DEFAULT_UID_BASE
    profiles: dict[str, SandboxProfile] = field(default_factory=dict)
    warm: bool = True  # keep a warm slot (cgroups plus a stub inside them) per server after its first start

    def profile(self, server: str) -> SandboxProfile:
        return self.profiles.get(server) or SandboxProfile(backend=self.backend)

    def cache_dir(self, server: str) -> Path:
        return self.state_dir / "cache" / server

    def uid_for(self, server: str) -> int:
        """A stable uid per server: its caches keep their owner across restarts and config edits."""
        explicit = self.profile(server).run_as
        if explicit is not None:
            return explicit
        return self.uid_base + zlib.crc32(server.encode()) % UID_SPAN


def parse_size(r: TableReader, key: str, default: int | None) -> int | None:
    raw = r.get(key, (int, str), default)
    if raw is None or isinstance(raw, int):
        if isinstance(raw, int) and raw <= 0:
            raise r.fail(key, "must be positive")
        return raw
    m = _SIZE.match(raw)
    if not m:
        raise r.fail(key, f"not a size: {raw!r} (use bytes or a suffix: 64M, 1G)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise r.fail(key, "must be positive")
    return value


def read_settings(cfg: GatewayConfig) -> SandboxSettings:
    r = TableReader(cfg.source, "sandbox", cfg.sandbox)
    backend = _backend(r, "auto")
    strict = r.get("strict", bool, False)
    state_dir = _path(cfg.base_dir, r.get("state_dir", str, "~/.local/state/mcpward"))
    uid_base = r.integer("uid_base", DEFAULT_UID_BASE, 1000, (1 << 31) - UID_SPAN - 1)
    warm = r.get("warm", bool, True)
    r.reject_unknown()
    profiles: dict[str, SandboxProfile] = {}
    for name, server in cfg.servers.items():
        if server.transport != "stdio":
            if server.sandbox:
                raise ConfigError(cfg.source, f"servers.{name}.sandbox",
                                  "only stdio servers run sandboxed; a remote server is reached over HTTP")
            continue
        profile = _profile(cfg, server, backend)
        if profile.backend == "none" and strict:
            raise ConfigError(cfg.source, f"servers.{name}.sandbox.backend",
                              "backend 'none' is refused: [sandbox] strict = true")
        profiles[name] = profile
    settings = SandboxSettings(backend=backend, strict=strict, state_dir=state_dir, uid_base=uid_base,
                               profiles=profiles, warm=warm)
    _check_uids(cfg, settings)
    return settings


def _check_uids(cfg: GatewayConfig, settings: SandboxSettings) -> None:
    """Two servers never share a uid: a shared uid could read the other's caches and signal it."""
    owners: dict[int, str] = {}
    for name in sorted(settings.profiles):
        uid = settings.uid_for(name)
        if uid in owners:
            raise ConfigError(cfg.source, f"servers.{name}.sandbox.run_as",
                              f"uid {uid} is also server {owners[uid]!r}'s; set run_as to a distinct uid")
        owners[uid] = name


def _backend(r: TableReader, default: str) -> Backend:
    backend = r.get("backend", str, default)
    if backend not in BACKENDS:
        raise r.fail("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    out: Backend = backend
    return out


def _path(base_dir: Path, raw: str) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else base_dir / p


def _profile(cfg: GatewayConfig, server: ServerConfig, default_backend: str) -> SandboxProfile:
    r = TableReader(cfg.source, f"servers.{server.name}.sandbox", server.sandbox)
    backend = _backend(r, default_backend)
    acknowledge = r.get("acknowledge_unsandboxed", bool, False)
    if backend == "none" and not acknowledge:
        raise r.fail("backend", "backend 'none' runs the server on the host with the gateway's rights; "
                                "set acknowledge_unsandboxed = true to accept that")
    image = r.get("image", str, None)
    if backend in ("docker", "podman") and not image:
        raise r.fail("image", f"backend {backend!r} needs an image (a local tag)")
    ro = tuple(_path(cfg.base_dir, p) for p in r.strings("ro"))
    rw = tuple(_path(cfg.base_dir, p) for p in r.strings("rw"))
    run_as = r.get("run_as", int, None)
    if run_as is not None and not 1000 <= run_as < (1 << 31):
        raise r.fail("run_as", "must be an unprivileged uid (1000 or more)")
    limits = _limits(TableReader(cfg.source, r.key("limits"), r.get("limits", dict, {})))
    egress = _egress(TableReader(cfg.source, r.key("egress"), r.get("egress", dict, {})))
    if egress.enabled and backend in ("docker", "podman"):
        raise r.fail("egress", f"egress through the proxy needs the bwrap backend; {backend} runs with no network")
    verify = r.string_map("verify")
    for path, pin in verify.items():
        if not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", pin):
            raise r.fail(f"verify.{path}", "expected \"sha256:<64 hex digits>\"")
    profile = SandboxProfile(
        verify=verify, backend=backend, acknowledge_unsandboxed=acknowledge, image=image, ro=ro, rw=rw,
        auto_bind=r.get("auto_bind", bool, True), cache=r.get("cache", bool, True), run_as=run_as,
        limits=limits, egress=egress,
        secrets=_secrets(cfg, f"servers.{server.name}.secrets", server.secrets, server.env),
        principal_secrets={
            key: _secrets(cfg, f'servers.{server.name}.principals."{key}".secrets', creds.secrets,
                          {**server.env, **creds.env})
            for key, creds in server.principals.items()},
    )
    r.reject_unknown()
    return profile


def _limits(r: TableReader) -> Limits:
    d = Limits()
    cpu = r.get("cpu", (int, float), None)
    if cpu is not None and not 0.01 <= cpu <= 1024:
        raise r.fail("cpu", "must be between 0.01 and 1024 cores")
    pids = r.get("pids", int, d.pids)
    if pids is not None and not 8 <= pids <= 1_000_000:
        raise r.fail("pids", "must be between 8 and 1000000")
    limits = Limits(
        memory=parse_size(r, "memory", d.memory), pids=pids, cpu=cpu,
        nofile=r.integer("nofile", d.nofile, 64, 1 << 20),
        file_size=parse_size(r, "file_size", d.file_size),
        tmp_size=parse_size(r, "tmp_size", d.tmp_size) or d.tmp_size,
    )
    if limits.memory is not None and limits.memory < 16 << 20:
        raise r.fail("memory", "must be at least 16M")
    r.reject_unknown()
    return limits


def _egress(r: TableReader) -> Egress:
    allow, private = r.strings("allow"), r.strings("allow_private")
    resolve_raw = r.get("resolve", dict, {})
    resolve: dict[str, list[str]] = {}
    for name, value in resolve_raw.items():
        addresses = [value] if isinstance(value, str) else value
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses) or not addresses:
            raise r.fail(f"resolve.{name}", "expected an address or a list of addresses")
        resolve[name] = list(addresses)
    try:
        policy = parse_policy(allow, private, resolve)
    except ValueError as exc:
        raise r.fail("allow", str(exc)) from None
    r.reject_unknown()
    return Egress(policy)


def _secrets(cfg: GatewayConfig, prefix: str, table: dict[str, Any], env: dict[str, str]) -> tuple[SecretDecl, ...]:
    """The secrets declared in `table` (at `prefix` in the config) for a process whose env is `env`."""
    from mcpward.secrets.refs import SecretRefError, parse_ref

    out: list[SecretDecl] = []
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if not SECRET_NAME.match(name):
            raise ConfigError(cfg.source, key, "a secret name must match [A-Za-z_][A-Za-z0-9_]{0,127}")
        if isinstance(value, str):
            ref, deliver = value, "file"
        elif isinstance(value, dict):
            r = TableReader(cfg.source, key, value)
            ref = r.get("from", str, "")
            deliver = r.get("as", str, "file")
            r.reject_unknown()
            if deliver not in ("file", "env"):
                raise r.fail("as", f"must be 'file' or 'env', got {deliver!r}")
        else:
            raise ConfigError(cfg.source, key, "expected a reference such as \"secret:NAME\" or a table {from, as}")
        try:
            parse_ref(ref)
        except SecretRefError as exc:
            raise ConfigError(cfg.source, key, str(exc)) from None
        if name in env:
            raise ConfigError(cfg.source, key, f"also set in env; a secret is declared once (env.{name})")
        out.append(SecretDecl(name=name, ref=ref, deliver=deliver))  # type: ignore[arg-type]
    return tuple(out)


def describe_profile(profile: SandboxProfile) -> dict[str, Any]:
    """What a server is declared to get, for `mcpward doctor` and `mcpward check` (no secret values)."""
    lim = profile.limits
    return {
        "backend": profile.backend,
        "network": "egress proxy: " + ", ".join(profile.egress.allow) if profile.egress.enabled else "none",
        "read_only": [str(p) for p in profile.ro],
        "read_write": [str(p) for p in profile.rw],
        "package_cache": profile.cache,
        "limits": {"memory": lim.memory, "pids": lim.pids, "cpu": lim.cpu, "nofile": lim.nofile,
                   "file_size": lim.file_size, "tmp_size": lim.tmp_size},
        "secrets": {s.name: f"{s.ref} as {s.deliver}" for s in profile.secrets},
        **({"principal_secrets": {key: {s.name: f"{s.ref} as {s.deliver}" for s in decls}
                                  for key, decls in profile.principal_secrets.items()}}
           if profile.principal_secrets else {}),
    }
