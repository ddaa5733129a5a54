"""The size cap on results: truncate to a byte budget with an explicit marker, keeping a valid result.

Runs after redaction, so a cut can never leave half a secret behind. Text is cut at whole characters
so that its JSON form fits the budget.
"""

from __future__ import annotations

from typing import Any

import orjson

from mcpward.guards.redactor import encode
from mcpward.guards.result_strings import Slot, collect_value
from mcpward.protocol import exact
from mcpward.protocol.jsonrpc import JsonObj

_RESERVE = 512  # bytes kept free for the marker and the note
_SLACK = 128  # what the steps' budgets leave uncounted (brackets, field names, a cut text's last escape)


class Unserialisable(ValueError):
    """A result that cannot be written as JSON (nested deeper than orjson's 255 levels, an integer
    beyond 64 bits, a lone surrogate): the reply could not be sent either, so the guard refuses it."""


def size_of(value: Any) -> int:
    try:
        return len(exact.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise Unserialisable(str(exc)) from None


def fit_text(text: str, max_json_bytes: int) -> str:
    """The longest prefix of `text` whose JSON string form fits in `max_json_bytes` (whole characters)."""
    if max_json_bytes <= 2:
        return ""
    raw = encode(text)
    cut = min(len(raw), max_json_bytes)
    while cut > 0:
        piece = raw[:cut].decode("utf-8", "ignore")
        size = size_of(piece)
        if size <= max_json_bytes:
            return piece
        cut = min(cut - 1, cut * max_json_bytes // size)  # escapes made it bigger: shrink in proportion
    return ""


# A capped result's own fields, per method; any other top-level field (isError, _meta, a prompt's
# description, unknown keys) is an extra, kept only while the extras are small beside the budget.
_CORE = {
    "tools/call": ("content", "structuredContent"),
    "resources/read": ("contents",),
    "prompts/get": ("messages",),
    "completion/complete": ("completion",),
}


def cap(method: str, result: JsonObj, limit: int, output_schema: bool,
        original: int | None = None) -> tuple[JsonObj, dict[str, Any]] | None:
    """Truncate a result to `limit` serialised bytes; None when it fits (and fitted when it came).
    Always a valid result of its kind.

    `original` is the size before the guard shortened overlong strings ahead of the scan (reported
    in the marker instead of the already shortened size). Raises `Unserialisable` for a result that
    cannot be serialised.
    """
    size = size_of(result)
    core = _CORE.get(method)
    # A result the guard shortened before its scan was over the limit when it came, even when
    # redaction then brought it under: the client must still learn that it was cut.
    if core is None or (size <= limit and (original is None or original <= limit)):
        return None
    size = max(size, original or 0)
    info: dict[str, Any] = {"from_bytes": size, "limit": limit}
    full = max(limit - _RESERVE, 0)
    out, budget = _extras(result, core, full, info)
    dropped = 0
    if method == "tools/call":
        dropped = _cap_tool(result, out, budget, output_schema, info)
    elif method == "resources/read":
        out["contents"], _ = _cap_items(result.get("contents"), budget, "text", info)
    elif method == "prompts/get":
        out["messages"] = _cap_messages(result.get("messages"), budget, info)
    else:
        out["completion"] = _cap_completion(result.get("completion"), budget, info)
    if size_of(out) > full + _SLACK:
        # Something the steps above keep whole (a message's own fields, a huge key) is still too big:
        # the smallest valid result of its kind rather than an oversized one (for a tool, an error:
        # nothing of what it returned is left, and a client skips outputSchema checks on errors).
        out = _empty(method)
        info["withheld"] = True
    if method == "tools/call":
        out["content"].append({"type": "text", "text": _marker(size, limit, dropped, info)})
    return out, info


def _empty(method: str) -> JsonObj:
    if method == "tools/call":
        return {"content": [], "isError": True}
    if method == "resources/read":
        return {"contents": []}
    if method == "prompts/get":
        return {"messages": []}
    return {"completion": {"values": [], "hasMore": True}}


def _extras(result: JsonObj, core: tuple[str, ...], budget: int, info: dict[str, Any]) -> tuple[JsonObj, int]:
    """The result's other top-level fields to keep, and the budget left for its own fields."""
    extras = {k: v for k, v in result.items() if k not in core}
    if not extras:
        return {}, budget
    size = size_of(extras)
    if size > budget // 4:
        # Too big to keep beside the result's own fields: left out, but a tool's error flag stays
        # (a failed call must not read as a success).
        kept = {"isError": True} if extras.get("isError") is True else {}
        info["fields_left_out"] = len(extras) - len(kept)
        extras, size = kept, size_of(kept)
    return extras, budget - size


def _cap_messages(raw: Any, budget: int, info: dict[str, Any]) -> list[Any]:
    messages: list[Any] = raw if isinstance(raw, list) else []
    kept: list[Any] = []
    remaining = budget
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        one = isinstance(content, dict)
        blocks, _ = _cap_items([content] if one else content, remaining, "text", info)
        remaining -= size_of(blocks)
        if blocks:
            kept.append({**message, "content": blocks[0] if one else blocks})
        if remaining <= 0:
            break
    return kept


def _cap_completion(completion: Any, budget: int, info: dict[str, Any]) -> Any:
    """Completion values in order while they fit; the rest left out, with `hasMore` (a cut value
    would be a wrong completion, so none is cut)."""
    values = completion.get("values") if isinstance(completion, dict) else None
    kept: list[Any] = []
    remaining = budget - 64  # `{"values":[],"total":...,"hasMore":true}`
    dropped = 0
    for value in values if isinstance(values, list) else ():
        size = size_of(value) + 1
        if size <= remaining:
            kept.append(value)
            remaining -= size
        else:
            dropped += 1
    out: dict[str, Any] = {"values": kept}
    total = completion.get("total") if isinstance(completion, dict) else None
    if type(total) is int:
        out["total"] = total
    out["hasMore"] = True if dropped else (isinstance(completion, dict) and completion.get("hasMore") is True)
    if dropped:
        info["dropped"] = info.get("dropped", 0) + dropped
    return out


def _marker(size: int, limit: int, dropped: int, info: dict[str, Any]) -> str:
    text = f"[mcpward: result truncated from {size:,} to at most {limit:,} bytes"
    if dropped:
        text += f"; {dropped} content block(s) left out"
    if info.get("fields_left_out"):
        text += f"; {info['fields_left_out']} other field(s) left out"
    if info.get("withheld"):
        text += "; content withheld"
    if info.get("structured") == "withheld":
        text += "; structuredContent withheld"
    elif info.get("structured") == "shortened":
        text += "; long strings in structuredContent shortened"
    return text + "]"


def _cap_tool(result: JsonObj, out: JsonObj, budget: int, output_schema: bool, info: dict[str, Any]) -> int:
    """Fill `out` with the tool result's content and structuredContent within `budget`; blocks left out."""
    structured = result.get("structuredContent")
    remaining = budget
    if structured is not None:
        sc_size = size_of(structured)
        if sc_size > budget // 2:
            # Shorten its longest strings first: the value keeps its shape (and usually its schema).
            structured = _shorten_strings(structured, sc_size - budget // 2)
            sc_size = size_of(structured)
            info["structured"] = "shortened"
        if sc_size <= budget // 2:
            out["structuredContent"] = structured
            remaining -= sc_size
        else:
            info["structured"] = "withheld"
            if output_schema:
                # A client validates structuredContent against the tool's outputSchema unless the
                # result is an error: a withheld one is reported as one instead of failing there.
                out["isError"] = True
            else:
                out["structuredContent"] = {"mcpward_truncated": f"structuredContent of {sc_size:,} bytes withheld: "
                                                                  f"over the result size limit"}
    content = result.get("content")
    blocks, dropped = _cap_items(content if isinstance(content, list) else [], remaining, "text", info)
    out["content"] = blocks
    return dropped


def _shorten_strings(value: Any, excess: int) -> Any:
    """A copy of `value` with its longest strings cut until about `excess` bytes are gone."""
    copy = exact.loads(exact.dumps(value))
    slots: list[Slot] = []
    holder = {"v": copy}
    collect_value(holder, "v", slots)
    for slot in sorted((s for s in slots if not s.is_key), key=lambda s: -len(s.text)):
        if excess <= 0:
            break
        size = size_of(slot.text)
        keep = max(size - excess - 32, 0)
        new = fit_text(slot.text, keep) + "[mcpward: truncated]"
        excess -= size - size_of(new)
        slot.container[slot.key] = new
    return holder["v"]


def _cap_items(items: Any, budget: int, key: str, info: dict[str, Any]) -> tuple[list[Any], int]:
    """Keep items in order while they fit; cut the first text that does not; leave the rest out."""
    kept: list[Any] = []
    dropped = 0
    remaining = budget
    for item in items if isinstance(items, list) else ():
        size = size_of(item) + 1
        if size <= remaining:
            kept.append(item)
            remaining -= size
            continue
        text = item.get(key) if isinstance(item, dict) else None
        overhead = size - size_of(text) if isinstance(text, str) else 0
        if isinstance(text, str) and remaining - overhead > 64:
            suffix = "\n[mcpward: truncated]" if key == "text" else ""
            kept.append({**item, key: fit_text(text, remaining - overhead - len(suffix) - 2) + suffix})
            info["cut"] = info.get("cut", 0) + 1
            remaining = 0
        else:
            dropped += 1
    if dropped:
        info["dropped"] = info.get("dropped", 0) + dropped
    return kept, dropped


# The serialised form of a one-text-block tool result around its text and structuredContent:
# `{"content":[{"type":"text","text":""}],"structuredContent":,"isError":false}` is 76 bytes.
_ONE_TEXT_FRAME = 96
# Bytes one character of ASCII text can take in JSON at most (`\u001b`).
_MAX_ASCII_ESCAPE = 6


def one_text_block(result: JsonObj) -> dict[str, Any] | None:
    """The text block of `{"content": [{"type": "text", "text": "..."}], ...}`, else None."""
    content = result.get("content")
    if type(content) is not list or len(content) != 1:
        return None
    block = content[0]
    if type(block) is not dict or block.get("type") != "text" or type(block.get("text")) is not str:
        return None
    return block


def fits(result: JsonObj, block: dict[str, Any], structured_bytes: int, limit: int) -> bool:
    """True when the result certainly serialises within `limit` bytes, so the cap need not serialise
    it: a one-text-block result with nothing else but `isError` (and `structuredContent` whose
    serialised size is known), with ASCII text, each character at most 6 bytes of JSON. False
    means "measure it" (the cap serialises the result)."""
    if len(block) != 2:
        return False
    extra = len(result) - 1
    if "isError" in result:
        if type(result["isError"]) is not bool:
            return False
        extra -= 1
    if structured_bytes >= 0 and "structuredContent" in result:
        extra -= 1
    else:
        structured_bytes = 0
    text = block["text"]
    return extra == 0 and text.isascii() and \
        _ONE_TEXT_FRAME + structured_bytes + _MAX_ASCII_ESCAPE * len(text) <= limit


# ------------------------------------------------------------------------------------------ config
