"""`mcpward secret set|get|list|rm`: manage the values behind `secret:NAME` references.

A value never comes from the command line (shell history, `ps` and audit logs keep argv): it is
read from stdin when that is not a terminal, otherwise typed twice at a prompt without echo.
`get` shows only that a secret exists, its length and a hash prefix unless asked to --reveal it.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from mcpward.gateway.config import ConfigError
from mcpward.secrets.files import strip_one_newline
from mcpward.secrets.settings import PASSPHRASE_ENV, SecretSettings, load_settings
from mcpward.secrets.store import MAX_VALUE, SecretStore, StoreError, check_name, check_value, open_store


class _QuietGroup(TyperGroup):
    """`mcpward secret <value>` (a value typed where the command goes) must not be echoed back by
    click's "No such command '<value>'"."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            ctx.fail("unknown command (not shown, in case it is a secret value); commands: "
                     + ", ".join(sorted(self.commands)))
        return super().resolve_command(ctx, args)


secret_app = typer.Typer(help="Manage the secrets behind secret:NAME references (values never on the command line).",
                         no_args_is_help=True, cls=_QuietGroup)
err = Console(stderr=True)
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="mcpward.toml with the secrets table (default: ./mcpward.toml if it exists).")]
NameArg = Annotated[str, typer.Argument(help="Secret name: [A-Za-z_][A-Za-z0-9_.-]{0,127}.", show_default=False)]
DEFAULT_CONFIG = Path("mcpward.toml")
# Every command takes extra arguments and unknown options itself instead of letting click refuse them: click's own
# errors quote the token ("No such option: --S3cret...", "unexpected extra argument (S3cret...)"), and a stray token
# on a secrets command is most likely a value. _refuse_extra then refuses without showing it.
TAKE_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _refuse_extra(ctx: typer.Context, usage: str) -> None:
    if ctx.args:
        raise _fail(f"{len(ctx.args)} unexpected argument(s), not shown (one may be a secret value); usage: "
                    f"mcpward secret {usage}", 2)


def load_secret_settings(config: Path | None) -> SecretSettings:
    """Only the [secrets] table is read, so a config whose other sections are being edited, or that
    names servers which cannot start here, does not stand between an operator and their secrets."""
    path = config if config is not None else DEFAULT_CONFIG
    if config is None and not path.exists():
        return SecretSettings(base_dir=Path.cwd())
    source = str(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        # The name is not shown: click reads "-cS3cret" as "-c S3cret", so a value typed there by mistake would be.
        raise _fail("config error: the file given with -c/--config does not exist (its name is not shown, in case "
                    "it is a value typed right after -c)", 2) from None
    except OSError as exc:
        raise _fail(f"config error {source}: cannot read the file: {exc.strerror}", 2) from None
    except UnicodeDecodeError:
        raise _fail(f"config error {source}: the file is not UTF-8 text", 2) from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(f"config error {source}: invalid TOML: {exc}", 2) from None
    table = data.get("secrets", {})
    if not isinstance(table, dict):
        raise _fail(f"config error {source}: secrets: expected a table", 2)
    try:
        return load_settings(table, source, path.resolve().parent)
    except ConfigError as exc:
        raise _fail(f"config error {exc}", 2) from None


def _ask_passphrase(confirm_new: bool) -> str:
    # getpass falls back to reading stdin (with echo) when there is no terminal; stdin may be the
    # secret being stored, so without a terminal we refuse instead.
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise StoreError(f"no terminal to ask for the store's passphrase: set {PASSPHRASE_ENV}") from None
    first = getpass.getpass("Passphrase for the secret store: ")
    if confirm_new and getpass.getpass("New store: the same passphrase again: ") != first:
        raise StoreError("the two passphrases differ; nothing was written")
    return first


def _store(config: Path | None) -> SecretStore:
    return open_store(load_secret_settings(config), prompt=_ask_passphrase)


def _read_value(name: str, from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        raw = sys.stdin.buffer.read(MAX_VALUE + 3)
        try:
            return strip_one_newline(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise StoreError("the value on stdin is not UTF-8 text") from None
    first = getpass.getpass(f"Value for {name}: ")
    if getpass.getpass(f"Value for {name} again: ") != first:
        raise StoreError("the two values differ; nothing was written")
    return first


@secret_app.command("set", context_settings=TAKE_EXTRA)
def set_command(
    ctx: typer.Context,
    name: NameArg,
    from_stdin: Annotated[bool, typer.Option("--from-stdin", help="Read the value from stdin even on a terminal.")]
    = False,
    config: ConfigOpt = None,
) -> None:
    """Store a secret. The value comes from stdin (piped) or a prompt, never from an argument."""
    if ctx.args:
        # Not echoed, nor is the name: a value may stand on either side of it.
        raise _fail("a value is never taken from the command line (shell history and ps would keep it); "
                    "pipe it in (`... | mcpward secret set NAME`) or type it at the prompt", 2)
    try:
        check_name(name)
        value = _read_value(name, from_stdin)
        check_value(name, value)
        store = _store(config)
        store.set(name, value)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    Console().print(f"stored {escape(name)} in {escape(store.location)}", highlight=False, soft_wrap=True)


@secret_app.command("get", context_settings=TAKE_EXTRA)
def get_command(
    ctx: typer.Context,
    name: NameArg,
    reveal: Annotated[bool, typer.Option("--reveal", help="Print the value itself.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Whether a secret is set, its length and a sha256 prefix; the value only with --reveal."""
    _refuse_extra(ctx, "get NAME [--reveal] [-c CONFIG]")
    try:
        check_name(name)
        store = _store(config)
        value = store.get(name)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    if value is None:
        raise _fail(f"no secret named {name} in {store.location}")
    if reveal:
        sys.stdout.write(value + "\n")  # plain write: rich would interpret markup in the value
        return
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]
    Console().print(f"{escape(name)}: set in {escape(store.location)}, {len(value)} characters, sha256 {digest}…",
                    highlight=False, soft_wrap=True)


@secret_app.command("list", context_settings=TAKE_EXTRA)
def list_command(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """The names in the store, one per line (never values)."""
    _refuse_extra(ctx, "list [-c CONFIG]")
    try:
        store = _store(config)
        names = store.names()
    except StoreError as exc:
        raise _fail(str(exc)) from None
    if not names:
        err.print(f"no secrets in {escape(store.location)}", highlight=False, soft_wrap=True)
    for name in names:
        sys.stdout.write(name + "\n")


@secret_app.command("rm", context_settings=TAKE_EXTRA)
def rm_command(ctx: typer.Context, name: NameArg, config: ConfigOpt = None) -> None:
    """Remove a secret from the store."""
    _refuse_extra(ctx, "rm NAME [-c CONFIG]")
    try:
        check_name(name)
        store = _store(config)
        removed = store.delete(name)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    if not removed:
        raise _fail(f"no secret named {name} in {store.location}")
    Console().print(f"removed {escape(name)} from {escape(store.location)}", highlight=False, soft_wrap=True)
