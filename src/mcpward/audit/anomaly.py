"""Anomaly rules over the audit stream: rapid calls (T29), toxic flow (T22), refusal bursts.

The detector subscribes to the audit log: `observe()` sees every record as it is appended, on the
request path, so it does O(1) work per record, keeps bounded state per principal (a few short
deques), tracks a bounded number of principals (least recently active evicted first, idle ones
swept), and does no I/O; the webhook only queues.

Each rule fires once per episode: after it fires for a principal it stays quiet for that principal
until one full window passes without a new violation. So 6 calls in 1 s raise one alert, and so do
60. A rule whose action is "throttle" also makes `AnomalyGuard` refuse that principal's requests
for `throttle_seconds`; those refusals (rule `anomaly.*`) are not fed back into the rules.

Windows run on the `ts` each record carries (so a recorded stream replays the same way); the
throttle runs on the detector's own clock. See docs/anomaly.md.

The rules see a principal key as the audit log stores it: redacted and escaped. A throttle is
looked up under that same spelling (`audit_spelling`), so a key the log rewrites (a control
character, a secret-shaped string) is throttled like any other. Keys the log spells alike share one
state and one throttle: that errs toward refusing, never toward letting a principal through.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mcpward.audit import events
from mcpward.audit.webhook import Webhook, WebhookError, check_header, check_webhook_url
from mcpward.gateway.config import ConfigError, GatewayConfig, Resolver, TableReader, system_resolver
from mcpward.guards.base import Call, Guard, Refusal
from mcpward.guards.log_redaction import escape
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.secrets.refs import SCHEMES, SecretError, SecretRefError, find_refs, interpolate, parse_ref

log = logging.getLogger("mcpward.anomaly")

Action = Literal["alert", "throttle"]
SecretLookup = Callable[[str], str]  # "secret:NAME" -> the value, or SecretError
ACTIONS = ("alert", "throttle")
RULES = ("rapid_calls", "toxic_flow", "refusal_burst")
# Facts about one call that mean it read sensitive data, and labels that say a tool does.
SOURCE_FLAGS = frozenset({"secret-in-result", "pii-in-result", "secret-redacted", "pii-redacted", "sensitive-path"})
SOURCE_LABELS = frozenset({"reads-secrets", "sensitive"})
SINK_LABELS = frozenset({"open-world", "egress"})
MAX_EVIDENCE = 16
# A record older than the principal's last one by more than this means the clock stepped back:
# that principal's windows start over rather than counting a minute of history as one instant.
CLOCK_STEP = 1.0
_TARGET_CACHE = 4096
_REF_PREFIX = re.compile(rf"^(?:{'|'.join(SCHEMES)}):")


# ---------------------------------------------------------------------------------- settings
@dataclass(frozen=True, slots=True)
class RuleSettings:
    name: str
    enabled: bool = True
    action: Action = "alert"
    throttle_seconds: float = 60.0
    window_seconds: float = 1.0
    limit: int = 5  # rapid_calls: max_calls; refusal_burst: max_refusals; unused by toxic_flow
    sources: tuple[str, ...] = ()  # toxic_flow only: exposed tool name globs
    sinks: tuple[str, ...] = ()


def _rapid_default() -> RuleSettings:
    return RuleSettings("rapid_calls", window_seconds=1.0, limit=5)


def _toxic_default() -> RuleSettings:
    return RuleSettings("toxic_flow", window_seconds=600.0, limit=0)


def _refusal_default() -> RuleSettings:
    return RuleSettings("refusal_burst", window_seconds=10.0, limit=5)


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    source: str = "<defaults>"
    rapid_calls: RuleSettings = field(default_factory=_rapid_default)
    toxic_flow: RuleSettings = field(default_factory=_toxic_default)
    refusal_burst: RuleSettings = field(default_factory=_refusal_default)
    webhook: str | None = None  # a URL, or a secret reference whose value is the URL
    webhook_headers: dict[str, str] = field(default_factory=dict)  # values: text, `${ref}` or a whole ref
    webhook_allow_private: bool = False
    webhook_timeout: float = 5.0
    webhook_retries: int = 2
    webhook_queue: int = 256
    instance: str | None = None  # names this gateway in webhook bodies; default host:pid
    max_principals: int = 10000
    resolved: bool = False  # webhook and webhook_headers hold values, not references

    @property
    def rules(self) -> tuple[RuleSettings, ...]:
        return (self.rapid_calls, self.toxic_flow, self.refusal_burst)


def load_settings(cfg: GatewayConfig, resolve: SecretLookup | None = None) -> AnomalySettings:
    """`[anomaly]`, every key checked; ConfigError names file and key. Always settings: the rules are
    on by default. With `resolve`, the webhook's secret references come back resolved."""
    r = TableReader(cfg.source, "anomaly", cfg.anomaly)
    webhook = r.get("webhook", str, None)
    if webhook is not None:
        _check_webhook_value(r, webhook, r.get("webhook_allow_private", bool, False))
    headers = r.string_map("webhook_headers")
    for name, value in headers.items():
        _check_header_value(r, name, value)
    rules = _rules(cfg, r)
    settings = AnomalySettings(
        source=cfg.source,
        webhook=webhook,
        webhook_headers=headers,
        webhook_allow_private=r.get("webhook_allow_private", bool, False),
        webhook_timeout=r.number("webhook_timeout", 5.0, 0.1, 60.0),
        webhook_retries=r.integer("webhook_retries", 2, 0, 10),
        webhook_queue=r.integer("webhook_queue", 256, 1, 100000),
        instance=r.get("instance", str, None),
        max_principals=r.integer("max_principals", 10000, 10, 10_000_000),
        rapid_calls=rules["rapid_calls"], toxic_flow=rules["toxic_flow"], refusal_burst=rules["refusal_burst"],
    )
    if headers and webhook is None:
        raise r.fail("webhook_headers", "set without a webhook")
    r.reject_unknown()
    return settings if resolve is None else resolve_settings(settings, resolve)


