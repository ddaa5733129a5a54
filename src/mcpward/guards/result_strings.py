"""Which strings of a result reach a model, and writing replacements back into it.

`collect()` lists every string of a result (every value and every key that is not a fixed protocol
name), skipping only base64 payloads; `apply()` writes replacements back in place (results are fresh
objects owned by their request). `shape_problem()` names what is plainly wrong with a result's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcpward.protocol.jsonrpc import JsonObj


@dataclass(slots=True)
class Slot:
    """One model-visible string of a result, and where it sits (to write a replacement back)."""

    container: Any  # the dict or list holding it
    key: Any  # its key or index; for a dict key itself, the key
    text: str
    is_key: bool = False  # the string is a dict key (the next slot is then usually its value)


# The list that holds a result's blocks or items, per method (walked with the binary payloads skipped).
_ITEMS = {"tools/call": "content", "resources/read": "contents", "prompts/get": "messages"}

# Keys the protocol itself names in results and blocks: fixed words, never data, so their own text is not
# scanned (their values are). Any other key is scanned like structuredContent's keys, joined to its value.
_PROTOCOL_KEYS = frozenset({
    "content", "contents", "structuredContent", "isError", "_meta", "messages", "description", "completion",
    "values", "total", "hasMore", "type", "text", "uri", "name", "title", "mimeType", "annotations", "resource",
    "data", "blob", "size", "role", "icons",
})

# Content block types whose `data` is a base64 payload.
_BINARY_BLOCKS = frozenset({"image", "audio"})


def collect(method: str, result: JsonObj, structured: bool = True) -> list[Slot]:
    """Every string of a result that could reach a model, in document order.

    Every value anywhere in the result, and every key but the protocol's own names (a key can carry a
    secret as well as a value): text blocks, resource links' uri/name/title/description, embedded
    resources, structuredContent, resources/read contents, prompt messages, completion values, unknown
    fields, malformed shapes (a `content` that is not a list is walked like any value) and `_meta`.
    `_meta` is protocol metadata, but nothing stops a client from logging or showing it, and a server
    chooses what it holds: it is scanned like the rest. Only base64 payloads are left alone (`blob` of
    a resource's contents, `data` of an image or audio block): they are not words a model reads.
    `structured=False`: structuredContent was already found clean as a whole and is not walked.
    """
    out: list[Slot] = []
    items_key = _ITEMS.get(method)
    for key, value in result.items():
        if key == "structuredContent" and not structured:
            continue
        if key == items_key and type(value) is list:
            for i, item in enumerate(value):
                if type(item) is not dict:
                    _json(value, i, out)
                elif method == "prompts/get":
                    _message(item, out)
                elif method == "tools/call":
                    _block(item, out)
                else:
                    _fields(item, out, "blob")  # a resources/read item
        else:
            _entry(result, key, out)
    return out


def shape_problem(method: str, result: JsonObj) -> str | None:
    """What is plainly wrong with a result's shape (a field of the wrong JSON type), or None.

    Only a field that is there with the wrong JSON type (no client can read it as the method's result);
    a missing field, unknown keys and unknown block types are left to the client.
    """
    if method == "completion/complete":
        if "completion" not in result:
            return None
        completion = result["completion"]
        if type(completion) is not dict:
            return "completion is not an object"
        values = completion.get("values")
        if "values" in completion and (type(values) is not list or any(type(v) is not str for v in values)):
            return "completion.values is not a list of strings"
        return None
    # A null isError stands for "absent": lenient clients read it so, and it carries no text.
    # (structuredContent may be any JSON value in 2026-07-28: its type is never a problem.)
    if method == "tools/call" and result.get("isError") is not None and type(result["isError"]) is not bool:
        return "isError is not a boolean"
    key = _ITEMS.get(method)
    if key is None or key not in result:
        return None
    items = result[key]
    if type(items) is not list:
        return f"{key} is not a list"
    for item in items:
        if type(item) is not dict:
            return f"an item of {key} is not an object"
        if method == "tools/call":
            problem = _block_problem(item)
        elif method == "prompts/get" and "content" in item:
            content = item["content"]
            blocks = content if type(content) is list else [content]
            problem = next(filter(None, map(_block_problem, blocks)), None)
        else:
            problem = None
        if problem is not None:
            return problem
    return None


def is_plain(result: JsonObj) -> bool:
    """True when `result`'s fields besides `content` are at most a boolean `isError` and a
    `structuredContent` (the output guard's short path for a one-text-block tool result)."""
    others = len(result) - 1
    if "isError" in result:
        if type(result["isError"]) is not bool:
            return False
        others -= 1
    if "structuredContent" in result:
        others -= 1
    return others == 0


def _block_problem(block: Any) -> str | None:
    if type(block) is not dict:
        return "a content block is not an object"
    if block.get("type") == "text" and "text" in block and type(block["text"]) is not str:
        return "a text block's text is not a string"
    return None


def collect_error(error: JsonObj) -> list[Slot]:
    """The strings of a JSON-RPC error object (message, and data recursively)."""
    out: list[Slot] = []
    if isinstance(error.get("message"), str):
        out.append(Slot(error, "message", error["message"]))
    if "data" in error:
        _json(error, "data", out)
    return out


def collect_value(container: Any, key: Any, out: list[Slot]) -> None:
    """The strings of any JSON value (`container[key]`), dict keys included."""
    _json(container, key, out)


def apply(slots: Sequence[Slot], replacements: Mapping[int, str]) -> None:
    """Write replacements (slot index -> new text) back in place; dict keys keep their order."""
    renamed: dict[int, tuple[dict[str, Any], dict[str, str]]] = {}
    for index, text in replacements.items():
        slot = slots[index]
        if slot.is_key:
            renamed.setdefault(id(slot.container), (slot.container, {}))[1][slot.key] = text
        else:
            slot.container[slot.key] = text
    for container, names in renamed.values():
        items = list(container.items())
        container.clear()
        for key, value in items:
            key = names.get(key, key)
            while key in container:  # two keys redacted to the same marker: keep both
                key += "~"
            container[key] = value


def _entry(container: dict[str, Any], key: Any, out: list[Slot]) -> None:
    """One field: its key (unless the protocol's own name), then its value, whatever it holds."""
    if type(key) is str and key not in _PROTOCOL_KEYS:
        out.append(Slot(container, key, key, True))
    _json(container, key, out)


def _fields(obj: dict[str, Any], out: list[Slot], binary: str | None) -> None:
    """Every field of an object but its base64 payload `binary` (when that is a string)."""
    for key in obj:
        if key != binary or type(obj[key]) is not str:
            _entry(obj, key, out)


def _block(block: dict[str, Any], out: list[Slot]) -> None:
    """A content block (of a tool result or a prompt message)."""
    kind = block.get("type")
    if kind == "text" and len(block) == 2:  # the common case, inline: this runs on most results
        text = block.get("text")
        if type(text) is str:
            out.append(Slot(block, "text", text))
            return
    if kind == "resource":
        for key in block:
            resource = block[key]
            if key == "resource" and type(resource) is dict:
                _fields(resource, out, "blob")
            else:
                _entry(block, key, out)
    else:
        _fields(block, out, "data" if kind in _BINARY_BLOCKS else None)


def _message(message: dict[str, Any], out: list[Slot]) -> None:
    """A prompt message: its content block (or, leniently, a list of blocks) and any other field."""
    for key in message:
        content = message[key]
        if key == "content" and type(content) is dict:
            _block(content, out)
        elif key == "content" and type(content) is list:
            for i, block in enumerate(content):
                if type(block) is dict:
                    _block(block, out)
                else:
                    _json(content, i, out)
        else:
            _entry(message, key, out)


def _json(container: Any, key: Any, out: list[Slot]) -> None:
    """Any JSON value, dict keys included (a key can carry a secret as well as a value).

    Iterative (a deeply nested value cannot exhaust the stack); slots come out in document order,
    each dict key right before its value.
    """
    stack: list[tuple[Any, Any, Any]] = [(container, key, container[key])]  # (parent, key, value)
    push, pop = stack.append, stack.pop
    while stack:
        parent, k, value = pop()
        kind = type(value)
        if kind is str:
            out.append(Slot(parent, k, value))
        elif kind is _KeyMark:
            out.append(Slot(parent, k, k, True))
        elif kind is dict:
            for name, item in reversed(value.items()):
                push((value, name, item))
                if type(name) is str:
                    push((value, name, _KEY))
        elif kind is list:
            for i in range(len(value) - 1, -1, -1):
                push((value, i, value[i]))


class _KeyMark:
    """On the walk stack: the entry is a dict key, not its value."""

    __slots__ = ()


_KEY = _KeyMark()
