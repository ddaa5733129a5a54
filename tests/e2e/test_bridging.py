"""Sampling, elicitation, progress and cancellation across protocol eras, through the gateway.

* legacy client -> modern upstream (the project fixture): the upstream's InputRequiredResult
  must become real sampling/elicitation requests to the client, then a retry upstream.
* modern client -> legacy upstream (server-everything): the upstream's pushed request must
  become an InputRequiredResult the SDK client answers through its callbacks.
* Same-era pairs are covered too, so every test runs for {stdio, HTTP} x {legacy, modern}.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from .conftest import (
    MODERN,
    HttpGateway,
    LiveClient,
    combos,
    everything,
    fixture_server,
    http_gateway,
    live_client,
    needs_node,
    slow_server,
    stdio_gateway,
    text_of,
    write_gateway_config,
)

pytestmark = [needs_node, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
MODEL_REPLY = "the answer is 42"
FORM_ANSWERS = {"username": "ann", "email": "ann@example.com", "name": "Ann", "color": "teal"}
ROOT_URI = "file:///srv/e2e-project"


@dataclass
class Recorder:
    """Client callbacks that answer canned values and remember what they were asked."""

    sampled: list[str] = field(default_factory=list)
    elicited: list[str] = field(default_factory=list)
    logs: list[tuple[str, Any]] = field(default_factory=list)

    def clear(self) -> None:
        self.sampled.clear()
        self.elicited.clear()
        self.logs.clear()

    async def sampling(self, ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        self.sampled.append(getattr(content, "text", repr(content)))
        return types.CreateMessageResult(role="assistant", model="e2e-model", stop_reason="endTurn",
                                         content=types.TextContent(type="text", text=MODEL_REPLY))

    async def elicitation(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicited.append(params.message)
        schema = getattr(params, "requested_schema", None) or {}
        required = schema.get("required", []) if isinstance(schema, dict) else []
        return types.ElicitResult(action="accept", content={k: FORM_ANSWERS.get(k, f"{k}-value") for k in required})

    async def roots(self, ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl(ROOT_URI), name="e2e project")])

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append((params.level, params.data))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same servers for each front (one config file per front tells their processes apart)."""
    root = tmp_path_factory.mktemp("bridging")
    servers = {
        "everything": everything(),      # legacy: pushes sampling/elicitation, long-running progress
        "fixture": fixture_server(),     # modern: InputRequiredResult, progress
        "slow": slow_server(),           # legacy: cancellable sleep that records cancellations
        "slowm": slow_server("--modern"),
    }
    return {front: write_gateway_config(root / f"{front}.toml", servers) for front in ("stdio", "http")}


@pytest.fixture(scope="module")
def http_front(config: dict[str, Path]) -> Iterator[HttpGateway]:
    with http_gateway(config["http"], config["http"].parent / "serve.log") as gateway:
        yield gateway


def _connect(request: pytest.FixtureRequest, config: dict[str, Path], **callbacks: Any) -> Any:
    front, mode = request.param
    if front == "stdio":
        return live_client(stdio_gateway(config["stdio"]), mode, front, reap_config=config["stdio"], **callbacks)
    return live_client(request.getfixturevalue("http_front").url, mode, front, **callbacks)


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest, config: dict[str, Path]) -> Iterator[LiveClient]:
    """A client that declares sampling, elicitation and roots, and opts in to info logs."""
    recorder = Recorder()
    with _connect(request, config, sampling_callback=recorder.sampling, elicitation_callback=recorder.elicitation,
                  list_roots_callback=recorder.roots, logging_callback=recorder.logging, log_level="info") as client:
        client.recorder = recorder
        yield client


@pytest.fixture
def rec(live: LiveClient) -> Recorder:
    live.recorder.clear()
    return live.recorder  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bare(request: pytest.FixtureRequest, config: dict[str, Path]) -> Iterator[LiveClient]:
    """A client that declares neither sampling nor elicitation."""
    with _connect(request, config) as client:
        yield client


def tool_text(live: LiveClient, name: str, args: dict[str, Any], **kw: Any) -> str:
    result = live.run(live.client.call_tool(name, args, **kw))
    assert not result.is_error, f"{name} failed: {text_of(result)}"
    return text_of(result)


