"""`mcpward audit verify|tail|search|export`: check and read the hash-chained audit log.

They read the SQLite file named by `[audit] path` (or `--file`), read-only, so they work next to a
running gateway, and warn when a gateway that died left records in its journal (the next start
adds them; see audit/journal.py). `verify` exits 0 when the chain is intact, 1 when it is broken (naming the first
bad record), 2 for a usage or config problem.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape as markup_escape

from mcpward.audit.chain import VerifyError, verify
from mcpward.audit.export import SELECT_ALL, StoredRow, connect_ro, display_line, export_jsonl
from mcpward.audit.settings import AuditSettings, config_key, load_settings, resolve_key
from mcpward.gateway.config import ConfigError
from mcpward.guards.log_redaction import escape

audit_app = typer.Typer(help="Verify, read and export the tamper-evident audit log.", no_args_is_help=True)
err = Console(stderr=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                                                help="Path to mcpward.toml (default: ./mcpward.toml).")]
FileOpt = Annotated[Path | None, typer.Option("--file", help="An audit log (.sqlite) or JSONL export, instead of "
                                              "the one the config names.")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="Secret reference of the HMAC key (e.g. secret:audit-key), "
                                            "when it is not taken from the config.")]
RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
FOLLOW_INTERVAL = 0.5


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error[/] {markup_escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _settings(config: Path | None) -> tuple[Any, AuditSettings]:
    from mcpward.cli.main import _load

    cfg = _load(config or Path("mcpward.toml"))
    try:
        return cfg, load_settings(cfg)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _source(config: Path | None, file: Path | None) -> Path:
    """The log to read: `--file`, else the config's `[audit] path` (which must exist)."""
    if file is not None:
        path = file
    else:
        _, settings = _settings(config)
        if not settings.enabled:
            err.print("[yellow]note[/] [audit] enabled = false in this config; reading the file it names anyway",
                      highlight=False)
        path = settings.path
    if not path.is_file():
        raise _fail(f"no audit log at {path}")
    _warn_unfinished(path)
    return path


def _warn_unfinished(path: Path) -> None:
    """Acknowledged records a gateway that died left in its journal are not in the chain yet: say so."""
    from mcpward.audit.journal import unfinished

    for journal, lines in unfinished(path):
        err.print(f"[yellow]warning[/] {markup_escape(str(journal))}: the journal of a process that stopped without "
                  f"closing the log holds {lines} records; the next start of the gateway adds the ones not yet in "
                  "the chain", highlight=False, soft_wrap=True)


def _key(config: Path | None, file: Path | None, key_ref: str | None) -> bytes | None:
    """The HMAC key: `--key`, else the config's `[audit] key` (when a config is used)."""
    if key_ref is not None:
        from mcpward.secrets.refs import parse_ref
        from mcpward.secrets.resolve import SecretResolver
        from mcpward.secrets.settings import load_settings as secret_settings

        if config is not None or file is None:
            from mcpward.cli.main import _load

            cfg = _load(config or Path("mcpward.toml"))
            table, source, base = cfg.secrets, cfg.source, cfg.base_dir
        else:
            table, source, base = {}, "--key", Path.cwd()
        try:
            resolver = SecretResolver(secret_settings(table, source, base))
            return resolve_key(AuditSettings(key_ref=key_ref, source="--key"),
                               lambda text: resolver.resolve(parse_ref(text)))
        except ConfigError as exc:
            raise _fail(str(exc)) from None
    if file is not None and config is None:
        return None
    cfg, settings = _settings(config)
    try:
        return config_key(cfg, settings)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@audit_app.command("verify")
