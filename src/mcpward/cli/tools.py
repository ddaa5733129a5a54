"""`mcpward tools list|diff|approve|revoke`: a person's view of pins and of what waits for them.

They work on the lock and pending files next to the config, so they need no running gateway,
and approving pins exactly the definition the gateway saw and `diff` showed (never whatever a
server says at approval time). `list --refresh` starts the servers once and lists them
through the integrity check, which is how a strict-mode setup gets its first pending entries.
"""

from __future__ import annotations

import getpass
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mcpward.audit import events as audit
from mcpward.gateway.config import ConfigError, GatewayConfig
from mcpward.integrity.fingerprint import PINNED_KINDS
from mcpward.integrity.lock import Entry, LockError, PinFile, PinSet, now
from mcpward.integrity.pins import display_launch, redisplay
from mcpward.integrity.settings import IntegritySettings, read_settings

tools_app = typer.Typer(help="Review, approve and revoke pinned tool definitions.", no_args_is_help=True)
err = Console(stderr=True)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path to mcpward.toml.")]
KindOpt = Annotated[str, typer.Option("--kind", help="tools, prompts or resourceTemplates.")]


def _setup(config: Path) -> tuple[GatewayConfig, IntegritySettings, PinFile, PinFile]:
    from mcpward.cli.main import _load

    cfg = _load(config)
    try:
        settings = read_settings(cfg)
        lock, pending = PinFile(settings.lock), PinFile(settings.pending)
        lock.load()
        pending.load()
    except (ConfigError, LockError) as exc:
        err.print(f"[bold red]error[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    return cfg, settings, lock, pending


def _install_audit(cfg: GatewayConfig) -> None:
    """Approvals and revocations are pin changes: they join the gateway's hash-chained audit log."""
    from mcpward.audit.events import AuditError
    from mcpward.audit.store import open_from_config

    try:
        audit.install(open_from_config(cfg))
    except (ConfigError, AuditError) as exc:
        err.print(f"[bold red]error[/] audit log: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _rows(lock: PinSet, pending: PinSet) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for server, kind, name, entry in lock.walk():
        rows[(server, kind, name)] = {"server": server, "kind": kind, "name": name, "state": entry.status,
                                      "risk": entry.risk, "by": entry.by, "at": entry.at,
                                      "fingerprint": entry.fingerprint}
    for server, kind, name, entry in pending.walk():
        row = rows.setdefault((server, kind, name), {"server": server, "kind": kind, "name": name})
        row.update(state=f"pending: {entry.reason}", risk=entry.risk, pending_fingerprint=entry.fingerprint,
                   seen=entry.at, change=entry.change.get("severity"))
    return [rows[key] for key in sorted(rows)]


@tools_app.command("list")
def list_command(
    config: ConfigOpt = Path("mcpward.toml"),
    refresh: Annotated[bool, typer.Option(help="Start the servers and list them through the integrity check "
                                                "first (runs their code on this machine).")] = False,
    only_pending: Annotated[bool, typer.Option("--pending", help="Only what waits for approval.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every pinned and pending definition, with pin state and scanner risk."""
    cfg, settings, lock, pending = _setup(config)
    if refresh:
        _refresh(cfg)
        lock.load()
        pending.load()
    rows = _rows(lock.pins, pending.pins)
    if only_pending:
        rows = [r for r in rows if str(r.get("state", "")).startswith("pending")]
    if as_json:
        sys.stdout.write(orjson.dumps({"mode": settings.mode, "lock": str(settings.lock), "items": rows},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    out = Console()
    table = Table("server", "kind", "name", "state", "risk", "approved by", "change")
    table.columns[2].overflow = "fold"
    for r in rows:
        state = str(r.get("state", ""))
        colour = "green" if state == "approved" else "red" if "revoked" in state or "high" in state else "yellow"
        table.add_row(escape(r["server"]), r["kind"], escape(r["name"]), f"[{colour}]{escape(state)}[/]",
                      str(r.get("risk", "")), escape(str(r.get("by", ""))), str(r.get("change") or ""))
    out.print(f"[bold]mode[/] {settings.mode}  [bold]lock[/] {escape(str(settings.lock))}", highlight=False)
    out.print(table)
    waiting = sum(1 for r in rows if str(r.get("state", "")).startswith("pending"))
    if waiting:
        out.print(f"{waiting} waiting for approval: `mcpward tools diff`, then `mcpward tools approve SERVER/NAME`",
                  highlight=False)


def _refresh(cfg: GatewayConfig) -> None:
    from mcpward.cli.main import run_async
    from mcpward.gateway.context import system_context
    from mcpward.gateway.core import Gateway
    from mcpward.guards.base import GuardChain
    from mcpward.integrity.guard import IntegrityGuard

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    guard = IntegrityGuard(cfg, read_settings(cfg))

    async def walk() -> None:
        gateway = Gateway(cfg, GuardChain([guard]))
        try:
            await gateway.start()
            for kind in PINNED_KINDS:
                await gateway.lister.refresh(system_context(), kind)
        finally:
            await gateway.stop()

    run_async(walk())


def _targets(spec: list[str], kind: str, entries: PinSet) -> list[tuple[str, str]]:
    """`server/name` or `server` (everything of that server) -> matching (server, name) in `entries`."""
    found: list[tuple[str, str]] = []
    for item in spec:
        server, _, name = item.partition("/")
        pins = entries.servers.get(server)
        names = sorted(pins.entries[kind]) if pins else []
        matched = [(server, n) for n in names if not name or n == name]
        if not matched:
            err.print(f"[bold red]no match[/] {escape(item)}: nothing of kind {kind} there", highlight=False)
            raise typer.Exit(1)
        found.extend(matched)
    return list(dict.fromkeys(found))


def _check_kind(kind: str) -> None:
    if kind not in PINNED_KINDS:
        err.print(f"[bold red]error[/] --kind must be one of {', '.join(PINNED_KINDS)}", highlight=False)
        raise typer.Exit(2)


@tools_app.command("diff")
def diff_command(
    targets: Annotated[list[str] | None, typer.Argument(help="SERVER/NAME or SERVER; default: all pending.")] = None,
    config: ConfigOpt = Path("mcpward.toml"),
    kind: KindOpt = "tools",
) -> None:
    """What changed, or what is new, in each pending definition (word-level diff and scanner evidence)."""
    _check_kind(kind)
    _, _, _, pending = _setup(config)
    chosen = _targets(targets, kind, pending.pins) if targets else \
        [(s, n) for s, k, n, _ in pending.pins.walk() if k == kind]
    out = Console()
    if not chosen:
        out.print("nothing waits for approval")
    for server, name in chosen:
        entry = pending.pins.get(server, kind, name)
        assert entry is not None
        out.print(f"[bold]{escape(server)}/{escape(name)}[/] ({kind}) pending: [yellow]{entry.reason}[/] "
                  f"risk {entry.risk}  {entry.fingerprint}", highlight=False, soft_wrap=True)
        if entry.change:
            out.print(f"  change: {entry.change.get('severity')} (score {entry.change.get('score')}): "
                      + escape("; ".join(entry.change.get("reasons", []))), highlight=False, soft_wrap=True)
            for line in str(entry.change.get("diff", "")).splitlines():
                out.print("  " + escape(line), highlight=False, soft_wrap=True)
        else:
            body = orjson.dumps(entry.definition, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
            out.print(escape(body), highlight=False, soft_wrap=True)
        for finding in entry.findings:
            out.print(f"  [red]{escape(str(finding.get('rule')))}[/] {escape(str(finding.get('field')))}: "
                      f"{escape(str(finding.get('evidence')))!s}", highlight=False, soft_wrap=True)


def _person() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@tools_app.command("approve")
def approve_command(
    targets: Annotated[list[str], typer.Argument(help="SERVER/NAME, or SERVER for all of its pending items.")],
    config: ConfigOpt = Path("mcpward.toml"),
    kind: KindOpt = "tools",
) -> None:
    """Pin exactly the pending definition(s) the gateway saw; a running gateway shows them within a second."""
    _check_kind(kind)
    cfg, _, lock, pending = _setup(config)
    chosen = _targets(targets, kind, pending.pins)
    _install_audit(cfg)
    person = _person()
    with lock.transaction() as pins, pending.transaction() as waiting:
        for server, name in chosen:
            entry = waiting.get(server, kind, name)
            if entry is None:  # another approval took it meanwhile
                continue
            pinned = Entry(fingerprint=entry.fingerprint, definition=entry.definition, identity=entry.identity,
                           instructions=entry.instructions, at=now(), status="approved", by=person, risk=entry.risk)
            server_pins = waiting.server(server)
            pins.put(server, kind, name, pinned, display_launch(cfg, server_pins.launch.get(entry.identity, {})),
                     server_pins.instructions.get(entry.instructions, ""))
            waiting.remove(server, kind, name)
            audit.record("integrity.approved", server=server, kind=kind, name=name, by=person,
                         fingerprint=entry.fingerprint, risk=entry.risk)
            note = f" [red](scanner risk {entry.risk})[/]" if entry.risk in ("high", "medium") else ""
            Console().print(f"approved {escape(server)}/{escape(name)} {entry.fingerprint}{note}", highlight=False)
        redisplay(cfg, pins)  # the lock file is committed: no launch secret an older version wrote stays in it


@tools_app.command("revoke")
def revoke_command(
    targets: Annotated[list[str], typer.Argument(help="SERVER/NAME, or SERVER for all of its pins.")],
    config: ConfigOpt = Path("mcpward.toml"),
    kind: KindOpt = "tools",
) -> None:
    """Withdraw approval: the definition is hidden (even in tofu mode) until approved again."""
    _check_kind(kind)
    cfg, _, lock, _ = _setup(config)
    chosen = _targets(targets, kind, lock.pins)
    _install_audit(cfg)
    person = _person()
    with lock.transaction() as pins:
        for server, name in chosen:
            entry = pins.get(server, kind, name)
            if entry is None:
                continue
            entry.status, entry.by, entry.at, entry.cached = "revoked", person, now(), None
            audit.record("integrity.revoked", server=server, kind=kind, name=name, by=person,
                         fingerprint=entry.fingerprint)
            Console().print(f"revoked {escape(server)}/{escape(name)}", highlight=False)
