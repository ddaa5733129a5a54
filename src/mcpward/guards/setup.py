"""Builds the guard chain a config asks for, in the one order that keeps the guarantees.

Order: integrity, policy, output guards, interceptors, argument guard. Request hooks run in
that order and result hooks in reverse, so:
- a definition that is not trusted (changed since approval, flagged) is not there at all,
  whatever the policy would say; its scan labels reach the policy as attributes;
- the policy decides first, before any other guard spends time on a request;
- everything the upstream receives has passed the argument guard, even params an
  interceptor rewrote;
- output redaction and capping are the last things a result passes before the client,
  so no interceptor can put back what they removed.
"""

from __future__ import annotations

import logging
import re

from mcpward.gateway.config import ConfigError, GatewayConfig
from mcpward.guards.base import Guard, GuardChain
from mcpward.secrets.resolve import redaction_values

log = logging.getLogger("mcpward.guards")
SECTIONS = ("arguments", "secrets", "pii", "output", "errors")
# A name that says secret: these words anywhere, or a short one (PASS, PAT, SK, PW, PIN) as a whole
# part of the name (DB_PASS, GH_PAT, STRIPE_SK; not PATH, PASSAGE, TASK).
SECRET_NAME = re.compile(r"token|key|secret|passw|passphrase|pwd|auth|credential|cookie|session|private|dsn|conn"
                         r"|(?:^|[_.-])(?:pass|pat|sk|pw|pin)(?:$|[_.-])", re.I)
PLAIN_HEADERS = frozenset({"accept", "accept-language", "content-type", "user-agent"})
MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words


def held_secrets(cfg: GatewayConfig) -> list[str]:
    """Every secret value the config hands to a server, for exact-value redaction.

    Environment values count when their name says secret; header values always do (except a
    few plainly descriptive headers), and so does the credential part of `Authorization`.
    """
    found: set[str] = set()
    for server in cfg.servers.values():
        # The server's own credentials and each principal's.
        for env in [server.env, *(creds.env for creds in server.principals.values())]:
            found.update(value for name, value in env.items() if SECRET_NAME.search(name))
        for headers in [server.headers, *(creds.headers for creds in server.principals.values())]:
            for name, value in headers.items():
                if name.lower() in PLAIN_HEADERS:
                    continue
                found.update(redaction_values(value))
    return sorted(v for v in found if len(v) >= MIN_SECRET_LENGTH)


def install_log_redaction(cfg: GatewayConfig) -> None:
    """From now on every log record of this process passes the config's redactor (after build_chain)."""
    from mcpward.guards import log_redaction, output

    log_redaction.install_log_redaction(output.redactor_for(cfg))


def build_chain(cfg: GatewayConfig) -> GuardChain:
    """The configured chain; raises ConfigError for any bad policy or guard setting."""
    for section in cfg.guards:
        if section not in SECTIONS:
            raise ConfigError(cfg.source, f"guards.{section}",
                              f"unknown guard section; expected one of {', '.join(SECTIONS)}")
        if not isinstance(cfg.guards[section], dict):
            raise ConfigError(cfg.source, f"guards.{section}", "expected a table")
    guards: list[Guard | None] = []
    guards += _integrity(cfg)
    guards += _policy(cfg)
    guards += _outputs(cfg)
    guards += _interceptors(cfg)
    guards += _arguments(cfg)
    _connect_labels(guards)
    return GuardChain([g for g in guards if g is not None])


def _integrity(cfg: GatewayConfig) -> list[Guard | None]:
    from mcpward.integrity import guard as integrity
    from mcpward.integrity.lock import LockError

    try:
        return [integrity.from_config(cfg)]
    except LockError as exc:
        raise ConfigError(cfg.source, "integrity", str(exc)) from None


def _connect_labels(guards: list[Guard | None]) -> None:
    """The scanner's risk labels become attributes the policy can decide on."""
    from mcpward.integrity.guard import IntegrityGuard
    from mcpward.policy.guard import PolicyGuard

    scanners = [g for g in guards if isinstance(g, IntegrityGuard)]
    for policy in (g for g in guards if isinstance(g, PolicyGuard)):
        for scanner in scanners:
            policy.add_label_provider(scanner.labels)


def _policy(cfg: GatewayConfig) -> list[Guard | None]:
    from mcpward.policy import guard as policy

    return [policy.from_config(cfg)]


def _outputs(cfg: GatewayConfig) -> list[Guard | None]:
    from mcpward.guards import errors, output

    # One matcher per config, shared by result redaction, errors and the log filter
    # (`install_log_redaction`), so nothing a client may not see can reach a log line either (T05).
    output.redactor_for(cfg).add_exact(held_secrets(cfg))
    return [errors.from_config(cfg), output.from_config(cfg)]


def _interceptors(cfg: GatewayConfig) -> list[Guard | None]:
    from mcpward.guards import interceptors

    return list(interceptors.from_config(cfg))


def _arguments(cfg: GatewayConfig) -> list[Guard | None]:
    from mcpward.guards import arguments

    return [arguments.from_config(cfg)]
