"""Where counters live: this process's memory, or a Redis that several gateway replicas share."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

from limits.aio.storage import RedisStorage, Storage

from mcpward.limits.memory import ClockedMemoryStorage
from mcpward.limits.settings import LimitsSettings

KEY_PREFIX = "mcpward-limits"  # the Redis may serve other applications too


def make_storage(settings: LimitsSettings, clock: Callable[[], float] = time.time) -> Storage:
    """The storage the settings name. Redis is reached through `limits.aio` (coredis), so a slow
    Redis never blocks the event loop; each round trip is bounded by `storage_timeout`."""
    if not settings.uses_redis:
        return ClockedMemoryStorage(clock=clock)
    options: dict[str, float | str | bool] = {
        "stream_timeout": settings.storage_timeout,
        "connect_timeout": settings.storage_timeout,
    }
    if settings.storage_password is not None:
        options["password"] = settings.storage_password
    return RedisStorage(f"async+{settings.storage}", wrap_exceptions=True, implementation="coredis",
                        key_prefix=KEY_PREFIX, **options)


def describe(storage_uri: str) -> str:
    """The storage as it may appear in logs and audit records: scheme, host and port only."""
    parts = urllib.parse.urlsplit(storage_uri)
    if parts.scheme == "memory":
        return "memory"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"