def _check_webhook_value(r: TableReader, value: str, allow_private: bool) -> None:
    if _REF_PREFIX.match(value):
        try:
            parse_ref(value)  # the URL itself is a secret (a Slack-style hook); checked once resolved
        except SecretRefError as exc:
            raise r.fail("webhook", str(exc)) from None
        return
    problem = check_webhook_url(value, allow_private=allow_private)
    if problem is not None:
        raise r.fail("webhook", problem)


def _check_header_value(r: TableReader, name: str, value: str) -> None:
    key = f"webhook_headers.{name}"
    try:
        if _REF_PREFIX.match(value):
            parse_ref(value)
            return
        find_refs(value)
    except SecretRefError as exc:
        raise r.fail(key, str(exc)) from None
    problem = check_header(name, value)
    if problem is not None:
        raise r.fail(key, problem)


def _rules(cfg: GatewayConfig, top: TableReader) -> dict[str, RuleSettings]:
    table = top.get("rules", dict, {})
    for name, sub in table.items():
        if name not in RULES:
            raise top.fail(f"rules.{name}", f"unknown rule; expected one of {', '.join(RULES)}")
        if not isinstance(sub, dict):
            raise top.fail(f"rules.{name}", "expected a table")
    out: dict[str, RuleSettings] = {}
    for name in RULES:
        r = TableReader(cfg.source, f"anomaly.rules.{name}", table.get(name, {}))
        enabled = r.get("enabled", bool, True)
        action = r.get("action", str, "alert")
        if action not in ACTIONS:
            raise r.fail("action", f"must be 'alert' or 'throttle', got {action!r:.40}")
        throttle = r.number("throttle_seconds", 60.0, 1.0, 86400.0)
        if name == "rapid_calls":
            rule = RuleSettings(name, enabled, action, throttle, r.number("window_seconds", 1.0, 0.01, 3600.0),
                                r.integer("max_calls", 5, 1, 100000))
        elif name == "refusal_burst":
            rule = RuleSettings(name, enabled, action, throttle, r.number("window_seconds", 10.0, 0.1, 86400.0),
                                r.integer("max_refusals", 5, 1, 100000))
        else:
            rule = RuleSettings(name, enabled, action, throttle, r.number("window_seconds", 600.0, 1.0, 86400.0),
                                0, tuple(_globs(r, "sources")), tuple(_globs(r, "sinks")))
        r.reject_unknown()
        out[name] = rule
    return out


def _globs(r: TableReader, key: str) -> list[str]:
    globs = r.strings(key)
    for i, glob in enumerate(globs):
        if not glob or len(glob) > 256:
            raise r.fail(f"{key}[{i}]", "a tool name glob must be 1-256 characters")
    return globs