def verify_command(
    config: ConfigOpt = None,
    file: FileOpt = None,
    key: KeyOpt = None,
    anchor: Annotated[str | None, typer.Option("--anchor", help="A head hash recorded earlier: also proves that no "
                                                                "record up to it was cut off the end.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check the hash chain; name the first edited, deleted or reordered record (and, for a keyed log, a cut tail)."""
    path = _source(config, file)
    secret = _key(config, file, key)
    if anchor is not None and not re.fullmatch(r"[0-9a-f]{64}", anchor):
        raise _fail("--anchor must be a 64-digit lowercase hex hash, as verify prints it")
    try:
        report = verify(path, secret, anchor)
    except VerifyError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(orjson.dumps({"file": str(path), "ok": report.ok, "records": report.records,
                                       "first_bad": report.first_bad, "reason": report.reason,
                                       "head": report.head, "algorithm": report.algorithm}).decode() + "\n")
    elif report.ok:
        Console().print(f"[green]ok[/] {report.records} records verified ({report.algorithm}) in "
                        f"{markup_escape(str(path))}\nhead {report.head}", highlight=False, soft_wrap=True)
    else:
        where = f"first bad record: {report.first_bad}\n" if report.first_bad is not None else ""
        Console().print(f"[bold red]BROKEN[/] {markup_escape(str(path))}\n{where}reason: "
                        f"{markup_escape(report.reason or '')}\n{report.records} records before it verified; "
                        f"last good hash {report.head}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return escape(text)  # the file may have been edited: never let it drive the terminal


def _human(row: StoredRow) -> str:
    seq, ts, event, body, _, _ = row
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        fields = {"body": body}
    pairs = " ".join(f"[cyan]{markup_escape(escape(str(k)))}[/]={markup_escape(_value(v))}"
                     for k, v in (fields.items() if isinstance(fields, dict) else [("fields", fields)]))
    colour = "red" if "refus" in event or "denied" in event else "yellow" if "held" in event else "bold"
    return f"[dim]{_when(ts)}[/] #{seq} [{colour}]{markup_escape(escape(event))}[/] {pairs}"


def _open(path: Path) -> sqlite3.Connection:
    try:
        db = connect_ro(path)
        db.execute("SELECT 1 FROM records LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise _fail(f"{path}: not an mcpward audit log ({exc})") from None
    return db


def _print(rows: list[StoredRow], as_json: bool, out: Console) -> None:
    for row in rows:
        if as_json:
            sys.stdout.buffer.write(display_line(row))  # an edited body never reaches the terminal raw
        else:
            out.print(_human(row), highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.flush()


@audit_app.command("tail")
def tail_command(
    config: ConfigOpt = None,
    file: FileOpt = None,
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, help="How many of the latest records.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records (Ctrl-C ends).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per record.")] = False,
) -> None:
    """The latest records, one line each."""
    db = _open(_source(config, file))
    out = Console()
    rows = db.execute(SELECT_ALL + " ORDER BY seq DESC LIMIT ?", (lines,)).fetchall()[::-1]
    _print(rows, as_json, out)
    if not follow:
        return
    last = rows[-1][0] if rows else (db.execute("SELECT max(seq) FROM records").fetchone()[0] or 0)
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            rows = db.execute(SELECT_ALL + " WHERE seq > ? ORDER BY seq LIMIT 1000", (last,)).fetchall()
            if rows:
                _print(rows, as_json, out)
                last = rows[-1][0]
    except KeyboardInterrupt:
        return


def parse_since(text: str, now: float | None = None) -> float:
    """`-1h`, `30m`, `2d` (that long ago) or an ISO date/time (local time unless it names a zone)."""
    now = time.time() if now is None else now
    m = RELATIVE.match(text.strip())
    if m:
        return now - float(m.group(1)) * UNITS[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since: not a time: {text!r:.40} (use -1h, 30m, 2d or an ISO time)") from None
    return when.timestamp()


@audit_app.command("search")
def search_command(
    config: ConfigOpt = None,
    file: FileOpt = None,
    event: Annotated[str | None, typer.Option("--event", help="Event name; * and ? match any text.")] = None,
    principal: Annotated[str | None, typer.Option("--principal", help="Who: a subject, or kind:subject.")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="The rule that decided.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="-1h, 30m, 2d, or an ISO date/time.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Case-insensitive text anywhere in the record.")] = None,
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, help="At most this many (the latest).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per record.")] = False,
) -> None:
    """Records that match every filter given, oldest first."""
    where: list[str] = []
    params: list[Any] = []
    if event is not None:
        where.append("event GLOB ?")
        params.append(event)
    if principal is not None:
        where.append("(json_extract(body, '$.principal') = ? OR substr(json_extract(body, '$.principal'), "
                     "-length(?) - 1) = ':' || ?)")
        params += [principal, principal, principal]
    if rule is not None:
        where.append("json_extract(body, '$.rule') = ?")
        params.append(rule)
    if since is not None:
        try:
            where.append("ts >= ?")
            params.append(parse_since(since))
        except ValueError as exc:
            raise _fail(str(exc)) from None
    if text is not None:
        where.append("(instr(lower(body), lower(?)) > 0 OR instr(lower(event), lower(?)) > 0)")
        params += [text, text]
    db = _open(_source(config, file))
    query = SELECT_ALL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
    rows = db.execute(query, [*params, limit]).fetchall()[::-1]
    _print(rows, as_json, Console())
    if not as_json:
        err.print(f"{len(rows)} records", highlight=False)


@audit_app.command("export")
def export_command(
    jsonl: Annotated[str, typer.Option("--jsonl", help="Output file, or - for stdout.")],
    config: ConfigOpt = None,
    file: FileOpt = None,
) -> None:
    """Write the whole log as JSON lines (header + one record a line); `audit verify --file` checks it."""
    path = _source(config, file)
    _open(path).close()
    try:
        count = export_jsonl(path, sys.stdout.buffer if jsonl == "-" else Path(jsonl))
    except OSError as exc:
        raise _fail(f"{jsonl}: cannot write: {exc.strerror}") from None
    except sqlite3.DatabaseError as exc:
        raise _fail(f"{path}: cannot read: {exc}") from None
    err.print(f"{count} records exported", highlight=False)
