"""Which backend runs a server, and the explicit, loud `none` backend.

`auto` picks the strongest backend that works here: bwrap when its probe succeeds, else a
container engine when one answers and the server names an image. With none of them, the server
does not start: running untrusted code on the host is never a silent fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from mcpward.audit import events
from mcpward.gateway.config import ServerConfig
from mcpward.sandbox.probe import HostCapabilities
from mcpward.sandbox.settings import SandboxProfile
from mcpward.transport.base import LinkError
from mcpward.transport.stdio_link import PlainSpawner

log = logging.getLogger("mcpward.sandbox")


def choose_backend(profile: SandboxProfile, caps: HostCapabilities) -> str:
    """"bwrap", "docker" or "podman" for this server here; LinkError (naming why) when none fits."""
    wanted = profile.backend
    if wanted in ("bwrap", "auto") and caps.bwrap_works:
        return "bwrap"
    if wanted == "bwrap":
        raise LinkError(f"backend bwrap is not usable here: {caps.bwrap_problem or 'bwrap not found'}")
    engines = {"docker": caps.docker, "podman": caps.podman}
    problems = {"docker": caps.docker_problem, "podman": caps.podman_problem}
    if wanted in engines:
        if engines[wanted] is None:
            raise LinkError(f"backend {wanted} is not usable here: {problems[wanted] or 'no engine answers'}")
        return wanted
    if profile.image:
        for engine in ("podman", "docker"):
            if engines[engine] is not None:
                return engine
    raise LinkError("no sandbox backend works here (bwrap: "
                    f"{caps.bwrap_problem or 'not found'}; no container engine with an image), so this "
                    "server does not start; install bubblewrap, or opt out with backend = \"none\" and "
                    "acknowledge_unsandboxed = true")


class UnsandboxedSpawner(PlainSpawner):
    """`backend = "none"`: the host, with the operator's acknowledgement. Still a scrubbed environment;
    secret files go to a private directory that is removed when the server stops."""

    def __init__(self, server: ServerConfig, env: dict[str, str], files: dict[str, bytes]) -> None:
        assert server.command is not None
        super().__init__(server.name, server.command, server.args, env, server.cwd)
        self.files = files
        self._dir: Path | None = None

    def describe(self) -> str:
        return "[UNSANDBOXED] " + super().describe()

    async def spawn(self, limit: int) -> asyncio.subprocess.Process:
        log.warning("server %s runs UNSANDBOXED on the host (backend = \"none\"): it can read and write "
                    "whatever the gateway can and reach any network", self.name)
        events.record("sandbox.unsandboxed", server=self.name)
        if self.files:
            self._dir = secret_dir(self.files)
            self.env.update({f"{name}_FILE": str(self._dir / name) for name in self.files})
        try:
            return await super().spawn(limit)
        except LinkError:
            await self.cleanup()
            raise

    async def cleanup(self) -> None:
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
            self._dir = None


def secret_dir(files: dict[str, bytes], owner: int | None = None) -> Path:
    """A fresh 0700 directory of 0400 secret files, for backends that cannot take them by descriptor;
    `owner`: the uid the server runs as (it must read them). The caller removes it when the server stops."""
    directory = Path(tempfile.mkdtemp(prefix="mcpward-secrets-"))
    for name, value in files.items():
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
        if owner is not None:
            os.chown(directory / name, owner, owner)
    return directory


def unsandboxed_spawner(server: ServerConfig, env: dict[str, str], files: dict[str, bytes]) -> UnsandboxedSpawner:
    return UnsandboxedSpawner(server, env, files)
