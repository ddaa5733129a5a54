"""A request's timeout does not run while the server waits on the gateway's answer to its own request.

A legacy server that asks for sampling or elicitation blocks until the client (maybe a person
filling in a form) answers; that wait is not the server being slow. Before, a bridged call whose
client took longer than the server's timeout to answer failed with -32005 although the server was
ready to finish.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcpward.gateway.peer import Peer, PeerError
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.base import MessageLink, SendHints


class AskingServer(MessageLink):
    """In memory: answers our request only after asking us something and getting the answer."""

    def __init__(self, asks: bool) -> None:
        super().__init__()
        self.asks = asks
        self.pending_id: Any = None

    async def open(self) -> None:
        return None

    async def send(self, message: JsonObj, hints: SendHints | None = None) -> None:
        if message.get("method") == "tools/call":
            self.pending_id = message["id"]
            if self.asks:
                asyncio.get_running_loop().call_soon(self.on_message, jsonrpc.request("s-1", "elicitation/create", {}))
        elif message.get("id") == "s-1":  # our answer to its question: it finishes the call
            self.on_message(jsonrpc.result(self.pending_id, {"content": [], "answer": message["result"]}))

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return "in-memory asking server"


async def test_the_clock_stops_while_the_server_waits_on_us() -> None:
    async def slow_person(message: JsonObj) -> JsonObj:
        await asyncio.sleep(0.6)  # longer than the request's whole timeout
        return {"action": "accept"}

    peer = Peer(AskingServer(asks=True), "s", slow_person, lambda _m: None)
    result = await peer.request("tools/call", {"name": "t"}, timeout=0.3)
    assert result["answer"] == {"action": "accept"}


async def test_a_server_that_is_simply_slow_still_times_out() -> None:
    async def never(message: JsonObj) -> JsonObj:
        raise AssertionError("the server asks nothing")

    peer = Peer(AskingServer(asks=False), "s", never, lambda _m: None)
    with pytest.raises(PeerError) as timed_out:
        await peer.request("tools/call", {"name": "t"}, timeout=0.2)
    assert timed_out.value.code == jsonrpc.REQUEST_TIMEOUT


class SilentAsker(MessageLink):
    """Asks the client a question on its first tools/call, then never answers any tools/call."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = False
        self.answers: list[JsonObj] = []

    async def open(self) -> None:
        return None

    async def send(self, message: JsonObj, hints: SendHints | None = None) -> None:
        if message.get("method") == "tools/call" and not self.asked:
            self.asked = True
            asyncio.get_running_loop().call_soon(self.on_message, jsonrpc.request("s-1", "elicitation/create", {}))
        elif message.get("id") == "s-1":
            self.answers.append(message)

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return "in-memory silent server"


async def test_a_question_the_client_never_answers_does_not_stop_the_clock_for_ever() -> None:
    # A modern client that never retries a bridged call: its question must fail (the server gets an
    # error answer), so the session's clock runs again and later requests time out as they should.
    from mcpward.gateway.bridge import InputBridge
    from mcpward.gateway.context import system_context
    from mcpward.protocol.sealing import Sealer

    holder: dict[str, Any] = {}

    async def on_request(message: JsonObj) -> JsonObj:
        sink = holder["ctx"].push_sink
        answer: JsonObj = await sink(message["method"], message.get("params") or {})
        return answer

    server = SilentAsker()
    peer = Peer(server, "s", on_request, lambda _m: None)
    bridge = InputBridge(Sealer(), ttl=0.4)

    async def forward(ctx: Any) -> JsonObj:
        holder["ctx"] = ctx
        return await peer.request("tools/call", {"name": "t"}, timeout=0.3)

    first = await bridge.start(system_context(), "s", "tools/call", {"name": "t"}, forward)
    assert first["resultType"] == "input_required"  # ... and the client never comes back
    with pytest.raises(PeerError) as later:
        await asyncio.wait_for(peer.request("tools/call", {"name": "other"}, timeout=0.3), 5)
    assert later.value.code == jsonrpc.REQUEST_TIMEOUT
    assert server.answers and server.answers[0]["error"]["code"] == jsonrpc.REQUEST_TIMEOUT
    await bridge.close()


async def test_the_waiting_credited_to_a_request_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that keeps asking (or a client that takes for ever) cannot keep a request alive without end.
    from mcpward.gateway import peer as peer_module

    monkeypatch.setattr(peer_module, "MAX_WAIT_CREDIT", 0.2)

    async def slow_person(message: JsonObj) -> JsonObj:
        await asyncio.sleep(0.6)
        return {"action": "accept"}

    peer = Peer(AskingServer(asks=True), "s", slow_person, lambda _m: None)
    with pytest.raises(PeerError) as timed_out:
        await peer.request("tools/call", {"name": "t"}, timeout=0.3)
    assert timed_out.value.code == jsonrpc.REQUEST_TIMEOUT
