"""Strict validation of tool arguments against the tool's own `inputSchema` (jsonschema-rs).

- Draft by `$schema`: 2020-12 (also the default when absent), 2019-09, draft-07, -06, -04; an
  unknown `$schema` makes the schema invalid.
- Remote `$ref`s are never fetched: the retriever refuses every URI, so a schema that needs one
  does not compile, and the call is refused (fail closed) with `args.schema.invalid`.
- `pattern`s use the linear-time regex engine; a schema needing lookaround falls back to the
  backtracking engine with a step limit. Schemas larger than `max_schema_bytes` are refused.
- Each schema is compiled once per (server, tool, digest of the canonical schema); the same
  schema object seen again skips even the digest.
- `additional_properties = "deny"` treats object schemas (`type` "object", or a type list with it, or
  `properties`/`patternProperties`) that say neither `additionalProperties` nor `unevaluatedProperties`
  as if they said `additionalProperties: false` (with `unevaluatedProperties: false` where combinators are involved
  and the draft has it), so a model cannot smuggle extra arguments past the schema.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jsonschema_rs
import orjson

from mcpward.guards.arg_types import Finding, Kind, where
from mcpward.guards.param_kinds import schema_kinds
from mcpward.protocol import exact

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
    cost: int = 0  # subschema applications per value (schema_cost): decides how a mismatch is reported


def _canonical(schema: Any) -> bytes:
    try:
        return exact.dumps(schema, option=orjson.OPT_SORT_KEYS)
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
    kind = out.get("type")
    is_object = (kind == "object" or (isinstance(kind, list) and "object" in kind)
                 or "properties" in out or "patternProperties" in out)
    # Only these two say what happens to other members; `patternProperties` alone leaves every name
    # that matches no pattern open (`additionalProperties: false` still allows the matching ones).
    unsaid = not any(k in out for k in ("additionalProperties", "unevaluatedProperties"))
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
                 max_entries: int = 4096, max_depth: int = 15, max_cost: int | None = None) -> None:
        self.max_schema_bytes = max_schema_bytes
        self.max_depth = max_depth  # how deep an argument value can be nested: the cost is counted that deep
        self.max_cost = MAX_SCHEMA_COST if max_cost is None else max_cost
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
        effective = exact.plain(effective)  # jsonschema_rs takes no float subclass (exact.ExactFloat)
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
        cost, reason = schema_cost(effective, self.max_depth, self.max_cost)
        if reason is not None:  # decided here, once: no call ever runs this schema's validator
            return CompiledTool(error=Finding("args.schema.too-complex",
                                              f"the tool's inputSchema {reason} (limit {self.max_cost} per "
                                              "value); refused before any call is validated"),
                                kinds=kinds)
        return CompiledTool(validator=validator, kinds=kinds, cost=cost)

    @staticmethod
    def validate(compiled: CompiledTool, arguments: Any) -> Finding | None:
        if compiled.error is not None:
            return compiled.error
        assert compiled.validator is not None
        if compiled.cost > DETAIL_COST:
            # The first error of an anyOf/oneOf carries the tree of every branch's errors, which grows
            # much faster than validation itself: an intricate schema gets the refusal without detail.
            # jsonschema_rs takes no float subclass (exact.ExactFloat: is_valid says False): only a value
            # that fails is walked for one, so ordinary calls never pay for `plain`.
            if compiled.validator.is_valid(arguments) or compiled.validator.is_valid(exact.plain(arguments)):
                return None
            return Finding("args.schema.mismatch", "arguments: do not match the tool's inputSchema")
        # One pass that stops at the first error (as fast as is_valid when there is none). Not
        # iter_errors: it collects every error of the whole value before yielding the first.
        try:
            try:
                compiled.validator.validate(arguments)
            except ValueError as error:  # "Unsupported type": an exact.ExactFloat somewhere (see above)
                if isinstance(error, jsonschema_rs.ValidationError) or "Unsupported type" not in str(error):
                    raise
                compiled.validator.validate(exact.plain(arguments))
        except jsonschema_rs.ValidationError as error:
            return Finding("args.schema.mismatch", mismatch_message(error))
        return None

    @staticmethod
    def call_cost(compiled: CompiledTool, arguments: Any, size: int) -> Finding | None:
        """The schema's cost per value times the values in this call, against MAX_CALL_COST: 1000
        array items each meeting an intricate schema cost 1000 times one. `size` (serialised bytes)
        bounds the count first (a value takes at least two bytes), so most calls count nothing."""
        if compiled.cost * (size // 2 + 1) <= MAX_CALL_COST:
            return None
        values = count_values(arguments)
        if compiled.cost * values <= MAX_CALL_COST:
            return None
        return Finding("args.schema.too-complex",
                       f"arguments: {values} values, each checked against up to {compiled.cost} subschemas of "
                       f"the tool's inputSchema; the limit is {MAX_CALL_COST} per call")


def count_values(arguments: Any) -> int:
    """Every value in the arguments, containers included (iterative: no recursion limit)."""
    count, stack = 1, [arguments]
    while stack:
        value = stack.pop()
        items = value.values() if isinstance(value, dict) else value
        count += len(items)
        stack.extend(item for item in items if isinstance(item, (dict, list)))
    return count


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


# ------------------------------------------------------------ cost bound (decided at compile)
# Validation work is bounded by how many subschemas apply to one argument value once every `$ref` is
# followed. A chain of `$defs` that each name the next one twice doubles it per link: a 1.4 KB schema can
# then ask for billions of steps. That number is counted here, once per schema, before any call is
# validated, with a memo per (subschema, remaining depth) so the count itself stays linear in the schema.
# Subschemas that apply to the same value as their parent:
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAPS = ("dependentSchemas", "dependencies")  # `dependencies` may also hold name lists: skipped
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# Subschemas that apply to a member / an item of the value; `properties` and positional item lists apply
# one per member or position (the most expensive counts), these apply to every one (all count):
_MEMBER_ALL = ("additionalProperties", "unevaluatedProperties", "propertyNames")
_ITEM_ALL = ("additionalItems", "contains", "unevaluatedItems")
# Quick tests that skip a node's keyword scans (most nodes are leaves or plain `$ref`s):
_NESTED = frozenset(_MEMBER_ALL + _ITEM_ALL + ("properties", "patternProperties", "prefixItems", "items"))
_IN_PLACE = frozenset(_IN_PLACE_ONE + _IN_PLACE_LISTS + _IN_PLACE_MAPS)
MAX_SCHEMA_COST = 10_000  # subschema applications per argument value; ordinary tool schemas use under 500
MAX_CALL_COST = 2_000_000  # cost per value times values in one call: a few milliseconds of validation
DETAIL_COST = 512  # above this, a mismatch is reported without jsonschema-rs's error tree (it grows faster)
_MIN_DEPTH = 20  # levels counted at least: any doubling per level passes the budget well before this
# A `$ref` to a JSON Schema meta-schema (jsonschema-rs has them built in; a parameter that is itself a
# schema): not in the tool's schema, so not counted link by link. They recurse by nesting level and a
# value meets a few dozen of their subschemas per level: charged as this many per remaining level.
_META_SCHEMA_COST = 64


class _TooComplex(Exception):
    pass


@dataclass(slots=True)
class _Profile:
    """Subschema applications for one value, split by what its nested values meet. A value is either an
    object or an array (or neither), and one member of an object meets only the `properties` entries
    named like it: the branches of an anyOf over "any JSON value" or over differently named operators
    (`and`/`or`/`not`) then do not add up per level, while two branches applying to the same member or
    item still do (that is the doubling the bound exists for)."""
    here: int = 1  # applied to the value itself (the same for every type)
    item: int = 0  # applied to one item of an array value, all nesting below it included
    members: dict[str, int] = field(default_factory=dict)  # to the member of that name of an object value
    other: int = 0  # to a member of any other name
    shared: bool = False  # `members` is another profile's dict: copied before it is changed
    top: int = 0  # the largest of `members` (kept, so a shared dict is never scanned again)
    total: int = 1  # the dearest of these: set once the profile is complete (it is read many times)

    def finish(self) -> int:
        self.total = self.here + max(self.item, self.other, self.top)
        return self.total


class _Cost:
    """Counts subschema applications for a value nested up to `depth` levels (see MAX_SCHEMA_COST)."""

    def __init__(self, root: dict[str, Any], depth: int, budget: int) -> None:
        self.root, self.depth, self.budget = root, max(depth, _MIN_DEPTH), budget
        self.memo: dict[tuple[int, int], _Profile] = {}
        self.active: set[tuple[int, int]] = set()
        self.steps = 0
        self.merged = 0
        self.resolved: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.ids: dict[str, dict[str, Any]] = {}
        self.anchors: dict[str, list[dict[str, Any]]] = {}
        self._index(root, 0)

    def total(self) -> int:
        return self._count(self.root, self.depth, self.root)

    def _index(self, node: Any, depth: int) -> None:
        # `$id`s and anchors anywhere in the schema (bounded: the schema is within max_schema_bytes).
        if depth > 200:
            raise _TooComplex("is nested more than 200 levels deep")
        if isinstance(node, list):
            for item in node:
                self._index(item, depth + 1)
            return
        if not isinstance(node, dict):
            return
        if isinstance(node.get("$id"), str):
            self.ids[node["$id"].rstrip("#")] = node
        for key in ("$anchor", "$dynamicAnchor"):
            if isinstance(node.get(key), str):
                self.anchors.setdefault(node[key], []).append(node)
        for key, value in node.items():
            if key not in ("enum", "const", "default", "examples"):  # data, not schemas
                self._index(value, depth + 1)

    def _targets(self, ref: str, base: dict[str, Any]) -> list[dict[str, Any]]:
        """What a local `$ref` names: a JSON pointer, an anchor or an `$id` in this schema."""
        resource, _, fragment = ref.partition("#")
        if resource:
            found = self.ids.get(resource) or next(
                (n for i, n in self.ids.items() if i.endswith("/" + resource) or resource.endswith("/" + i)), None)
            if found is None:
                raise _TooComplex(f"has a $ref the cost check cannot follow: {ref[:80]!r}")
            base = found
        if not fragment:
            return [base]
        if not fragment.startswith("/"):
            named = self.anchors.get(fragment)
            if not named:
                raise _TooComplex(f"has a $ref the cost check cannot follow: {ref[:80]!r}")
            return named
        node: Any = base
        for part in fragment[1:].split("/"):
            part = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _TooComplex(f"has a $ref the cost check cannot follow: {ref[:80]!r}")
        return [node]

    def _count(self, node: Any, depth: int, base: dict[str, Any]) -> int:
        return self._profile(node, depth, base).total

    def _profile(self, node: Any, depth: int, base: dict[str, Any]) -> _Profile:
        if not isinstance(node, dict):
            return _Profile()  # `true` / `false`
        key = (id(node), depth)
        known = self.memo.get(key)
        if known is not None:
            return known
        if key in self.active:
            raise _TooComplex("has a $ref cycle that never reaches a nested value (it would never end)")
        self.steps += 1
        if self.steps > 20 * self.budget:
            raise _TooComplex("takes too long to measure")
        self.active.add(key)
        if isinstance(node.get("$id"), str) and node is not self.root:
            base = node
        profile = self._own(node, depth, base)
        if not node.keys().isdisjoint(_IN_PLACE):
            for sub in self._in_place(node):
                self._add(profile, self._profile(sub, depth, base))
        for word in _REF_KEYWORDS:
            if isinstance(node.get(word), str):
                ref = "#" if word == "$recursiveRef" else node[word]
                resource = ref.partition("#")[0]
                if resource and resource not in self.ids and _draft_key(resource).startswith("json-schema.org/"):
                    profile.here += _META_SCHEMA_COST * (depth + 1)
                    continue
                targets = self.resolved.get((ref, id(base)))
                if targets is None:
                    targets = self.resolved[(ref, id(base))] = self._targets(ref, base)
                for target in targets:
                    self._add(profile, self._profile(target, depth, base))
        self.active.discard(key)
        if profile.finish() > self.budget:
            raise _TooComplex("applies too many subschemas to one value once its $refs are followed")
        self.memo[key] = profile
        return profile

    @staticmethod
    def _in_place(node: dict[str, Any]) -> list[Any]:
        """The subschemas (other than `$ref`s) that apply to the same value as `node`."""
        found: list[Any] = [node[word] for word in _IN_PLACE_ONE if word in node]
        for word in _IN_PLACE_LISTS:
            if isinstance(node.get(word), list):
                found.extend(node[word])
        for word in _IN_PLACE_MAPS:
            if isinstance(node.get(word), dict):
                found.extend(sub for sub in node[word].values() if isinstance(sub, (dict, bool)))
        return found

    def _add(self, into: _Profile, other: _Profile) -> None:
        """Both apply to the same value: everything adds up, member by member."""
        into.here += other.here
        into.item += other.item
        if not into.members and not into.other:  # e.g. a `$ref` wrapper: share, copy only if changed later
            into.members, into.other, into.top, into.shared = other.members, other.other, other.top, True
            return
        if not other.members and not other.other:
            return
        self.merged += len(into.members) + len(other.members)  # a dict entry each: far cheaper than a step
        if self.merged > 50 * self.budget:
            raise _TooComplex("takes too long to measure")
        if into.shared:
            into.members, into.shared = dict(into.members), False
        for name in other.members.keys() - into.members.keys():
            into.members[name] = into.other
        for name in into.members:
            into.members[name] += other.members.get(name, other.other)
        into.other += other.other
        into.top = max(into.members.values(), default=0)

    def _own(self, node: dict[str, Any], depth: int, base: dict[str, Any]) -> _Profile:
        """This subschema's own application plus what its member and item keywords apply one level down."""
        profile = _Profile()
        if depth == 0 or node.keys().isdisjoint(_NESTED):  # no nested value is reached from here
            return profile
        below = depth - 1
        every = sum(self._count(node[word], below, base) for word in _MEMBER_ALL if word in node)
        if isinstance(node.get("patternProperties"), dict):  # any pattern may match any name
            every += sum(self._count(sub, below, base) for sub in node["patternProperties"].values())
        if isinstance(node.get("properties"), dict):
            extra = self._count(node["additionalProperties"], below, base) \
                if "additionalProperties" in node else 0
            profile.members = {name: every - extra + self._count(sub, below, base)
                               for name, sub in node["properties"].items()}
            profile.top = max(profile.members.values(), default=0)
        profile.other = every
        for word in ("prefixItems", "items"):
            if isinstance(node.get(word), list):
                profile.item += max((self._count(sub, below, base) for sub in node[word]), default=0)
        if isinstance(node.get("items"), (dict, bool)):
            profile.item += self._count(node["items"], below, base)
        profile.item += sum(self._count(node[word], below, base) for word in _ITEM_ALL if word in node)
        return profile


def schema_cost(schema: dict[str, Any], depth: int, budget: int = MAX_SCHEMA_COST) -> tuple[int, str | None]:
    """How many subschema applications one argument value can take (values nested `depth` deep), or
    the reason it is over `budget` or cannot be bounded. Runs once per schema, at compile."""
    try:
        return _Cost(schema, depth, budget).total(), None
    except _TooComplex as exc:
        return budget + 1, str(exc)
    except RecursionError:
        return budget + 1, "is nested too deeply to measure"
