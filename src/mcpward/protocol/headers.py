"""Modern Streamable HTTP request headers that mirror the body (2026-07-28).

`Mcp-Method`, `Mcp-Name` and `Mcp-Param-{Name}` let intermediaries route without
parsing JSON. A header that disagrees with the body is a request-smuggling vector,
so the front checks every one against the body, and the gateway computes them
itself for upstreams (it never forwards a client's headers).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from mcpward.protocol.jsonrpc import JsonObj

_SAFE_VALUE = re.compile(r"^[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
SENTINEL_START, SENTINEL_END = "=?base64?", "?="
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class HeaderValueError(ValueError):
    pass


def encode_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    else:
        text = str(value)
    if _SAFE_VALUE.match(text) and not text.startswith(SENTINEL_START):
        return text
    return SENTINEL_START + base64.b64encode(text.encode()).decode() + SENTINEL_END


def decode_value(raw: str) -> str:
    if raw.startswith(SENTINEL_START) and raw.endswith(SENTINEL_END):
        try:
            return base64.b64decode(raw[len(SENTINEL_START):-len(SENTINEL_END)], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise HeaderValueError("invalid base64 header value") from None
    if raw and not _SAFE_VALUE.match(raw):
        raise HeaderValueError("header value contains invalid characters")
    return raw


def header_params(schema: Any) -> dict[str, tuple[str, ...]] | None:
    """Map header name -> property path for `x-mcp-header` annotations.

    Returns None when an annotation is invalid: such a tool must not be offered.
    """
    found: dict[str, tuple[str, ...]] = {}
    if not isinstance(schema, dict):
        return found

    def walk(node: JsonObj, path: tuple[str, ...]) -> bool:
        props = node.get("properties")
        if not isinstance(props, dict):
            return True
        for key, sub in props.items():
            if not isinstance(sub, dict):
                continue
            name = sub.get("x-mcp-header")
            if name is not None:
                if not isinstance(name, str) or not _TOKEN.match(name) or name.lower() in found:
                    return False
                if sub.get("type") not in ("string", "integer", "boolean"):
                    return False
                found[name.lower()] = (*path, key)
            if not walk(sub, (*path, key)):
                return False
        return True

    return found if walk(schema, ()) else None


def extract(arguments: Any, path: tuple[str, ...]) -> Any:
    node = arguments
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def values_match(header: str, body: Any) -> bool:
    if isinstance(body, bool):
        return header == ("true" if body else "false")
    if isinstance(body, int):
        try:
            return float(header) == body
        except ValueError:
            return False
    return isinstance(body, str) and header == body


def upstream_param_headers(schema: Any, arguments: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, path in (header_params(schema) or {}).items():
        value = extract(arguments, path)
        if value is not None:
            headers[f"Mcp-Param-{name}"] = encode_value(value)
    return headers
