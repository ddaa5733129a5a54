"""Reloading the API keys of a running gateway (`mcpward serve` on SIGHUP).

Why: a leaked key must stop working now, not at the next restart (which would also drop every
client's session). Only `[auth.api_keys]` is reloaded: the rest of `[auth]` (the resource, OAuth)
shapes metadata documents and clients' caches, so a change there is reported as needing a restart.

The config is read once per reload by the caller (cli/main.py `reload_config`, which reports a file
that does not parse: `config.reload-failed`) and handed here, to be checked as at startup. If its
`[auth]` cannot be used (a bad key entry) the keys in force stay as they are: the refusal is logged as
an error and audited (`auth.reload-failed`), so an operator who meant to revoke a key sees at once that
it is still valid. A reload that applies is audited with the names
of the keys added and removed (`auth.keys-reloaded`); hashes never appear. Removing the last key
(or the whole `[auth]` table) is a revocation and is honoured; authentication is never switched off
at run time, so every request with a key is then refused until one is added.
"""

from __future__ import annotations

import logging

from mcpward.audit import events
from mcpward.auth.authenticator import Authenticator
from mcpward.auth.settings import ApiKey, load_settings
from mcpward.gateway.config import ConfigError, GatewayConfig

log = logging.getLogger("mcpward.auth")


def apply_api_keys(cfg: GatewayConfig, auth: Authenticator | None) -> bool:
    """Put the API keys of `cfg` (the config just read again) in force. Returns whether they were applied."""
    path = cfg.source
    if auth is None:
        if cfg.auth is not None:
            log.warning("reload: [auth] was added to %s; authentication starts at the next restart", path)
            events.record("auth.reload-failed", reason="[auth] was not configured at start; it needs a restart")
        return False
    old = auth.settings
    try:
        if not cfg.auth or ("oauth" not in cfg.auth and not cfg.auth.get("api_keys")):
            # No key left (or [auth] gone): a revocation, honoured. Authentication is never turned off
            # at run time, so nobody gets in with a key until one is added again (or a restart without
            # [auth] runs the gateway unauthenticated, if that is really meant).
            keys: tuple[ApiKey, ...] = ()
            log.warning("reload: no API key is left in %s: every request with a key is refused until one is "
                        "added; authentication stays on", path)
        else:
            settings = load_settings(cfg)
            assert settings is not None  # cfg.auth is not empty
            keys = settings.api_keys
            if (settings.resource, settings.oauth, settings.resource_name) != \
                    (old.resource, old.oauth, old.resource_name):
                log.warning("reload: [auth] settings other than api_keys changed in %s; they apply at the next "
                            "restart", path)
    except ConfigError as exc:
        return _refused(str(exc))
    before = {k.name: k for k in old.api_keys}
    after = {k.name: k for k in keys}
    added = sorted(n for n in after if n not in before or after[n] != before[n])
    removed = sorted(n for n in before if n not in after)
    auth.replace_api_keys(keys)
    log.info("reload: API keys in force: %d (added or changed: %s; removed: %s)", len(after),
             ", ".join(added) or "none", ", ".join(removed) or "none")
    events.record("auth.keys-reloaded", keys=len(after), added=added, removed=removed)
    return True


def _refused(reason: str) -> bool:
    log.error("reload refused, the API keys in force stay as they were: %s", reason)
    events.record("auth.reload-failed", reason=reason)
    return False
