"""fastmcp's proxy (`fastmcp==4.1.2`, `create_proxy`) as a benchmark peer. Runs in the bench venv, not the project's.

    .bench-out/venv-fastmcp/bin/python bench/fastmcp_proxy.py [--http PORT] --url http://127.0.0.1:3191/mcp
    .bench-out/venv-fastmcp/bin/python bench/fastmcp_proxy.py [--http PORT] -- /path/to/python bench/raw_server.py

Defaults are kept (a fresh backend client per request, mirroring the front's era), except JSON
responses on HTTP and no banner. `--reuse` instead hands `create_proxy` one connected
`fastmcp.Client`, which fastmcp then reuses for every request (its documented fast path; it
warns about context mixing between concurrent clients).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")

from fastmcp import Client
from fastmcp.server import create_proxy


async def serve_reusing(target: Any, http: int | None) -> None:
    async with Client(target) as client:
        proxy = create_proxy(client, name="bench-fastmcp-proxy")
        if http is None:
            await proxy.run_async("stdio", show_banner=False)
        else:
            await proxy.run_async("http", show_banner=False, host="127.0.0.1", port=http, json_response=True,
                                  log_level="WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, default=None, help="serve Streamable HTTP on this port")
    parser.add_argument("--url", help="upstream Streamable HTTP URL")
    parser.add_argument("--reuse", action="store_true", help="one connected backend Client for all requests")
    parser.add_argument("command", nargs="*", help="upstream stdio command (after --)")
    args = parser.parse_args()
    if bool(args.url) == bool(args.command):
        parser.error("give exactly one of --url or an upstream command")
    target: Any = args.url or {"mcpServers": {"raw": {"command": args.command[0], "args": args.command[1:]}}}
    if args.reuse:
        asyncio.run(serve_reusing(target, args.http))
        return
    proxy = create_proxy(target, name="bench-fastmcp-proxy")
    if args.http is None:
        proxy.run("stdio", show_banner=False)
    else:
        proxy.run("http", show_banner=False, host="127.0.0.1", port=args.http, json_response=True,
                  log_level="WARNING")


if __name__ == "__main__":
    main()
