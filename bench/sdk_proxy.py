"""A minimal pass-through MCP proxy built on the `mcp` SDK (low-level `Server` + `Client`): a benchmark peer.

    python bench/sdk_proxy.py [--http PORT] --url http://127.0.0.1:3191/mcp
    python bench/sdk_proxy.py [--http PORT] -- /path/to/python bench/raw_server.py

Front: stdio (default) or Streamable HTTP on 127.0.0.1:PORT/mcp with JSON responses.
Back: one shared upstream `Client` (stdio command or URL, era auto-probed). Only what the
benchmark needs is forwarded (tools/list, tools/call), the shape of protocol.md §3.3.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import mcp.types as t
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientSession
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

RESERVED = ("io.modelcontextprotocol/protocolVersion", "io.modelcontextprotocol/clientInfo",
            "io.modelcontextprotocol/clientCapabilities")
Ctx = ServerRequestContext[Any, Any]
_up: list[ClientSession] = []  # the one upstream session, set before serving


def _fwd_meta(ctx: Ctx) -> Any:  # a RequestParamsMeta-shaped dict or None
    return {k: v for k, v in dict(ctx.meta or {}).items() if k not in RESERVED and k != "progressToken"} or None


async def list_tools(ctx: Ctx, params: t.PaginatedRequestParams | None) -> t.ListToolsResult:
    return await _up[0].list_tools(params=params)


async def call_tool(ctx: Ctx, params: t.CallToolRequestParams) -> Any:
    async def progress(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return await _up[0].call_tool(params.name, params.arguments, progress_callback=progress,
                                  input_responses=params.input_responses, request_state=params.request_state,
                                  meta=_fwd_meta(ctx), allow_input_required=True)


server: Server[Any] = Server("bench-sdk-proxy", on_list_tools=list_tools, on_call_tool=call_tool)


async def main(args: argparse.Namespace) -> None:
    target: Any = args.url or StdioServerParameters(command=args.command[0], args=args.command[1:])
    async with Client(target) as client:
        _up.append(client.session)
        if args.http is None:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        else:
            import uvicorn

            app = server.streamable_http_app(host="127.0.0.1", json_response=True)
            config = uvicorn.Config(app, host="127.0.0.1", port=args.http, log_level="warning", access_log=False)
            await uvicorn.Server(config).serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, default=None, help="serve Streamable HTTP on this port")
    parser.add_argument("--url", help="upstream Streamable HTTP URL")
    parser.add_argument("command", nargs="*", help="upstream stdio command (after --)")
    ns = parser.parse_args()
    if bool(ns.url) == bool(ns.command):
        parser.error("give exactly one of --url or an upstream command")
    anyio.run(main, ns)
