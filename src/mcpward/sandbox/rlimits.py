"""Per-process resource limits, the second layer under cgroups (and the only one when cgroups are unavailable).

apply() runs in the forked child just before exec (subprocess `preexec_fn`), so it does nothing but setrlimit calls:
no imports, no logging, no locks. The limits are inherited through bwrap by the server and everything it starts.

Limits are only ever lowered: both soft and hard are set to min(requested, current hard), so the sandboxed process
cannot raise them back, and we never ask for more than we have (root here lacks CAP_SYS_RESOURCE; raising would fail).
Notes from measurements (../shared/notes/sandbox.md section 4): RLIMIT_NPROC is not enforced for uid 0 and counts all
processes of the uid, so it only means something for a dedicated sandbox uid; RLIMIT_CPU counts total CPU seconds,
so it ends long-lived servers and should be generous.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["Rlimits", "apply", "settings"]

_INF = resource.RLIM_INFINITY
_CPU_GRACE_S = 1  # soft limit -> SIGXCPU (a recognisable exit), hard one second later -> SIGKILL


@dataclass(frozen=True)
class Rlimits:
    """None means "leave as inherited". core=0 keeps a crashing server from dumping its memory (secrets) to disk."""

    nofile: int
    nproc: int | None = None
    address_space: int | None = None
    file_size: int | None = None
    cpu_seconds: int | None = None
    core: int = 0

    def __post_init__(self) -> None:
        for name in ("nofile", "nproc", "address_space", "file_size", "cpu_seconds", "core"):
            value = getattr(self, name)
            if value is None and name not in ("nofile", "core"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"rlimit {name} must be a non-negative integer")
        if self.nofile < 3:
            raise ValueError("rlimit nofile must be at least 3 (stdin, stdout and stderr)")
        if self.nproc is not None and self.nproc < 1:
            raise ValueError("rlimit nproc must be at least 1")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise ValueError("rlimit cpu_seconds must be at least 1")


def _lower(kind: int, soft: int, hard: int | None = None) -> None:
    _, cur_hard = resource.getrlimit(kind)
    if hard is None:
        hard = soft
    if cur_hard != _INF:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    resource.setrlimit(kind, (soft, hard))


def settings(limits: Rlimits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for each limit to set, in the order apply() sets them."""
    out = [(resource.RLIMIT_NOFILE, limits.nofile, limits.nofile), (resource.RLIMIT_CORE, limits.core, limits.core)]
    if limits.nproc is not None:
        out.append((resource.RLIMIT_NPROC, limits.nproc, limits.nproc))
    if limits.address_space is not None:
        out.append((resource.RLIMIT_AS, limits.address_space, limits.address_space))
    if limits.file_size is not None:
        out.append((resource.RLIMIT_FSIZE, limits.file_size, limits.file_size))
    if limits.cpu_seconds is not None:
        out.append((resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + _CPU_GRACE_S))
    return out


def apply(limits: Rlimits) -> None:
    """Set the limits on the calling process. Raises OSError/ValueError from setrlimit (in preexec_fn this aborts the
    spawn, which is the fail-closed outcome we want)."""
    for kind, soft, hard in settings(limits):
        _lower(kind, soft, hard)