# ---------------------------------------------------------------- modern upstream (MRTR)
@pytest.mark.parametrize("live", combos(), indirect=True)
def test_sampling_answered_for_modern_upstream(live: LiveClient, rec: Recorder) -> None:
    assert tool_text(live, "fixture__test_sampling", {"prompt": "What is six times seven?"}) \
        == f"LLM response: {MODEL_REPLY}"
    assert rec.sampled == ["What is six times seven?"], "the client's own callback must answer"


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_elicitation_answered_for_modern_upstream(live: LiveClient, rec: Recorder) -> None:
    text = tool_text(live, "fixture__test_elicitation", {"message": "Who are you?"})
    assert text == 'User response: action=accept, content={"username": "ann", "email": "ann@example.com"}'
    assert rec.elicited == ["Who are you?"]


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_multi_round_input_for_modern_upstream(live: LiveClient, rec: Recorder) -> None:
    text = tool_text(live, "fixture__test_input_required_result_multi_round", {})
    assert text == "Ann likes teal."
    assert rec.elicited == ["Step 1: What is your name?", "Step 2: What is your favorite color?"]


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_prompt_needing_input_from_modern_upstream(live: LiveClient, rec: Recorder) -> None:
    prompt = live.run(live.client.get_prompt("fixture__test_input_required_result_prompt"))
    assert text_of(prompt) == "Use the following context: context-value"
    assert rec.elicited == ["What context should the prompt use?"]


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_roots_answered_for_modern_upstream(live: LiveClient) -> None:
    assert tool_text(live, "fixture__test_input_required_result_list_roots", {}) \
        == f"Client exposed 1 root(s): {ROOT_URI}"


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_log_messages_from_modern_upstream_respect_the_level(live: LiveClient, rec: Recorder) -> None:
    if not live.modern:
        live.run(live.client.set_logging_level("info"))  # modern clients opt in per request instead
    assert tool_text(live, "fixture__test_logging_tool", {}) == "Logged at debug, info, warning and error"
    deadline = time.monotonic() + 2
    while len(rec.logs) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rec.logs == [(level, f"{level} message from test_logging_tool") for level in ("info", "warning", "error")]


# ------------------------------------------------------------- legacy upstream (pushes)
@pytest.mark.parametrize("live", combos(), indirect=True)
def test_sampling_pushed_by_legacy_upstream(live: LiveClient, rec: Recorder) -> None:
    text = tool_text(live, "everything__trigger-sampling-request", {"prompt": "capital of France?", "maxTokens": 20})
    assert text.startswith("LLM sampling result:")
    assert json.loads(text.split(":", 1)[1])["content"]["text"] == MODEL_REPLY
    assert rec.sampled == ["Resource trigger-sampling-request context: capital of France?"]


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_elicitation_pushed_by_legacy_upstream(live: LiveClient, rec: Recorder) -> None:
    text = tool_text(live, "everything__trigger-elicitation-request", {})
    assert "User provided the requested information" in text and "Ann" in text
    assert rec.elicited == ["Please provide inputs for the following fields:"]


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_roots_pushed_by_legacy_upstream(live: LiveClient) -> None:
    text = tool_text(live, "everything__get-roots-list", {})
    assert "Current MCP Roots (1 total)" in text and ROOT_URI in text


# ------------------------------------------------------------- capabilities, not laundered
@pytest.mark.parametrize("bare", combos(), indirect=True)
def test_no_sampling_for_a_client_that_did_not_declare_it(bare: LiveClient) -> None:
    names = {t.name for t in bare.run(bare.client.list_tools()).tools}
    assert "everything__echo" in names
    assert "everything__trigger-sampling-request" not in names, "listed with another client's capabilities"
    assert "everything__trigger-elicitation-request" not in names
    with pytest.raises(MCPError) as refused:
        bare.run(bare.client.call_tool("fixture__test_sampling", {"prompt": "hi"}), timeout=15)
    assert refused.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY


# -------------------------------------------------------------- one gateway, many clients
@pytest.mark.parametrize("my_mode", ["legacy", "modern"])
@pytest.mark.parametrize("other_mode", ["legacy", "modern"])
def test_a_push_reaches_only_the_client_whose_call_caused_it(http_front: HttpGateway, other_mode: str,
                                                             my_mode: str) -> None:
    """Two HTTP clients with equal capabilities, one upstream. A legacy server's push carries no request
    id; the gateway must never hand it to the other client (it may refuse it when it cannot tell)."""
    asked: list[tuple[str, str]] = []

    def sampler(who: str) -> Any:
        async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            asked.append((who, getattr(params.messages[0].content, "text", "")))
            return types.CreateMessageResult(role="assistant", model=who,
                                             content=types.TextContent(type="text", text=f"answer from {who}"))
        return sampling

    with live_client(http_front.url, other_mode, "http", sampling_callback=sampler("other")) as other, \
            live_client(http_front.url, my_mode, "http", sampling_callback=sampler("me")) as me:
        busy = threading.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            busy.set()

        # Another client keeps a call in flight on the same upstream (server-everything) ...
        pending = other.portal.start_task_soon(partial(
            other.client.call_tool, "everything__trigger-long-running-operation", {"duration": 3, "steps": 6},
            progress_callback=on_progress))
        try:
            assert busy.wait(15), "the other client's call never started"
            # ... while this client's call makes the upstream ask for sampling.
            result = me.run(me.client.call_tool("everything__trigger-sampling-request",
                                                {"prompt": "my private question"}))
        finally:
            with contextlib.suppress(Exception):
                pending.result(timeout=15)
    assert all(who == "me" for who, _ in asked), f"another client was asked: {asked}"
    if not result.is_error:  # refusing an ambiguous push is allowed; answering it wrongly is not
        assert asked == [("me", "Resource trigger-sampling-request context: my private question")]
        assert json.loads(text_of(result).split(":", 1)[1])["content"]["text"] == "answer from me"


