"""From a server's config to a running, isolated process (or a remote link), with its secrets.

One launcher per gateway. For each start it resolves the secrets the server declares (a secret
that cannot be resolved stops that server, naming it; never an empty value), registers every
value with the redactor, picks the backend, and wires the barrier work: cgroups and the egress
proxy listener. Each start and refusal is audited.

After a sandboxed server's first start, the launcher keeps one warm slot ready for its next one
(sandbox/warm.py: cgroups created and a launcher stub already inside them), so a restart or a
new session's process pays no cgroup set-up on its spawn path. `[sandbox] warm = false` turns
this off; `aclose()` discards idle slots.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcpward.audit import events
from mcpward.gateway.config import GatewayConfig, ServerConfig
from mcpward.sandbox import probe, rlimits
from mcpward.sandbox.backends import choose_backend, unsandboxed_spawner
from mcpward.sandbox.paths import sensitive_paths
from mcpward.sandbox.plan import PlanError, SandboxPlan, make_plan
from mcpward.sandbox.settings import SandboxProfile, SandboxSettings, read_settings
from mcpward.sandbox.warm import SlotKey, WarmPool
from mcpward.transport.base import LinkError, MessageLink
from mcpward.transport.stdio_link import Spawner, StdioLink

if TYPE_CHECKING:
    from mcpward.sandbox.egress_policy import EgressDecision, Resolver
    from mcpward.secrets import SecretResolver
    from mcpward.secrets.settings import SecretSettings

log = logging.getLogger("mcpward.sandbox")


class Launcher:
    def __init__(self, cfg: GatewayConfig, on_secret_values: Callable[[list[str]], Any] = lambda _v: None) -> None:
        """Raises ConfigError for a bad [sandbox], [secrets] or per-server table."""
        from mcpward.secrets import load_settings

        self.cfg = cfg
        self.settings: SandboxSettings = read_settings(cfg)
        self.secret_settings = load_settings(cfg.secrets, cfg.source, cfg.base_dir)
        self.on_secret_values = on_secret_values
        self._secrets: SecretResolver | None = None
        self._dns: Resolver | None = None
        self.sensitive = sensitive_paths((self.settings.state_dir, self.secret_settings.path,
                                          *gateway_files(cfg, self.secret_settings)))
        self._short_warned: set[tuple[str, str]] = set()  # (server, reference) already warned about
        self.warm: WarmPool | None = WarmPool() if self.settings.warm else None
        self._swept = False  # the groups a killed gateway left behind: removed before the first sandbox

    async def aclose(self) -> None:
        """Discard the idle warm slots (their stubs and cgroups); starts after this take the cold path."""
        if self.warm is not None:
            pool, self.warm = self.warm, None
            await pool.close()

    def plan(self, server: ServerConfig, env: dict[str, str] | None = None) -> SandboxPlan:
        """The server's sandbox as a start would build it (PlanError when it cannot be sandboxed);
        `env`: its environment with secret references already resolved (default: as configured)."""
        assert server.command is not None
        return make_plan(server.name, server.command, server.args, server.env if env is None else env,
                         server.cwd, self.settings.profile(server.name), self.settings, sensitive=self.sensitive)

    # ------------------------------------------------------------------ secrets
    @property
    def secrets(self) -> SecretResolver:
        if self._secrets is None:
            from mcpward.secrets import SecretResolver

            # Told every value it resolves, the Vault token included, with the credential after an auth scheme
            # ("Bearer abc" -> also "abc"), as the gateway's own resolver is: all of them reach the redactor.
            self._secrets = SecretResolver(self.secret_settings,
                                           on_values=lambda values: self.on_secret_values(list(values)))
        return self._secrets

    async def _resolve(self, server: ServerConfig, texts: dict[str, str], declared: dict[str, str],
                       table: str = "env") -> tuple[dict[str, str], dict[str, str]]:
        """(texts with `${ref}` replaced, declared NAME -> value); LinkError names server and secret.
        `table`: what `texts` is in the config ("env" or "headers"), for the error."""
        from mcpward.secrets.refs import SecretError, SecretRefError, find_refs, interpolate, parse_ref

        def work() -> tuple[dict[str, str], dict[str, str]]:
            values: dict[Any, str] = {}
            where = ""
            try:
                out_decl = {}
                for name, ref_text in declared.items():
                    where = f"secrets.{name}"
                    ref = parse_ref(ref_text)
                    out_decl[name] = values.setdefault(ref, self.secrets.resolve(ref))
                out_texts = {}
                for key, text in texts.items():
                    where = f"{table}.{key}"
                    refs = find_refs(text)
                    for ref in refs:
                        if ref not in values:
                            values[ref] = self.secrets.resolve(ref)
                    # Always: `$${` is a literal `${` in a value without references too.
                    out_texts[key] = interpolate(text, values)
            except SecretError as exc:
                events.record("sandbox.secret-unresolved", server=server.name, ref=str(exc.ref), reason=exc.reason,
                              **_whose(server))
                raise LinkError(f"server {server.name!r} not started: secret {exc}") from None
            except SecretRefError as exc:
                # Config loading checks references; this is the backstop for configs built in code.
                events.record("sandbox.refused", server=server.name, rule="secrets.bad-reference", key=where,
                              reason=str(exc), **_whose(server))
                raise LinkError(f"server {server.name!r} not started: {where}: {exc}") from None
            self.on_secret_values(list(values.values()))
            self._warn_short(server, values)
            return out_texts, out_decl

        return await asyncio.to_thread(work)

    def _warn_short(self, server: ServerConfig, values: dict[Any, str]) -> None:
        """The redactor ignores exact values shorter than MIN_EXACT (they would redact ordinary words),
        so a short secret a server echoes reaches the client as is: say so, once per server and reference."""
        from mcpward.guards.redactor import MIN_EXACT

        for ref, value in values.items():
            key = (server.name, str(ref))
            if len(value) >= MIN_EXACT or key in self._short_warned:
                continue
            self._short_warned.add(key)
            log.warning("server %s: secret %s is shorter than %d characters, so output and logs are NOT "
                        "redacted for it", server.name, ref, MIN_EXACT)
            events.record("secrets.too-short-to-redact", server=server.name, ref=str(ref), min_length=MIN_EXACT,
                          **_whose(server))

    # ------------------------------------------------------------------ links
    def describe(self, server: ServerConfig) -> str:
        if server.command is None:
            return server.url or ""
        profile = self.settings.profile(server.name)
        return f"[{profile.backend}] " + " ".join([server.command, *server.args])

    async def link(self, server: ServerConfig, max_message_bytes: int) -> MessageLink:
        """A link ready to `open()`: secrets resolved, sandbox planned."""
        if server.command is None:
            from mcpward.transport.http_link import HttpLink

            headers, _ = await self._resolve(server, dict(server.headers), {}, table="headers")
            assert server.url is not None
            # Its client dials only vetted addresses: public ones, unless this server opts in (allow_private).
            return HttpLink(server.url, headers, max_message_bytes=max_message_bytes,
                            allow_private=server.allow_private)
        spawner = await self._spawner(server, max_message_bytes + 1)
        return StdioLink(server.name, spawner, max_message_bytes)

    async def _spawner(self, server: ServerConfig, stream_limit: int) -> Spawner:
        assert server.command is not None
        profile = self.settings.profile(server.name)
        if server.principal is not None:  # one principal's own process: its secrets, nobody else's
            profile = replace(profile, secrets=profile.principal_secrets.get(server.principal, ()))
        declared = {s.name: s.ref for s in profile.secrets}
        env, values = await self._resolve(server, dict(server.env), declared)
        files = {s.name: values[s.name].encode() for s in profile.secrets if s.deliver == "file"}
        env_secrets = {s.name: values[s.name] for s in profile.secrets if s.deliver == "env"}
        if profile.backend == "none":
            return unsandboxed_spawner(server, env | env_secrets, files)
        try:
            # In a thread: the bind checks search declared directories for unix sockets (bounded, but up
            # to a few hundred ms on a large tree), which must not stall every other client's requests.
            plan = await asyncio.to_thread(self.plan, server, env)
        except PlanError as exc:
            events.record("sandbox.refused", server=server.name, rule="sandbox.plan", reason=str(exc))
            raise LinkError(str(exc)) from None
        await self._verify_artifacts(server.name, profile, plan)
        plan.env.update(env_secrets)
        plan.env.update({f"{name}_FILE": f"/run/secrets/{name}" for name in files})
        plan.files = files
        caps = probe.probe()
        try:
            backend = choose_backend(profile, caps)
        except LinkError as exc:
            events.record("sandbox.refused", server=server.name, rule="sandbox.no-backend", reason=str(exc))
            raise
        if backend != "bwrap":
            from mcpward.sandbox.containers import ContainerSpawner

            assert profile.image is not None
            # Every env value reaches the engine as `-e NAME` and ends up in the container's Config.Env,
            # which `inspect` shows: a secret, declared as env or embedded in env, is refused here.
            in_env = container_env_secrets(profile, server.env)
            if in_env:
                reason = (f"a container backend takes secrets as files only (env values show in `{backend} "
                          f"inspect`); env with a secret: {', '.join(in_env)}; declare them in "
                          "[servers.<name>.secrets] (as = \"file\", the default) instead")
                events.record("sandbox.refused", server=server.name, rule="sandbox.container-env-secret",
                              backend=backend, env=in_env, reason=reason)
                raise LinkError(f"server {server.name!r} not started: {reason}")
            self._prepare_cache(plan)  # the engine binds it, and refuses a directory that does not exist
            return ContainerSpawner(backend, profile.image, plan, [server.command, *server.args])
        if not self._swept:
            self._swept = True
            await self._sweep_cgroups()
        return self._bwrap(plan, profile, caps, stream_limit)

    async def _sweep_cgroups(self) -> None:
        from mcpward.sandbox import cgroup_sweep

        removed, left = await asyncio.to_thread(cgroup_sweep.sweep)
        if removed or left:
            events.record("sandbox.cgroups-swept", removed=[str(p) for p in removed], left=[str(p) for p in left])

    async def _verify_artifacts(self, name: str, profile: SandboxProfile, plan: SandboxPlan) -> None:
        from mcpward.sandbox import artifacts

        def work() -> None:
            artifacts.verify_pins(profile.verify, self.cfg.base_dir)
            if plan.cache_dir is not None:
                artifacts.verify(self.settings.state_dir, name, plan.cache_dir)

        try:
            await asyncio.to_thread(work)
        except artifacts.ArtifactError as exc:
            events.record("sandbox.artifact-changed", server=name, reason=str(exc))
            raise LinkError(f"server {name!r} not started: {exc}; if the change is expected, delete "
                            f"{artifacts.manifest_path(self.settings.state_dir, name)} (or update the pin)") from None

    def _bwrap(self, plan: SandboxPlan, profile: SandboxProfile, caps: probe.HostCapabilities,
               stream_limit: int) -> Spawner:
        from mcpward.sandbox.barrier import Barrier, cgroup_limits
        from mcpward.sandbox.bwrap import BwrapSpawner
        from mcpward.sandbox.seccomp import SeccompUnavailable, filter_bpf

        try:
            bpf = filter_bpf()
        except SeccompUnavailable as exc:
            events.record("sandbox.refused", server=plan.server, rule="sandbox.seccomp-unavailable",
                          reason=f"seccomp unavailable: {exc}")
            raise LinkError(f"server {plan.server!r} not started: seccomp is unavailable here ({exc})") from None
        self._prepare_cache(plan)
        key = SlotKey(plan.server, plan.uid, cgroup_limits(plan), _rlimits(plan, memory_in_cgroup=True), stream_limit)
        slot = self.warm.take(key) if self.warm is not None else None
        barrier = Barrier(plan, profile, self._egress_resolver() if plan.egress else None, self._on_egress,
                          self.settings.state_dir, warm=slot)
        limits = _rlimits(plan, memory_in_cgroup=barrier.memory_in_cgroup)
        assert caps.bwrap is not None
        on_started = None
        if self.warm is not None and barrier.cgroups is not None:
            # Only where cgroups work as configured: a slot's whole point is to be inside them already.
            pool = self.warm

            def on_started() -> None:
                pool.refill(key)

        return BwrapSpawner(plan, caps.bwrap, bpf, barrier.on_child, barrier.on_exit, limits, warm=slot,
                            on_started=on_started, join=barrier.cgroups.join_files() if barrier.cgroups else ())

    def _prepare_cache(self, plan: SandboxPlan) -> None:
        if plan.cache_dir is None:
            return
        try:
            plan.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(plan.cache_dir, 0o700)
            if plan.uid is not None:
                os.chown(plan.cache_dir, plan.uid, plan.uid)
        except OSError as exc:
            raise LinkError(f"server {plan.server!r}: cannot prepare its package cache "
                            f"{plan.cache_dir}: {exc.strerror}") from None

    def _egress_resolver(self) -> Resolver:
        if self._dns is None:
            from mcpward.sandbox.egress_policy import Resolver

            self._dns = Resolver()
        return self._dns

    @staticmethod
    def _on_egress(decision: EgressDecision) -> None:
        events.record("egress.allowed" if decision.allowed else "egress.refused", server=decision.server,
                      host=decision.host, port=decision.port, method=decision.method, address=decision.address,
                      rule=decision.rule, detail=decision.detail)


def _whose(server: ServerConfig) -> dict[str, str]:
    return {"principal": server.principal} if server.principal else {}


def container_env_secrets(profile: SandboxProfile, env: dict[str, str]) -> list[str]:
    """The env variables that would carry a secret into a container: declared `as = "env"`, or a
    value embedding a `${...}` reference. A container backend refuses them (`docker inspect` shows env)."""
    from mcpward.secrets.refs import has_refs

    return sorted({d.name for d in profile.secrets if d.deliver == "env"} | {k for k, v in env.items() if has_refs(v)})


def gateway_files(cfg: GatewayConfig, secret_settings: SecretSettings) -> list[Path]:
    """The gateway's own files, which no sandbox may see (never bound, nor a directory holding them):
    the config file, policy files, the audit log (and its WAL, journal and JSON-lines mirror), the
    integrity lock and pending files, Vault's token file and every `file:` secret a reference names.
    Raises ConfigError for a bad [policy], [audit] or [integrity] table, as the gateway would."""
    from mcpward.audit.settings import load_settings as audit_settings
    from mcpward.integrity.settings import read_settings as integrity_settings
    from mcpward.policy.settings import read_settings as policy_settings

    found: list[Path] = []
    if cfg.source and not cfg.source.startswith("<") and Path(cfg.source).is_file():
        found.append(Path(cfg.source))
    found.extend(policy_settings(cfg).files)
    audit = audit_settings(cfg)
    if audit.enabled:
        found += [audit.path, *(audit.path.with_name(audit.path.name + s) for s in ("-wal", "-shm", "-journal"))]
        if audit.jsonl is not None:
            found.append(audit.jsonl)
    integrity = integrity_settings(cfg)
    found += [integrity.lock, integrity.pending]
    if secret_settings.vault.token_file is not None:
        found.append(secret_settings.vault.token_file)
    found.extend(_file_refs(cfg, audit.key_ref, secret_settings))
    return [_resolved(path) for path in dict.fromkeys(found)]


def _resolved(path: Path) -> Path:
    """Resolved like the bind being checked, so a symlinked directory on either side still matches; a
    path that cannot be resolved (a loop, a NUL byte) stays on the list as written."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return path


