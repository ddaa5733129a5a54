"""Cedar entities and context for a decision: who asks, for which action, on what, and when.

The entity shapes here must match schema.cedarschema exactly (tests check every builder's output
against it): decisions are made without passing the schema, to keep the hot path lean.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import orjson

from mcpward.gateway.config import ANNOTATION_HINTS, ServerConfig, ToolOverride
from mcpward.gateway.context import Principal, RequestContext
from mcpward.protocol.jsonrpc import JsonObj

# One action per MCP method; list methods have their own action, decided per server.
# Subscribing to a resource's updates is decided as reading it: whoever may not read it may not watch it.
METHOD_ACTIONS = {"tools/call": "call_tool", "prompts/get": "get_prompt", "resources/read": "read_resource",
                  "resources/subscribe": "read_resource", "completion/complete": "complete"}
LIST_ACTIONS = {"tools": "list_tools", "prompts": "list_prompts", "resources": "list_resources",
                "resourceTemplates": "list_resource_templates"}
ITEM_ACTIONS = {"tools": "call_tool", "prompts": "get_prompt", "resources": "read_resource",
                "resourceTemplates": "read_resource"}
# A server's requests to the client (T32): they reach the client's model, its user, its roots.
# Decided on the Server that asks, for the principal whose client would be asked.
CLIENT_ACTIONS = {"sampling/createMessage": "sample", "elicitation/create": "elicit", "roots/list": "list_roots"}
ACTIONS = (*METHOD_ACTIONS.values(), *LIST_ACTIONS.values(), *CLIENT_ACTIONS.values())
ACTION_GROUPS = {"get_prompt": "read", "read_resource": "read", "complete": "read",
                 **{a: "list" for a in LIST_ACTIONS.values()}, **{a: "ask_client" for a in CLIENT_ACTIONS.values()}}
# What MCP says a tool is when it does not say (2025-06-18 ToolAnnotations): the unsafe reading.
SPEC_DEFAULTS: dict[str, bool] = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False,
                                  "openWorldHint": True}

EntityType = Literal["Tool", "Prompt", "Resource", "Server"]
# The integrity scanner (and anything else) adds risk labels: (server, kind, upstream name) -> labels,
# kind being "tools", "prompts", "resources" or "resourceTemplates". Called per decision: keep it a lookup.
LabelProvider = Callable[[str, str, str], Iterable[str]]
KIND_OF_TYPE = {"Tool": "tools", "Prompt": "prompts", "Resource": "resources"}


class SortedLabels(list[str]):
    """Labels a provider already sorted and deduplicated, which the builder may use as they are.
    Treat it as read-only: the provider may hand the same list to every decision."""


# Target and Facts are built on every request: plain slotted classes, because a frozen dataclass's
# __init__ costs three times as much. Treat them as read-only all the same.
@dataclass(slots=True)
class Target:
    """What a decision is about, as the client sees it."""

    type: EntityType
    id: str  # exposed name (tools, prompts), URI or URI template (resources), server name (Server)
    server: str
    name: str  # the upstream's own name, URI or URI template
    claimed: Any = None  # the annotations the server claims for a tool (untrusted), or None
    arguments: Mapping[str, Any] | None = None
    template: bool = False
    labels: tuple[str, ...] = ()  # extra labels (explain and policy tests stand in for the scanner with these)


@dataclass(slots=True)
class Facts:
    """The request's circumstances: the Cedar context."""

    transport: str = "stdio"
    client: str = ""
    client_version: str = ""
    era: str = "modern"
    protocol_version: str = ""
    at: float | None = None  # epoch seconds; None = now
    listing: bool = False

    @classmethod
    def of(cls, ctx: RequestContext, listing: bool = False) -> Facts:
        info = ctx.client_info or {}
        name, version = info.get("name"), info.get("version")
        return cls(transport=ctx.transport, client=name if isinstance(name, str) else "",
                   client_version=version if isinstance(version, str) else "", era=ctx.era,
                   protocol_version=ctx.protocol_version, listing=listing)

    def key(self, fields: tuple[str, ...]) -> tuple[Any, ...]:
        """The values of some context fields (never `now`), without building the whole context."""
        if not fields:  # a policy that reads no context field: this runs on every decision
            return ()
        if "hour" in fields or "weekday" in fields:
            hour, weekday = local_clock(time.time() if self.at is None else self.at)
            clock = {"hour": hour, "weekday": weekday}
            return tuple(clock[f] if f in clock else getattr(self, f) for f in fields)
        return tuple([getattr(self, f) for f in fields])

    def context(self) -> dict[str, Any]:
        now = time.time() if self.at is None else self.at
        hour, weekday = local_clock(now)
        return {"now": int(now), "hour": hour, "weekday": weekday, "transport": self.transport,
                "client": self.client, "client_version": self.client_version, "era": self.era,
                "protocol_version": self.protocol_version, "listing": self.listing}


