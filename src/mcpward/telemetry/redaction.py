"""Secrets never leave in telemetry (threat T31): every exported span is rebuilt, cleaned.

The request path records facts as they come (cheap); the cleaning runs here, in the batch
exporter's thread, on the way out. Every span's name, attributes, event attributes, link
attributes, status description and resource attributes are rebuilt:
- a value under a sensitive key (token, key, secret, password, authorization, cookie, ...) is
  replaced whole, whatever its type: the key says what it is, the value need not look like anything;
- every remaining string passes the redactor (the one that cleans tool output), so an AWS key
  under an innocent key such as `note` is caught by its shape;
- a redactor that fails replaces the value, never passes it through (fail closed).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status

log = logging.getLogger("mcpward.telemetry")

Redact = Callable[[str], str]

REDACTED = "[REDACTED]"
MEMO_CHARS = 128
MEMO_SIZE = 4096
REDACTOR_FAILED = "[REDACTED:redactor-error]"
# Case-insensitive parts of an attribute key that say its value is a credential. `key` covers
# api_key, x-api-key, apikey, private_key; `auth` covers authorization, auth_token, oauth;
# `passw`/`pwd` cover password, passwd; `cookie` covers set-cookie; `sig` covers signature.
SENSITIVE_KEY = re.compile(r"token|key|secret|passw|pwd|auth|cookie|credential|bearer|signature|session[._-]?id"
                           r"|private|cert", re.IGNORECASE)
# Keys of ours whose values are known not to be secret although their names match SENSITIVE_KEY:
# the session id is a keyed hash (mcp.session.id), token counts are integers.
SAFE_KEYS = frozenset({"mcp.session.id", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"})


def sensitive_key(key: str) -> bool:
    return key not in SAFE_KEYS and SENSITIVE_KEY.search(key) is not None


class Cleaner:
    """Key and value rules for one exporter; `extra` are literal values to remove too (header secrets)."""

    def __init__(self, redact: Redact, extra: Iterable[str] = ()) -> None:
        self._redact = redact
        # Longest first, so a value containing another is removed whole.
        self._extra = tuple(sorted({v for v in extra if len(v) >= 4}, key=len, reverse=True))
        self._keys: dict[str, bool] = {}  # key -> sensitive; attribute keys repeat, the regex runs once each
        # Short values repeat across spans (method, tool, server, version names): clean each once.
        self._memo: dict[str, str] = {}

    def text(self, value: str) -> str:
        if len(value) <= MEMO_CHARS:
            out = self._memo.get(value)
            if out is None:
                out = self._text(value)
                if len(self._memo) >= MEMO_SIZE:
                    self._memo.clear()  # crude but bounded; the working set refills in a few spans
                self._memo[value] = out
            return out
        return self._text(value)

    def _text(self, value: str) -> str:
        for secret in self._extra:
            if secret in value:
                value = value.replace(secret, REDACTED)
        try:
            out = self._redact(value)
        except Exception:  # any failure must withhold the value, not export it
            log.warning("telemetry redactor failed; value withheld")
            return REDACTOR_FAILED
        return out if isinstance(out, str) else REDACTOR_FAILED

    def is_sensitive(self, key: str) -> bool:
        known = self._keys.get(key)
        if known is None:
            known = sensitive_key(key)
            if len(self._keys) < 4096:  # bounded: keys come from code, but never trust that
                self._keys[key] = known
        return known

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (bytes, bytearray)):
            return REDACTED  # not a valid attribute type anyway; never exported raw
        if isinstance(value, (tuple, list)):
            return tuple(self.value(v) for v in value)
        return value  # bool, int, float

    def attributes(self, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
        if not attrs:
            return {}
        out: dict[str, Any] = {}
        for key, value in attrs.items():
            clean_key = self.text(key)
            out[clean_key] = REDACTED if self.is_sensitive(key) else self.value(value)
        return out

    def resource(self, resource: Resource) -> Resource:
        return Resource(self.attributes(resource.attributes), resource.schema_url)

    def span(self, span: ReadableSpan, resource: Resource) -> ReadableSpan:
        events = [Event(self.text(e.name), self.attributes(e.attributes), e.timestamp) for e in span.events]
        links = [Link(link.context, self.attributes(link.attributes)) for link in span.links]
        status = span.status
        if status.description:
            status = Status(status.status_code, self.text(status.description))
        return ReadableSpan(
            name=self.text(span.name), context=span.context, parent=span.parent, resource=resource,
            attributes=self.attributes(span.attributes), events=events, links=links, kind=span.kind,
            status=status, start_time=span.start_time, end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )


class RedactingSpanExporter(SpanExporter):
    """Wraps any SpanExporter: what reaches `inner` has been through the Cleaner."""

    def __init__(self, inner: SpanExporter, redact: Redact, extra: Iterable[str] = ()) -> None:
        self.inner = inner
        self.cleaner = Cleaner(redact, extra)
        self._resources: dict[int, tuple[Resource, Resource]] = {}  # id -> (original, cleaned)

    def _resource(self, resource: Resource) -> Resource:
        # One provider has one resource: clean it once, not per span.
        cached = self._resources.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        clean = self.cleaner.resource(resource)
        if len(self._resources) > 64:
            self._resources.clear()
        self._resources[id(resource)] = (resource, clean)
        return clean

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            clean = [self.cleaner.span(s, self._resource(s.resource)) for s in spans]
        except Exception:  # a span we cannot clean is dropped, never sent raw
            log.warning("telemetry: a span batch could not be cleaned and was dropped")
            return SpanExportResult.FAILURE
        return self.inner.export(clean)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def default_redactor() -> Redact:
    """The built-in secret rules, for a Telemetry built without the gateway's redactor: a span is
    never exported unredacted just because nobody passed one in."""
    from mcpward.guards.redactor import Redactor
    from mcpward.guards.secrets import builtin_rules

    redactor = Redactor(builtin_rules())

    def redact(text: str) -> str:
        out = redactor.redact(text)
        return text if out is None else out

    return redact
