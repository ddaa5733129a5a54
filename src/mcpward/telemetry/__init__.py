"""OpenTelemetry traces and metrics for the gateway, and the Prometheus `/metrics` body.

Nothing is exported anywhere unless `[telemetry] otlp_endpoint` is set; exported spans pass the
redactor on the way out (threat T31). See docs/telemetry.md.
"""

from mcpward.telemetry.redaction import RedactingSpanExporter, sensitive_key
from mcpward.telemetry.settings import TelemetrySettings, load_settings
from mcpward.telemetry.tracing import (
    RequestTrace,
    Telemetry,
    TelemetryError,
    format_traceparent,
    parse_traceparent,
)

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
