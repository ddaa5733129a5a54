"""Policy text -> one validated Cedar policy set in which every policy is named by its rule id.

Everything expensive happens here, once: parsing, validation against the schema, indexing the
rules, and finding which context fields the policies read (the engine's decision cache keys on
exactly those) and whether any policy reads a resource's tags (the call's arguments).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cedarpy
import orjson

from mcpward.gateway.config import ConfigError
from mcpward.policy.settings import BUILTIN_DIR, PolicySettings, display_name

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.cedarschema"
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
RESERVED = "policy."  # mcpward's own rule ids (policy.default-deny, ...) live here
EVAL_ERROR = re.compile(r"policy `([^`]*)`")
# Cedar's parser recurses natively: about 1000 nested parentheses, or a chain of some 20,000 `&&`,
# crash the whole process (a segfault, not an exception), and a reload would take a running gateway
# down with it. So each statement is bounded before Cedar sees it, and its parsed form after.
MAX_NESTING = 200  # brackets open at once: (, [ and {
MAX_TOKENS = 10_000  # words and punctuation in one statement
MAX_DEPTH = 120  # levels in a policy's JSON form (two per `&&`/`||` in a chain); Cedar's JSON reader stops at 128


@dataclass(frozen=True, slots=True)
class PolicySource:
    name: str  # "builtin:standard", or a path relative to the config's directory
    text: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    effect: str  # "permit" | "forbid"
    source: str
    line: int  # 0 when unknown


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    rules: tuple[Rule, ...]
    policy_set: cedarpy.PolicySet
    hash: str  # "sha256:<hex>" of the policy texts, in load order
    sources: tuple[PolicySource, ...]
    forbids: frozenset[str]
    context_fields: frozenset[str] | None  # None: some policy reads the context as a whole
    reads_resource_tags: bool
    # Whether two requesters can get different answers for the same thing: some policy names or reads
    # the principal, or reads who is asking through the context (client, transport...). Lists are then
    # private to their requester even when nothing was hidden from this one.
    per_requester: bool = True

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


@lru_cache(maxsize=1)
def schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(schema_text())


def builtin_source(name: str) -> PolicySource:
    return PolicySource(f"builtin:{name}", (BUILTIN_DIR / f"{name}.cedar").read_text(encoding="utf-8"))


def file_source(path: Path, name: str) -> PolicySource:
    try:
        return PolicySource(name, path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(name, "", "the policy file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read the policy file: {exc.strerror}") from None


def sources_for(settings: PolicySettings) -> list[PolicySource]:
    out = [] if settings.base == "none" else [builtin_source(settings.base)]
    out.extend(file_source(path, display_name(path, settings.base_dir)) for path in settings.files)
    return out


def load_bundle(sources: list[PolicySource], servers: Collection[str] | None = None) -> PolicyBundle:
    """`servers`: the configured server names; a policy naming any other `Server::"..."` is an error
    (None: not checked, for policy text read without a config)."""
    rules: dict[str, Rule] = {}
    statics: dict[str, Any] = {}
    digest = hashlib.sha256()
    for src in sources:
        digest.update(src.name.encode() + b"\0" + src.text.encode() + b"\0")
        for rule, est in _compile(src, servers):
            other = rules.get(rule.id)
            if other is not None:
                raise ConfigError(src.name, _at(rule.line), f'duplicate rule id "{rule.id}" '
                                  f"(first used in {other.source}{_line_suffix(other.line)})")
            rules[rule.id] = rule
            statics[rule.id] = est
    document = {"staticPolicies": statics, "templates": {}, "templateLinks": []}
    try:
        policy_set = cedarpy.PolicySet.from_json_str(orjson.dumps(document).decode())
    except (ValueError, TypeError) as exc:  # not expected after the checks in _compile: fail precisely anyway
        raise ConfigError(sources[-1].name if sources else "", "", f"Cedar refused the policy set: {exc}") from None
    fields: set[str] | None = set()
    tags = principal = False
    for est in statics.values():
        found, whole, reads_tags, reads_principal = _reads(est)
        tags = tags or reads_tags
        scope = est.get("principal")
        principal = principal or reads_principal or not (isinstance(scope, dict) and scope.get("op") == "All")
        if whole or fields is None:
            fields = None
        else:
            fields |= found
    return PolicyBundle(
        rules=tuple(rules.values()), policy_set=policy_set, hash="sha256:" + digest.hexdigest(),
        sources=tuple(sources), forbids=frozenset(r.id for r in rules.values() if r.effect == "forbid"),
        context_fields=None if fields is None else frozenset(fields), reads_resource_tags=tags,
        per_requester=principal or fields is None or bool(fields - SAME_FOR_EVERY_REQUESTER))


def _compile(src: PolicySource, servers: Collection[str] | None = None) -> list[tuple[Rule, Any]]:
    try:
        statements = list(split_statements(src.text))  # first: it bounds what Cedar's parser is given
    except TooComplex as exc:
        raise ConfigError(src.name, _at(exc.line), exc.problem) from None
    try:
        document = json.loads(cedarpy.policies_to_json_str(src.text))
    except ValueError as exc:
        raise _syntax_error(src, exc) from None
    except RecursionError:
        raise _too_deep(src) from None
    by_index = {**document.get("templates", {}), **document.get("staticPolicies", {})}
    ordered = sorted(by_index.items(), key=lambda kv: int(kv[0].removeprefix("policy")))
    lines = [line for line, _ in statements] if len(statements) == len(ordered) else [0] * len(ordered)
    line_of = {pid: lines[i] for i, (pid, _) in enumerate(ordered)}
    for pid in document.get("templates", {}):
        raise ConfigError(src.name, _at(line_of[pid]), "policy templates (?principal/?resource slots) are not "
                          "supported; write the principal or resource out")
    for pid, est in ordered:  # before the validator, which also recurses natively
        if _too_nested(est):
            raise ConfigError(src.name, _at(line_of[pid]), _DEEP)
    result = cedarpy.validate_policies(src.text, schema())
    if not result.validation_passed:
        first = result.errors[0]
        where = _at(line_of.get(first.policy_id, 0))
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise ConfigError(src.name, where, f"does not match the mcpward policy schema: {_clean(first.error)}{more}")
    out = []
    for pid, est in ordered:
        line = line_of[pid]
        rule_id = est.get("annotations", {}).get("id")
        if not rule_id:
            raise ConfigError(src.name, _at(line), 'the policy has no @id("...") annotation; every policy needs a '
                              "stable rule id, which refusals and the audit name")
        if not RULE_ID.match(rule_id):
            raise ConfigError(src.name, _at(line), f"rule id {rule_id!r} must be 1-128 characters from "
                              "[A-Za-z0-9_.:/-], starting with a letter or digit")
        if rule_id.startswith(RESERVED):
            raise ConfigError(src.name, _at(line), f"rule id {rule_id!r}: the prefix 'policy.' is reserved "
                              "for mcpward's own rules")
        problem = _reference_problem(est, servers)
        if problem:
            raise ConfigError(src.name, _at(line), problem)
        out.append((Rule(rule_id, est["effect"], src.name, line), est))
    return out


def _too_deep(src: PolicySource) -> ConfigError:
    """Python's JSON reader gave up on a policy's parsed form: find which statement it was."""
    for line, statement in split_statements(src.text):
        try:
            json.loads(cedarpy.policies_to_json_str(statement))
        except (ValueError, RecursionError):
            return ConfigError(src.name, _at(line), _DEEP)
    return ConfigError(src.name, "", _DEEP)


_DEEP = (f"the policy is nested too deeply (more than {MAX_DEPTH} levels once parsed; each `&&` or `||` "
         "in a chain adds two): split it into several policies, or test a set with .contains()")


def _too_nested(est: Any) -> bool:
    """More levels than the rest of the load can take (see MAX_DEPTH), counted without recursion."""
    stack: list[tuple[Any, int]] = [(est, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


@lru_cache(maxsize=1)
def schema_attributes() -> dict[str, frozenset[str]]:
    """The attribute names each variable can have, from schema.cedarschema: `resource` may be any of
    the resource types, so it is their union."""
    text = re.sub(r"//[^\n]*", "", schema_text())
    shapes = {m.group(1): frozenset(re.findall(r"(\w+)\s*:", m.group(2)))
              for m in re.finditer(r"(?:entity|type)\s+(\w+)[^;{]*?=\s*\{(.*?)\}", text, re.S)}
    return {"principal": shapes["User"], "context": shapes["RequestContext"], "action": frozenset(),
            "resource": shapes["Tool"] | shapes["Prompt"] | shapes["Resource"] | shapes["Server"]}


def _reference_problem(est: Any, servers: Collection[str] | None) -> str | None:
    """A `has` test of an attribute nothing has, or a server that is not configured. Cedar's validator
    accepts both (`x has y` is then just false), which makes a forbid that can never match."""
    attributes = schema_attributes()
    for item in _objects(est):
        access = item.get("has")
        if isinstance(access, dict) and isinstance(access.get("left"), dict):
            var, attr = access["left"].get("Var"), access.get("attr")
            if isinstance(var, str) and var in attributes and attr not in attributes[var]:
                return _has_problem(var, str(attr), attributes[var])
        if servers is not None and item.get("type") == "Server" and isinstance(item.get("id"), str) \
                and item["id"] not in servers:
            known = ", ".join(sorted(servers)) or "none"
            return f'Server::"{item["id"]}" is not a configured server (configured: {known})'
    return None


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a policy's JSON form, depth first (iterative: policies may nest deeply)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            yield item
            stack.extend(item.values())


def _has_problem(var: str, attr: str, known: frozenset[str]) -> str:
    message = f"`{var} has {attr}` is always false: {var} never has an attribute `{attr}`"
    if var in ("principal", "resource"):
        what = "claims" if var == "principal" else "arguments"
        message += f" (its {what} are tags: test them with {var}.hasTag(\"{attr}\"))"
    return message + (f"; its attributes are {', '.join(sorted(known))}" if known else "")


def _syntax_error(src: PolicySource, exc: ValueError) -> ConfigError:
    """Cedar's parse errors carry no position: find the first statement that fails alone."""
    for line, statement in split_statements(src.text):
        try:
            cedarpy.policies_to_json_str(statement)
        except ValueError as inner:
            return ConfigError(src.name, _at(line), f"Cedar syntax error: {inner}")
    return ConfigError(src.name, "", f"Cedar syntax error: {exc}")


