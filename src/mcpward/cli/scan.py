"""`mcpward scan`: find MCP client configs and flag risky launch configs (and, with --connect, poisoned tools).

Offline by default: the files are read as data, nothing is started and nothing is sent anywhere.
Only `--connect` starts the configured servers (their own code, on this machine) to list their tools.
Exit codes: 0 no high finding, 1 at least one high finding, 2 a usage or config error (a named file
missing or unparsable, a client config that cannot be read).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape as markup_escape
from rich.table import Table

from mcpward.guards.log_redaction import escape as escape_controls
from mcpward.integrity import discovery
from mcpward.integrity.discovery import ConfigFile, ConfigFileError, ServerEntry
from mcpward.integrity.launch import SEVERITY_RANK, Finding, LaunchChecker, worst
from mcpward.integrity.launch_argv import load_known
from mcpward.integrity.sarif import to_sarif

err = Console(stderr=True)
_SERVER_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_ENV_REF = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _safe(text: str) -> str:
    """Config text shown in a terminal: no markup, no control characters (a config may be hostile)."""
    return markup_escape(escape_controls(text))


def scan_command(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Config files to scan. Without any: every known client's config under $HOME and in this directory.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
    sarif: Annotated[str | None, typer.Option("--sarif", metavar="FILE|-",
                                              help="Write SARIF 2.1.0 to FILE ('-' for stdout).")] = None,
    connect: Annotated[bool, typer.Option(
        "--connect", help="Also START each server (its code runs in the default sandbox) and scan "
                          "the tools, prompts and resource templates it lists.")] = False,
    timeout: Annotated[float, typer.Option(help="--connect: seconds to wait for each server.")] = 30.0,
    known: Annotated[Path | None, typer.Option(
        help="Extra well-known package names for the typosquat check (same format as known_packages.txt).")] = None,
) -> None:
    """Find MCP client configs (Claude, Cursor, VS Code, Zed, Codex...) and flag risky server launches."""
    if as_json and sarif == "-":
        err.print("[bold red]usage error[/] --json and --sarif - both write to stdout; pick one", highlight=False)
        raise typer.Exit(2)
    known_names = load_known()
    if known is not None:
        try:
            for eco, names in load_known(known.read_text("utf-8")).items():
                known_names[eco] |= names
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            err.print(f"[bold red]usage error[/] --known {_safe(str(known))}: {_safe(str(exc))}", highlight=False)
            raise typer.Exit(2) from None

    files, errors, looked = _read(paths)
    checker = LaunchChecker(known_names)
    findings: list[Finding] = [Finding("scan.config-error", "medium", e.problem, e.file, "-", "$", "", e.line)
                               for e in errors]
    entries = [entry for f in files for entry in f.entries]
    for entry in entries:
        findings.extend(checker.check(entry))
    notes: list[str] = [str(e) for e in errors]
    listed: dict[int, dict[str, int]] = {}
    if connect:
        err.print("[bold yellow]WARNING[/] --connect starts every configured server: their code runs on this "
                  "machine, in the default sandbox (no network, read-only system, its own uid when root; "
                  "`mcpward doctor` shows what that is here). Only use it on configs you trust to run.",
                  highlight=False, soft_wrap=True)
        more, listed, connect_notes = _run_connect(entries, timeout)
        # Errors and evidence from servers may quote a URL or a value with a credential in it.
        findings.extend(dataclasses.replace(f, message=checker.redactor.redact(f.message) or f.message)
                        for f in more)
        notes.extend(checker.redactor.redact(n) or n for n in connect_notes)
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.file, f.server, f.rule, f.path))

    report = _report(files, entries, findings, errors, looked, connect, listed, checker)
    if sarif is not None:
        document = orjson.dumps(to_sarif(findings, notifications=notes), option=orjson.OPT_INDENT_2).decode() + "\n"
        if sarif == "-":
            sys.stdout.write(document)
        else:
            try:
                Path(sarif).write_text(document, "utf-8")
            except OSError as exc:
                err.print(f"[bold red]error[/] cannot write {_safe(sarif)}: {_safe(exc.strerror or str(exc))}",
                          highlight=False)
                raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif sarif != "-":
        _print(report, findings, errors)
    if errors:
        raise typer.Exit(2)
    if any(f.severity == "high" for f in findings):
        raise typer.Exit(1)


def _read(paths: list[Path] | None) -> tuple[list[ConfigFile], list[ConfigFileError], int]:
    if not paths:
        found = discovery.discover()
        return found.files, found.errors, found.looked
    files: list[ConfigFile] = []
    errors: list[ConfigFileError] = []
    clients = discovery.load_clients()
    for path in paths:
        try:
            config = discovery.read_config(path, clients=clients)
        except ConfigFileError as exc:
            errors.append(exc)
            continue
        if config.tables == 0:
            errors.append(ConfigFileError(str(path), "no MCP server table found (looked for mcpServers, servers, "
                                                     "context_servers, extensions, mcp_servers...)"))
            continue
        files.append(config)
    return files, errors, len(paths)


def _report(files: list[ConfigFile], entries: list[ServerEntry], findings: list[Finding],
            errors: list[ConfigFileError], looked: int, connect: bool,
            listed: dict[int, dict[str, int]], checker: LaunchChecker) -> dict[str, Any]:
    by_entry: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        by_entry.setdefault((f.file, f.server), []).append(f)
    servers = []
    for i, e in enumerate(entries):
        mine = by_entry.get((e.file, e.name), [])
        target = _target(e, mine, checker)
        servers.append({"client": e.client, "file": e.file, "name": e.name, "path": e.path,
                        "transport": "http" if e.launch.url else ("stdio" if e.launch.command else "-"),
                        "target": target, "disabled": e.launch.disabled, "findings": len(mine),
                        "worst": worst(mine), **({"listed": listed[i]} if i in listed else {})})
    counts = {level: sum(1 for f in findings if f.severity == level) for level in ("high", "medium", "low")}
    return {
        "version": 1,
        "connected": connect,
        "looked": looked,
        "files": [{"path": f.path, "client": f.client, "format": f.format, "servers": len(f.entries)}
                  for f in files],
        "servers": servers,
        "findings": [f.as_dict() for f in findings],
        "errors": [{"file": e.file, "line": e.line, "problem": e.problem} for e in errors],
        "summary": {"files": len(files), "servers": len(entries), **counts},
    }


_REDACTING_RULES = ("scan.plaintext-secret", "scan.url-credentials")


def _target(entry: ServerEntry, findings: list[Finding], checker: LaunchChecker) -> str:
    """What the entry launches, for the report: values a finding called a secret are replaced."""
    flagged = {f.path for f in findings if f.rule in _REDACTING_RULES}
    launch = entry.launch
    if launch.command is None:
        url = launch.url or ""
        if url and launch.where.get("url") in flagged:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname or ""
            url = urllib.parse.urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""),
                                           parts.path, "[REDACTED]" if parts.query else "", ""))
        return checker.redactor.redact(url) or url
    tokens = [tok if i == 0 or path not in flagged else "[REDACTED]"
              for i, (tok, path) in enumerate(discovery.argv_of(launch))]
    text = " ".join(tokens)
    return checker.redactor.redact(text) or text


_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan"}


def _print(report: dict[str, Any], findings: list[Finding], errors: list[ConfigFileError]) -> None:
    out = Console()
    if not report["files"] and not errors:
        out.print(f"No MCP client configs found ({report['looked']} places checked).", highlight=False)
        return
    files = Table("client", "config file", "servers", title="Configs read", title_justify="left")
    for f in report["files"]:
        files.add_row(_safe(f["client"]), _safe(f["path"]), str(f["servers"]))
    out.print(files)
    if findings:
        table = Table("severity", "server", "finding", title="Findings", title_justify="left")
        for f in findings:
            where = f"{Path(f.file).name}{':' + str(f.line) if f.line else ''} {f.path}"
            table.add_row(f"[{_STYLE[f.severity]}]{f.severity}[/]", _safe(f.server),
                          f"[bold]{f.rule}[/] {_safe(f.message)}\n[dim]{_safe(where)}[/]")
        out.print(table)
    s = report["summary"]
    out.print(f"{s['files']} files, {s['servers']} servers: [bold red]{s['high']} high[/], "
              f"[yellow]{s['medium']} medium[/], [cyan]{s['low']} low[/]", highlight=False)


# ------------------------------------------------------------------------------------------ --connect


def _expand(value: str) -> str:
    """`${VAR}`, `${env:VAR}` and `$VAR` from this environment, as the clients do at launch."""
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1) or m.group(2), m.group(0)), value)


def _run_connect(entries: list[ServerEntry], timeout: float) -> tuple[list[Finding], dict[int, dict[str, int]],
                                                                       list[str]]:
    from mcpward.cli.main import run_async

    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)  # upstream noise would drown the report
    return run_async(_connect(entries, timeout))


async def _connect(entries: list[ServerEntry], timeout: float) -> tuple[list[Finding], dict[int, dict[str, int]],
                                                                         list[str]]:
    from mcpward.gateway.config import GatewayConfig, ServerConfig
    from mcpward.gateway.context import system_context
    from mcpward.gateway.core import Gateway

    names: dict[str, int] = {}
    servers: dict[str, ServerConfig] = {}
    for i, entry in enumerate(entries):
        launch = entry.launch
        if launch.disabled or launch.problems or (launch.command is None and launch.url is None):
            continue
        base = _SERVER_NAME_BAD.sub("-", entry.name).strip("-._")[:56] or "server"
        name = base if base not in names else f"{base}-{i}"
        names[name] = i
        servers[name] = ServerConfig(
            name=name, prefix=name, command=launch.command, args=[_expand(a) for a in launch.args],
            env={k: _expand(v) for k, v in launch.env.items()}, cwd=launch.cwd if launch.command else None,
            url=None if launch.command else _expand(launch.url or ""),
            headers={k: _expand(v) for k, v in launch.headers.items()}, start="lazy", timeout=timeout,
            allow_private=True)  # the user configured these endpoints; loopback servers are common
    if not servers:
        return [], {}, []
    gateway = Gateway(GatewayConfig(source="mcpward scan --connect", servers=servers, probe_timeout=timeout))
    findings: list[Finding] = []
    notes: list[str] = []
    listed: dict[int, dict[str, int]] = {}
    try:
        await asyncio.gather(*(_start(u, timeout) for u in gateway.upstreams.values()))
        ctx = system_context()
        for kind in ("tools", "prompts", "resourceTemplates"):
            try:
                await asyncio.wait_for(gateway.lister.refresh(ctx, kind), timeout)
            except TimeoutError:
                notes.append(f"listing {kind} timed out after {timeout:g}s")
        defs = gateway.lister.definitions
        others = {s: frozenset(n for (k, srv, n) in defs if srv == s and k in ("tools", "prompts")) for s in servers}
        scanner, context_type = _scanner(notes)
        for name, upstream in gateway.upstreams.items():
            entry = entries[names[name]]
            if upstream.era is None:
                findings.append(_finding(entry, "scan.connect-failed", "low",
                                         f"could not start or reach the server: {upstream.error or 'no answer'}",
                                         entry.path))
                continue
            counts = {k: sum(1 for (kk, srv, _n) in defs if kk == k and srv == name)
                      for k in ("tools", "prompts", "resourceTemplates")}
            listed[names[name]] = counts
            if scanner is None:
                continue
            context = context_type(name, {o: v for o, v in others.items() if o != name})
            instructions = upstream.info.get("instructions")
            if isinstance(instructions, str) and instructions:
                _add_report(findings, entry, "instructions", scanner.scan_instructions(instructions, context))
            for (kind, srv, ident), item in sorted(defs.items()):
                if srv == name:
                    _add_report(findings, entry, f"{kind}/{ident}", scanner.scan_item(kind, item, context))
    finally:
        await gateway.stop()
    return findings, listed, notes


async def _start(upstream: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(upstream.start(), timeout)
    except TimeoutError:
        upstream.error = f"no answer within {timeout:g}s"


def _scanner(notes: list[str]) -> tuple[Any, Any]:
    try:
        from mcpward.integrity.scanner import ScanContext, default_scanner
    except ImportError:
        notes.append("the poisoning scanner is not part of this build: servers were listed, not scanned")
        return None, None
    return default_scanner(), ScanContext


def _finding(entry: ServerEntry, rule: str, severity: str, message: str, path: str) -> Finding:
    return Finding(rule, severity, message, entry.file, entry.name, path, entry.client, entry.line)


def _add_report(findings: list[Finding], entry: ServerEntry, what: str, report: Any) -> None:
    level = int(report.severity)
    if level <= 0:
        return
    severity = ("low", "medium", "high")[min(level, 3) - 1]
    top = sorted(report.findings, key=lambda f: -int(f.severity))[:3]
    detail = "; ".join(f"{f.rule} in {f.field}: {f.evidence[:80]!r}" for f in top)
    findings.append(_finding(entry, "scan.tool-poisoning", severity, f"{what}: {detail}",
                             f"{entry.path} -> {what}"))
