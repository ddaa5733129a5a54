"""A server's sandbox, worked out before anything runs: binds, environment, secret files, uid, limits.

Backends turn a plan into a process; the plan itself is pure data, so `mcpward doctor` can show
it and tests can check it without spawning anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mcpward.sandbox.paths import Bind, BindRefused, auto_binds, checked_bind, install_root, resolve_command
from mcpward.sandbox.settings import Limits, SandboxProfile, SandboxSettings

SANDBOX_HOME = "/tmp/home"
SECRETS_DIR = "/run/secrets"
CACHE_DIR = "/cache"
PROXY_URL = "http://127.0.0.1:3128"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "GRPC_PROXY")
# Package managers keep their caches in the per-server cache, so `npx`/`uvx` installs happen in
# the sandbox and survive restarts, and never touch the host's own caches.
CACHE_ENV = {
    "npm_config_cache": f"{CACHE_DIR}/npm", "npm_config_update_notifier": "false",
    "UV_CACHE_DIR": f"{CACHE_DIR}/uv", "UV_TOOL_DIR": f"{CACHE_DIR}/uv-tools",
    "PIP_CACHE_DIR": f"{CACHE_DIR}/pip", "XDG_CACHE_HOME": f"{CACHE_DIR}/xdg",
}


class PlanError(ValueError):
    """The server cannot be sandboxed as declared; the message names the server and the problem."""


@dataclass(slots=True)
class SandboxPlan:
    server: str
    argv: list[str]
    env: dict[str, str]  # the server's whole environment, built from scratch
    files: dict[str, bytes] = field(default_factory=dict)  # secret name -> value, at /run/secrets/NAME
    binds: list[Bind] = field(default_factory=list)
    cwd: str = SANDBOX_HOME
    uid: int | None = None  # set when the gateway is root: the server runs as this uid, never as root
    limits: Limits = field(default_factory=Limits)
    cache_dir: Path | None = None
    egress: bool = False


def make_plan(server: str, command: str, args: list[str], env: dict[str, str], cwd: str | None,
              profile: SandboxProfile, settings: SandboxSettings, *, sensitive: list[Path]) -> SandboxPlan:
    """Everything but secret values (the launcher adds those at each start)."""
    # A bare name is looked up on the gateway's PATH, as a plain spawn would; a path is used as given.
    exe = resolve_command(command, os.environ.get("PATH", SYSTEM_PATH))
    if exe is None or not exe.is_file():
        raise PlanError(f"cannot start server {server!r}: No such file or directory: {command}")
    if cwd is not None and "\0" in cwd:
        raise PlanError(f"server {server!r}: its cwd cannot contain a NUL byte")
    wanted = [Bind(path, False, "declared") for path in profile.ro]
    wanted += [Bind(path, True, "declared") for path in profile.rw]
    if profile.auto_bind:
        wanted += auto_binds(str(exe), args, cwd, SYSTEM_PATH)
    binds = _checked(server, wanted, sensitive)
    uid = settings.uid_for(server) if os.geteuid() == 0 else None
    cache_dir = settings.cache_dir(server) if profile.cache else None
    path_dirs = [str(exe.parent)] if install_root(exe) is not None else []
    base_env = {
        "PATH": ":".join([*path_dirs, SYSTEM_PATH]), "HOME": SANDBOX_HOME, "TMPDIR": "/tmp",
        "USER": "sandbox", "LOGNAME": "sandbox", "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    if cache_dir is not None:
        base_env.update(CACHE_ENV)
    if profile.egress.enabled:
        for var in PROXY_VARS:
            base_env[var] = base_env[var.lower()] = PROXY_URL
        base_env["NO_PROXY"] = base_env["no_proxy"] = ""
        base_env["NODE_USE_ENV_PROXY"] = "1"  # Node >= 22.21 and 24: fetch() and http honour the proxy
    base_env.update(env)
    return SandboxPlan(server=server, argv=[str(exe), *args], env=base_env, binds=_dedupe(binds),
                       cwd=str(Path(cwd).resolve()) if cwd else SANDBOX_HOME, uid=uid,
                       limits=profile.limits, cache_dir=cache_dir, egress=profile.egress.enabled)


def _checked(server: str, wanted: list[Bind], sensitive: list[Path]) -> list[Bind]:
    """Each bind checked, with the identity of what was checked. A command's install root is not
    searched for sockets (a runtime's tree, thousands of files, every start); every other directory
    is (declared ones, a script's directory, the cwd)."""
    # The same directory often comes twice (script dir and cwd).
    done: dict[tuple[Path, bool], tuple[Path, tuple[int, int]]] = {}
    out = []
    for want in wanted:
        scan = want.why != "command"
        try:
            seen = done.get((want.path, scan))
            if seen is None:
                seen = done[(want.path, scan)] = checked_bind(want.path, sensitive, scan=scan)
        except BindRefused as exc:
            raise PlanError(f"server {server!r}: refused to bind {exc}") from None
        real, ident = seen
        out.append(Bind(real, want.writable, want.why, ident))
    return out


def _dedupe(binds: list[Bind]) -> list[Bind]:
    """One bind per path (read-write wins), parents before children so nested binds stack."""
    best: dict[Path, Bind] = {}
    for bind in binds:
        old = best.get(bind.path)
        if old is None or (bind.writable and not old.writable):
            best[bind.path] = bind
    return sorted(best.values(), key=lambda b: (len(b.path.parts), str(b.path)))
