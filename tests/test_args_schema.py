"""inputSchema validation: drafts, no remote $ref, fail closed on bad schemas, caching, bounded cost."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mcpward.guards.schema_check import SchemaCache, deny_additional
from tests.test_arguments_guard import guard, refusal, rule_of
from tests.tripwire import tripwire

OBJ = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}, "required": ["n"]}


def d(schema: Any) -> dict[str, Any]:
    return {"name": "tool", "inputSchema": schema}


async def test_arguments_must_match_the_schema() -> None:
    g = guard()
    assert await rule_of(g, {"n": 1, "s": "x"}, definition=d(OBJ)) is None
    found = await refusal(g, {"n": "one"}, definition=d(OBJ))
    assert found is not None and found.rule == "args.schema.mismatch" and "arguments.n" in found.message
    assert await rule_of(g, {"s": "x"}, definition=d(OBJ)) == "args.schema.mismatch"


async def test_draft_follows_dollar_schema() -> None:
    # prefixItems exists in 2020-12 only; draft-07 ignores it, and has array-form `items` instead.
    tuple_2020 = {"type": "object", "properties": {"t": {"type": "array", "prefixItems": [{"type": "integer"}]}}}
    tuple_07 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "properties": {"t": {"type": "array", "items": [{"type": "integer"}]}}}
    g = guard()
    assert await rule_of(g, {"t": ["x"]}, definition=d(tuple_2020)) == "args.schema.mismatch"
    assert await rule_of(g, {"t": [1]}, definition=d(tuple_2020)) is None
    assert await rule_of(g, {"t": ["x"]}, definition=d(tuple_07)) == "args.schema.mismatch"
    ignored = {**tuple_2020, "$schema": "http://json-schema.org/draft-07/schema#"}
    assert await rule_of(g, {"t": ["x"]}, definition=d(ignored)) is None
    explicit = {**tuple_2020, "$schema": "https://json-schema.org/draft/2020-12/schema"}
    assert await rule_of(g, {"t": ["x"]}, definition=d(explicit)) == "args.schema.mismatch"


async def test_remote_ref_is_never_fetched_and_the_call_is_refused() -> None:
    with tripwire(timeout=1.0) as (port, connections):
        schema = {"type": "object", "properties": {"a": {"$ref": f"http://127.0.0.1:{port}/x"}}}
        found = await refusal(guard(), {"a": 1}, definition=d(schema))
    assert connections == []
    assert found is not None and found.rule == "args.schema.invalid" and "remote $ref refused" in found.message


async def test_local_refs_work() -> None:
    schema = {"type": "object", "$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}
    assert await rule_of(guard(), {"a": "x"}, definition=d(schema)) == "args.schema.mismatch"
    assert await rule_of(guard(), {"a": 1}, definition=d(schema)) is None


async def test_invalid_schemas_fail_closed_with_a_rule() -> None:
    g = guard()
    bad_schemas = ({"type": "objectx"}, {"type": "string", "pattern": "(unclosed"}, "not an object", [1],
                   {"$schema": "http://example.com/my-meta", "type": "object"}, {"properties": {"a": {"minimum": "x"}}})
    for schema in bad_schemas:
        found = await refusal(g, {}, definition=d(schema))
        assert found is not None and found.rule == "args.schema.invalid", schema


async def test_oversized_schema_refused() -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(50)}}
    assert await rule_of(guard(max_schema_bytes=1024), {}, definition=d(big)) == "args.schema.too-large"
    assert await rule_of(guard(), {}, definition=d(big)) is None


async def test_each_schema_compiles_once() -> None:
    g = guard()
    for _ in range(3):
        assert await rule_of(g, {"n": 1}, definition=d(OBJ)) is None
    for _ in range(3):  # equal schema, fresh objects (a relisting): found by digest, not recompiled
        assert await rule_of(g, {"n": 1}, definition=d({**OBJ})) is None
    assert g.schemas.compiled == 1
    assert await rule_of(g, {"n": 1}, definition=d(OBJ), tool="other") is None  # per (server, tool)
    assert await rule_of(g, {"n": 1}, definition=d({**OBJ, "required": []})) is None  # changed schema
    assert g.schemas.compiled == 3
    for _ in range(3):  # a schema that fails to compile is not recompiled on every call either
        await rule_of(g, {}, definition=d({"type": "objectx"}), tool="bad")
    assert g.schemas.compiled == 4


async def test_catastrophic_patterns_stay_cheap() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
    start = time.perf_counter()
    assert await rule_of(guard(), {"s": "a" * 5000 + "!"}, definition=d(schema)) == "args.schema.mismatch"
    assert time.perf_counter() - start < 0.5
    lookaround = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(?!admin).*$"}}}
    assert await rule_of(guard(), {"s": "admin"}, definition=d(lookaround)) == "args.schema.mismatch"
    assert await rule_of(guard(), {"s": "user"}, definition=d(lookaround)) is None


async def test_additional_properties_deny() -> None:
    nested = {"type": "object", "properties": {"opts": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    allow, deny = guard(), guard(additional_properties="deny")
    assert await rule_of(allow, {"opts": {"x": 1}, "extra": 1}, definition=d(nested)) is None
    assert await rule_of(deny, {"opts": {"x": 1}, "extra": 1}, definition=d(nested)) == "args.schema.mismatch"
    assert await rule_of(deny, {"opts": {"x": 1, "y": 2}}, definition=d(nested)) == "args.schema.mismatch"
    assert await rule_of(deny, {"opts": {"x": 1}}, definition=d(nested)) is None
    said = {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}
    assert await rule_of(deny, {"free": "text"}, definition=d(said)) is None  # the schema said what it allows
    combined = {"type": "object", "properties": {"a": {"type": "string"}},
                "allOf": [{"properties": {"b": {"type": "string"}}}]}
    assert await rule_of(deny, {"a": "1", "b": "2"}, definition=d(combined)) is None
    assert await rule_of(deny, {"a": "1", "c": "3"}, definition=d(combined)) == "args.schema.mismatch"


def test_deny_transform_does_not_touch_the_original() -> None:
    schema = {"type": "object", "properties": {"o": {"type": "object"}}}
    out = deny_additional(schema, modern=True)
    assert out["additionalProperties"] is False and out["properties"]["o"]["additionalProperties"] is False
    assert "additionalProperties" not in schema and "additionalProperties" not in schema["properties"]["o"]
    cache = SchemaCache(additional_properties="deny")
    cache.get("s", "t", schema)
    assert "additionalProperties" not in schema


async def test_a_tool_never_listed_gets_generic_checks_only() -> None:
    g = guard()
    assert await rule_of(g, {"anything": 1, "n": "not an int"}, definition=None) is None
    assert await rule_of(g, {"n": "x"}, definition={"name": "tool"}) is None  # a definition without inputSchema


SECRET = "Zq8vN3kLpW7xR2mT9yHs"


@pytest.mark.parametrize(("prop", "value", "expected"), [
    ("n", SECRET, 'arguments.n: fails the schema keyword "type": expected type "integer"'),
    ("e", SECRET, 'arguments.e: fails the schema keyword "enum": expected one of "a" or "b"'),
    ("p", SECRET, 'arguments.p: fails the schema keyword "pattern": must match the pattern "^[a-z]+$"'),
    ("c", SECRET, 'arguments.c: fails the schema keyword "const": expected "fixed"'),
    ("m", SECRET, 'arguments.m: fails the schema keyword "maxLength": is longer than 4 characters'),
    ("u", [SECRET, SECRET], 'arguments.u: fails the schema keyword "uniqueItems"'),
    ("r", SECRET, 'arguments.r: fails the schema keyword "type": expected type "boolean"'),
    ("o", {"k": SECRET}, 'arguments.o.k: fails the schema keyword "type": expected type "integer"'),
])
async def test_mismatch_names_keyword_and_expectation_never_the_value(prop: str, value: Any, expected: str) -> None:
    schema = {"type": "object", "$defs": {"flag": {"type": "boolean"}}, "properties": {
        "n": {"type": "integer"}, "e": {"enum": ["a", "b"]}, "p": {"type": "string", "pattern": "^[a-z]+$"},
        "c": {"const": "fixed"}, "m": {"maxLength": 4}, "u": {"type": "array", "uniqueItems": True},
        "r": {"$ref": "#/$defs/flag"}, "o": {"type": "object", "additionalProperties": {"type": "integer"}}}}
    found = await refusal(guard(), {prop: value}, definition=d(schema))
    assert found is not None and found.rule == "args.schema.mismatch"
    assert found.message == expected and SECRET not in found.message


async def test_mismatch_for_missing_and_extra_properties() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    found = await refusal(guard(), {"b": SECRET}, definition=d(schema))
    assert found is not None and SECRET not in found.message
    assert found.message in ('arguments: fails the schema keyword "required": is missing the required property "a"',
                             'arguments: fails the schema keyword "additionalProperties": has properties the '
                             'schema does not allow: "b"')
