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


def doubling_chain(links: int, leaf: Any = False, pass_first: bool = False) -> dict[str, Any]:
    """$defs where each link names the next twice: validation work doubles per link (audit 3, gap 1).
    `pass_first`: the first branch fails after the full walk and the second passes, so every value
    takes the whole 2**links walk and is still valid."""
    defs: dict[str, Any] = {}
    for i in range(links):
        nxt = {"$ref": f"#/$defs/a{i + 1}"}
        defs[f"a{i}"] = {"anyOf": [{"allOf": [nxt, False]}, nxt]} if pass_first else \
            {"anyOf": [nxt, {"allOf": [nxt]}]}
    defs[f"a{links}"] = leaf
    return {"type": "object", "properties": {"q": {"$ref": "#/$defs/a0"}}, "$defs": defs}


async def test_a_doubling_ref_chain_is_refused_at_compile_without_validating() -> None:
    g = guard()
    schema = doubling_chain(24)  # 1.9 KB; 2**24 subschema applications per value
    started = time.perf_counter()
    found = await refusal(g, {"q": "weather"}, definition=d(schema))
    assert time.perf_counter() - started < 0.5
    assert found is not None and found.rule == "args.schema.too-complex", found
    assert "subschemas" in found.message and "weather" not in found.message
    compiled = g.schemas.get("srv", "tool", schema)
    assert compiled.validator is None and compiled.error is not None  # no call can ever run it


@pytest.mark.parametrize("schema", [
    {"$defs": {"a": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
    {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"not": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"},
    # doubling per nesting level of the value: 2**depth
    {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}, {"allOf": [{"$ref": "#/$defs/b"}]}]},
               "b": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}}, "$ref": "#/$defs/a"},
])
def test_endless_or_exploding_recursion_is_too_complex(schema: dict[str, Any]) -> None:
    compiled = SchemaCache().get("s", "t", schema)
    assert compiled.error is not None and compiled.error.rule == "args.schema.too-complex", compiled.error


async def test_ordinary_recursive_and_referencing_schemas_still_validate() -> None:
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string"}, "left": {"$ref": "#/$defs/node"}, "right": {"$ref": "#/$defs/node"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "type": "object", "properties": {"root": {"$ref": "#/$defs/node"}}}
    anchored = {"$id": "https://tools.example/search.json", "type": "object", "properties": {
        "a": {"$ref": "search.json#/$defs/word"}, "b": {"$ref": "#word"}, "c": {"$ref": "#/$defs/we~1ird"}},
        "$defs": {"word": {"$anchor": "word", "type": "string"}, "we/ird": {"type": "integer"}}}
    g = guard()
    value = {"root": {"name": "r", "left": {"name": "l"}, "children": [{"name": "c", "right": {"name": "x"}}]}}
    assert await rule_of(g, value, definition=d(tree)) is None
    assert await rule_of(g, {"root": {"left": {"name": 5}}}, definition=d(tree)) == "args.schema.mismatch"
    assert await rule_of(g, {"a": "x", "b": "y", "c": 1}, definition=d(anchored)) is None
    assert await rule_of(g, {"c": "no"}, definition=d(anchored)) == "args.schema.mismatch"
    assert g.schemas.get("srv", "tool", tree).cost < 200  # far below the limit


JSON_VALUE = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
                        {"type": "array", "items": {"$ref": "#/$defs/JsonValue"}},
                        {"type": "object", "additionalProperties": {"$ref": "#/$defs/JsonValue"}}]}
FILTER = {"oneOf": [
    {"type": "object", "properties": {"and": {"type": "array", "items": {"$ref": "#/$defs/E"}}}, "required": ["and"]},
    {"type": "object", "properties": {"or": {"type": "array", "items": {"$ref": "#/$defs/E"}}}, "required": ["or"]},
    {"type": "object", "properties": {"not": {"$ref": "#/$defs/E"}}, "required": ["not"]},
    {"type": "object", "properties": {"field": {"type": "string"}, "eq": {}}, "required": ["field"]}]}


