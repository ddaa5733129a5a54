"""Scenarios (`mcpward policy explain`) and policy test files (`mcpward policy test`).

A scenario is one request described without running anything: who, which client, which action on
which tool/prompt/resource/server, what the server claims about the tool, the arguments, when.
The config's overrides and the policy set apply to it exactly as they would at run time.

    [[case]]
    name = "alice may not delete"          # optional
    principal = "alice"                    # kind = "local-user" by default; groups, claims
    client = "claude-code"
    action = "call_tool"                   # optional: inferred from tool/prompt/resource/server
    tool = "fs__delete_all"                # or prompt = ..., resource = ..., server = ...
    annotations = { readOnlyHint = true }  # what the server claims; [servers.x.tools.y] overrides win
    arguments = { path = "/tmp/x" }
    expect = "deny"
    rule = "policy.default-deny"           # optional: the rule id that must decide it
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mcpward.gateway.catalog import Catalog
from mcpward.gateway.config import ANNOTATION_HINTS, ConfigError, GatewayConfig, TableReader
from mcpward.gateway.context import Principal
from mcpward.policy.engine import Decision, PolicyEngine
from mcpward.policy.entities import ACTIONS, CLIENT_ACTIONS, LIST_ACTIONS, Facts, Target
from mcpward.policy.guard import completed_item

KINDS = ("local-user", "anonymous", "api-key", "oauth")
ERAS = ("modern", "legacy")
TARGET_KEYS = ("tool", "prompt", "resource", "server")
# Which entity type each action acts on, and the action a bare target implies.
ACTION_TYPES = {"call_tool": ("Tool",), "get_prompt": ("Prompt",), "read_resource": ("Resource",),
                "complete": ("Prompt", "Resource"),
                **{a: ("Server",) for a in (*LIST_ACTIONS.values(), *CLIENT_ACTIONS.values())}}
DEFAULT_ACTION = {"tool": "call_tool", "prompt": "get_prompt", "resource": "read_resource", "server": "list_tools"}


class ScenarioError(ValueError):
    """A scenario that names something the config does not have, or contradicts itself."""


@dataclass(slots=True)
class Scenario:
    principal: str
    kind: str = "local-user"
    groups: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)
    client: str = ""
    client_version: str = ""
    transport: str = "stdio"
    era: str = "modern"
    action: str | None = None
    tool: str | None = None
    prompt: str | None = None
    resource: str | None = None
    server: str | None = None
    annotations: dict[str, bool] | None = None  # the server's claim, for tools
    labels: tuple[str, ...] = ()  # stand-ins for the integrity scanner's labels
    arguments: dict[str, Any] | None = None
    at: float | None = None
    listing: bool = False


@dataclass(frozen=True, slots=True)
class Resolved:
    principal: Principal
    action: str
    target: Target
    facts: Facts


def resolve(scenario: Scenario, cfg: GatewayConfig) -> Resolved:
    given = [k for k in TARGET_KEYS if getattr(scenario, k) is not None and not (k == "server" and _has_item(scenario))]
    if len(given) != 1:
        raise ScenarioError("name exactly one of tool, prompt, resource (each optionally with server), or server alone")
    key = given[0]
    action = scenario.action or DEFAULT_ACTION[key]
    if action not in ACTIONS:
        raise ScenarioError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if scenario.kind not in KINDS:
        raise ScenarioError(f"unknown principal kind {scenario.kind!r}; expected one of {', '.join(KINDS)}")
    if scenario.era not in ERAS:
        raise ScenarioError(f"unknown era {scenario.era!r}; expected modern or legacy")
    if key == "server" and (scenario.arguments is not None or scenario.labels):
        # A list or client action is decided on the server alone: arguments or labels would be silently ignored.
        raise ScenarioError("arguments and labels do not apply to a server alone (a list or client action); "
                            "name a tool, prompt or resource")
    target = _target(scenario, cfg, key)
    if target.type not in ACTION_TYPES[action]:
        raise ScenarioError(f"{action} does not apply to a {key}; it applies to "
                            f"{' or '.join(t.lower() for t in ACTION_TYPES[action])}")
    if scenario.annotations is not None and target.type != "Tool":
        raise ScenarioError("annotations only apply to tools")
    claims = tuple(sorted(scenario.claims.items()))
    principal = Principal(subject=scenario.principal, kind=scenario.kind,  # type: ignore[arg-type]
                          claims=claims, groups=tuple(scenario.groups))
    facts = Facts(transport=scenario.transport, client=scenario.client, client_version=scenario.client_version,
                  era=scenario.era, at=scenario.at, listing=scenario.listing)
    return Resolved(principal, action, target, facts)


def _has_item(scenario: Scenario) -> bool:
    return any(getattr(scenario, k) is not None for k in ("tool", "prompt", "resource"))


def _target(scenario: Scenario, cfg: GatewayConfig, key: str) -> Target:
    if key == "server":
        server = scenario.server or ""
        if server not in cfg.servers:
            raise ScenarioError(f"no server {server!r} in the config")
        return Target("Server", server, server, server)
    if key == "resource":
        uri = scenario.resource or ""
        server = scenario.server or _only_server(cfg, "resource")
        return Target("Resource", uri, server, uri, arguments=scenario.arguments, template="{" in uri,
                      labels=scenario.labels)
    name = (scenario.tool if key == "tool" else scenario.prompt) or ""
    server, upstream = resolve_exposed(cfg, name, scenario.server)
    exposed = Catalog(cfg.servers, cfg.separator).exposed_name(server, upstream)
    if key == "tool":
        return Target("Tool", exposed, server, upstream, claimed=scenario.annotations, arguments=scenario.arguments,
                      labels=scenario.labels)
    return Target("Prompt", exposed, server, upstream, arguments=scenario.arguments, labels=scenario.labels)


def resolve_exposed(cfg: GatewayConfig, name: str, server: str | None) -> tuple[str, str]:
    """An exposed tool/prompt name -> (server, upstream name), from the config's prefixes alone.

    With `server` given, `name` may be either the exposed name or the upstream's own name.
    """
    sep = cfg.separator
    if server is not None:
        scfg = cfg.servers.get(server)
        if scfg is None:
            raise ScenarioError(f"no server {server!r} in the config")
        lead = f"{scfg.prefix}{sep}" if scfg.prefix else ""
        return server, name[len(lead):] if lead and name.startswith(lead) else name
    matches = [(len(s.prefix), s.name) for s in cfg.servers.values() if s.prefix and name.startswith(s.prefix + sep)]
    if matches:
        _length, owner = max(matches)
        return owner, name[len(cfg.servers[owner].prefix) + len(sep):]
    unprefixed = [s.name for s in cfg.servers.values() if not s.prefix]
    if len(unprefixed) == 1:
        return unprefixed[0], name
    raise ScenarioError(f"{name!r} carries no configured server's prefix (separator {sep!r}); "
                        "name the server too")


def _only_server(cfg: GatewayConfig, what: str) -> str:
    if len(cfg.servers) == 1:
        return next(iter(cfg.servers))
    raise ScenarioError(f"with several servers configured, a {what} needs its server named")


# ------------------------------------------------------------------------ test files
@dataclass(frozen=True, slots=True)
class Case:
    label: str  # "tests.toml case 3 (alice may not delete)"
    scenario: Scenario
    expect: bool
    rule: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    decision: Decision | None
    problem: str | None  # why it failed (None: passed)


def load_cases(path: Path, display: str | None = None) -> list[Case]:
    source = display or str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the test file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "the test file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    top = TableReader(source, "", data)
    raw = top.get("case", list, [])
    top.reject_unknown()
    if not raw:
        raise ConfigError(source, "case", "no [[case]] tables in the file")
    cases = []
    for i, table in enumerate(raw, start=1):
        if not isinstance(table, dict):
            raise ConfigError(source, f"case[{i}]", "expected a table ([[case]])")
        cases.append(_case(TableReader(source, f"case[{i}]", table), source, i))
    return cases


def _case(r: TableReader, source: str, index: int) -> Case:
    name = r.get("name", str, "")
    expect = r.get("expect", str, None)
    if expect not in ("allow", "deny"):
        raise r.fail("expect", "must be \"allow\" or \"deny\"")
    s = Scenario(principal=r.get("principal", str, None) or _missing(r, "principal"))
    s.kind = r.get("kind", str, s.kind)
    s.groups = tuple(r.strings("groups"))
    s.claims = dict(r.get("claims", dict, {}))
    s.client = r.get("client", str, "")
    s.client_version = r.get("client_version", str, "")
    s.transport = r.get("transport", str, s.transport)
    if s.transport not in ("stdio", "http"):
        raise r.fail("transport", "must be \"stdio\" or \"http\"")
    s.era = r.get("era", str, s.era)
    if s.era not in ERAS:
        raise r.fail("era", "must be \"modern\" or \"legacy\"")
    s.action = r.get("action", str, None)
    for key in TARGET_KEYS:
        setattr(s, key, r.get(key, str, None))
    annotations = r.get("annotations", dict, None)
    if annotations is not None:
        s.annotations = parse_annotations(annotations, lambda k, p: r.fail(f"annotations.{k}", p))
    s.labels = tuple(r.strings("labels"))
    s.arguments = r.get("arguments", dict, None)
    at = r.get("at", (str, dt.datetime, dt.date), None)
    if at is not None:
        try:
            s.at = timestamp(at)
        except ValueError as exc:
            raise r.fail("at", str(exc)) from None
    s.listing = r.get("listing", bool, False)
    rule = r.get("rule", str, None)
    r.reject_unknown()
    label = f"{source} case {index}" + (f" ({name})" if name else "")
    return Case(label, s, expect == "allow", rule)


def _missing(r: TableReader, key: str) -> Any:
    raise r.fail(key, "required")


def parse_annotations(table: dict[str, Any], fail: Any) -> dict[str, bool]:
    for key, value in table.items():
        if key not in ANNOTATION_HINTS:
            raise fail(key, f"unknown annotation; expected one of {', '.join(ANNOTATION_HINTS)}")
        if not isinstance(value, bool):
            raise fail(key, "expected true or false")
    return dict(table)


def timestamp(value: Any) -> float:
    """An ISO 8601 string, TOML datetime or date -> epoch seconds (no zone: the host's local time)."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date/time: {value!r}") from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise ValueError("expected a date/time")
    return value.timestamp()


def run_case(engine: PolicyEngine, cfg: GatewayConfig, case: Case) -> Outcome:
    try:
        resolved = resolve(case.scenario, cfg)
    except ScenarioError as exc:
        return Outcome(case, None, str(exc))
    decision = decide(engine, resolved)
    if decision.allowed != case.expect:
        want, got = ("allow", "deny") if case.expect else ("deny", "allow")
        return Outcome(case, decision, f"expected {want}, got {got} ({decision.reason})")
    if case.rule is not None and case.rule not in (decision.rule, *decision.rules):
        return Outcome(case, decision, f"expected rule {case.rule}, decided by {decision.rule}")
    return Outcome(case, decision, None)


def decide(engine: PolicyEngine, resolved: Resolved) -> Decision:
    """As the gateway decides: `complete` also needs the item's own action (a hidden item gives no
    completions). The URI-through-template decision needs the server's listed templates, which a
    scenario does not have: name the template as the resource to test it."""
    decision = engine.decide(resolved.principal, resolved.action, resolved.target, resolved.facts)
    item = completed_item(resolved.action, resolved.target)
    if decision.allowed and item is not None:
        needed = engine.decide(resolved.principal, item[0], item[1], resolved.facts)
        if not needed.allowed:
            return needed
    return decision


def with_claimed(scenario: Scenario, claimed: dict[str, Any] | None) -> Scenario:
    """The scenario with the annotations a live server claims, under any given on the command line."""
    if claimed is None:
        return scenario
    merged = {k: v for k, v in claimed.items() if k in ANNOTATION_HINTS and isinstance(v, bool)}
    merged.update(scenario.annotations or {})
    return replace(scenario, annotations=merged)
