"""T31 through a running gateway: the spans it exports for calls carrying secrets carry none of them.

`mcpward serve` with traces exported over OTLP/HTTP to a loopback collector that keeps the raw
bodies. The client authenticates with an API key, sends a W3C `traceparent`, passes a GitHub token
as a tool argument and gets an AWS key back (redacted). After the gateway stops (flushing its
exporter), the collector holds the gateway's span, a child of the client's trace, and none of the
secrets. `/metrics` answers only a key listed in `metrics_principals` and shows the MCP operation
histogram; another valid key gets 403.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import FIXTURES, MCPWARD, PYTHON, free_port, stop, wait_port, with_policy
from tests.threats.identity_support import MEMO_SERVER, Keys, modern_call, reply_of
from tests.threats.test_t31_telemetry_secrets import AWS, GITHUB, TRACE_ID, Collector, collector  # noqa: F401

CLIENT_TP = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
LEAKY = f'[servers.leaky]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "leaky_server.py"}"]\n'


def test_exported_spans_of_calls_carrying_secrets_contain_none(tmp_path: Path, collector: Collector) -> None:  # noqa: F811
    keys = Keys()
    port = free_port()
    config = tmp_path / "mcpward.toml"
    config.write_text(f"[gateway]\nport = {port}\n" + with_policy(
        MEMO_SERVER + LEAKY + keys.table()
        + f'[telemetry]\ntraces = true\notlp_endpoint = "http://127.0.0.1:{collector.port}"\n'
        + 'metrics_principals = ["api-key:alice"]\n'))
    url = f"http://127.0.0.1:{port}/mcp"
    with open(tmp_path / "gw.log", "wb") as log:
        proc = subprocess.Popen([MCPWARD, "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        with httpx.Client(trust_env=False, timeout=30, headers={"traceparent": CLIENT_TP}) as http:
            leak = reply_of(modern_call(http, url, "tools/call", {"name": "leaky__aws_key", "arguments": {}},
                                        keys.alice))
            assert AWS not in str(leak) and "REDACTED" in str(leak)
            note = {"name": "memo__remember", "arguments": {"text": f"token {GITHUB}"}}
            assert "result" in reply_of(modern_call(http, url, "tools/call", note, keys.alice, rid=2), 2)
            metrics = http.get(url.removesuffix("/mcp") + "/metrics")
            assert metrics.status_code == 401
            metrics = http.get(url.removesuffix("/mcp") + "/metrics", headers={"Authorization": f"Bearer {keys.alice}"})
            assert metrics.status_code == 200 and "mcp_server_operation_duration" in metrics.text
            # bob authenticates, but is not a metrics reader: the tool names and counts are not his to see
            metrics = http.get(url.removesuffix("/mcp") + "/metrics", headers={"Authorization": f"Bearer {keys.bob}"})
            assert metrics.status_code == 403 and "leaky" not in metrics.text
            assert metrics.json()["error"]["data"] == {"rule": "telemetry.metrics-principals"}
    finally:
        stop(proc)  # SIGTERM: the exporter flushes on the way out
    bodies = collector.bodies("/v1/traces")
    assert bodies, (tmp_path / "gw.log").read_text()
    spans = [span for body in bodies for rs in ExportTraceServiceRequest.FromString(body).resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    assert any(span.trace_id.hex() == TRACE_ID and "tools/call" in span.name for span in spans), spans
    everything = b"".join(bodies)
    for secret in (AWS, GITHUB, keys.alice, keys.bob):
        assert secret.encode() not in everything, secret
