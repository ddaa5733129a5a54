"""Shared by the sandbox threat tests: a gateway whose stderr (logs and audit) a test can read."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, MCPWARD, PYTHON, with_policy
from tests.rawclient import RawStdioClient

ESCAPE = FIXTURES / "escape_server.py"


def need_bwrap() -> None:
    from mcpward.sandbox import probe

    caps = probe.probe()
    if not caps.bwrap_works:
        pytest.skip(f"bubblewrap does not work here: {caps.bwrap_problem}")


class Gateway(RawStdioClient):
    """`mcpward run` as a subprocess; `log()` is everything it wrote to stderr so far."""

    log_path: Path

    @classmethod
    async def launch(cls, tmp_path: Path, config: str, env: dict[str, str] | None = None) -> Gateway:
        path = tmp_path / "mcpward.toml"
        state = tmp_path / "state"
        text = config if "[sandbox]" in config else config + f'\n[sandbox]\nstate_dir = "{state}"\n'
        path.write_text(with_policy(text))
        log_path = tmp_path / "gateway.log"
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                MCPWARD, "run", "-c", str(path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=log, env={**os.environ, **(env or {})}, limit=64 * 1024 * 1024)
        gw = cls(proc)
        gw.log_path = log_path
        return gw

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if "mcpward.audit:" in line:
                record = json.loads(line.split("mcpward.audit: ", 1)[1])
                if record.get("event") == event:
                    out.append(record)
        return out

    async def attempt(self, tool: str, name: str, target: str = "", timeout: float = 60) -> dict[str, Any]:
        reply = await self.call(tool, {"name": name, "target": target}, timeout=timeout)
        assert "result" in reply, reply
        text = reply["result"]["content"][0]["text"]
        result: dict[str, Any] = json.loads(text)
        return result


def escape_server(name: str = "box", extra: str = "") -> str:
    return f"""
[servers.{name}]
command = "{PYTHON}"
args = ["{ESCAPE}"]
{extra}
"""


def world_readable_copy(src: Path, dst: Path) -> Path:
    """Test data a sandbox uid may read (pytest's tmp directories are root-only)."""
    shutil.copy(src, dst)
    dst.chmod(0o644)
    return dst
