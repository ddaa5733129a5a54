"""The effective permission matrix `mcpward check` prints: who may call what, with which isolation.

A permission drift (a policy edit, a new tool, a server that lost its sandbox) shows up as a
changed matrix in review, and the policy hash printed with it is the one every audit record of a
decision carries.
"""

from __future__ import annotations

from typing import Any

from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import Principal
from mcpward.guards.base import GuardChain, Listed
from mcpward.policy.entities import ITEM_ACTIONS, Facts
from mcpward.policy.guard import listed_target

KINDS = ("local-user", "anonymous", "api-key", "oauth")


def parse_principal(text: str) -> Principal:
    """`KIND:SUBJECT[:GROUP,GROUP]`, or a bare SUBJECT for an OAuth subject."""
    parts = text.split(":")
    if len(parts) == 1:
        return Principal(subject=text, kind="oauth")
    kind, subject = parts[0], parts[1]
    if kind not in KINDS or not subject:
        raise ValueError(f"{text!r}: expected KIND:SUBJECT[:GROUP,...] with KIND one of {', '.join(KINDS)}")
    groups = tuple(g for g in parts[2].split(",") if g) if len(parts) > 2 else ()
    return Principal(subject=subject, kind=kind, groups=groups)  # type: ignore[arg-type]


def default_principals(cfg: GatewayConfig) -> list[Principal]:
    """The parties the config itself names: the local user (stdio), anonymous HTTP, each API key."""
    from mcpward.auth import load_settings

    settings = load_settings(cfg)
    keys = sorted(settings.api_keys, key=lambda k: k.name) if settings is not None else []
    return [Principal.local_user(), Principal.anonymous(),
            *(Principal(subject=k.name, kind="api-key", groups=tuple(k.groups)) for k in keys)]


def matrix(cfg: GatewayConfig, chain: GuardChain, listed: dict[str, list[Listed]],
           principals: list[Principal]) -> dict[str, Any]:
    """Decisions for every principal on every listed item (kind -> items), plus each server's isolation."""
    engine = next((g.engine for g in chain.guards if hasattr(g, "engine")), None)
    rows: list[dict[str, Any]] = []
    for kind, items in listed.items():
        action = ITEM_ACTIONS.get(kind)
        if action is None:
            continue
        for item in items:
            target = listed_target(kind, item)
            row: dict[str, Any] = {"kind": kind, "server": item.server, "name": target.id, "decisions": {}}
            for principal in principals:
                transport = "stdio" if principal.kind == "local-user" else "http"
                if engine is None:
                    verdict = {"allowed": True, "rule": "no-policy"}
                else:
                    decision = engine.decide(principal, action, target, Facts(transport=transport, listing=True))
                    verdict = {"allowed": decision.allowed, "rule": decision.rule}
                row["decisions"][principal.key] = verdict
            rows.append(row)
    return {"policy_hash": getattr(engine, "policy_hash", None), "principals": [p.key for p in principals],
            "items": rows, "isolation": isolation(cfg)}


def isolation(cfg: GatewayConfig) -> dict[str, dict[str, Any]]:
    """Each server's sandbox backend and network, as declared (remote servers: their URL)."""
    from mcpward.sandbox.settings import describe_profile, read_settings

    settings = read_settings(cfg)
    out: dict[str, dict[str, Any]] = {}
    for name, server in cfg.servers.items():
        if server.transport == "http":
            out[name] = {"sandbox": "remote", "network": server.url or ""}
            continue
        profile = describe_profile(settings.profile(name))
        out[name] = {"sandbox": profile["backend"], "network": profile["network"]}
    return out
