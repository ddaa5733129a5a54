"""The docker and podman backends: the server runs in a local image with no network.

Used when an engine answers and the server names an image (`auto` prefers bwrap). Secrets are
bind-mounted read-only from a gateway-owned 0700 directory: `-e` and `--env-file` values show in
`docker inspect`, so a secret declared `as = "env"` is refused here. Egress through the proxy
needs the bwrap backend (a container here has `--network none` and nothing else).

A bind reaches the engine as a path string (its daemon or runtime resolves it, so a descriptor
cannot be handed over as bwrap's are). So each bind's path is re-checked just before the argv is
built: opened one component at a time without following symlinks and compared to the identity the
plan recorded. A path now through a symlink, or naming another file, is refused, never bound. The
engine's own resolution still comes after that check (when it creates the container): a window far
shorter than the plan-to-start gap, but not closed as it is with bwrap.
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
from mcpward.sandbox.paths import Bind, BindRefused, open_exact
from mcpward.sandbox.plan import CACHE_DIR, SANDBOX_HOME, SECRETS_DIR, SandboxPlan
from mcpward.transport.base import LinkError
from mcpward.transport.stdio_link import plain_child_setup

log = logging.getLogger("mcpward.sandbox")
# Inherited from the plan's environment only when not a secret (those are files).
_RUNTIME_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "USER", "LOGNAME")


class BindPathRefused(BindRefused):
    """A bind path the engine's `-v` syntax cannot carry as it is (rule `sandbox.bind-path`)."""


def bind_source(bind: Bind) -> str:
    """The host path handed to the engine for `bind`: the plan's resolved path, if it still reaches
    exactly what was checked with no symlink on the way; BindRefused (naming the rule) if not."""
    text = str(bind.path)
    # `-v SRC:DST:MODE` is split on ':'; a control character has no business in a bind path.
    if ":" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BindPathRefused(f"{text!r}: a container bind path cannot contain ':' or a control character")
    if not bind.path.is_absolute() or ".." in bind.path.parts:
        raise BindPathRefused(f"{text}: a container bind path must be absolute and resolved")
    try:
        fd = open_exact(bind.path)  # an intermediate symlink fails here (ENOTDIR), a final one is the link
    except OSError as exc:
        raise BindRefused(f"{text}: changed since it was checked ({exc.strerror}); not bound") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if bind.ident is None or (st.st_dev, st.st_ino) != bind.ident:
        raise BindRefused(f"{text}: is no longer what was checked (replaced or made a symlink since the plan); "
                          "not bound")
    return text


def container_args(engine: str, image: str, plan: SandboxPlan, argv: list[str], secrets_dir: Path | None,
                   name: str) -> list[str]:
    """`<engine> run ...` for `plan`: read-only root, no network, no capabilities, limits, a non-root user.
    BindRefused if a bind no longer reaches what the plan checked."""
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
    if lim.pids is not None:  # likewise: podman raises RLIMIT_NPROC otherwise, and that start fails
        a += ["--ulimit", f"nproc={lim.pids}:{lim.pids}"]
    for bind in plan.binds:
        source = bind_source(bind)
        a += ["-v", f"{source}:{source}:{'rw' if bind.writable else 'ro'}"]
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
        try:
            args = container_args(self.engine, self.image, self.plan, self.argv, self._dir, self.name)
        except BindRefused as exc:
            self._drop_dir()  # nothing was started: only the secret files to remove
            rule = "sandbox.bind-path" if isinstance(exc, BindPathRefused) else "sandbox.bind-changed"
            events.record("sandbox.refused", server=self.plan.server, rule=rule, reason=f"refused to bind {exc}")
            raise LinkError(f"server {self.plan.server!r} not started: refused to bind {exc}") from None
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
        self._drop_dir()
        events.record("sandbox.stopped", server=self.plan.server)

    def _drop_dir(self) -> None:
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
            self._dir = None