def resolve_settings(settings: AnomalySettings, resolve: SecretLookup) -> AnomalySettings:
    """`settings` with the webhook URL and header values' secret references replaced by their values.

    `resolve("secret:NAME")` returns a value or raises SecretError; it may block (a secret store,
    Vault), so call this at startup. ConfigError names the key; a secret's value never appears in it.
    """
    if settings.resolved or settings.webhook is None:
        return settings
    url = _resolved(settings, "webhook", settings.webhook, resolve)
    problem = check_webhook_url(url, allow_private=settings.webhook_allow_private)
    if problem is not None:
        # The resolved URL may itself be a secret: say what is wrong, not what it is.
        raise ConfigError(settings.source, "anomaly.webhook", f"the resolved URL is refused: {problem}")
    headers: dict[str, str] = {}
    for name, text in settings.webhook_headers.items():
        headers[name] = value = _resolved(settings, f"webhook_headers.{name}", text, resolve)
        if (problem := check_header(name, value)) is not None:
            raise ConfigError(settings.source, f"anomaly.webhook_headers.{name}", f"the resolved value: {problem}")
    return replace(settings, webhook=url, webhook_headers=headers, resolved=True)


def build_webhook(settings: AnomalySettings, resolve: SecretLookup | None = None, *,
                  resolver: Resolver = system_resolver) -> Webhook | None:
    """The configured webhook (secret references resolved unless `settings` already are), or None
    when none is configured. Carries every webhook_* setting; ConfigError names the key."""
    if settings.webhook is None:
        return None
    settings = resolve_settings(settings, resolve or _no_resolver)
    assert settings.webhook is not None
    try:
        return Webhook(settings.webhook, settings.webhook_headers, allow_private=settings.webhook_allow_private,
                       timeout=settings.webhook_timeout, retries=settings.webhook_retries,
                       queue_size=settings.webhook_queue, instance=settings.instance, resolver=resolver)
    except WebhookError as exc:
        raise ConfigError(settings.source, "anomaly.webhook", str(exc)) from None


def _no_resolver(text: str) -> str:
    raise SecretError(parse_ref(text), "cannot be resolved here: no secret resolver was given")


def _resolved(settings: AnomalySettings, key: str, text: str, resolve: SecretLookup) -> str:
    try:
        if _REF_PREFIX.match(text):
            return resolve(text)
        refs = find_refs(text)
        return interpolate(text, {ref: resolve(str(ref)) for ref in refs}) if refs else text
    except (SecretError, SecretRefError) as exc:
        raise ConfigError(settings.source, f"anomaly.{key}", f"secret {exc}") from None


# ---------------------------------------------------------------------------------- detection
@dataclass(frozen=True, slots=True)
class Alert:
    rule: str
    principal: str
    detail: str
    evidence: tuple[str, ...]
    action: Action
    throttle_seconds: float


class _State:
    """One principal's recent history: bounded by the rules' thresholds, not by their traffic."""

    __slots__ = ("calls", "last", "refusals", "source_target", "source_ts", "until")

    def __init__(self, calls: int, refusals: int) -> None:
        self.last = -math.inf
        self.calls: deque[tuple[float, str]] = deque(maxlen=calls)
        self.refusals: deque[tuple[float, str, str]] = deque(maxlen=refusals)
        self.source_ts = -math.inf
        self.source_target = ""
        self.until = [-math.inf, -math.inf, -math.inf]  # per rule: its episode lasts until then

    def advance(self, ts: float) -> float:
        if ts >= self.last:
            self.last = ts
            return ts
        if self.last - ts > CLOCK_STEP:
            self.calls.clear()
            self.refusals.clear()
            self.source_ts, self.source_target = -math.inf, ""
            self.until = [-math.inf, -math.inf, -math.inf]
            self.last = ts
            return ts
        return self.last  # records slightly out of order: count them as simultaneous


def _violation(state: _State, index: int, window: float, ts: float) -> bool:
    """Records a violation of rule `index`; True when it opens a new episode (alert now)."""
    opens = ts >= state.until[index]
    state.until[index] = ts + window
    return opens


def _distinct(items: Any, cap: int = MAX_EVIDENCE) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))[:cap]


