"""The work done between "sandbox built" and "server started", and after it ends.

bwrap stops at `--block-fd` with the sandbox's pid known: the gateway checks that pid is in the
sandbox's cgroups (so nothing the server forks escapes them), moving it only if it is not, plants
the egress proxy's listener in its network namespace, then lets it run. After exit: the proxy closes, the cgroups
go, and what they counted (an OOM kill, a pids limit hit) is audited.

bwrap is started from inside the groups: on a cold start the forked child joins them before it
execs bwrap (sandbox/cgroups.py says why that is fast), with a warm slot (sandbox/warm.py) its
stub was already inside. Either way the server never runs outside its groups.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mcpward.audit import events
from mcpward.sandbox.cgroups import CgroupError, CgroupLimits, CgroupSet
from mcpward.sandbox.plan import SandboxPlan
from mcpward.sandbox.settings import SandboxProfile
from mcpward.transport.base import LinkError

if TYPE_CHECKING:
    from mcpward.sandbox.egress import EgressProxy
    from mcpward.sandbox.egress_policy import EgressDecision, Resolver
    from mcpward.sandbox.warm import WarmSlot

log = logging.getLogger("mcpward.sandbox")
_warned_no_cgroups: set[str] = set()


def cgroup_limits(plan: SandboxPlan) -> CgroupLimits:
    """The groups' limits: the pids limit is one higher than configured, because bwrap's monitor process is a member
    too (it starts inside the groups, cold or warm), so the server keeps exactly its configured count."""
    lim = plan.limits
    return CgroupLimits(memory_bytes=lim.memory, pids=lim.pids + 1 if lim.pids is not None else None, cpu=lim.cpu)


class Barrier:
    def __init__(self, plan: SandboxPlan, profile: SandboxProfile, resolver: Resolver | None,
                 on_decision: Callable[[EgressDecision], None], state_dir: Path,
                 warm: WarmSlot | None = None) -> None:
        self.plan, self.profile, self.state_dir = plan, profile, state_dir
        self.resolver, self.on_decision = resolver, on_decision
        self.proxy: EgressProxy | None = None
        self._done = False
        self.warm = warm
        self.cgroups = warm.cgroups if warm is not None else CgroupSet.create(plan.server, cgroup_limits(plan))
        if self.cgroups is None and plan.server not in _warned_no_cgroups:
            _warned_no_cgroups.add(plan.server)
            log.warning("server %s: no writable cgroups (%s); limits fall back to rlimits",
                        plan.server, CgroupSet.last_problem)

    @property
    def memory_in_cgroup(self) -> bool:
        return self.cgroups is not None and "memory" in self.cgroups.groups

    async def on_child(self, pid: int) -> None:
        # bwrap started inside the groups (its child joined them, or a warm slot's stub was inside), so the sandbox
        # was born a member; the move, which waits on the kernel's slow global lock, is only for when it was not.
        if self.cgroups is not None and not self.cgroups.holds(pid):
            try:
                self.cgroups.attach(pid)
            except CgroupError as exc:
                raise LinkError(f"server {self.plan.server!r}: cannot apply its resource limits: {exc}") from None
        if self.plan.egress and self.resolver is not None:
            from mcpward.sandbox.egress import EgressProxy
            from mcpward.sandbox.netns import PlantError, plant_listener

            try:
                sock = plant_listener(pid)
            except PlantError as exc:
                raise LinkError(f"server {self.plan.server!r}: cannot set up its egress proxy: {exc}") from None
            self.proxy = EgressProxy(self.plan.server, self.profile.egress.policy, self.resolver, self.on_decision)
            await self.proxy.start(sock)
        events.record("sandbox.started", server=self.plan.server, backend="bwrap", uid=self.plan.uid,
                      warm=self.warm is not None and self.warm.launched,
                      cgroups=sorted(self.cgroups.groups) if self.cgroups else [],
                      egress=list(self.profile.egress.allow), secrets=sorted(self.plan.files))

    async def on_exit(self) -> None:
        if self._done:
            return
        self._done = True
        if self.warm is not None and not self.warm.used:
            await self.warm.discard()  # taken but never launched: its stub must not idle on
        if self.proxy is not None:
            await self.proxy.close()
        if self.cgroups is not None:
            stats = self.cgroups.stats()
            await asyncio.to_thread(self.cgroups.remove)
            if stats.get("oom_kill") or stats.get("pids_max_hits"):
                events.record("sandbox.limit-hit", server=self.plan.server, **{
                    k: v for k, v in stats.items() if k in ("oom_kill", "pids_max_hits", "memory_peak")})
        if self.plan.cache_dir is not None:
            from mcpward.sandbox import artifacts

            try:
                files = await asyncio.to_thread(artifacts.record, self.state_dir, self.plan.server, self.plan.cache_dir)
            except (OSError, artifacts.ArtifactError) as exc:
                log.warning("server %s: cannot record its package-cache manifest: %s", self.plan.server, exc)
                files = -1
        events.record("sandbox.stopped", server=self.plan.server,
                      cache_files=files if self.plan.cache_dir is not None else None)
