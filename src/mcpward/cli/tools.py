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
from mcpward.guards.log_redaction import escape as escape_controls
from mcpward.integrity.fingerprint import PINNED_KINDS
from mcpward.integrity.lock import Entry, InstructionsPin, LockError, PinFile, PinSet, now
from mcpward.integrity.pins import display_launch, redisplay
from mcpward.integrity.scanner import Report, default_scanner
from mcpward.integrity.settings import IntegritySettings, read_settings

tools_app = typer.Typer(help="Review, approve and revoke pinned tool definitions.", no_args_is_help=True)
err = Console(stderr=True)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path to mcpward.toml.")]
KindOpt = Annotated[str, typer.Option("--kind", help="tools, prompts or resourceTemplates.")]


def _safe(text: object) -> str:
    """Text a server chose (names, reasons, evidence) shown in a terminal: no markup, no control characters,
    so a hostile tool name cannot retitle or clear the reviewer's terminal."""
    return escape(escape_controls(str(text)))


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
    # A server's instructions judged on their own (its approval, or a text the gateway held).
    for source in (lock, pending):
        for server, pins in source.servers.items():
            for digest, pin in pins.instructions_pins.items():
                row = rows.setdefault((server, "instructions", digest), {"server": server, "kind": "instructions",
                                                                         "name": "(instructions)"})
                state = f"pending: {pin.reason}" if pin.reason else "approved"
                row.update(state=state, risk=pin.risk, fingerprint=digest, at=pin.at)
                if pin.by:
                    row["by"] = pin.by
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
        table.add_row(_safe(r["server"]), r["kind"], _safe(r["name"]), f"[{colour}]{_safe(state)}[/]",
                      _safe(r.get("risk", "")), _safe(r.get("by", "")), _safe(r.get("change") or ""))
    out.print(f"[bold]mode[/] {settings.mode}  [bold]lock[/] {_safe(settings.lock)}", highlight=False)
    out.print(table)
    waiting = sum(1 for r in rows if str(r.get("state", "")).startswith("pending"))
    if waiting:
        out.print(f"{waiting} waiting for approval: `mcpward tools diff`, then `mcpward tools approve SERVER/NAME`",
                  highlight=False)
    if any(r["kind"] == "instructions" and str(r.get("state", "")).startswith("pending") for r in rows):
        out.print("held server instructions: `mcpward tools diff SERVER`, then "
                  "`mcpward tools approve SERVER --instructions`", highlight=False)


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