class TooComplex(Exception):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line, self.problem = line, problem


def split_statements(text: str) -> Iterator[tuple[int, str]]:
    """(first line, text) of each `;`-terminated statement, skipping strings and `//` comments.

    Puts line numbers on errors, and bounds each statement's nesting and size before Cedar parses
    the whole text (TooComplex): see MAX_NESTING.
    """
    line, start, start_line = 1, None, 0
    depth = tokens = 0
    in_word = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        word = ch.isalnum() or ch == "_"
        if ch == "\n":
            line += 1
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            in_word = False
            continue
        elif not ch.isspace():
            if start is None:
                start, start_line, depth, tokens = i, line, 0, 0
            if not (word and in_word):
                tokens += 1
                if tokens > MAX_TOKENS:
                    raise TooComplex(start_line, f"the policy is too long (more than {MAX_TOKENS} words and "
                                                 "symbols): split it into several policies")
            if ch in "([{":
                depth += 1
                if depth > MAX_NESTING:
                    raise TooComplex(line, f"the policy is nested too deeply (more than {MAX_NESTING} "
                                           "brackets open at once)")
            elif ch in ")]}":
                depth -= 1
            elif ch == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\n":
                        line += 1
                    i += 2 if text[i] == "\\" else 1
            elif ch == ";":
                yield start_line, text[start:i + 1]
                start = None
        in_word = word
        i += 1
    if start is not None:
        yield start_line, text[start:]


