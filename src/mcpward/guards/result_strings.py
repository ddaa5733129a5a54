"""Which strings of a result reach a model, and writing replacements back into it.

`collect()` lists every string of a result that reaches a model (text blocks, structuredContent keys
and values, embedded resources, resource reads, prompt messages, completion values, error messages);
`apply()` writes replacements back in place (results are fresh objects owned by their request).
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


def collect(method: str, result: JsonObj, structured: bool = True) -> list[Slot]:
    """Every string of a result that reaches a model, in document order.

    Text blocks, embedded resources' text, resource links' name/title/description, structuredContent
    (recursively, keys too), resources/read text contents, prompt descriptions and messages, and
    completion values. Binary payloads (base64 `blob`, image/audio `data`) are not text a model
    reads as words and are left alone; `_meta` is protocol metadata and is not scanned.
    """
    out: list[Slot] = []
    if method == "tools/call":
        _blocks(result.get("content"), out)
        if structured and "structuredContent" in result:
            _json(result, "structuredContent", out)
    elif method == "resources/read":
        for item in _items(result.get("contents")):
            _field(item, "text", out)
    elif method == "prompts/get":
        _field(result, "description", out)
        for message in _items(result.get("messages")):
            content = message.get("content")
            if isinstance(content, list):
                _blocks(content, out)
            elif isinstance(content, dict):
                _block(content, out)
    elif method == "completion/complete":
        completion = result.get("completion")
        values = completion.get("values") if isinstance(completion, dict) else None
        if isinstance(values, list):
            for i, value in enumerate(values):
                if isinstance(value, str):
                    out.append(Slot(values, i, value))
    return out


def collect_error(error: JsonObj) -> list[Slot]:
    """The strings of a JSON-RPC error object (message, and data recursively)."""
    out: list[Slot] = []
    _field(error, "message", out)
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


def _items(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _field(obj: Any, key: str, out: list[Slot]) -> None:
    if isinstance(obj, dict) and isinstance(obj.get(key), str):
        out.append(Slot(obj, key, obj[key]))


def _blocks(blocks: Any, out: list[Slot]) -> None:
    if not isinstance(blocks, list):
        return
    for block in blocks:
        if isinstance(block, dict):
            if block.get("type") == "text":  # the common case, inline: this runs on every result
                text = block.get("text")
                if isinstance(text, str):
                    out.append(Slot(block, "text", text))
            else:
                _block(block, out)


def _block(block: dict[str, Any], out: list[Slot]) -> None:
    kind = block.get("type")
    if kind == "text":
        _field(block, "text", out)
    elif kind == "resource":
        _field(block.get("resource"), "text", out)
    elif kind == "resource_link":
        for key in ("name", "title", "description"):
            _field(block, key, out)


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
