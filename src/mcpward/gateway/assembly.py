"""Everything one config asks for, built and checked before anything starts.

The guard chain and the launcher, and around them the accountability parts: who is calling
(authentication on HTTP), how much they may (limits, breakers, anomaly throttles), what is kept
(the audit log) and what is measured (telemetry). Every table is read here, so a config error
stops the gateway at start, never on the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from mcpward.audit import events
from mcpward.gateway import after_reply
from mcpward.gateway.accounting import Accounting
from mcpward.gateway.config import ConfigError, GatewayConfig
from mcpward.guards.base import Guard, GuardChain

if TYPE_CHECKING:
    from mcpward.audit.anomaly import AnomalyDetector
    from mcpward.audit.store import AuditLog
    from mcpward.audit.webhook import Webhook
    from mcpward.auth import Authenticator
    from mcpward.gateway.core import Gateway
    from mcpward.sandbox.launcher import Launcher
    from mcpward.telemetry import Telemetry

log = logging.getLogger("mcpward")


@dataclass(slots=True)
class Assembly:
    cfg: GatewayConfig
    chain: GuardChain
    launcher: Launcher
    redact: Callable[[str], str]
    auth: Authenticator | None = None
    telemetry: Telemetry | None = None
    audit_log: AuditLog | None = None
    anomaly: AnomalyDetector | None = None
    webhook: Webhook | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def gateway(self) -> Gateway:
        from mcpward.gateway.core import Gateway

        gateway = Gateway(self.cfg, self.chain, self.launcher)
        gateway.accounting = Accounting(self.cfg, self.telemetry, policy_hash=gateway.policy_hash)
        return gateway

    async def start(self) -> None:
        if self.webhook is not None:
            await self.webhook.start()

    async def stop(self) -> None:
        after_reply.run()  # anomaly alerts and metrics still owed go out while the log is open
        if self.webhook is not None:
            await self.webhook.close()
        if self.telemetry is not None:
            self.telemetry.shutdown()
        if self.audit_log is not None:
            self.audit_log.close()
            events.install(None)


def secret_resolver(cfg: GatewayConfig) -> Callable[[str], str]:
    """`resolve("secret:NAME")` -> the value, for settings that may hold references (raises SecretError).

    Every value it resolves (webhook URL and headers, the Redis password, the introspection
    client secret, the audit key, OTLP headers, a Vault token) joins the config's output redactor's
    exact values first, with its credential part after an auth scheme: like the servers' own
    secrets, none of them can then reach a log line, an audit record, a span or a client."""
    from mcpward.guards import output
    from mcpward.secrets import SecretResolver, load_settings
    from mcpward.secrets.refs import parse_ref

    resolver: list[SecretResolver] = []

    def resolve(text: str) -> str:
        if not resolver:
            resolver.append(SecretResolver(load_settings(cfg.secrets, cfg.source, cfg.base_dir),
                                           on_values=output.redactor_for(cfg).add_exact))
        return resolver[0].resolve(parse_ref(text))

    return resolve


def assemble(cfg: GatewayConfig, *, front: str) -> Assembly:
    """Build what `cfg` asks for; `front` is "stdio" or "http" (authentication is HTTP's). Raises ConfigError."""
    from mcpward.audit.store import RedactWith
    from mcpward.guards import output
    from mcpward.guards.setup import build_chain
    from mcpward.sandbox.launcher import make_launcher

    chain = build_chain(cfg)
    launcher = make_launcher(cfg)
    resolve = secret_resolver(cfg)
    # Exported spans and metric labels are cleaned as the audit log cleans its records (secret rules,
    # PII, injection markers, the secret values the gateway holds); spans carry no principal, so none
    # of them needs the log's readable identity fields.
    parts = Assembly(cfg, chain, launcher, RedactWith(output.redactor_for(cfg)))
    _audit(parts, resolve)
    _limits(parts, resolve)
    _telemetry(parts, resolve)
    if front == "http":
        _auth(parts, resolve)
    return parts


def validate(cfg: GatewayConfig) -> None:
    """Read every accountability table without opening anything (for `mcpward check`); ConfigError if bad."""
    from mcpward.audit import anomaly
    from mcpward.audit import settings as audit_settings
    from mcpward.auth import load_settings as auth_settings
    from mcpward.limits import load_settings as limits_settings
    from mcpward.telemetry import load_settings as telemetry_settings

    audit_settings.load_settings(cfg)
    anomaly.load_settings(cfg)
    limits_settings(cfg)
    telemetry_settings(cfg)
    auth_settings(cfg)


def _audit(parts: Assembly, resolve: Callable[[str], str]) -> None:
    from mcpward.audit import anomaly
    from mcpward.audit.store import open_from_config

    cfg = parts.cfg
    parts.audit_log = open_from_config(cfg)
    if parts.audit_log is not None:
        events.install(parts.audit_log)
    anomaly_settings = anomaly.load_settings(cfg, resolve)
    if parts.audit_log is None:
        if cfg.anomaly:
            raise ConfigError(cfg.source, "anomaly", "anomaly rules read the audit stream: enable [audit]")
        return
    parts.webhook = anomaly.build_webhook(anomaly_settings)
    parts.anomaly = anomaly.AnomalyDetector(anomaly_settings, parts.webhook)
    if not parts.anomaly.active:
        return
    observe = parts.anomaly.observe
    # The rules read each record after the reply is written (gateway/after_reply.py): a throttle
    # they set applies from the next request on, as before, without the current one waiting for it.
    parts.audit_log.subscribe(lambda event, ts, fields: after_reply.defer(partial(observe, event, ts, fields)))
    _prepend(parts, [anomaly.AnomalyGuard(parts.anomaly)])


def _limits(parts: Assembly, resolve: Callable[[str], str]) -> None:
    """Rate limits, quotas and breakers go last: they count and spend only for a call every other
    guard let through, so a request the policy refuses burns no budget, and the breaker's result
    hook, the first to run on the way back, times the upstream and not the guards."""
    from mcpward.limits import guards_from_config

    guards = guards_from_config(parts.cfg, resolve)
    if guards:
        parts.chain = GuardChain([*parts.chain.guards, *guards])


def _telemetry(parts: Assembly, resolve: Callable[[str], str]) -> None:
    from mcpward.guards import output
    from mcpward.telemetry import load_settings

    settings = load_settings(parts.cfg, resolve)
    if settings.traces or settings.metrics:
        from mcpward.telemetry import Telemetry  # the OpenTelemetry SDK: loaded only when used

        parts.telemetry = Telemetry(settings, redact=parts.redact, resolve=resolve)
        output.redactor_for(parts.cfg).add_exact(parts.telemetry.header_values)


def _auth(parts: Assembly, resolve: Callable[[str], str]) -> None:
    from mcpward.auth import Authenticator, load_settings

    settings = load_settings(parts.cfg)
    if settings is not None:
        parts.auth = Authenticator(settings, resolve_secret=resolve)


def _prepend(parts: Assembly, guards: list[Guard]) -> None:
    """An anomaly throttle decides first: a throttled principal costs no policy or scanning work."""
    if guards:
        parts.chain = GuardChain([*guards, *parts.chain.guards])