# Context fields whose value does not depend on who asks (the clock, and whether it is a listing).
SAME_FOR_EVERY_REQUESTER = frozenset({"now", "hour", "weekday", "listing"})


def _reads(node: Any) -> tuple[set[str], bool, bool, bool]:
    """(context fields read, whether the context is read as a whole, whether resource tags are read,
    whether the principal is read in a condition)."""
    fields: set[str] = set()
    context_uses = field_uses = 0
    tags = principal = False
    for item in _objects(node):
        if item.get("Var") == "context":
            context_uses += 1
        elif item.get("Var") == "principal":
            principal = True
        for op in (".", "has"):
            access = item.get(op)
            if isinstance(access, dict) and access.get("left") == {"Var": "context"}:
                fields.add(str(access.get("attr")))
                field_uses += 1
        for op in ("hasTag", "getTag"):
            access = item.get(op)
            if isinstance(access, dict) and access.get("left") != {"Var": "principal"}:
                tags = True
    # `context` used other than as `context.x` / `context has x` reads it as a whole.
    return fields, context_uses > field_uses, tags, principal


def evaluation_error_policies(errors: list[str]) -> set[str]:
    """The rule ids named by Cedar's evaluation errors ('error while evaluating policy `x`: ...')."""
    found = set()
    for error in errors:
        match = EVAL_ERROR.search(error)
        found.add(match.group(1) if match else "")
    return found


def _clean(message: str) -> str:
    # Cedar names the policy by its position ("for policy `policy3`, ..."); the line says which one.
    return re.sub(r"^for policy `policy\d+`, ", "", message)


def _at(line: int) -> str:
    return f"line {line}" if line else ""


def _line_suffix(line: int) -> str:
    return f" line {line}" if line else ""
