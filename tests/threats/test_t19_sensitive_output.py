"""T19: sensitive data leaking through tool output.

A leaky SDK server (tests/fixtures/leaky_server.py) returns an AWS key, a GitHub token, a private key,
PII, secrets in structured content, an embedded resource, a resource link, a resource read, a prompt
and an error message, and the value of its own configured API token. Through `mcpward serve`, a raw
HTTP client sees none of them: secrets and card/SSN/IBAN are redacted with a marker naming the rule,
and the configured value is redacted although no rule knows its shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import FIXTURES, MCPWARD, PYTHON, with_policy
from tests.threats.mcp_http import LEGACY_PUSHER, MODERN

AWS = "AKIA" + "QWADE5R4" + "2RDZ4JEM"
GH = "ghp_" + "wWPw5k4aXcaT4fNP" + "0UcnZwJUVFk6LO0pINUx"
TOKEN = "Zq9-plain-" + "configured-8841"  # the server's env value: no rule matches its shape
LEAKY = (f'[policy]\nbase = "permit-all"\n'
         f'[servers.leaky]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "leaky_server.py"}"]\n'
         f'env = {{ LEAKY_API_TOKEN = "{TOKEN}" }}\n')
NEVER = (AWS, GH, TOKEN, "hunter2", "MIIBOgIBAAJBAJtFfagSXdo0", "4111 1111 1111 1111", "078-05-1123",
         "DE89 3704 0044 0532 0130 00", "s3cr3t-Pa55!")


def rpc(http: httpx.Client, url: str, method: str, params: dict[str, Any], rid: int = 1) -> dict[str, Any]:
    """One modern-era request with the routing headers the gateway checks (Mcp-Name is the tool/prompt or URI)."""
    body = {**params, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                                "io.modelcontextprotocol/clientCapabilities": {}}}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    name = params.get("name", params.get("uri"))
    if isinstance(name, str):
        headers["Mcp-Name"] = name
    response = http.post(url, json={"jsonrpc": "2.0", "id": rid, "method": method, "params": body}, headers=headers)
    reply: dict[str, Any] = response.json()
    assert reply.get("id") == rid, reply
    return reply


def tool(http: httpx.Client, url: str, name: str) -> dict[str, Any]:
    return rpc(http, url, "tools/call", {"name": f"leaky__{name}", "arguments": {}})


def test_secrets_and_pii_never_reach_the_client(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEAKY)
    with httpx.Client(trust_env=False, timeout=60) as http:
        replies = {name: tool(http, url, name) for name in ("aws_key", "github_token", "private_key", "pii",
                                                            "structured", "configured_secret")}
        replies["resource"] = rpc(http, url, "resources/read", {"uri": "leaky://config"})
        replies["prompt"] = rpc(http, url, "prompts/get", {"name": "leaky__incident", "arguments": {}})
    for name, reply in replies.items():
        assert "result" in reply, (name, reply)
        flat = json.dumps(reply)
        for value in NEVER:
            assert value not in flat, (name, value)

    def text(name: str, i: int = 0) -> str:
        return str(replies[name]["result"]["content"][i]["text"])

    assert text("aws_key") == "deployed with access key [REDACTED:aws-access-key-id] in us-east-1"
    assert "[REDACTED:github-token]" in text("github_token")
    assert "[REDACTED:private-key]" in text("private_key")
    assert "card [REDACTED:pii-card], ssn [REDACTED:pii-ssn], iban [REDACTED:pii-iban]" in text("pii")
    assert "jane.doe@example.com" in text("pii")  # e-mail is only logged by default
    structured = replies["structured"]["result"]
    assert structured["structuredContent"]["[REDACTED:aws-access-key-id]"] == {"note": "token [REDACTED:github-token]"}
    assert structured["content"][1]["resource"]["text"] == "[REDACTED:private-key]"
    assert structured["content"][2]["description"] == "holds [REDACTED:aws-access-key-id]"
    assert text("configured_secret") == "the service answered [REDACTED:configured-secret] today"
    assert "AWS_ACCESS_KEY_ID=[REDACTED:aws-access-key-id]" in replies["resource"]["result"]["contents"][0]["text"]
    prompt = json.dumps(replies["prompt"]["result"]["messages"])
    assert "[REDACTED:url-credentials]" in prompt and "[REDACTED:pii-ssn]" in prompt
    assert replies["aws_key"]["result"]["_meta"]["mcpward/output"]["redacted"] == {"aws-access-key-id": 2}


def test_error_messages_are_redacted_when_passed_through(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEAKY + '[guards.errors]\nmode = "pass"\n')
    with httpx.Client(trust_env=False, timeout=60) as http:
        reply = tool(http, url, "rpc_error")
    error = reply["error"]
    assert error["message"] == "database error at [REDACTED:url-credentials]"
    assert error["data"] == {"dsn": "[REDACTED:url-credentials]", "host": "db.internal"}


def test_block_mode_refuses_the_result_naming_the_rule(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEAKY + '[guards.secrets]\nmode = "block"\n')
    with httpx.Client(trust_env=False, timeout=60) as http:
        reply = tool(http, url, "github_token")
        clean = tool(http, url, "injection")
    result = reply["result"]
    assert result["isError"] is True and "refused by secrets.github-token" in result["content"][0]["text"]
    assert GH not in json.dumps(reply)
    assert "result" in clean  # results without secrets are not affected


@pytest.mark.parametrize("errors_mode", ["pass", "generic"])
def test_block_mode_refuses_an_upstream_error_naming_the_rule(serve_gateway, errors_mode: str) -> None:  # type: ignore[no-untyped-def]
    """Audit round 3: in block mode an error with a secret reached the client verbatim (nothing was
    redacted, so nothing counted as changed)."""
    url = serve_gateway(LEAKY + f'[guards.secrets]\nmode = "block"\n[guards.errors]\nmode = "{errors_mode}"\n')
    with httpx.Client(trust_env=False, timeout=60) as http:
        reply = tool(http, url, "rpc_error")
    assert reply["error"]["data"] == {"rule": "secrets.url-credentials"}
    assert reply["error"]["message"].startswith("refused by secrets.url-credentials: ")
    assert "hunter2" not in json.dumps(reply) and "db.internal" not in json.dumps(reply)



@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_what_a_server_sends_besides_results_is_redacted_too(tmp_path: Path, mode: str) -> None:
    """A legacy server logs, reports progress and asks the client's model with a key in each. A real
    SDK client (legacy: pushed requests; modern: the gateway's input-required bridge) gets the log
    line, the progress message and the sampling request redacted."""
    config = tmp_path / "mcpward.toml"
    config.write_text(with_policy(LEGACY_PUSHER))
    sampled: list[str] = []
    logged: list[str] = []
    progressed: list[str] = []

    async def sampling(_ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(json.dumps(params.model_dump(mode="json")))
        return types.CreateMessageResult(role="assistant", model="m", content=types.TextContent(type="text", text="ok"))

    async def logging_callback(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(json.dumps(params.model_dump(mode="json")))

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.append(message or "")

    target = StdioServerParameters(command=str(MCPWARD), args=["run", "-c", str(config)])
    with anyio.fail_after(90):
        async with Client(target, mode=mode, sampling_callback=sampling, logging_callback=logging_callback,
                          log_level="debug") as client:
            if mode == "legacy":
                await client.set_logging_level("debug")
            result = await client.call_tool("legacy__sample", {"prompt": "summarise", "leak": True},
                                            progress_callback=on_progress)
    seen = json.dumps([sampled, logged, progressed, result.model_dump(mode="json")])
    assert AWS not in seen, seen
    assert sampled and all("[REDACTED:" in text for text in sampled), sampled
    assert progressed and all("[REDACTED:" in text for text in progressed), progressed
    if mode == "legacy":  # a legacy client sets its log level; a modern one sends none, so gets no log lines
        assert logged and all("[REDACTED:" in text for text in logged), logged
