"""HTTP front checks: DNS-rebinding allow-lists and the modern header ladder."""

from __future__ import annotations

import ipaddress
from typing import Any

from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import Principal
from mcpward.gateway.core import Gateway
from mcpward.protocol import headers as h
from mcpward.protocol import jsonrpc
from mcpward.protocol import versions as v
from mcpward.protocol.jsonrpc import JsonObj

STATUS_BY_CODE = {
    jsonrpc.PARSE_ERROR: 400, jsonrpc.INVALID_REQUEST: 400, jsonrpc.INVALID_PARAMS: 400,
    jsonrpc.HEADER_MISMATCH: 400, jsonrpc.MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
    jsonrpc.UNSUPPORTED_PROTOCOL_VERSION: 400, jsonrpc.METHOD_NOT_FOUND: 404,
}
ROUTING_HEADERS = (b"mcp-protocol-version", b"mcp-method", b"mcp-name")


class HttpRejection(Exception):
    def __init__(self, status: int, body: JsonObj | None, headers: list[tuple[bytes, bytes]] | None = None,
                 text: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body: JsonObj | bytes | None = text.encode() if text is not None else body
        self.headers = headers or []


def status_for(reply: JsonObj) -> int:
    error = reply.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return STATUS_BY_CODE.get(code, 200) if isinstance(code, int) else 200


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(cfg: GatewayConfig) -> set[str]:
    """Host header values we answer to. Anything else is a DNS-rebinding attempt."""
    names = {cfg.http_host}
    if is_loopback(cfg.http_host) or cfg.http_host in ("0.0.0.0", "::"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    hosts: set[str] = set()
    for name in names:
        shown = f"[{name}]" if ":" in name and not name.startswith("[") else name
        hosts |= {shown.lower(), f"{shown}:{cfg.http_port}".lower()}
    hosts |= {x.lower() for x in cfg.allowed_hosts}
    return hosts


def allowed_origins(cfg: GatewayConfig) -> set[str]:
    origins = {f"{scheme}://{host}" for scheme in ("http", "https") for host in allowed_hosts(cfg)}
    return origins | {x.lower().rstrip("/") for x in cfg.allowed_origins}


async def check_modern_headers(gateway: Gateway, message: JsonObj, headers: dict[str, str],
                               raw_headers: list[tuple[bytes, bytes]],
                               principal: Principal | None = None) -> JsonObj | None:
    """The 2026-07-28 validation ladder; returns an error reply or None."""
    rid = message.get("id")
    params = message.get("params") or {}
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or v.META_VERSION not in meta or v.META_CAPABILITIES not in meta:
        return jsonrpc.error(rid, jsonrpc.INVALID_PARAMS,
                             f"params._meta must be an object carrying the required {v.META_VERSION!r} "
                             f"and {v.META_CAPABILITIES!r} envelope keys")
    seen: set[bytes] = set()
    for key, _value in raw_headers:
        low = key.lower()
        if low in ROUTING_HEADERS or low.startswith(b"mcp-param-"):
            if low in seen:
                return _mismatch(rid, f"{low.decode()} header appears more than once")
            seen.add(low)
    method = message["method"]
    if headers.get("mcp-protocol-version") != meta.get(v.META_VERSION):
        return _mismatch(rid, "MCP-Protocol-Version header does not match the request's protocol version")
    if headers.get("mcp-method") != method:
        return _mismatch(rid, "Mcp-Method header does not match the request body's method")
    name_key = h.NAME_BEARING.get(method)
    if name_key is not None and params.get(name_key) is not None:
        try:
            name_header = h.decode_value(headers.get("mcp-name", ""))
        except h.HeaderValueError as exc:
            return _mismatch(rid, f"Mcp-Name: {exc}")
        if name_header != params.get(name_key):
            return _mismatch(rid, f"Mcp-Name header does not match the request body's {name_key!r}")
    if meta.get(v.META_VERSION) not in v.MODERN_VERSIONS:
        return jsonrpc.error(rid, jsonrpc.UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                             {"supported": list(v.MODERN_VERSIONS), "requested": meta.get(v.META_VERSION)})
    if method == "tools/call" and isinstance(params.get("name"), str):
        return await _check_param_headers(gateway, rid, params, headers, principal)
    return None


async def _check_param_headers(gateway: Gateway, rid: Any, params: JsonObj,
                               headers: dict[str, str], principal: Principal | None) -> JsonObj | None:
    schema = await gateway.tool_schema(params["name"], principal)
    for name, path in (h.header_params(schema) or {}).items():
        body_value = h.extract(params.get("arguments"), path)
        raw = headers.get(f"mcp-param-{name}")
        if body_value is None:
            continue
        if raw is None:
            return _mismatch(rid, f"Mcp-Param-{name} header is required for this tool")
        try:
            decoded = h.decode_value(raw)
        except h.HeaderValueError as exc:
            return _mismatch(rid, f"Mcp-Param-{name}: {exc}")
        if not h.values_match(decoded, body_value):
            return _mismatch(rid, f"Mcp-Param-{name} header does not match the request body")
    return None


def _mismatch(rid: Any, message: str) -> JsonObj:
    return jsonrpc.error(rid, jsonrpc.HEADER_MISMATCH, f"Header mismatch: {message}")
