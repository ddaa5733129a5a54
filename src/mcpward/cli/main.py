"""The `mcpward` command line: run (stdio), serve (HTTP), check."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from mcpward import __version__
from mcpward.cli.audit import audit_app
from mcpward.cli.auth import auth_app
from mcpward.cli.doctor import doctor_command
from mcpward.cli.evaluate import eval_command
from mcpward.cli.policy import policy_app
from mcpward.cli.scan import scan_command
from mcpward.cli.secret import secret_app
from mcpward.cli.tools import tools_app
from mcpward.gateway import config as config_mod
from mcpward.gateway.config import ConfigError, GatewayConfig
from mcpward.guards.base import GuardChain, Listed
from mcpward.transport.http_checks import is_loopback

if TYPE_CHECKING:
    from mcpward.gateway.assembly import Assembly
    from mcpward.gateway.core import Gateway
    from mcpward.sandbox.launcher import Launcher

T = TypeVar("T")
app = typer.Typer(
    name="mcpward",
    help="A security gateway for MCP: one endpoint in front of many servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(policy_app, name="policy")
app.add_typer(tools_app, name="tools")
app.add_typer(secret_app, name="secret")
app.add_typer(audit_app, name="audit")
app.add_typer(auth_app, name="auth")
app.command("doctor")(doctor_command)
app.command("scan")(scan_command)
app.command("eval")(eval_command)
err = Console(stderr=True)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path to mcpward.toml.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details to stderr.")]


def _version(value: bool) -> None:
    if value:
        print(f"mcpward {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """mcpward: policy-enforcing MCP gateway."""


def _load(path: Path) -> GatewayConfig:
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _chain(cfg: GatewayConfig) -> tuple[GuardChain, Launcher]:
    """The guard chain and the launcher (for `check`): every table checked, nothing opened."""
    from mcpward.gateway.assembly import validate
    from mcpward.guards.setup import build_chain, install_log_redaction
    from mcpward.sandbox.launcher import make_launcher

    try:
        chain = build_chain(cfg)
        launcher = make_launcher(cfg)
        validate(cfg)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    install_log_redaction(cfg)
    return chain, launcher


def _assemble(cfg: GatewayConfig, front: str) -> Assembly:
    """Everything the config asks for (guards, launcher, audit, limits, telemetry, authentication)."""
    from mcpward.audit.events import AuditError
    from mcpward.gateway.assembly import assemble
    from mcpward.guards.setup import install_log_redaction

    try:
        parts = assemble(cfg, front=front)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except AuditError as exc:  # e.g. a keyed log whose tail was cut, or a key that does not match
        err.print(f"[bold red]audit log error[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    install_log_redaction(cfg)
    return parts


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed: it roughly halves the event loop's cost per message."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _logging(verbose: bool) -> None:
    # stdout belongs to MCP on the stdio front, so logs always go to stderr.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The HTTP client logs every request at INFO: a line per tool call, and a cost on the hot path.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.command()
def run(config: ConfigOpt = Path("mcpward.toml"), verbose: VerboseOpt = False) -> None:
    """Serve MCP over stdio (what Claude Desktop and IDEs launch)."""
    from mcpward.transport.stdio_front import StdioFront

    cfg = _load(config)
    _logging(verbose)
    parts = _assemble(cfg, "stdio")

    async def main() -> None:
        # A client ends us with SIGTERM after closing stdin: shut down the same orderly
        # way as on EOF, so no upstream outlives the gateway.
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stopping.set)
        gateway = parts.gateway()
        try:
            await parts.start()
            for step in (gateway.start(), StdioFront(gateway).serve()):
                work = asyncio.ensure_future(step)
                stop = asyncio.ensure_future(stopping.wait())
                await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if stopping.is_set():
                    work.cancel()
                    logging.getLogger("mcpward").info("signal received; shutting down")
                    break
                work.result()
        finally:
            await gateway.stop()
            await parts.stop()

    with contextlib.suppress(KeyboardInterrupt):
        run_async(main())


@app.command()
def serve(
    config: ConfigOpt = Path("mcpward.toml"),
    host: Annotated[str | None, typer.Option(help="Bind address (default from config: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default from config: 8811).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve MCP over Streamable HTTP (default http://127.0.0.1:8811/mcp)."""
    import uvicorn

    from mcpward.transport.http_front import HttpFront
    from mcpward.transport.http_limits import uvicorn_config

    cfg = _load(config)
    cfg.http_host = host or cfg.http_host
    cfg.http_port = cfg.http_port if port is None else port
    if not is_loopback(cfg.http_host) and not cfg.allow_non_loopback:
        err.print(f"[bold red]refused[/] binding {cfg.http_host} exposes every configured server to the "
                  "network; set gateway.allow_non_loopback = true to do it anyway", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    _logging(verbose)
    parts = _assemble(cfg, "http")
    if parts.auth is None:
        if not is_loopback(cfg.http_host):
            err.print(f"[bold red]refused[/] listening on {cfg.http_host} without authentication: anyone who can "
                      "reach the port could call every tool; configure [auth] (OAuth or API keys)",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        logging.getLogger("mcpward").warning(
            "the HTTP front has no authentication: every local caller is 'anonymous' (configure [auth])")
    gateway = parts.gateway()
    # h11 with bounded heads, head deadlines, a connection cap, a bounded graceful shutdown (http_limits.py).
    server = uvicorn.Server(uvicorn_config(HttpFront(gateway, parts=parts), cfg.http_host, cfg.http_port))

    async def main() -> None:
        # Without a handler, SIGHUP would end the gateway.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_config, config, parts, gateway)
        await server.serve()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C after a graceful shutdown (as uvicorn.run does)
        run_async(main())
    if not server.started:
        raise typer.Exit(3)  # uvicorn's own exit code for a failed start (port taken, lifespan error)


def reload_config(path: Path, parts: Assembly, gateway: Gateway) -> bool:
    """SIGHUP: read the config once and hand it to each reloader (auth/reload.py, policy/reload.py), so a
    revoked key or a changed rule applies without a restart. A file that does not parse changes nothing
    and is reported once (logged, and audited as `config.reload-failed`). Returns whether it was read."""
    from mcpward.audit import events
    from mcpward.auth.reload import apply_api_keys
    from mcpward.policy.guard import PolicyGuard
    from mcpward.policy.reload import apply_policy

    try:
        fresh = config_mod.load(path)
    except ConfigError as exc:
        logging.getLogger("mcpward").error("reload refused, the API keys and the policy in force stay as they "
                                           "were: %s", exc)
        events.record("config.reload-failed", reason=str(exc))
        return False
    apply_api_keys(fresh, parts.auth)
    for guard in parts.chain.guards:
        if isinstance(guard, PolicyGuard) and apply_policy(fresh, parts.cfg, guard):
            gateway.lists_changed()  # lists are filtered by the policy: clients should list again
    return True


@app.command()
def check(
    config: ConfigOpt = Path("mcpward.toml"),
    connect: Annotated[bool, typer.Option(help="Start the servers and list what each exposes.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    principal: Annotated[list[str] | None, typer.Option(
        help="A principal for the permission matrix, KIND:SUBJECT[:GROUP,...] (repeatable; default: the local "
             "user, anonymous and every configured API key).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Validate the config and print the effective setup: servers, guards, who may call what, isolation."""
    from mcpward.cli import permissions

    cfg = _load(config)
    if verbose:
        _logging(True)
    else:
        logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    chain, launcher = _chain(cfg)  # validates every table, [auth] included, before its keys are read below
    try:
        principals = [permissions.parse_principal(p) for p in principal] if principal else \
            permissions.default_principals(cfg)
    except ValueError as exc:
        err.print(f"[bold red]error[/] --principal {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    report = run_async(_inspect(cfg, connect, launcher))
    report["guards"] = [guard.name for guard in chain.guards]
    report["permissions"] = permissions.matrix(cfg, chain, report.pop("listed"), principals)
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_report(report)
    if any(s.get("error") for s in report["servers"]):
        raise typer.Exit(1)


async def _inspect(cfg: GatewayConfig, connect: bool, launcher: Launcher) -> dict[str, Any]:
    from mcpward.gateway.context import system_context
    from mcpward.gateway.core import Gateway

    gateway = Gateway(cfg, launcher=launcher)
    servers: list[dict[str, Any]] = []
    listed: dict[str, list[Listed]] = {}
    try:
        for name, upstream in gateway.upstreams.items():
            scfg = upstream.cfg
            entry: dict[str, Any] = {"name": name, "transport": scfg.transport, "target": upstream.describe,
                                     "prefix": scfg.prefix, "start": scfg.start}
            if upstream.per_principal:
                # Only a principal's own credentials reach this server; the check has none to use.
                entry["credentials"] = sorted(scfg.principals)
            elif connect:
                await upstream.start()
                entry["era"] = upstream.era
                entry["error"] = upstream.error if upstream.era is None else None
            servers.append(entry)
        if connect:
            ctx = system_context()
            for kind in ("tools", "prompts", "resources"):
                cursor = None
                for _page in range(1000):  # every page, bounded
                    page = await gateway.lister.list(ctx, kind, {"cursor": cursor} if cursor else {})
                    for item in page[kind]:
                        owner = _owner(gateway, kind, item)
                        for entry in servers:
                            if entry["name"] == owner:
                                entry.setdefault(kind, []).append(item.get("name") or item.get("uri"))
                        if owner is not None:
                            listed.setdefault(kind, []).append(Listed(owner, _upstream_name(gateway, kind, item),
                                                                      item))
                    cursor = page.get("nextCursor")
                    if cursor is None:
                        break
    finally:
        await gateway.stop()
    return {"config": cfg.source, "http": f"http://{cfg.http_host}:{cfg.http_port}{cfg.http_path}",
            "separator": cfg.separator, "servers": servers, "listed": listed}


def _upstream_name(gateway: Any, kind: str, item: dict[str, Any]) -> str:
    if kind == "resources":
        return str(item.get("uri", ""))
    entry = gateway.catalog.resolve(kind, item.get("name", ""))
    return str(entry.name if entry else item.get("name", ""))


def _owner(gateway: Any, kind: str, item: dict[str, Any]) -> str | None:
    if kind == "resources":
        owner: str | None = gateway.catalog.resolve_uri(item.get("uri", ""))
        return owner
    entry = gateway.catalog.resolve(kind, item.get("name", ""))
    return entry.server if entry else None


def _print_report(report: dict[str, Any]) -> None:
    out = Console()
    out.print(f"[bold]config[/] {report['config']}  [bold]http front[/] {report['http']}",
              highlight=False, soft_wrap=True)
    table = Table("server", "transport", "era", "exposes", "status")
    for s in report["servers"]:
        exposes = ", ".join(f"{len(s.get(k, []))} {k}" for k in ("tools", "prompts", "resources"))
        status = f"[red]{s['error']}[/]" if s.get("error") else "[green]ok[/]"
        if s.get("credentials"):
            status = "per-principal credentials: " + ", ".join(s["credentials"]) + " (not started by the check)"
        table.add_row(s["name"], f"{s['transport']}: {s['target']}", str(s.get("era") or "-"), exposes, status)
    out.print(table)
    out.print(f"[bold]guards[/] {' -> '.join(report.get('guards') or ['none'])}", highlight=False, soft_wrap=True)
    perms = report["permissions"]
    iso = Table("server", "sandbox", "network", title="isolation")
    for name, box in perms["isolation"].items():
        iso.add_row(name, box["sandbox"], box["network"])
    out.print(iso)
    matrix = Table("kind", "name", *perms["principals"],
                   title=f"permissions (policy {str(perms['policy_hash'] or 'none')[:16]})")
    for row in perms["items"]:
        cells = [("[green]allow[/]" if d["allowed"] else f"[red]deny[/] {d['rule']}")
                 for d in (row["decisions"][p] for p in perms["principals"])]
        matrix.add_row(row["kind"], row["name"], *cells)
    out.print(matrix)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
