"""Every string of a listed MCP item that a model or a policy reads, with where it is.

Tools: name, title, description, annotations.title, and in inputSchema/outputSchema every title,
description, $comment, default, const, enum and example, every property name, through properties, $defs,
definitions, items, anyOf/oneOf/allOf, additionalProperties and the other applicators (bounded depth).
A model reads the whole schema, so a string under any other key ("x-note", a vendor extension) is read
too, and so is a keyword's value ("type", "format", "pattern", "$ref", "required") unless it is a short
token (`_token`). Prompts add their arguments; resource templates their uriTemplate.

The walk is bounded (MAX_DEPTH levels of nesting). Content past the bound is not read, so the walk fails
closed: it records where it stopped in `deep`, and the scanner turns that into a HIGH finding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

MAX_DEPTH = 32  # schema nesting followed; deeper content is reported (see `deep`), not read


_TEXT = frozenset({"title", "description", "$comment"})
_VALUES = frozenset({"default", "const", "examples", "enum"})
_GROUPS = frozenset({"$defs", "definitions", "patternProperties", "dependentSchemas", "dependencies"})
_ONE = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
                  "additionalItems", "unevaluatedItems", "unevaluatedProperties", "contentSchema"})
_MANY = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_INTERESTING = _TEXT | _VALUES | _GROUPS | _ONE | _MANY | {"properties"}
# Keywords whose values are identifiers, not prose: read only when a value is not a short token. Numbers
# and booleans of other keywords (minimum, readOnly...) are never strings to read.
_KEYWORDS = frozenset({"type", "format", "pattern", "$ref", "$id", "$schema", "$anchor", "$dynamicRef",
                       "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor", "$vocabulary", "required",
                       "dependentRequired", "contentEncoding", "contentMediaType"})
# The values nearly every schema has, answered by one set lookup before the token test.
_COMMON = frozenset({"string", "object", "number", "integer", "array", "boolean", "null",
                     "http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft/2020-12/schema",
                     "http://json-schema.org/draft-04/schema#", "https://json-schema.org/draft/2019-09/schema"})
_TOKEN_MAX = 24  # a keyword value shorter than this, without a space, cannot hold a sentence or a payload

Out = list[tuple[str, str, bool]]


def _token(value: str) -> bool:
    """A keyword's usual value (a type, a format, a short $ref or property name): one of the common ones,
    or printable ASCII without a space shorter than _TOKEN_MAX (no room for a sentence or an encoded run)."""
    return value in _COMMON or (len(value) < _TOKEN_MAX and value.isascii() and value.isprintable()
                                and " " not in value)


def _stop(value: Any, path: str, deep: list[str] | None) -> None:
    """The walk's depth bound is hit at `path`: anything there is content left unread, recorded (the first
    place only: one is enough for the finding) so that it is reported rather than passed."""
    if deep is not None and not deep and value:
        deep.append(path)


def _schema_strings(schema: Any, path: str, depth: int, out: Out, deep: list[str] | None) -> None:
    """Append (field, text, is_name) for every string a model reads in a JSON schema. Walks the schema's
    own keys (usually a handful) rather than probing for every keyword: this runs for every tool."""
    if depth > MAX_DEPTH:
        _stop(schema, path, deep)
        return
    if not isinstance(schema, dict):
        # Not a schema (a string or a list where a schema belongs): a model still reads it.
        if isinstance(schema, str):
            if not _token(schema):
                out.append((path, schema, False))
        elif isinstance(schema, list):
            for i, part in enumerate(schema):
                _schema_strings(part, f"{path}[{i}]", depth + 1, out, deep)
        return
    for key, value in schema.items():
        if key not in _INTERESTING:
            if key in _KEYWORDS:
                if isinstance(value, str):
                    # "type": "string" in nearly every property: a set lookup decides, without a call
                    if value not in _COMMON and not _token(value):
                        out.append((f"{path}.{key}", value, False))
                elif isinstance(value, (list, dict)):
                    _values(value, f"{path}.{key}", depth + 1, out, deep, True)
            else:  # a vendor key ("x-note") or a numeric keyword: read like a description
                where = f"{path}.{key}"
                if isinstance(key, str) and not _token(key):
                    out.append((where, key, False))
                _values(value, where, depth + 1, out, deep, False)
            continue
        if key in _TEXT:
            if isinstance(value, str):
                out.append((f"{path}.{key}", value, False))
        elif key == "properties":
            if isinstance(value, dict):
                for name, sub in value.items():
                    where = f"{path}.properties.{name}"
                    out.append((where, str(name), True))
                    _schema_strings(sub, where, depth + 1, out, deep)
        elif key in _VALUES:
            _values(value, f"{path}.{key}", depth, out, deep, False)
        elif key in _GROUPS:
            if isinstance(value, dict):
                for name, sub in value.items():
                    _schema_strings(sub, f"{path}.{key}.{name}", depth + 1, out, deep)
        elif isinstance(value, dict):
            _schema_strings(value, f"{path}.{key}", depth + 1, out, deep)
        elif isinstance(value, list):
            for i, part in enumerate(value):
                _schema_strings(part, f"{path}.{key}[{i}]", depth + 1, out, deep)


def _values(value: Any, path: str, depth: int, out: Out, deep: list[str] | None, tokens: bool) -> None:
    """Every string in a value (and every key of a mapping in it); `tokens`: leave out short tokens (a
    keyword's identifiers)."""
    if isinstance(value, str):
        if not (tokens and _token(value)):
            out.append((path, value, False))
    elif isinstance(value, (list, dict)):
        if depth > MAX_DEPTH:
            _stop(value, path, deep)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                _values(v, f"{path}[{i}]", depth + 1, out, deep, tokens)
        else:
            for k, v in value.items():
                where = f"{path}.{k}"
                if isinstance(k, str) and not _token(k):
                    out.append((where, k, False))
                _values(v, where, depth + 1, out, deep, tokens)


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


def schema_strings(key: str, schema: Any, deep: list[str] | None = None) -> Out:
    """The strings of one schema of an item (`key`: inputSchema or outputSchema), in walk order; `deep`
    gets the first place where the depth bound left content unread."""
    found: Out = []
    _schema_strings(schema, key, 0, found, deep)
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


def item_strings(kind: str, item: Mapping[str, Any],
                 deep: list[str] | None = None) -> Iterator[tuple[str, str, bool]]:
    """(field, text, is_name) for every string of a listed item that a model or policy reads: the
    item's own fields, then each schema, then a prompt's arguments (the scanner relies on this order);
    `deep` as in `schema_strings`."""
    yield from top_strings(item)
    for key in SCHEMAS:
        schema = item.get(key)
        if schema is not None:
            yield from schema_strings(key, schema, deep)
    yield from argument_strings(item)


# Keys a client receives that are neither read nor pinned (fingerprint.pinned_view uses this too).
UNPINNED = frozenset({"_meta", "icons"})
# The keys `walk.top_strings` reads when their value is a string; a schema and a prompt's arguments are
# read by their own walks (`item_strings`).
_OWN = frozenset({"name", "title", "description", "uriTemplate", "uri", "mimeType"})
_WALKED = frozenset({*SCHEMAS, "arguments", "annotations"}) | UNPINNED


def extra_strings(item: Mapping[str, Any], deep: list[str] | None) -> list[tuple[str, str, bool]]:
    """Strings a client receives that `walk.top_strings` and the schema walks do not read: keys outside
    the spec ("x-model-note"), a spec field that is not a string, and every annotation but its title.
    Read like a vendor key of a schema (`walk.schema_strings`: nested values too, short tokens left out);
    `_meta` and `icons` are not read (nor pinned: fingerprint.UNPINNED)."""
    out: list[tuple[str, str, bool]] = []
    for key, value in item.items():
        if key in _WALKED or (key in _OWN and isinstance(value, str)):
            continue
        if key not in _OWN and not isinstance(value, (str, list, dict)):
            continue  # a number or a flag: nothing to read
        where = str(key)
        if key not in _OWN and (len(where) >= 24 or " " in where or not where.isascii()):
            out.append((where, where, False))  # a key long enough to be a sentence is read as one
        out.extend(schema_strings(where, value, deep))
    annotations = item.get("annotations")
    if annotations is not None:
        if isinstance(annotations, Mapping):
            for key, value in annotations.items():
                if isinstance(value, (str, list, dict)) and not (key == "title" and isinstance(value, str)):
                    out.extend(schema_strings(f"annotations.{key}", value, deep))
        else:
            out.extend(schema_strings("annotations", annotations, deep))
    return out
