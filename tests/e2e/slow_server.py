"""A tiny raw stdio MCP server for cancellation tests (no SDK, so it starts in ~50 ms).

    python slow_server.py            # legacy era: initialize; server/discover -> -32601
    python slow_server.py --modern   # 2026-07-28: answers server/discover (no initialize needed)
    python slow_server.py --ignore-eof   # keeps running after stdin closes, like a server with live
                                         # timers (server-everything once a client declared roots)

Tools: `sleep {seconds}` (progress every 0.1 s while a progressToken is set; stops early when
cancelled), `cancellations` (JSON list of the request ids this server saw cancelled, and whether
the call was still running then), `echo {text}`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

MODERN = "--modern" in sys.argv
out_lock = threading.Lock()
running: dict[Any, threading.Event] = {}
cancelled: list[dict[str, Any]] = []

TOOLS = [
    {"name": "sleep", "description": "Sleeps, reporting progress.", "inputSchema": {
        "type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]}},
    {"name": "cancellations", "description": "Cancelled request ids seen.", "inputSchema": {"type": "object"}},
    {"name": "echo", "description": "Echoes text.", "inputSchema": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
]


def send(message: dict[str, Any]) -> None:
    with out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def reply(rid: Any, result: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def text(value: str) -> dict[str, Any]:
    # resultType in both eras (legacy clients ignore it): a 2026-07-28 client can then read these
    # results through the gateway even while it does not translate legacy results.
    return {"content": [{"type": "text", "text": value}], "isError": False, "resultType": "complete"}


def sleep_tool(rid: Any, seconds: float, token: Any) -> None:
    stop = running[rid] = threading.Event()
    started, step = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        if stop.wait(0.1):
            running.pop(rid, None)
            return  # cancelled: no response is due
        step += 1
        if token is not None:
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": token, "progress": step, "message": f"tick {step}"}})
    running.pop(rid, None)
    reply(rid, text(f"slept {seconds}s"))


def handle(message: dict[str, Any]) -> None:
    method, rid = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if method == "notifications/cancelled":
        target = params.get("requestId")
        event = running.get(target)
        cancelled.append({"requestId": target, "wasRunning": event is not None})
        if event is not None:
            event.set()
        return
    if rid is None:
        return  # other notifications
    if method == "initialize":
        reply(rid, {"protocolVersion": params.get("protocolVersion", "2025-11-25"),
                    "capabilities": {"tools": {}}, "serverInfo": {"name": "slow", "version": "0"}})
    elif method == "server/discover" and MODERN:
        reply(rid, {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}, "ttlMs": 0,
                    "cacheScope": "public", "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "slow",
                                                                                           "version": "0"}}})
    elif method == "tools/list":
        reply(rid, {"tools": TOOLS, **({"ttlMs": 0, "cacheScope": "public"} if MODERN else {})})
    elif method == "tools/call":
        name, args = params.get("name"), params.get("arguments") or {}
        if name == "sleep":
            token = (params.get("_meta") or {}).get("progressToken")
            threading.Thread(target=sleep_tool, args=(rid, float(args["seconds"]), token), daemon=True).start()
        elif name == "cancellations":
            reply(rid, text(json.dumps(cancelled)))
        elif name == "echo":
            reply(rid, text(str(args.get("text"))))
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
    elif method == "ping":
        reply(rid, {})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"Method not found: {method}"}})


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            handle(json.loads(line))
    while "--ignore-eof" in sys.argv:
        time.sleep(3600)  # only a signal ends us now


if __name__ == "__main__":
    main()
