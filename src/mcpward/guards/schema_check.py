"""Strict validation of tool arguments against the tool's own `inputSchema` (jsonschema-rs).

- Draft by `$schema`: 2020-12 (also the default when absent), 2019-09, draft-07, -06, -04; an
  unknown `$schema` makes the schema invalid.
- Remote `$ref`s are never fetched: the retriever refuses every URI, so a schema that needs one
  does not compile, and the call is refused (fail closed) with `args.schema.invalid`.
- `pattern`s use the linear-time regex engine; a schema needing lookaround falls back to the
  backtracking engine with a step limit. Schemas larger than `max_schema_bytes` are refused.
- Each schema is compiled once per (server, tool, digest of the canonical schema); the same
  schema object seen again skips even the digest.
- `additional_properties = "deny"` treats object schemas that do not say `additionalProperties`
  as if they said `false` (with `unevaluatedProperties: false` where combinators are involved
  and the draft has it), so a model cannot smuggle extra arguments past the schema.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import orjson

from mcpward.guards.arg_types import Finding, Kind, where
from mcpward.guards.param_kinds import schema_kinds

# `$schema` without scheme and fragment -> the validator for that draft.
_DRAFTS: dict[str, Any] = {
    "json-schema.org/draft/2020-12/schema": jsonschema_rs.Draft202012Validator,
    "json-schema.org/draft/2019-09/schema": jsonschema_rs.Draft201909Validator,
    "json-schema.org/draft-07/schema": jsonschema_rs.Draft7Validator,
    "json-schema.org/draft-06/schema": jsonschema_rs.Draft6Validator,
    "json-schema.org/draft-04/schema": jsonschema_rs.Draft4Validator,
}
_COMBINATORS = ("allOf", "anyOf", "oneOf", "$ref", "if", "dependentSchemas")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames",
                  "unevaluatedItems")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")


def _draft_key(uri: str) -> str:
    return uri.split("://", 1)[-1].rstrip("#")


def _refuse_remote(uri: str) -> Any:
    # Never fetch: a tool schema is data from an upstream, not a reason to make requests.
    raise ValueError(f"remote $ref refused (mcpward never fetches schemas): {uri}")


@dataclass(slots=True)
class CompiledTool:
    validator: Any | None = None
    error: Finding | None = None
    kinds: dict[tuple[str, ...], Kind] = field(default_factory=dict)


def _canonical(schema: Any) -> bytes:
    try:
        return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers beyond 64 bits
        return json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()


def deny_additional(schema: Any, modern: bool, depth: int = 0, branch: bool = False) -> Any:
    """A copy of `schema` where object schemas without `additionalProperties` get `false`.

    A branch of allOf/anyOf/oneOf only describes part of an object, so it is not closed itself;
    its parent gets `unevaluatedProperties: false` instead (2019-09/2020-12; draft-07 has no such
    keyword, so objects built from combinators stay open there)."""
    if not isinstance(schema, dict) or depth > 64:
        return schema
    out = dict(schema)
    is_object = out.get("type") == "object" or "properties" in out
    unsaid = not any(k in out for k in ("additionalProperties", "unevaluatedProperties", "patternProperties"))
    if is_object and unsaid and not branch:
        if not any(k in out for k in _COMBINATORS):
            out["additionalProperties"] = False
        elif modern:
            out["unevaluatedProperties"] = False
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: deny_additional(v, modern, depth + 1) for k, v in out[key].items()}
    for key in _SUBSCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = deny_additional(out[key], modern, depth + 1)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            in_branch = key in ("allOf", "anyOf", "oneOf")
            out[key] = [deny_additional(v, modern, depth + 1, in_branch) for v in out[key]]
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = deny_additional(out["additionalProperties"], modern, depth + 1)
    return out


class SchemaCache:
    def __init__(self, *, max_schema_bytes: int = 256 * 1024, additional_properties: str = "allow",
                 max_entries: int = 4096) -> None:
        self.max_schema_bytes = max_schema_bytes
        self.deny = additional_properties == "deny"
        self.max_entries = max_entries
        self._by_digest: dict[tuple[str, str, str], CompiledTool] = {}
        self._last: dict[tuple[str, str], tuple[Any, CompiledTool]] = {}
        self.compiled = 0  # how many schemas were actually compiled (tests check the cache works)

    def get(self, server: str, tool: str, schema: Any) -> CompiledTool:
        last = self._last.get((server, tool))
        if last is not None and last[0] is schema:
            return last[1]
        canonical = _canonical(schema)
        key = (server, tool, hashlib.sha256(canonical).hexdigest())
        compiled = self._by_digest.get(key)
        if compiled is None:
            compiled = self._compile(schema, len(canonical))
            if len(self._by_digest) >= self.max_entries:
                self._by_digest.clear()
                self._last.clear()
            self._by_digest[key] = compiled
        self._last[(server, tool)] = (schema, compiled)  # holding the object keeps its identity unique
        return compiled

    def _compile(self, schema: Any, size: int) -> CompiledTool:
        self.compiled += 1
        if size > self.max_schema_bytes:
            message = f"the tool's inputSchema is {size} bytes; the limit is {self.max_schema_bytes}"
            return CompiledTool(error=Finding("args.schema.too-large", message))
        if not isinstance(schema, dict):
            return CompiledTool(error=Finding("args.schema.invalid", "the tool's inputSchema is not a JSON object"))
        dialect = schema.get("$schema")
        if dialect is None:
            cls = jsonschema_rs.Draft202012Validator
        elif not isinstance(dialect, str) or _draft_key(dialect) not in _DRAFTS:
            return CompiledTool(error=Finding("args.schema.invalid",
                                              f"the tool's inputSchema uses an unknown $schema {str(dialect)[:80]!r}"))
        else:
            cls = _DRAFTS[_draft_key(dialect)]
        modern = cls in (jsonschema_rs.Draft202012Validator, jsonschema_rs.Draft201909Validator)
        effective = deny_additional(copy.deepcopy(schema), modern) if self.deny else schema
        kinds = schema_kinds(schema)
        try:
            validator = cls(effective, retriever=_refuse_remote, pattern_options=jsonschema_rs.RegexOptions())
        except jsonschema_rs.ValidationError:
            try:  # lookaround or backreferences: the backtracking engine, with a step limit
                validator = cls(effective, retriever=_refuse_remote,
                                pattern_options=jsonschema_rs.FancyRegexOptions(backtrack_limit=10_000))
            except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
                return CompiledTool(error=_invalid(exc), kinds=kinds)
        except (jsonschema_rs.ReferencingError, ValueError) as exc:
            return CompiledTool(error=_invalid(exc), kinds=kinds)
        return CompiledTool(validator=validator, kinds=kinds)

    @staticmethod
    def validate(compiled: CompiledTool, arguments: Any) -> Finding | None:
        if compiled.error is not None:
            return compiled.error
        assert compiled.validator is not None
        if compiled.validator.is_valid(arguments):  # the common case: no error objects to build
            return None
        for error in compiled.validator.iter_errors(arguments):
            return Finding("args.schema.mismatch", mismatch_message(error))
        return None


# What each failed keyword expected, taken from the schema's side of the error (never the instance).
# jsonschema-rs's own message quotes the argument value ("secret" does not match ...), so it is not used.
_EXPECTED: dict[str, tuple[str, str]] = {
    "Type": ("types", "expected type {}"),
    "Enum": ("options", "expected one of {}"),
    "Constant": ("expected_value", "expected {}"),
    "Pattern": ("pattern", "must match the pattern {}"),
    "Format": ("format", "must have the format {}"),
    "MaxLength": ("limit", "is longer than {} characters"),
    "MinLength": ("limit", "is shorter than {} characters"),
    "Maximum": ("limit", "is above the maximum {}"),
    "Minimum": ("limit", "is below the minimum {}"),
    "ExclusiveMaximum": ("limit", "is not below {}"),
    "ExclusiveMinimum": ("limit", "is not above {}"),
    "MultipleOf": ("multiple_of", "is not a multiple of {}"),
    "MaxItems": ("limit", "has more than {} items"),
    "MinItems": ("limit", "has fewer than {} items"),
    "MaxProperties": ("limit", "has more than {} properties"),
    "MinProperties": ("limit", "has fewer than {} properties"),
    "AdditionalItems": ("limit", "has more than the {} items the schema lists"),
    "Required": ("property", "is missing the required property {}"),
    "ContentEncoding": ("content_encoding", "is not in the content encoding {}"),
    "ContentMediaType": ("content_media_type", "is not of the media type {}"),
    # Property names are part of the path a refusal names anyway (`arguments.opts.name`); not values.
    "AdditionalProperties": ("unexpected", "has properties the schema does not allow: {}"),
    "UnevaluatedProperties": ("unexpected", "has properties the schema does not allow: {}"),
}


def _schema_text(value: Any) -> str:
    """A schema-side value as short JSON (a tool's schema can be long; the message stays readable)."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and len(value) <= 8:
        text = " or ".join(json.dumps(v) for v in value)
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = type(value).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def mismatch_message(error: Any) -> str:
    """`arguments.p: fails "pattern": must match the pattern "^[a-z]+$"`: the path, the failed
    keyword and what the schema expects, never the argument's value (the audit and the client see this)."""
    place = where(error.instance_path)
    keyword = next((part for part in reversed(list(error.schema_path)) if isinstance(part, str)), "schema")
    kind = error.kind
    expected = _EXPECTED.get(type(kind).__name__)
    detail = ""
    if expected is not None:
        attribute, template = expected
        value = getattr(kind, attribute, None)
        if value is not None:
            detail = ": " + template.format(_schema_text(value))
    return f"{place}: fails the schema keyword {json.dumps(keyword)[:80]}{detail}"


def _invalid(exc: BaseException) -> Finding:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Finding("args.schema.invalid", f"the tool's inputSchema cannot be used: {first[:200]}")
