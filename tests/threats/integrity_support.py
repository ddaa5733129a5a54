"""Helpers for the integrity threat tests: servers that publish given tool definitions, audit reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp.types as types
from mcp import Client

from tests.conftest import FIXTURES, PYTHON


def described(tmp_path: Path, server: str, tools: list[dict[str, Any]], instructions: str | None = None) -> str:
    """A `[servers.<server>]` table for described_server.py publishing exactly `tools`."""
    spec = tmp_path / f"{server}-tools.json"
    spec.write_text(json.dumps(tools))
    args = [str(FIXTURES / "described_server.py"), "--tools", str(spec)]
    if instructions is not None:
        args += ["--instructions", instructions]
    return f'[servers.{server}]\ncommand = "{PYTHON}"\nargs = {json.dumps(args)}\n'


def tool(name: str, description: str, properties: dict[str, Any] | None = None,
         annotations: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "description": description,
                           "inputSchema": {"type": "object", "properties": properties or {}}}
    if annotations is not None:
        out["annotations"] = annotations
    return out


def client(url: str) -> Client:
    return Client(url, client_info=types.Implementation(name="threat-test", version="1.0"), read_timeout_seconds=30)


async def names(c: Client) -> set[str]:
    return {t.name for t in (await c.list_tools()).tools}


def audit(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    """The gateway's audit records of one event, from every gateway log in tmp_path."""
    records = []
    for log in sorted(tmp_path.glob("gw-*.log")):
        for line in log.read_text().splitlines():
            _, sep, body = line.partition("mcpward.audit: ")
            if sep and f'"event":"{event}"' in body:
                records.append(json.loads(body))
    return records
