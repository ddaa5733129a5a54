"""OpenTelemetry traces and metrics for the gateway, and the Prometheus `/metrics` body.

Nothing is exported anywhere unless `[telemetry] otlp_endpoint` is set; exported spans pass the
redactor on the way out (threat T31). See docs/telemetry.md.

The names below are imported on first use (PEP 562): the gateway validates every request's W3C
trace context (`mcpward.telemetry.w3c`) even with telemetry off, and that must not load the
OpenTelemetry SDK (about 0.3 s) for a gateway that never builds a `Telemetry`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcpward.telemetry.redaction import RedactingSpanExporter, sensitive_key
    from mcpward.telemetry.settings import TelemetrySettings, load_settings
    from mcpward.telemetry.tracing import RequestTrace, Telemetry, TelemetryError
    from mcpward.telemetry.w3c import format_traceparent, parse_traceparent

_WHERE = {
    "RedactingSpanExporter": "redaction", "sensitive_key": "redaction",
    "TelemetrySettings": "settings", "load_settings": "settings",
    "RequestTrace": "tracing", "Telemetry": "tracing", "TelemetryError": "tracing",
    "format_traceparent": "w3c", "parse_traceparent": "w3c",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "RedactingSpanExporter",
    "RequestTrace",
    "Telemetry",
    "TelemetryError",
    "TelemetrySettings",
    "format_traceparent",
    "load_settings",
    "parse_traceparent",
    "sensitive_key",
]
