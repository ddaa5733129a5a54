"""The MRTR bridge: a parked legacy call resumes only for the same principal and the same request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcpward.gateway.bridge import InputBridge
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.gateway.peer import PeerError
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.protocol.sealing import Sealer


def ctx(subject: str = "alice") -> RequestContext:
    return RequestContext(era="modern", protocol_version="2026-07-28", capabilities={"sampling": {}},
                          client_info=None, principal=Principal(subject, "anonymous"), channel=SilentChannel(),
                          transport="http")


PARAMS: dict[str, Any] = {"name": "t", "arguments": {"q": 1}}


async def two_questions(c: RequestContext) -> JsonObj:
    """A legacy upstream that asks the client twice, one after the other, then answers."""
    assert c.push_sink is not None
    first = await c.push_sink("sampling/createMessage", {"messages": [], "maxTokens": 5})
    second = await c.push_sink("elicitation/create", {"message": "name?"})
    return {"content": [{"type": "text", "text": f"{first['model']} {second['action']}"}]}


async def test_round_trips_until_complete() -> None:
    bridge = InputBridge(Sealer())
    first = await bridge.start(ctx(), "s", "tools/call", PARAMS, two_questions)
    assert first["resultType"] == "input_required"
    (key, request), = first["inputRequests"].items()
    assert request["method"] == "sampling/createMessage"
    # A retry without the answer is asked again, not failed.
    again = await bridge.resume(ctx(), "s", "tools/call", {**PARAMS, "requestState": first["requestState"]})
    assert list(again["inputRequests"]) == [key]
    second = await bridge.resume(ctx(), "s", "tools/call", {**PARAMS, "requestState": again["requestState"],
                                                       "inputResponses": {key: {"model": "m"}}})
    (key2, request2), = second["inputRequests"].items()
    assert request2["method"] == "elicitation/create"
    done = await bridge.resume(ctx(), "s", "tools/call", {**PARAMS, "requestState": second["requestState"],
                                                     "inputResponses": {key2: {"action": "accept"}}})
    assert done["content"][0]["text"] == "m accept"


@pytest.mark.parametrize("attack", ["other-principal", "other-arguments", "other-server", "replay", "forged"])
async def test_resume_refuses_misuse(attack: str) -> None:
    bridge = InputBridge(Sealer())
    first = await bridge.start(ctx(), "s", "tools/call", PARAMS, two_questions)
    state = first["requestState"]
    who, server, params = ctx(), "s", {**PARAMS, "requestState": state}
    if attack == "other-server":  # another server's tool of the same upstream name sends the same params
        server = "t"
    elif attack == "other-principal":
        who = ctx("mallory")
    elif attack == "other-arguments":
        params["arguments"] = {"q": 2}
    elif attack == "replay":
        await bridge.resume(ctx(), "s", "tools/call", params)  # used once: the state is spent
    elif attack == "forged":
        params["requestState"] = state[:-3] + "AAA"
    with pytest.raises(PeerError) as info:
        await bridge.resume(who, server, "tools/call", params)
    assert info.value.code == -32602 and "requestState refused" in info.value.error["message"]
    await bridge.close()


async def test_abandoned_calls_expire_and_are_cancelled() -> None:
    bridge = InputBridge(Sealer(), ttl=0.05)
    first = await bridge.start(ctx(), "s", "tools/call", PARAMS, two_questions)
    parked = next(iter(bridge._parked.values()))
    await asyncio.sleep(0.1)
    await bridge.start(ctx("bob"), "s", "tools/call", PARAMS, two_questions)  # parking sweeps expired calls
    await asyncio.sleep(0)
    assert parked.task.cancelled() or parked.task.done()
    with pytest.raises(PeerError):
        await bridge.resume(ctx(), "s", "tools/call", {**PARAMS, "requestState": first["requestState"]})
    await bridge.close()
