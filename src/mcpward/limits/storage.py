"""Where counters live: this process's memory, or a Redis that several gateway replicas share."""

from __future__ import annotations

import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from limits.aio.storage import RedisStorage, Storage

from mcpward.limits.memory import ClockedMemoryStorage
from mcpward.limits.settings import LimitsSettings

KEY_PREFIX = "mcpward-limits"  # the Redis may serve other applications too


def make_storage(settings: LimitsSettings, clock: Callable[[], float] = time.time) -> Storage:
    """The storage the settings name. Redis is reached through `limits.aio` (coredis), so a slow
    Redis never blocks the event loop; each round trip is bounded by `storage_timeout`."""
    if not settings.uses_redis:
        return ClockedMemoryStorage(clock=clock)
    # Imported here: coredis takes about a third of a second to import, which every gateway start
    # (and every CLI command that reads the limits settings) paid even with the default memory storage.
    from coredis.exceptions import ConnectionError as RedisConnectionError
    from coredis.retry import ConstantRetryPolicy

    options: dict[str, Any] = {
        "stream_timeout": settings.storage_timeout,
        "connect_timeout": settings.storage_timeout,
        # coredis retries a timed-out command twice by default, so a slow Redis held each call
        # for three times storage_timeout. A timeout is not retried here; a connection that could
        # not be opened is (a burst of new connections on a busy event loop can miss the connect
        # timeout, and a refused connect costs nothing to retry).
        "retry_policy": ConstantRetryPolicy((RedisConnectionError,), 2, 0.01),
    }
    if settings.storage.startswith("rediss:"):
        # Without a context of our own coredis builds one that skips the hostname check, so any
        # certificate the trusted CAs signed, for any name, would pass.
        options["ssl_context"] = tls_context(settings.storage_ca_cert)
    if settings.storage_password is not None:
        options["password"] = settings.storage_password
    return RedisStorage(f"async+{settings.storage}", wrap_exceptions=True, implementation="coredis",
                        key_prefix=KEY_PREFIX, **options)


def tls_context(ca_cert: str | None) -> ssl.SSLContext:
    """Certificate required and its name checked against the host dialled; the system's CAs, or
    only `storage_ca_cert` when a private CA signs the Redis certificate."""
    context = ssl.create_default_context(cafile=ca_cert)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe(storage_uri: str) -> str:
    """The storage as it may appear in logs and audit records: scheme, host and port only."""
    parts = urllib.parse.urlsplit(storage_uri)
    if parts.scheme == "memory":
        return "memory"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"
