"""`mcpward auth key new NAME [--group G]...`: make an API key for the HTTP front.

The key is printed once, alone on stdout, so it can be piped straight into wherever the client
keeps it; it is not stored anywhere. The TOML snippet for mcpward.toml goes to stderr and holds
only the key's sha256, so pasting the snippet into a config (or a ticket) does not leak the key.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mcpward.auth.api_keys import key_digest, new_key
from mcpward.auth.settings import KEY_NAME

auth_app = typer.Typer(help="Credentials for the HTTP front (API keys).", no_args_is_help=True)
key_app = typer.Typer(help="Static API keys: `Authorization: Bearer mcpw_...`.", no_args_is_help=True)
auth_app.add_typer(key_app, name="key")
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def snippet(name: str, digest: str, groups: list[str]) -> str:
    """The `[auth.api_keys.NAME]` table for a key; TOML basic strings, escaped."""
    lines = [f"[auth.api_keys.{name}]", f'sha256 = "{digest}"']
    if groups:
        lines.append("groups = [" + ", ".join(_toml_string(g) for g in groups) + "]")
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


@key_app.command("new")
def new_command(
    name: Annotated[str, typer.Argument(
        help="The key's name (the principal's subject): [A-Za-z0-9][A-Za-z0-9_-]{0,63}.", show_default=False)],
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="A group for the policy; repeatable.")]
    = None,
) -> None:
    """Print a fresh key once on stdout and its config snippet (hash only) on stderr."""
    if not KEY_NAME.match(name):
        raise _fail("a key name must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}")
    groups = list(dict.fromkeys(group or []))
    if any(not g for g in groups):
        raise _fail("a group must not be empty")
    key = new_key()
    sys.stdout.write(key + "\n")
    sys.stdout.flush()
    err.print("# Add to mcpward.toml (the key above is shown only now; only its hash is kept):",
              highlight=False, soft_wrap=True)
    # Plain write: rich would read markup in group names.
    sys.stderr.write(snippet(name, key_digest(key), groups))