def _compile(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None


def audit_spelling(text: str) -> str:
    """A principal key exactly as the installed audit log stores it in a record's `principal` field
    (redacted, then escaped): the spelling the rules read. No log installed: escaped only (no records
    reach the rules then)."""
    target = events.installed()
    # The log's own cleaning (with its cache), not a copy of it: a copy that drifted would let a
    # throttled principal through under its raw spelling.
    return escape(text) if target is None else target.identity_text(text)


class AnomalyDetector:
    def __init__(self, settings: AnomalySettings, webhook: Webhook | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.webhook = webhook
        self.clock = clock
        self._rapid = settings.rapid_calls if settings.rapid_calls.enabled else None
        self._toxic = settings.toxic_flow if settings.toxic_flow.enabled else None
        self._burst = settings.refusal_burst if settings.refusal_burst.enabled else None
        self._calls_len = settings.rapid_calls.limit + 1
        self._refusals_len = settings.refusal_burst.limit + 1
        # Past this much idleness a principal has no window or episode left open: its state can go.
        self._horizon = max((r.window_seconds for r in settings.rules if r.enabled), default=0.0)
        self._sources = _compile(settings.toxic_flow.sources)
        self._sinks = _compile(settings.toxic_flow.sinks)
        self._target_kind: dict[str, int] = {}
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._throttles: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self.alerts = 0

    @property
    def active(self) -> bool:
        """False when every rule is off: the gateway need not subscribe at all."""
        return self._horizon > 0.0

    @property
    def tracked(self) -> int:
        return len(self._states)

    # ------------------------------------------------------------------ audit subscriber
    def observe(self, event: str, ts: float, fields: Mapping[str, Any]) -> None:
        # Only "request" records count: "refusal" records repeat a denied request's outcome, and
        # "anomaly.*" records are our own.
        if event != "request" or self._horizon <= 0.0:
            return
        try:
            with self._lock:
                alerts = self._observe(float(ts), fields)
        except Exception as exc:  # a detector bug must never fail the call being audited
            log.error("anomaly detector skipped a record: %s", type(exc).__name__)
            return
        if alerts:
            for alert in alerts:
                self._emit(alert)

    def _observe(self, ts: float, fields: Mapping[str, Any]) -> list[Alert] | None:
        principal = fields.get("principal")
        if not isinstance(principal, str) or not principal:
            return None
        refused_by = fields.get("rule")
        if isinstance(refused_by, str) and refused_by.startswith("anomaly."):
            return None  # the throttle's own refusals: no feedback loop
        state = self._states.get(principal)
        if state is None:
            state = self._states[principal] = _State(self._calls_len, self._refusals_len)
        else:
            self._states.move_to_end(principal)
        ts = state.advance(ts)
        method = fields.get("method")
        target = fields.get("target")
        name = target if isinstance(target, str) else str(method)
        outcome = fields.get("outcome")
        alerts: list[Alert] | None = None

        if method == "tools/call":
            if (rule := self._rapid) is not None:
                state.calls.append((ts, name))
                calls = state.calls
                if len(calls) == calls.maxlen and ts - calls[0][0] < rule.window_seconds \
                        and _violation(state, 0, rule.window_seconds, ts):
                    span = ts - calls[0][0]
                    alerts = [self._alert(rule, principal, f"{len(calls)} tool calls within {span:.3g} s (more than "
                                          f"{rule.limit} in {rule.window_seconds:g} s)",
                                          _distinct(c[1] for c in calls))]
            if (rule := self._toxic) is not None and state.source_ts > -math.inf \
                    and ts - state.source_ts <= rule.window_seconds and self._is_sink(name, fields) \
                    and _violation(state, 1, rule.window_seconds, ts):
                how = "" if outcome == "success" else f" (outcome {outcome}" + (
                    f", refused by {refused_by})" if isinstance(refused_by, str) else ")")
                detail = (f"outbound call {name}{how} {ts - state.source_ts:.0f} s after "
                          f"{state.source_target} read sensitive data")
                alerts = (alerts or []) + [self._alert(rule, principal, detail, (state.source_target, name))]

        if self._toxic is not None and outcome == "success" and self._is_source(name, fields):
            # After the sink check: one call that both reads and sends is not a flow by itself.
            state.source_ts, state.source_target = ts, name

        if outcome == "denied" and (rule := self._burst) is not None:
            state.refusals.append((ts, name, refused_by if isinstance(refused_by, str) else "?"))
            refusals = state.refusals
            if len(refusals) == refusals.maxlen and ts - refusals[0][0] < rule.window_seconds \
                    and _violation(state, 2, rule.window_seconds, ts):
                span = ts - refusals[0][0]
                rules = ", ".join(_distinct(r[2] for r in refusals))
                detail = (f"{len(refusals)} refused requests within {span:.3g} s (more than {rule.limit} in "
                          f"{rule.window_seconds:g} s; rules: {rules})")
                alerts = (alerts or []) + [self._alert(rule, principal, detail, _distinct(r[1] for r in refusals))]

        self._sweep(ts)
        return alerts

    def _is_source(self, name: str, fields: Mapping[str, Any]) -> bool:
        flags = fields.get("flags")
        if flags and not SOURCE_FLAGS.isdisjoint(flags):
            return True
        labels = fields.get("labels")
        if labels and not SOURCE_LABELS.isdisjoint(labels):
            return True
        return bool(self._kind(name) & 1)

    def _is_sink(self, name: str, fields: Mapping[str, Any]) -> bool:
        labels = fields.get("labels")
        if labels and not SINK_LABELS.isdisjoint(labels):
            return True
        return bool(self._kind(name) & 2)

    def _kind(self, name: str) -> int:
        """Bit 1: a source glob matches the tool name; bit 2: a sink glob does. Cached per name."""
        kind = self._target_kind.get(name)
        if kind is None:
            kind = (1 if self._sources is not None and self._sources.match(name) else 0) \
                | (2 if self._sinks is not None and self._sinks.match(name) else 0)
            if len(self._target_kind) >= _TARGET_CACHE:
                self._target_kind.clear()
            self._target_kind[name] = kind
        return kind

    def _alert(self, rule: RuleSettings, principal: str, detail: str, evidence: tuple[str, ...]) -> Alert:
        if rule.action == "throttle":
            self._throttle(principal, rule)
        return Alert(rule.name, principal, detail, evidence, rule.action, rule.throttle_seconds)

    def _throttle(self, principal: str, rule: RuleSettings) -> None:
        now = self.clock()
        until = now + rule.throttle_seconds
        current = self._throttles.get(principal)
        if current is None or current[0] < until:
            self._throttles[principal] = (until, rule.name)
        if len(self._throttles) > self.settings.max_principals:
            for key in [k for k, (end, _) in self._throttles.items() if end <= now]:
                del self._throttles[key]
            while len(self._throttles) > self.settings.max_principals:
                soonest = min(self._throttles, key=lambda k: self._throttles[k][0])
                del self._throttles[soonest]

    def _sweep(self, ts: float) -> None:
        """Evicts at most two principals per record: over capacity, or idle past every window."""
        states = self._states
        for _ in range(2):
            if not states:
                return
            oldest_key = next(iter(states))
            if len(states) > self.settings.max_principals or ts - states[oldest_key].last > self._horizon:
                del states[oldest_key]
            else:
                return

    def _emit(self, alert: Alert) -> None:
        self.alerts += 1
        extra: dict[str, Any] = {"throttle_seconds": alert.throttle_seconds} if alert.action == "throttle" else {}
        log.warning("anomaly %s for %s: %s", alert.rule, alert.principal, alert.detail)
        events.record("anomaly.alert", rule=alert.rule, principal=alert.principal, detail=alert.detail,
                      evidence=list(alert.evidence), action=alert.action, **extra)
        if self.webhook is not None:
            self.webhook.send({"rule": alert.rule, "principal": alert.principal, "detail": alert.detail,
                               "evidence": list(alert.evidence), "action": alert.action})

    # ------------------------------------------------------------------ throttling
    @property
    def any_throttled(self) -> bool:
        return bool(self._throttles)

    def throttle_of(self, principal_key: str) -> tuple[float, str] | None:
        """(seconds left, rule) while `principal_key` (as the gateway knows it, not as the log
        spells it) is throttled, else None."""
        key = audit_spelling(principal_key)
        entry = self._throttles.get(key)
        if entry is None:
            return None
        left = entry[0] - self.clock()
        if left <= 0.0:
            self._throttles.pop(key, None)
            return None
        return left, entry[1]

    def throttled_for(self, principal_key: str) -> float:
        """Seconds left, 0.0 when not throttled."""
        hit = self.throttle_of(principal_key)
        return 0.0 if hit is None else hit[0]


class AnomalyGuard(Guard):
    """Refuses a throttled principal's requests until its throttle lifts."""

    name = "anomaly"

    def __init__(self, detector: AnomalyDetector) -> None:
        self.detector = detector

    async def on_request(self, call: Call) -> JsonObj | None:
        detector = self.detector
        if not detector.any_throttled:
            return None
        hit = detector.throttle_of(call.ctx.principal.key)
        if hit is None:
            return None
        left, rule = hit
        raise Refusal(f"anomaly.{rule}", f"this principal is throttled for {math.ceil(left)} s after an anomaly "
                                         f"alert ({rule})")