@pytest.mark.parametrize("deny", ["allow", "deny"])
async def test_any_json_value_and_operator_trees_are_not_too_complex(deny: str) -> None:
    # audit 3 (diff), gap 2: anyOf branches for arrays and objects, or for differently named members,
    # never recurse into the same nested value, so they must not add up per nesting level.
    g = guard(additional_properties=deny)
    config = {"type": "object", "properties": {"key": {"type": "string"}, "value": {"$ref": "#/$defs/JsonValue"}},
              "required": ["key", "value"], "$defs": {"JsonValue": JSON_VALUE}}
    deep: Any = 1
    for _ in range(6):  # 12 levels of arrays and objects, within max_depth
        deep = [deep, {"a": deep}]
    assert await rule_of(g, {"key": "a", "value": 1}, definition=d(config)) is None
    assert await rule_of(g, {"key": "a", "value": deep}, definition=d(config)) is None
    assert g.schemas.get("srv", "tool", config).cost < 500
    tree = {"type": "object", "properties": {"expr": {"$ref": "#/$defs/E"}}, "$defs": {"E": FILTER}}
    expr = {"and": [{"field": "a", "eq": 1}, {"or": [{"not": {"field": "b", "eq": "x"}}, {"field": "c"}]}]}
    assert await rule_of(g, {"expr": expr}, definition=d(tree)) is None
    assert await rule_of(g, {"expr": {"and": [{"eq": 1}]}}, definition=d(tree)) == "args.schema.mismatch"
    assert g.schemas.get("srv", "tool", tree).cost < 500


@pytest.mark.parametrize("twice", [
    {"items": {"$ref": "#/$defs/a"}},  # two branches applying to the same item
    {"additionalProperties": {"$ref": "#/$defs/a"}},  # to the same member of any name
    {"properties": {"x": {"$ref": "#/$defs/a"}}},  # to the member of the same name
    {"patternProperties": {"^y": {"$ref": "#/$defs/a"}}, "properties": {"z": {"$ref": "#/$defs/a"}}},
])
def test_branches_meeting_the_same_nested_value_still_add_up(twice: dict[str, Any]) -> None:
    schema = {"$defs": {"a": {"anyOf": [twice, dict(twice), {"type": "string"}]}}, "$ref": "#/$defs/a"}
    compiled = SchemaCache().get("s", "t", schema)
    assert compiled.error is not None and compiled.error.rule == "args.schema.too-complex", compiled.error


async def test_an_intricate_schema_times_many_values_is_refused_per_call() -> None:
    schema = doubling_chain(10, leaf=True, pass_first=True)  # ~4000 applications per value: allowed
    schema["properties"]["q"] = {"type": "array", "items": {"$ref": "#/$defs/a0"}}
    g = guard()
    assert await rule_of(g, {"q": [1, 2, 3]}, definition=d(schema)) is None
    started = time.perf_counter()
    found = await refusal(g, {"q": list(range(1000))}, definition=d(schema))
    assert time.perf_counter() - started < 0.5
    assert found is not None and found.rule == "args.schema.too-complex" and "1002 values" in found.message, found


async def test_an_intricate_schema_reports_a_mismatch_without_the_error_tree() -> None:
    schema = doubling_chain(9)  # ~2500: over the detail limit, under the compile limit; every value fails
    g = guard()
    started = time.perf_counter()
    found = await refusal(g, {"q": 5}, definition=d(schema))
    assert time.perf_counter() - started < 0.5
    assert found is not None and found.rule == "args.schema.mismatch" and "inputSchema" in found.message


async def test_deny_closes_pattern_properties_and_type_lists() -> None:
    deny = guard(additional_properties="deny")
    patterned = {"type": "object", "properties": {"a": {"type": "string"}},
                 "patternProperties": {"^x_": {"type": "string"}}}
    assert await rule_of(deny, {"a": "1", "x_note": "fine"}, definition=d(patterned)) is None
    assert await rule_of(deny, {"a": "1", "evil": "rm -rf"}, definition=d(patterned)) == "args.schema.mismatch"
    listed = {"type": ["object", "null"], "required": ["a"]}
    assert await rule_of(deny, {"a": 1, "evil": 2}, definition=d(listed)) == "args.schema.mismatch"
    only_patterns = {"patternProperties": {"^n_": {"type": "integer"}}}
    assert await rule_of(deny, {"n_1": 1}, definition=d(only_patterns)) is None
    assert await rule_of(deny, {"n_1": 1, "other": 1}, definition=d(only_patterns)) == "args.schema.mismatch"
    said = {"type": "object", "patternProperties": {"^x_": {}}, "additionalProperties": True}
    assert await rule_of(deny, {"other": 1}, definition=d(said)) is None  # the schema said so


async def test_a_parameter_that_is_a_schema_may_reference_the_meta_schema() -> None:
    # jsonschema-rs has the meta-schemas built in; they are charged per nesting level, not refused.
    g = guard()
    schema = {"type": "object", "properties": {"schema": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}}
    assert await rule_of(g, {"schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
                         definition=d(schema)) is None
    assert await rule_of(g, {"schema": {"type": 5}}, definition=d(schema)) == "args.schema.mismatch"
    assert await rule_of(g, {"q": 1}, definition=d({"properties": {"q": {"$ref": "#/$defs/nowhere"}}})) \
        == "args.schema.invalid"  # an unresolvable local $ref: jsonschema-rs refuses it first
