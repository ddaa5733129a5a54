"""The two MCP protocol eras and the `_meta` keys that carry per-request context."""

from __future__ import annotations

from typing import Any, Literal

Era = Literal["legacy", "modern"]

LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
LATEST_LEGACY = LEGACY_VERSIONS[-1]
LATEST_MODERN = MODERN_VERSIONS[-1]

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
RESERVED_META = (META_VERSION, META_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL)

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def negotiate_legacy(requested: Any) -> str:
    """The version a legacy `initialize` answer carries: the client's if we speak it."""
    if isinstance(requested, str) and requested in LEGACY_VERSIONS:
        return requested
    return LATEST_LEGACY


def log_level_allows(threshold: str | None, level: Any, legacy_pair: bool = False) -> bool:
    """Whether a log line at `level` goes to a client with this threshold. Without a threshold, only
    between a legacy client and a legacy server session (`legacy_pair`): a legacy client that never sent
    `logging/setLevel` gets every line, as talking to the server directly (the server chooses what to
    send then). Modern logging is opt-in per request: a modern client without a level asked for none,
    and a modern server was told none was asked for, so what it sends anyway is dropped."""
    if threshold is None:
        return legacy_pair
    if threshold not in LOG_LEVELS:
        return False
    if not isinstance(level, str) or level not in LOG_LEVELS:
        return True
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)