# ------------------------------------------------------------------------------ progress
async def _collect_progress(live: LiveClient, name: str, args: dict[str, Any]) -> tuple[str, list[Any]]:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await live.client.call_tool(name, args, progress_callback=on_progress)
    await anyio.sleep(0.2)  # a notification may trail the response on another stream
    return text_of(result), seen


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_progress_from_modern_upstream(live: LiveClient) -> None:
    # The SDK routes progress by its own token: seeing it at all proves the gateway mapped it back.
    text, seen = live.run(_collect_progress(live, "fixture__test_tool_with_progress", {}))
    assert text == "Progress reporting completed"
    assert [(v, t) for v, t, _m in seen] == [(0, 100), (50, 100), (100, 100)]
    assert seen[1][2] == "Completed step 50 of 100"


@pytest.mark.parametrize("live", combos(), indirect=True)
def test_progress_from_legacy_upstream(live: LiveClient) -> None:
    text, seen = live.run(_collect_progress(live, "everything__trigger-long-running-operation",
                                            {"duration": 0.6, "steps": 3}))
    assert text.startswith("Long running operation completed.")
    assert [(v, t) for v, t, _m in seen] == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("tool", ["fixture__test_tool_with_progress", "everything__trigger-long-running-operation"])
def test_progress_carries_the_clients_own_token(http_front: HttpGateway, tool: str) -> None:
    """Raw 2026-07-28 POST: every relayed notifications/progress names exactly the token we chose."""
    token = f"e2e-token-{uuid.uuid4().hex[:6]}"
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "e2e-raw", "version": "0"}, "progressToken": token}
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": tool, "arguments": {"duration": 0.4, "steps": 2} if "everything" in tool else {},
                       "_meta": meta}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN,
               "Mcp-Method": "tools/call", "Mcp-Name": tool}
    response = httpx.post(http_front.url, json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream"), "progress must stream before the result"
    messages = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert len(progress) >= 2 and {p["progressToken"] for p in progress} == {token}
    assert messages[-1]["id"] == 7 and "result" in messages[-1]


# -------------------------------------------------------------------------- cancellation
async def _cancel_after_first_progress(live: LiveClient, tool: str) -> float:
    """Start a 30 s call, cancel it at its first progress; return seconds from cancel to return."""
    first = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first.set()

    async with anyio.create_task_group() as tg:
        async def call() -> None:
            await live.client.call_tool(tool, {"seconds": 30}, progress_callback=on_progress)
            raise AssertionError("the call finished instead of being cancelled")

        tg.start_soon(call)
        with anyio.fail_after(15):
            await first.wait()
        cancelled_at = time.monotonic()
        tg.cancel_scope.cancel()
    return time.monotonic() - cancelled_at


def _cancellations(live: LiveClient, server: str) -> list[dict[str, Any]]:
    return json.loads(tool_text(live, f"{server}__cancellations", {}))  # type: ignore[no-any-return]


def _new_cancellations(live: LiveClient, server: str, known: int) -> list[dict[str, Any]]:
    """Cancellations the upstream recorded after the first `known` ones (waits up to 5 s)."""
    deadline = time.monotonic() + 5
    while len(seen := _cancellations(live, server)) <= known and time.monotonic() < deadline:
        time.sleep(0.1)
    return seen[known:]


@pytest.mark.parametrize("server", ["slow", "slowm"], ids=["legacy-upstream", "modern-upstream"])
@pytest.mark.parametrize("live", combos(), indirect=True)
def test_cancellation_stops_the_upstream_call(live: LiveClient, server: str) -> None:
    known = len(_cancellations(live, server))
    took = live.run(_cancel_after_first_progress(live, f"{server}__sleep"))
    assert took < 2.0, f"the cancelled call took {took:.1f}s to return"
    seen = _new_cancellations(live, server, known)
    assert seen and seen[-1]["wasRunning"], f"the upstream never got notifications/cancelled: {seen}"
    # ... and the gateway keeps answering, on the same connection.
    assert tool_text(live, f"{server}__echo", {"text": "still here"}) == "still here"
    assert tool_text(live, "fixture__test_simple_text", {}) == "This is a simple text response for testing."
