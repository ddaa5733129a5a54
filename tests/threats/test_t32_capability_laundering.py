"""T32: an upstream never gets a capability the client did not declare.

Shown twice: the conformance check `input-required-result-capability-check` through the
gateway (a modern upstream), and a legacy upstream that pushes sampling to a client that
never declared it, which the gateway refuses with -32021 instead of passing on. Then the
policy half: what a server may ask of the client (its model, its user) is a policy decision.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.audit_reader import committed
from tests.conftest import FIXTURES, MCPWARD, NODE_BIN, PYTHON, fixture_server, need_node, toml_list, with_policy
from tests.threats.mcp_http import LEGACY_PUSHER, call


def test_conformance_capability_check_passes_through_gateway(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = need_node()
    cmd = fixture_server()
    url = serve_gateway(f'[servers.fixture]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\nprefix = ""\n')
    env = dict(os.environ, PATH=f"{NODE_BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(node), str(NODE_BIN / "conformance"), "server", "--url", url, "--scenario",
                           "input-required-result-capability-check", "--spec-version", "2026-07-28",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env)
    checks = [c for f in (tmp_path / "out").glob("*/checks.json") for c in json.loads(f.read_text())]
    assert checks and all(c["status"] == "SUCCESS" for c in checks), proc.stdout[-2000:]


def test_legacy_push_for_an_undeclared_capability_is_refused(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEGACY_PUSHER)
    with httpx.Client(trust_env=False, timeout=30) as http:
        _, reply = call(http, url, "tools/call", {"name": "legacy__sample", "arguments": {"prompt": "x"}}, caps={})
    result = reply["result"]
    assert "inputRequests" not in result  # the client was never asked for sampling it did not declare
    pushed_back = json.loads(result["content"][0]["text"])  # what the server got back for its push
    assert pushed_back["code"] == -32021 and pushed_back["data"] == {"requiredCapabilities": {"sampling": {}}}


# ------------------------------------------------------------------ intersected with policy
# The policy half of T32: a server's requests to the client are decided as `sample`, `elicit`,
# `list_roots` on that server. A real `mcpward run` between a real SDK client (with callbacks that
# record being asked) and a legacy server that asks mid-call.
FORBID_SAMPLE = '@id("ops.no-sampling-for-asking")\nforbid (principal, action == Action::"sample", ' \
                'resource == Server::"asking");\n'


async def _ask(tmp_path: Path, policy: str | None, method: str, mode: str = "legacy") -> tuple[Any, list[str]]:
    """Call `asking__ask` for `method` through the gateway; returns what the server got back and
    what the client's callbacks were asked."""
    import mcp.types as types
    from mcp import Client, StdioServerParameters

    config = tmp_path / "mcpward.toml"
    text = (f'[servers.asking]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "asking_server.py"}"]\n\n'
            '[audit]\npath = "audit.sqlite"\n')
    if policy is not None:
        (tmp_path / "team.cedar").write_text(policy)
        text += '\n[policy]\nbase = "standard"\nfiles = ["team.cedar"]\n'
    config.write_text(with_policy(text))
    asked: list[str] = []

    async def sampling(_ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append("sampling")
        return types.CreateMessageResult(role="assistant", model="m", content=types.TextContent(type="text", text="4"))

    async def elicitation(_ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"name": "Ann"})

    target = StdioServerParameters(command=MCPWARD, args=["run", "-c", str(config)])
    client = Client(target, mode="legacy" if mode == "legacy" else "2026-07-28",
                    sampling_callback=sampling, elicitation_callback=elicitation)
    with anyio.fail_after(60):
        async with client:
            result = await client.call_tool("asking__ask", {"method": method})
    return json.loads(result.content[0].text), asked  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["legacy", "modern"])
async def test_a_policy_forbidding_sample_refuses_the_servers_request_unasked(tmp_path: Path, mode: str) -> None:
    got, asked = await _ask(tmp_path, FORBID_SAMPLE, "sampling/createMessage", mode)
    assert asked == []  # the client's model was never asked
    error = got["error"]  # the server got the refusal, naming the rule
    assert error["data"] == {"rule": "ops.no-sampling-for-asking"}
    assert "refused by ops.no-sampling-for-asking" in error["message"]
    refusals = [json.loads(b) for b in committed(tmp_path / "audit.sqlite", "refusal")]
    assert any(r.get("rule") == "ops.no-sampling-for-asking" and r.get("action") == "sample"
               and r.get("server") == "asking" for r in refusals), refusals


async def test_the_forbid_is_per_action_elicitation_still_reaches_the_user(tmp_path: Path) -> None:
    got, asked = await _ask(tmp_path, FORBID_SAMPLE, "elicitation/create")
    assert asked == ["elicitation"] and got["content"] == {"name": "Ann"}


@pytest.mark.parametrize("method", ["sampling/createMessage", "elicitation/create"])
async def test_the_default_policy_lets_a_server_ask_the_client(tmp_path: Path, method: str) -> None:
    got, asked = await _ask(tmp_path, None, method)
    assert asked == ["sampling" if method.startswith("sampling") else "elicitation"]
    assert "error" not in got


async def test_a_modern_servers_input_request_is_refused_for_a_modern_client(tmp_path: Path) -> None:
    """Modern on both sides, the server's sampling request travels back inside an InputRequiredResult:
    the policy refuses that result, so the client's model is not asked either."""
    from mcp import Client, StdioServerParameters
    from mcp.shared.exceptions import MCPError

    cmd = fixture_server()
    (tmp_path / "team.cedar").write_text(FORBID_SAMPLE.replace('"asking"', '"fx"'))
    config = tmp_path / "mcpward.toml"
    config.write_text(with_policy(f'[servers.fx]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\n\n'
                                  '[audit]\npath = "audit.sqlite"\n\n'
                                  '[policy]\nbase = "permit-all"\nfiles = ["team.cedar"]\n'))
    asked: list[str] = []

    async def sampling(_ctx: Any, _params: Any) -> Any:
        asked.append("sampling")
        raise AssertionError("the client's model must not be asked")

    client = Client(StdioServerParameters(command=MCPWARD, args=["run", "-c", str(config)]), mode="2026-07-28",
                    sampling_callback=sampling)
    with anyio.fail_after(60):
        async with client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("fx__test_sampling", {"prompt": "hi"})
    assert asked == [] and refused.value.error.data == {"rule": "ops.no-sampling-for-asking"}
    refusals = [json.loads(b) for b in committed(tmp_path / "audit.sqlite", "refusal")]
    assert any(r.get("rule") == "ops.no-sampling-for-asking" and r.get("server") == "fx" for r in refusals)
