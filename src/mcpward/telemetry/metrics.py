"""Metrics: aggregated in-process, read by Prometheus (`/metrics`) and, when the operator configured
an endpoint, exported over OTLP/HTTP as OTel `MetricsData`.

Why not the OTel SDK's instruments: one `Histogram.record()` with five attributes costs about 17 us
here (attribute validation, a sorted re-hash of the attributes, a lock), so two instruments per request
cost ~40 us p50 of the gateway's ~100 us budget for auth + limits + audit. The aggregation below is
the same cumulative explicit-bucket histogram and sums, at ~1-2 us per request; the SDK's data model
(`MetricsData`) is built only when someone reads: a Prometheus scrape, or the OTLP exporter's period.

Labels are low-cardinality by construction: method, tool, protocol version and rule values come
from clients or upstreams, so each dimension is a bounded table (past its limit a new value counts
as "_other"), and each value enters the table once, after the redactor (a tool named like a token
would otherwise become a Prometheus label). Principals and argument values are never labels.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

if TYPE_CHECKING:
    import requests

log = logging.getLogger("mcpward.telemetry")

OTHER = "_other"
# The semconv-advised boundaries for MCP operation durations (seconds).
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
EXPORT_INTERVAL = 60.0
MAX_SERIES = 20_000  # products of bounded labels; a hard stop all the same

DURATION = ("mcp.server.operation.duration", "s",
            "MCP request duration as observed by the gateway, from receipt to the response")
REQUESTS = ("mcpward.requests", "{request}", "MCP requests handled, by method and outcome")
REFUSALS = ("mcpward.refusals", "{request}", "Requests the gateway refused, by rule")

Attrs = tuple[tuple[str, str], ...]


class BoundedLabels:
    """value -> label: redacted once, at most `limit` distinct labels, then OTHER."""

    def __init__(self, limit: int, redact: Callable[[str], str]) -> None:
        self.limit = limit
        self._redact = redact
        self._map: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        label = self._map.get(value)
        if label is not None:
            return label
        if len(value) > 128:
            return OTHER  # a name that long is not a tool name; never a label
        with self._lock:
            label = self._map.get(value)
            if label is None:
                if len(self._map) >= self.limit:
                    return OTHER
                try:
                    label = self._redact(value)
                except Exception:  # fail closed: an unredactable value is no label
                    label = OTHER
                self._map[value] = label
        return label


class _Series:
    """One label combination's histogram."""

    __slots__ = ("buckets", "count", "max", "min", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class Recorder:
    """Cumulative aggregates since start; `record` is the per-request hot path."""

    def __init__(self, resource: Resource, redact: Callable[[str], str]) -> None:
        self.resource = resource
        self.start_ns = time.time_ns()
        self.scope = InstrumentationScope("mcpward")
        self.methods = BoundedLabels(64, redact)
        self.targets = BoundedLabels(1000, redact)
        self.versions = BoundedLabels(16, redact)
        self.rules = BoundedLabels(256, redact)
        # Raw request facts -> (histogram series, request-counter labels): built once per combination.
        self._by_key: dict[tuple[Any, ...], tuple[_Series, Attrs]] = {}
        self._series: dict[Attrs, _Series] = {}
        self._requests: dict[Attrs, int] = {}
        self._refusals: dict[Attrs, int] = {}
        self._lock = threading.Lock()

    def record(self, seconds: float, method: str, target: str | None, transport: str, version: str | None,
               outcome: str, error_type: str | None, rule: str | None) -> None:
        key = (method, target, transport, version, outcome, error_type)
        found = self._by_key.get(key)
        if found is None:
            found = self._build(key)
        series, requests = found
        refusal = ("mcpward.rule", self.rules(rule) if rule else "unknown") if outcome == "denied" else None
        index = bisect.bisect_left(DURATION_BUCKETS, seconds)  # OTel/Prometheus buckets: (lower, upper]
        with self._lock:
            series.buckets[index] += 1
            series.count += 1
            series.sum += seconds
            if seconds < series.min:
                series.min = seconds
            if seconds > series.max:
                series.max = seconds
            self._requests[requests] = self._requests.get(requests, 0) + 1
            if refusal is not None:
                self._refusals[(refusal,)] = self._refusals.get((refusal,), 0) + 1

    def _build(self, key: tuple[Any, ...]) -> tuple[_Series, Attrs]:
        method, target, transport, version, outcome, error_type = key
        m = self.methods(method)
        attrs: dict[str, str] = {"mcp.method.name": m, "network.transport": transport}
        if target:
            if method == "tools/call":
                attrs["gen_ai.tool.name"] = self.targets(target)
                attrs["gen_ai.operation.name"] = "execute_tool"
            elif method == "prompts/get":
                attrs["gen_ai.prompt.name"] = self.targets(target)
        if version:
            attrs["mcp.protocol.version"] = self.versions(version)
        if error_type:
            attrs["error.type"] = error_type
        labels: Attrs = tuple(sorted(attrs.items()))
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                if len(self._series) >= MAX_SERIES:
                    labels = (("mcp.method.name", OTHER),)
                    series = self._series.get(labels)
                if series is None:
                    series = _Series()
                    self._series[labels] = series
            found = (series, (("mcp.method.name", m), ("mcpward.outcome", outcome)))
            if len(self._by_key) < MAX_SERIES:
                self._by_key[key] = found
        return found

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> MetricsData:
        """The cumulative state as OTel MetricsData (for OTLP, and the source of the Prometheus text)."""
        now = time.time_ns()
        with self._lock:
            hist = [(labels, list(s.buckets), s.count, s.sum, s.min, s.max) for labels, s in self._series.items()]
            requests = list(self._requests.items())
            refusals = list(self._refusals.items())
        points = [HistogramDataPoint(attributes=dict(labels), start_time_unix_nano=self.start_ns,
                                     time_unix_nano=now, count=count, sum=total, bucket_counts=buckets,
                                     explicit_bounds=DURATION_BUCKETS, min=lo, max=hi)
                  for labels, buckets, count, total, lo, hi in hist if count]
        metrics = [Metric(DURATION[0], DURATION[2], DURATION[1],
                          Histogram(points, AggregationTemporality.CUMULATIVE))]
        for (name, unit, description), rows in ((REQUESTS, requests), (REFUSALS, refusals)):
            data = [NumberDataPoint(attributes=dict(labels), start_time_unix_nano=self.start_ns,
                                    time_unix_nano=now, value=value) for labels, value in rows]
            metrics.append(Metric(name, description, unit, Sum(data, AggregationTemporality.CUMULATIVE, True)))
        scope = ScopeMetrics(self.scope, metrics, "")
        return MetricsData([ResourceMetrics(self.resource, [scope], "")])


class PrometheusCollector:
    """A prometheus_client collector over a Recorder, registered on our own CollectorRegistry."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def describe(self) -> list[Any]:
        return []  # no fixed description: families appear as they get data

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        info = GaugeMetricFamily("target_info", "Target metadata", labels=["service_name"])
        info.add_metric([str(self.recorder.resource.attributes.get("service.name", ""))], 1.0)
        yield info
        for metric in self.recorder.snapshot().resource_metrics[0].scope_metrics[0].metrics:
            name = _prom_name(metric.name)
            if isinstance(metric.data, Histogram):
                points = list(metric.data.data_points)
                keys = sorted({k for p in points for k in (p.attributes or {})})
                family = HistogramMetricFamily(f"{name}_seconds", metric.description or "",
                                               labels=[_prom_name(k) for k in keys])
                for p in points:
                    attrs = p.attributes or {}
                    running, buckets = 0, []
                    for bound, n in zip([*DURATION_BUCKETS, float("inf")], p.bucket_counts, strict=True):
                        running += n
                        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
                    family.add_metric([str(attrs.get(k, "")) for k in keys], buckets, float(p.sum))
                yield family
            elif isinstance(metric.data, Sum):
                rows = list(metric.data.data_points)
                keys = sorted({k for p in rows for k in (p.attributes or {})})
                counter = CounterMetricFamily(name, metric.description or "", labels=[_prom_name(k) for k in keys])
                for row in rows:
                    attrs = row.attributes or {}
                    counter.add_metric([str(attrs.get(k, "")) for k in keys], float(row.value))
                yield counter


def _prom_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


class OtlpPusher:
    """Exports the Recorder's snapshot every EXPORT_INTERVAL seconds, and once at shutdown."""

    def __init__(self, recorder: Recorder, exporter: MetricExporter, interval: float = EXPORT_INTERVAL) -> None:
        self.recorder, self.exporter, self.interval = recorder, exporter, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcpward-otlp-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def push(self) -> None:
        try:
            self.exporter.export(self.recorder.snapshot(), timeout_millis=self.interval * 500)
        except Exception as exc:  # an export failure is the collector's problem, never the gateway's
            log.warning("telemetry: metric export failed (%s)", type(exc).__name__)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(self.interval)
        self.push()
        self.exporter.shutdown()


def otlp_exporter(endpoint: str, headers: dict[str, str], timeout: float, session: requests.Session
                  ) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    # `session` ignores proxy settings from the environment (telemetry/otlp_session.py).
    return OTLPMetricExporter(endpoint=endpoint, headers=headers, timeout=timeout, compression=Compression.Gzip,
                              session=session)