def _targets(spec: list[str], kind: str, entries: PinSet, *, instructions: bool = False) -> list[tuple[str, str]]:
    """`server/name` or `server` (everything of that server) -> matching (server, name) in `entries`;
    with `instructions`, a bare server whose instructions are held matches as (server, "")."""
    found: list[tuple[str, str]] = []
    for item in spec:
        server, _, name = item.partition("/")
        pins = entries.servers.get(server)
        names = sorted(pins.entries[kind]) if pins else []
        matched = [(server, n) for n in names if not name or n == name]
        if instructions and not name and pins is not None and pins.instructions_pins:
            matched.append((server, ""))
        if not matched:
            err.print(f"[bold red]no match[/] {_safe(item)}: nothing of kind {kind} there", highlight=False)
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
    """What changed, or what is new, in each pending definition (word-level diff and scanner evidence), and
    the server instructions a person has not approved yet, with their scan."""
    _check_kind(kind)
    _, _, lock, pending = _setup(config)
    chosen = _targets(targets, kind, pending.pins, instructions=True) if targets else \
        [(s, n) for s, k, n, _ in pending.pins.walk() if k == kind]
    out = Console()
    # The instructions travel with every definition of the server: a reviewer sees them once per text.
    texts: dict[tuple[str, str], None] = {}
    if not targets:
        texts.update(((s, d), None) for s, p in pending.pins.servers.items() for d in p.instructions_pins)
    else:
        texts.update(((s, d), None) for s, n in chosen if not n
                     for d in pending.pins.server(s).instructions_pins)
    for server, name in chosen:
        entry = pending.pins.get(server, kind, name) if name else None
        if entry is None:
            continue
        texts[(server, entry.instructions)] = None
        out.print(f"[bold]{_safe(server)}/{_safe(name)}[/] ({kind}) pending: [yellow]{_safe(entry.reason)}[/] "
                  f"risk {_safe(entry.risk)}  {_safe(entry.fingerprint)}", highlight=False, soft_wrap=True)
        if entry.change:
            out.print(f"  change: {_safe(entry.change.get('severity'))} (score {_safe(entry.change.get('score'))}): "
                      + _safe("; ".join(entry.change.get("reasons", []))), highlight=False, soft_wrap=True)
            for line in str(entry.change.get("diff", "")).splitlines():
                out.print("  " + _safe(line), highlight=False, soft_wrap=True)
        else:
            body = orjson.dumps(entry.definition, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
            for line in body.splitlines():
                out.print(_safe(line), highlight=False, soft_wrap=True)
        _print_findings(out, entry.findings)
    shown = [(s, d) for s, d in texts if not _person_approved(lock.pins, s, d)]
    for server, digest in shown:
        text = pending.pins.server(server).instructions.get(digest, "")
        if not text:
            continue
        report = _scan(text)
        out.print(f"[bold]{_safe(server)}[/] server instructions, not approved by a person yet: "
                  f"risk {report.severity.name.lower()}  {_safe(digest)}", highlight=False, soft_wrap=True)
        for line in text.splitlines():
            out.print("  | " + _safe(line), highlight=False, soft_wrap=True)
        _print_findings(out, report.to_json()["findings"])
    if not chosen and not shown:
        out.print("nothing waits for approval")


def _print_findings(out: Console, findings: list[dict[str, Any]]) -> None:
    for finding in findings:
        out.print(f"  [red]{_safe(finding.get('rule'))}[/] {_safe(finding.get('field'))}: "
                  f"{_safe(finding.get('evidence'))}", highlight=False, soft_wrap=True)


def _scan(text: str) -> Report:
    """The instructions' scan as the reviewer should read it (without other servers' names: the CLI does
    not start the servers)."""
    return default_scanner().scan_instructions(text, None)


def _person_approved(lock: PinSet, server: str, digest: str) -> bool:
    """Whether a person approved this instructions text: on its own, or with a definition that carries it."""
    pins = lock.servers.get(server)
    if pins is None:
        return False
    own = pins.instructions_pins.get(digest)
    if own is not None and own.by not in ("", "tofu"):
        return True
    return any(e.instructions == digest and e.status == "approved" and e.by != "tofu"
               for kind in pins.entries.values() for e in kind.values())


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
    instructions: Annotated[bool, typer.Option(
        "--instructions", help="Approve the held server instructions of each SERVER (shown by `tools diff`); "
                               "the only way to release instructions the scanner flags at its hide level.")] = False,
) -> None:
    """Pin exactly the pending definition(s) the gateway saw; a running gateway shows them within a second."""
    _check_kind(kind)
    cfg, settings, lock, pending = _setup(config)
    if instructions:
        _approve_instructions(cfg, targets, lock, pending)
        return
    chosen = _targets(targets, kind, pending.pins)
    _install_audit(cfg)
    person = _person()
    with lock.transaction() as pins, pending.transaction() as waiting:
        for server, name in chosen:
            entry = waiting.get(server, kind, name)
            if entry is None:  # another approval took it meanwhile
                continue
            server_pins = waiting.server(server)
            text = server_pins.instructions.get(entry.instructions, "")
            # Asked before this pin lands, so the note is said once per text, not for every definition.
            new_text = bool(text) and not _person_approved(pins, server, entry.instructions)
            pinned = Entry(fingerprint=entry.fingerprint, definition=entry.definition, identity=entry.identity,
                           instructions=entry.instructions, at=now(), status="approved", by=person, risk=entry.risk)
            pins.put(server, kind, name, pinned, display_launch(cfg, server_pins.launch.get(entry.identity, {})),
                     text)
            waiting.remove(server, kind, name)
            audit.record("integrity.approved", server=server, kind=kind, name=name, by=person,
                         fingerprint=entry.fingerprint, risk=entry.risk)
            note = f" [red](scanner risk {_safe(entry.risk)})[/]" if entry.risk in ("high", "medium") else ""
            Console().print(f"approved {_safe(server)}/{_safe(name)} {_safe(entry.fingerprint)}{note}",
                            highlight=False, soft_wrap=True)
            if new_text:
                _instructions_note(server, text, settings.hide_at)
        redisplay(cfg, pins)  # the lock file is committed: no launch secret an older version wrote stays in it


def _instructions_note(server: str, text: str, hide_at: int) -> None:
    report = _scan(text)
    risk = report.severity.name.lower()
    if int(report.severity) >= hide_at:
        Console().print(f"  [red]server instructions of {_safe(server)} (risk {risk}) stay held[/]: approve them on "
                        f"their own after reading them in `mcpward tools diff {_safe(server)}`: "
                        f"`mcpward tools approve {_safe(server)} --instructions`", highlight=False, soft_wrap=True)
    else:
        colour = "red" if risk != "none" else "yellow"
        Console().print(f"  [{colour}]also approves server instructions (risk {risk})[/] of {_safe(server)}",
                        highlight=False, soft_wrap=True)


def _approve_instructions(cfg: GatewayConfig, targets: list[str], lock: PinFile, pending: PinFile) -> None:
    """Pin each server's held instructions text on its own (exactly what the gateway held)."""
    servers = list(dict.fromkeys(item.partition("/")[0] for item in targets))
    for server in servers:
        held = pending.pins.servers.get(server)
        if held is None or not held.instructions_pins:
            err.print(f"[bold red]no match[/] {_safe(server)}: no server instructions wait for approval there",
                      highlight=False)
            raise typer.Exit(1)
    _install_audit(cfg)
    person = _person()
    with lock.transaction() as pins, pending.transaction() as waiting:
        for server in servers:
            held = waiting.servers.get(server)
            texts = dict(held.instructions) if held is not None else {}
            taken = sorted(waiting.remove_instructions(server).items(), key=lambda item: item[1].at)
            if not taken:  # another approval took them meanwhile
                continue
            digest, hold = taken[-1]  # the server's latest text: the lock keeps one per server
            pins.put_instructions(server, digest, InstructionsPin(by=person, risk=hold.risk), texts.get(digest, ""),
                                  only=True)
            audit.record("integrity.approved", server=server, kind="instructions", name=server, by=person,
                         fingerprint=digest, risk=hold.risk)
            Console().print(f"approved server instructions of {_safe(server)} {_safe(digest)} "
                            f"(risk {_safe(hold.risk)})", highlight=False, soft_wrap=True)
        redisplay(cfg, pins)


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
            Console().print(f"revoked {_safe(server)}/{_safe(name)}", highlight=False)