_clock: tuple[int, int, int] = (-1, 0, 0)  # (minute since the epoch, local hour, local weekday)


def local_clock(now: float) -> tuple[int, int]:
    """Local (hour, weekday) at `now`, worked out once per minute instead of on every request (glibc's
    `localtime` checks the zone file when TZ is unset). Zone offsets and DST changes fall on whole
    minutes, so a minute's answer holds for all of it."""
    global _clock
    minute = int(now // 60)
    if _clock[0] != minute:
        local = time.localtime(minute * 60)
        _clock = (minute, local.tm_hour, local.tm_wday)
    return _clock[1], _clock[2]


def effective_annotations(claimed: Any, override: Mapping[str, bool]) -> dict[str, bool]:
    """Spec defaults, then what the server claims (booleans only), then the operator's override."""
    out = dict(SPEC_DEFAULTS)
    if isinstance(claimed, dict):
        for hint in ANNOTATION_HINTS:
            value = claimed.get(hint)
            if isinstance(value, bool):  # "true" as a string is no claim at all: the default stands
                out[hint] = value
    out.update(override)
    return out


def annotation_sources(claimed: Any, override: Mapping[str, bool]) -> dict[str, tuple[bool, str]]:
    """Each hint's effective value and where it came from: "override", "server" or "default"."""
    out = {hint: (value, "default") for hint, value in SPEC_DEFAULTS.items()}
    if isinstance(claimed, dict):
        for hint in ANNOTATION_HINTS:
            value = claimed.get(hint)
            if isinstance(value, bool):
                out[hint] = (value, "server")
    for hint, value in override.items():
        out[hint] = (value, "override")
    return out


def claim_values(value: Any) -> list[str]:
    """A claim as Cedar sees it: a set of strings (scalars stringified, lists flattened one level)."""
    items = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, (int, float)):
            out.append(str(item))
        else:
            out.append(orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode())
    return sorted(set(out))


