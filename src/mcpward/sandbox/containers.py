"""The docker and podman backends: the server runs in a local image with no network.

Used when an engine answers and the server names an image (`auto` prefers bwrap). Secrets are
bind-mounted read-only from a gateway-owned 0700 directory: `-e` and `--env-file` values show in
`docker inspect`, so a secret declared `as = "env"` is refused here. Egress through the proxy
needs the bwrap backend (a container here has `--network none` and nothing else).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import shutil
from pathlib import Path

from mcpward.audit import events
from mcpward.sandbox.backends import secret_dir
from mcpward.sandbox.plan import CACHE_DIR, SANDBOX_HOME, SECRETS_DIR, SandboxPlan
from mcpward.transport.base import LinkError
from mcpward.transport.stdio_link import plain_child_setup

log = logging.getLogger("mcpward.sandbox")
# Inherited from the plan's environment only when not a secret (those are files).
_RUNTIME_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "USER", "LOGNAME")


def container_args(engine: str, image: str, plan: SandboxPlan, argv: list[str], secrets_dir: Path | None,
                   name: str) -> list[str]:
    """`<engine> run ...` for `plan`: read-only root, no network, no capabilities, limits, a non-root user."""
    lim = plan.limits
    uid = plan.uid if plan.uid is not None else 65534
    a = [engine, "run", "--rm", "-i", "--name", name, "--network", "none", "--read-only",
         "--tmpfs", f"/tmp:rw,size={lim.tmp_size},mode=1777", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", "--user", f"{uid}:{uid}", "--init"]
    if lim.memory is not None:
        a += ["--memory", str(lim.memory), "--memory-swap", str(lim.memory)]
    if lim.pids is not None:
        a += ["--pids-limit", str(lim.pids)]
    if lim.cpu is not None:
        a += ["--cpus", f"{lim.cpu:g}"]
    # Explicit: a root without CAP_SYS_RESOURCE cannot raise limits, and podman tries to unless told.
    a += ["--ulimit", f"nofile={lim.nofile}:{lim.nofile}"]
    for bind in plan.binds:
        a += ["-v", f"{bind.path}:{bind.path}:{'rw' if bind.writable else 'ro'}"]
    if plan.cache_dir is not None:
        a += ["-v", f"{plan.cache_dir}:{CACHE_DIR}:rw"]
    if secrets_dir is not None:
        for file in sorted(plan.files):
            a += ["-v", f"{secrets_dir / file}:{SECRETS_DIR}/{file}:ro"]
    for key in sorted(plan.env):
        a += ["-e", key]  # the value comes from the engine CLI's own environment, not from argv
    a += ["-w", plan.cwd if plan.cwd != SANDBOX_HOME else "/tmp", image, *argv]
    return a


class ContainerSpawner:
    def __init__(self, engine: str, image: str, plan: SandboxPlan, argv: list[str]) -> None:
        self.engine, self.image, self.plan, self.argv = engine, image, plan, argv
        self.name = f"mcpward-{plan.server}-{secrets.token_hex(4)}"
        self._dir: Path | None = None

    def describe(self) -> str:
        return f"[{self.engine} {self.image}] {shlex.join(self.argv)}"

    async def spawn(self, limit: int) -> asyncio.subprocess.Process:
        engine = shutil.which(self.engine)
        if engine is None:
            raise LinkError(f"server {self.plan.server!r}: {self.engine} is not installed")
        if self.plan.files:
            self._dir = secret_dir(self.plan.files, self.plan.uid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.plan.env}
        args = container_args(self.engine, self.image, self.plan, self.argv, self._dir, self.name)
        events.record("sandbox.started", server=self.plan.server, backend=self.engine, image=self.image,
                      uid=self.plan.uid, secrets=sorted(self.plan.files))
        try:
            return await asyncio.create_subprocess_exec(
                engine, *args[1:], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, limit=limit, start_new_session=True,
                preexec_fn=plain_child_setup)
        except OSError as exc:
            await self.cleanup()
            raise LinkError(f"cannot start server {self.plan.server!r}: {exc.strerror}") from None

    async def cleanup(self) -> None:
        engine = shutil.which(self.engine)
        if engine is not None:
            # The CLI dying does not always stop the container: remove it by name.
            with contextlib.suppress(OSError):
                proc = await asyncio.create_subprocess_exec(
                    engine, "rm", "-f", self.name, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
            self._dir = None
        events.record("sandbox.stopped", server=self.plan.server)

