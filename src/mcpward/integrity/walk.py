"""Every string of a listed MCP item that a model or a policy reads, with where it is.

Tools: name, title, description, annotations.title, and in inputSchema/outputSchema every title,
description, $comment, default, const, enum and example, every property name, through properties, $defs,
definitions, items, anyOf/oneOf/allOf, additionalProperties and the other applicators (bounded depth).
Prompts add their arguments; resource templates their uriTemplate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

MAX_DEPTH = 16  # schema nesting followed


_TEXT = frozenset({"title", "description", "$comment"})
_VALUES = frozenset({"default", "const", "examples", "enum"})
_GROUPS = frozenset({"$defs", "definitions", "patternProperties", "dependentSchemas"})
_ONE = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"})
_MANY = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_INTERESTING = _TEXT | _VALUES | _GROUPS | _ONE | _MANY | {"properties"}

Out = list[tuple[str, str, bool]]


def _schema_strings(schema: Any, path: str, depth: int, out: Out) -> None:
    """Append (field, text, is_name) for every string a model reads in a JSON schema. Walks the schema's
    own keys (usually a handful) rather than probing for every keyword: this runs for every tool."""
    if depth > MAX_DEPTH or not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key not in _INTERESTING:
            continue
        if key in _TEXT:
            if isinstance(value, str):
                out.append((f"{path}.{key}", value, False))
        elif key == "properties":
            if isinstance(value, dict):
                for name, sub in value.items():
                    where = f"{path}.properties.{name}"
                    out.append((where, str(name), True))
                    _schema_strings(sub, where, depth + 1, out)
        elif key in _VALUES:
            _values(value, f"{path}.{key}", depth, out)
        elif key in _GROUPS:
            if isinstance(value, dict):
                for name, sub in value.items():
                    _schema_strings(sub, f"{path}.{key}.{name}", depth + 1, out)
        elif isinstance(value, dict):
            _schema_strings(value, f"{path}.{key}", depth + 1, out)
        elif isinstance(value, list):
            for i, part in enumerate(value):
                _schema_strings(part, f"{path}.{key}[{i}]", depth + 1, out)


def _values(value: Any, path: str, depth: int, out: Out) -> None:
    if isinstance(value, str):
        out.append((path, value, False))
    elif isinstance(value, list) and depth <= MAX_DEPTH:
        for i, v in enumerate(value):
            _values(v, f"{path}[{i}]", depth + 1, out)
    elif isinstance(value, dict) and depth <= MAX_DEPTH:
        for k, v in value.items():
            _values(v, f"{path}.{k}", depth + 1, out)


SCHEMAS = ("inputSchema", "outputSchema")


_TOP = {"name": True, "title": False, "description": False, "uriTemplate": False, "uri": False, "mimeType": False}


def top_strings(item: Mapping[str, Any]) -> Out:
    """The item's own fields (names, titles, descriptions, templates), before its schemas, in the item's
    key order (a verdict does not depend on the order of fields: reports sort their findings)."""
    out: Out = []
    top = _TOP
    # Over the item's own keys (three or four, usually), not a lookup per field it might have.
    for key, value in item.items():
        is_name = top.get(key)
        if is_name is not None and isinstance(value, str):
            out.append((key, value, is_name))
    annotations = item.get("annotations")
    # `is not None` first: an isinstance test against the Mapping ABC is slow when it fails, and most
    # items have no annotations.
    if annotations is not None and isinstance(annotations, Mapping) and isinstance(annotations.get("title"), str):
        out.append(("annotations.title", annotations["title"], False))
    return out


def schema_strings(key: str, schema: Any) -> Out:
    """The strings of one schema of an item (`key`: inputSchema or outputSchema), in walk order."""
    found: Out = []
    _schema_strings(schema, key, 0, found)
    return found


def argument_strings(item: Mapping[str, Any]) -> Out:
    """A prompt's arguments: name, title and description of each."""
    out: Out = []
    arguments = item.get("arguments")
    if isinstance(arguments, list):  # prompts
        for i, arg in enumerate(arguments):
            if isinstance(arg, Mapping):
                where = f"arguments[{i}]"
                if isinstance(arg.get("name"), str):
                    out.append((f"{where}.name", arg["name"], True))
                for key in ("title", "description"):
                    if isinstance(arg.get(key), str):
                        out.append((f"{where}.{key}", arg[key], False))
    return out


def item_strings(kind: str, item: Mapping[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(field, text, is_name) for every string of a listed item that a model or policy reads: the
    item's own fields, then each schema, then a prompt's arguments (the scanner relies on this order)."""
    yield from top_strings(item)
    for key in SCHEMAS:
        schema = item.get(key)
        if schema is not None:
            yield from schema_strings(key, schema)
    yield from argument_strings(item)
