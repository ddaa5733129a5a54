"""`mcpward policy explain --connect`: ask the real server how it describes a tool."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import system_context


def learn_definition(cfg: GatewayConfig, kind: str, server: str, name: str) -> dict[str, Any]:
    """The server's own listed definition of one tool/prompt ({} when it does not list it).

    Only that server is started, with no guards, so the listing is what the server says.
    Raises ConnectionError when the server cannot be started.
    """
    return asyncio.run(_learn(cfg, kind, server, name))


async def _learn(cfg: GatewayConfig, kind: str, server: str, name: str) -> dict[str, Any]:
    from mcpward.gateway.core import Gateway

    gateway = Gateway(dataclasses.replace(cfg, servers={server: cfg.servers[server]}))
    try:
        upstream = gateway.upstreams[server]
        if upstream.per_principal:
            raise ConnectionError(f"server {server} has per-principal credentials: the gateway has none of its "
                                  "own to list it with")
        await upstream.start()
        if upstream.era is None:
            raise ConnectionError(f"server {server} did not start: {upstream.error}")
        await gateway.lister.refresh(system_context(), kind)
        return gateway.lister.definition(kind, server, name) or {}
    finally:
        await gateway.stop()