def argument_tag(value: Any) -> str:
    """A call argument as a tag: strings as they are, anything else as canonical JSON text."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return str(value)


@lru_cache(maxsize=256)
def os_groups(user: str) -> tuple[str, ...]:
    """The OS groups of a local user (primary and supplementary); none when the user is unknown."""
    try:
        entry = pwd.getpwnam(user)
        gids = os.getgrouplist(user, entry.pw_gid)
    except (KeyError, OSError):
        return ()
    names = []
    for gid in gids:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return tuple(sorted(set(names)))


class EntityBuilder:
    """Builds the Cedar JSON of principals and resources from config overrides and label providers."""

    def __init__(self, servers: Mapping[str, ServerConfig], label_providers: Iterable[LabelProvider] = (),
                 include_os_groups: bool = True) -> None:
        self.servers = servers
        self.label_providers = list(label_providers)
        self.include_os_groups = include_os_groups

    # ------------------------------------------------------------------ principal
    def principal(self, principal: Principal) -> JsonObj:
        groups = set(principal.groups)
        if self.include_os_groups and principal.kind == "local-user":
            groups.update(os_groups(principal.subject))
        tags: dict[str, list[str]] = {}
        for key, value in principal.claims:
            if isinstance(key, str):
                tags[key] = claim_values(value)
        return {"uid": {"type": "User", "id": principal.subject},
                "attrs": {"subject": principal.subject, "kind": principal.kind},
                "parents": [{"type": "Group", "id": g} for g in sorted(groups)], "tags": tags}

    # ------------------------------------------------------------------- resource
    def server(self, name: str) -> JsonObj:
        scfg = self.servers.get(name)
        return {"uid": {"type": "Server", "id": name},
                "attrs": {"name": name, "transport": scfg.transport if scfg else "stdio"}, "parents": []}

    def override(self, target: Target) -> ToolOverride | None:
        """The operator's [servers.<s>.tools.<t>] table for a tool, which wins over the server's claims."""
        return self.tool_override(target.server, target.name) if target.type == "Tool" else None

    def tool_override(self, server: str, name: str) -> ToolOverride | None:
        scfg = self.servers.get(server)
        return scfg.tools.get(name) if scfg is not None and scfg.tools else None

    def annotations(self, target: Target) -> dict[str, bool]:
        override = self.override(target)
        return effective_annotations(target.claimed, override.annotations if override is not None else {})

    def labels(self, target: Target) -> list[str]:
        """The target's labels, sorted and without repeats."""
        kind = "resourceTemplates" if target.template else KIND_OF_TYPE.get(target.type, "")
        return self.labels_of(kind, target.server, target.name, self.override(target), target.labels)

    def labels_of(self, kind: str, server: str, name: str, override: ToolOverride | None,
                  extra: tuple[str, ...] = ()) -> list[str]:
        """`labels` from the target's parts (a tool call's cached decision is looked up without a Target)."""
        providers = self.label_providers
        if len(providers) == 1 and not extra and (override is None or not override.labels):
            # The gateway's usual case (the integrity scanner alone): one lookup per decision.
            labels = providers[0](server, kind, name)
            return labels if type(labels) is SortedLabels else sorted(set(labels))
        found: set[str] = set(extra)
        if override is not None:
            found.update(override.labels)
        for provider in providers:
            found.update(provider(server, kind, name))
        return sorted(found)

    def resource_key(self, target: Target, labels: list[str]) -> tuple[Any, ...]:
        """Everything `resource(target, False)` reads that can differ between calls, as a hashable key
        (the operator's overrides come from the config, which is fixed for this builder's life)."""
        return resource_key(target.type, target.id, target.server, target.name, target.template, target.claimed,
                            labels)

    def resource(self, target: Target, with_arguments: bool, labels: list[str] | None = None) -> JsonObj:
        if target.type == "Server":
            return self.server(target.id)
        if labels is None:
            labels = self.labels(target)
        attrs: dict[str, Any] = {"server": target.server, "name": target.name, "labels": labels}
        if target.type == "Tool":
            hints = self.annotations(target)
            attrs.update(hints)
            attrs["destructive"] = not hints["readOnlyHint"] and hints["destructiveHint"]
        elif target.type == "Resource":
            attrs["template"] = target.template
        tags = ({str(k): argument_tag(v) for k, v in target.arguments.items()}
                if with_arguments and target.arguments else {})
        return {"uid": {"type": target.type, "id": target.id}, "attrs": attrs,
                "parents": [{"type": "Server", "id": target.server}], "tags": tags}


def resource_key(type_: str, id_: str, server: str, name: str, template: bool, claimed: Any,
                 labels: list[str]) -> tuple[Any, ...]:
    """A resource's part of a decision's cache key (see `EntityBuilder.resource_key`): one function for
    the key a decision is stored under and the key a tool call looks it up by."""
    hints = None
    if isinstance(claimed, dict):
        # Spelled out (the four of ANNOTATION_HINTS): this runs on every call.
        ro, de, idem, ow = (claimed.get("readOnlyHint"), claimed.get("destructiveHint"),
                            claimed.get("idempotentHint"), claimed.get("openWorldHint"))
        hints = (ro if ro is True or ro is False else None, de if de is True or de is False else None,
                 idem if idem is True or idem is False else None, ow if ow is True or ow is False else None)
    return (type_, id_, server, name, template, hints, *labels)


def context_key(ctx: RequestContext, fields: tuple[str, ...]) -> tuple[Any, ...]:
    """`Facts.of(ctx).key(fields)`, without building the Facts when the policies read no field."""
    return Facts.of(ctx).key(fields) if fields else ()


def action_entities() -> list[JsonObj]:
    """The action hierarchy (read/list/ask_client groups), which Cedar needs as entities when no schema is passed."""
    out: list[JsonObj] = [{"uid": {"type": "Action", "id": g}, "attrs": {}, "parents": []}
                          for g in sorted(set(ACTION_GROUPS.values()))]
    for action in ACTIONS:
        group = ACTION_GROUPS.get(action)
        out.append({"uid": {"type": "Action", "id": action}, "attrs": {},
                    "parents": [{"type": "Action", "id": group}] if group else []})
    return out