def _file_refs(cfg: GatewayConfig, audit_key: str | None, secret_settings: SecretSettings) -> list[Path]:
    from mcpward.secrets.refs import SecretRefError, find_refs, parse_ref

    texts = [t for t in (audit_key,) if t is not None]
    if secret_settings.vault.token is not None:
        texts.append(str(secret_settings.vault.token))
    refs = []
    for server in cfg.servers.values():
        tables = [server.env, server.headers, *(c.env for c in server.principals.values()),
                  *(c.headers for c in server.principals.values())]
        for table in tables:
            for text in table.values():
                try:
                    refs.extend(find_refs(text))
                except SecretRefError:
                    continue  # refused at load and at start; nothing to protect
        for decl in [server.secrets, *(c.secrets for c in server.principals.values())]:
            texts.extend(v if isinstance(v, str) else str(v.get("from", "")) for v in decl.values()
                         if isinstance(v, (str, dict)))
    for text in texts:
        try:
            refs.append(parse_ref(text))
        except SecretRefError:
            continue
    out = []
    for ref in refs:
        if ref.scheme == "file":
            path = Path(ref.target).expanduser()
            out.append(path if path.is_absolute() else secret_settings.base_dir / path)
    return out


def _rlimits(plan: SandboxPlan, memory_in_cgroup: bool) -> rlimits.Rlimits:
    return rlimits.Rlimits(
        nofile=plan.limits.nofile,
        nproc=plan.limits.pids if plan.uid is not None else None,  # per uid: only a dedicated uid's count is ours
        address_space=None if memory_in_cgroup else _address_space(plan),
        file_size=plan.limits.file_size,
    )


def _address_space(plan: SandboxPlan) -> int | None:
    """Without a memory cgroup, a ceiling on address space: generous, because runtimes such as Node
    reserve far more than they use."""
    return plan.limits.memory * 4 if plan.limits.memory is not None else None



def make_launcher(cfg: GatewayConfig) -> Launcher:
    """The gateway's launcher: every secret it resolves joins the output and log redactor's exact values."""
    from mcpward.guards.output import redactor_for

    return Launcher(cfg, redactor_for(cfg).add_exact)
