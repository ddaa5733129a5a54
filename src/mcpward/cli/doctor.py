"""`mcpward doctor`: what isolation this machine offers, and what each configured server will get.

It probes (bwrap, user namespaces, seccomp, Landlock, cgroups, container engines, root) and then
plans every server exactly as a start would: backend, uid, binds, network, limits, and whether
each declared secret resolves (never its value). Nothing is started. Exit 1 when a configured
server would not start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()
err = Console(stderr=True)


def _server_report(launcher: Any, name: str, caps: Any) -> dict[str, Any]:
    from mcpward.sandbox.backends import choose_backend
    from mcpward.sandbox.launcher import container_env_secrets
    from mcpward.sandbox.plan import PlanError
    from mcpward.sandbox.settings import describe_profile
    from mcpward.secrets.refs import parse_ref
    from mcpward.transport.base import LinkError

    server = launcher.cfg.servers[name]
    report: dict[str, Any] = {"server": name, "problems": [], "warnings": []}
    if server.command is None:
        report.update(backend="remote", url=server.url)
        report["secret_status"] = _embedded_refs(launcher, server, report)
        return report
    profile = launcher.settings.profile(name)
    report.update(describe_profile(profile))
    if profile.backend == "none":
        # Say what the server really gets: the unsandboxed spawn only ties it to the gateway's lifetime. The
        # declared network, paths, cache and limits are not applied, so showing them would read as protection.
        report["warnings"].append("runs UNSANDBOXED on the host (backend = \"none\")")
        for key in ("read_only", "read_write", "package_cache", "limits"):
            report.pop(key, None)
        report.update(network="host (unrestricted)", filesystem="host (unrestricted)", limits_enforced_by="none")
    else:
        try:
            report["backend"] = choose_backend(profile, caps)
        except LinkError as exc:
            report["problems"].append(str(exc))
        if report.get("backend") == "bwrap" and not caps.seccomp:
            # A start refuses the same way (launcher: rule sandbox.seccomp-unavailable).
            report["problems"].append(f"seccomp is unavailable here ({caps.seccomp_problem or 'unknown reason'}), "
                                      "so a bwrap sandbox is not started (rule sandbox.seccomp-unavailable)")
        try:
            plan = launcher.plan(server)
            report["uid"] = plan.uid
            report["binds"] = [f"{b.path} ({'rw' if b.writable else 'ro'}, {b.why})" for b in plan.binds]
            report["package_cache"] = str(plan.cache_dir) if plan.cache_dir else None
        except PlanError as exc:
            report["problems"].append(str(exc))
        memory_ok = caps.cgroup_writable.get("memory", False)
        report["limits_enforced_by"] = "cgroups + rlimits" if memory_ok else "rlimits only (no writable cgroup)"
    declared = [(f"{decl.name}", decl) for decl in profile.secrets]
    for key, decls in profile.principal_secrets.items():
        declared += [(f'principals."{key}".{decl.name}', decl) for decl in decls]
    status: dict[str, str] = {}
    for label, decl in declared:
        status[label] = _check_ref(launcher, parse_ref(decl.ref), f"secret {label} ({decl.ref})", report)
    status.update(_embedded_refs(launcher, server, report))
    report["secret_status"] = status
    backend = report.get("backend")
    if backend in ("docker", "podman"):
        in_env = container_env_secrets(profile, server.env)
        if in_env:
            report["problems"].append(f"a container backend takes secrets as files only; env with a secret: "
                                      f"{', '.join(in_env)} (rule sandbox.container-env-secret)")
    return report


def _check_ref(launcher: Any, ref: Any, label: str, report: dict[str, Any]) -> str:
    """Resolve one reference as a start would: "resolves", or why not (a problem); never the value.
    A value too short for the redactor is a warning: the server starts, but it is not redacted."""
    from mcpward.guards.redactor import MIN_EXACT
    from mcpward.secrets.refs import SecretError

    try:
        value = launcher.secrets.resolve(ref)
    except SecretError as exc:
        report["problems"].append(f"{label} {exc.reason}")
        return f"does not resolve: {exc.reason}"
    if len(value) < MIN_EXACT:
        report["warnings"].append(f"{label} is shorter than {MIN_EXACT} characters: output and logs are not "
                                  "redacted for it")
    return "resolves"


def _embedded_refs(launcher: Any, server: Any, report: dict[str, Any]) -> dict[str, str]:
    """The `${...}` references in env and headers (the server's and each principal's): each must resolve,
    as a declared secret must, or that server (or principal's connection) does not start."""
    from mcpward.secrets.refs import SecretRefError, find_refs

    tables = [("env", server.env), ("headers", server.headers)]
    for key, creds in server.principals.items():
        tables += [(f'principals."{key}".env', creds.env), (f'principals."{key}".headers', creds.headers)]
    status: dict[str, str] = {}
    for table, values in tables:
        for var, text in values.items():
            label = f"{table}.{var}"
            try:
                refs = find_refs(text)
            except SecretRefError as exc:  # a config built in code; a loaded one is checked at load
                report["problems"].append(f"{label}: {exc}")
                status[label] = "not a valid reference"
                continue
            for ref in refs:
                status[f"{label} ({ref})"] = _check_ref(launcher, ref, f"{label} ({ref})", report)
    return status


def _stale_cgroups_row() -> dict[str, str]:
    from mcpward.sandbox import cgroup_sweep, cgroups

    try:
        left = cgroup_sweep.stale(cgroups.group_bases())
    except OSError as exc:
        return {"item": "stale cgroups", "value": "unknown", "meaning": f"cannot list cgroups: {exc.strerror}"}
    meaning = ("left by gateways that are gone; the next gateway removes them before its first sandbox"
               if left else "none left by a killed gateway")
    return {"item": "stale cgroups", "value": str(len(left)), "meaning": meaning}


def doctor_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to mcpward.toml.")] = Path("mcpward.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what isolation is available here and what each configured server will get."""
    from mcpward.cli.main import _load
    from mcpward.gateway.config import ConfigError, GatewayConfig
    from mcpward.sandbox import probe
    from mcpward.sandbox.launcher import Launcher

    caps = probe.probe()
    cfg = _load(config) if config.exists() else GatewayConfig(source="<no config>")
    try:
        launcher = Launcher(cfg)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    servers = [_server_report(launcher, name, caps) for name in sorted(cfg.servers)]
    host = [{"item": i, "value": v, "meaning": m} for i, v, m in probe.summary_rows(caps)]
    host.append(_stale_cgroups_row())
    failing = [s for s in servers if s["problems"]]
    if as_json:
        out.print_json(orjson.dumps({"host": host, "servers": servers}).decode())
        raise typer.Exit(1 if failing else 0)
    table = Table("item", "value", "meaning", title="isolation on this machine", title_justify="left")
    for row in host:
        table.add_row(escape(row["item"]), escape(row["value"]), escape(row["meaning"]))
    out.print(table)
    for s in servers:
        head = f"[bold]{escape(s['server'])}[/]: backend {escape(str(s.get('backend', '?')))}"
        out.print(head, highlight=False)
        for key in ("uid", "network", "filesystem", "binds", "package_cache", "limits", "limits_enforced_by",
                    "secret_status"):
            if key in s and s[key] not in (None, [], {}):
                out.print(f"  {key}: {escape(str(s[key]))}", highlight=False, soft_wrap=True)
        for w in s["warnings"]:
            out.print(f"  [yellow]warning[/] {escape(w)}", highlight=False, soft_wrap=True)
        for p in s["problems"]:
            out.print(f"  [bold red]will not start[/] {escape(p)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if failing else 0)
