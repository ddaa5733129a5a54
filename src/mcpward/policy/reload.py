"""Reloading the policy of a running gateway (`mcpward serve` on SIGHUP, with the API keys).

Why: a policy change (a new `.cedar` rule, a tool taken away from a group) should not need a
restart that drops every client's session. What is reloaded is `[policy]` (base, mode, files,
tests) and the policy files it names, validated exactly as at startup. The entity model stays the
one the gateway runs with: server tables (annotation overrides, labels) apply at the next restart.

A policy that does not load or validate changes nothing: the policy in force stays, the error is
logged and audited (`policy.reload-failed`). A reload that applies is audited with the old and the
new policy hash and the mode (`policy.reloaded`); switching to dry-run is logged as loudly as at
startup. Every decision after the swap is the new policy's: nothing is cached across it (the
decision cache belongs to the engine).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mcpward.audit import events
from mcpward.gateway import config as config_mod
from mcpward.gateway.config import ConfigError, GatewayConfig
from mcpward.policy.guard import PolicyGuard, engine_for, warn_if_open
from mcpward.policy.settings import read_settings

log = logging.getLogger("mcpward.policy")


def reload_policy(path: Path, running: GatewayConfig, guard: PolicyGuard) -> bool:
    """Read `[policy]` from `path` again and decide with it from now on. Returns whether the policy in
    force changed (its hash or its mode)."""
    try:
        fresh = config_mod.load(path)
    except ConfigError as exc:
        return _refused(exc, guard)
    return apply_policy(fresh, running, guard)


def apply_policy(fresh: GatewayConfig, running: GatewayConfig, guard: PolicyGuard) -> bool:
    """Decide with the `[policy]` of `fresh` (the config just read again) from now on. Returns whether the
    policy in force changed (its hash or its mode)."""
    old_hash, old_mode = guard.engine.policy_hash, guard.mode
    try:
        cfg = dataclasses.replace(running, policy=fresh.policy)
        settings = read_settings(cfg)
        engine = engine_for(cfg, settings)
    except ConfigError as exc:
        return _refused(exc, guard)
    if engine.policy_hash == old_hash and settings.mode == old_mode:
        log.info("policy reload: unchanged (%s)", old_hash[:19])
        return False
    guard.replace(engine, settings.mode)
    warn_if_open(settings, fresh.source)
    log.info("policy reloaded: %s -> %s, base %s, %d rules, %s", old_hash[:19], engine.policy_hash[:19],
             settings.base, len(engine.bundle.rules), settings.mode)
    events.record("policy.reloaded", policy_hash=engine.policy_hash, previous=old_hash, mode=settings.mode,
                  previous_mode=old_mode)
    return True


def _refused(exc: ConfigError, guard: PolicyGuard) -> bool:
    log.error("policy reload refused, the policy in force stays as it was: %s", exc)
    events.record("policy.reload-failed", reason=str(exc), policy_hash=guard.engine.policy_hash)
    return False
