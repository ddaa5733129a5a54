"""MRTR bridge: a modern client in front of a legacy upstream that pushes requests.

The legacy upstream blocks on its server->client request (sampling, elicitation,
roots). A modern client cannot receive pushes, so the gateway parks the upstream
call, answers the client with an InputRequiredResult whose `requestState` is
sealed (principal, expiry, request digest), and resumes the parked call when the
client retries with `inputResponses`.

A modern upstream's own `requestState` is sealed the same way on its way to a modern client (`seal_upstream_state`):
the gateway reaches that upstream with one set of credentials for every principal, so the upstream
cannot tell whose flow a state belongs to. Sealed with the principal, the server and the request's
digest, another principal's retry is refused before it reaches the upstream (`open_upstream_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mcpward.gateway.context import RequestContext
from mcpward.gateway.peer import local_error
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.protocol.sealing import Sealer, SealError, digest

PARK_TTL = 300.0
# How long a client may take to answer a modern upstream's input request (a person filling in an
# elicitation form); the upstream's own state may expire sooner.
UPSTREAM_STATE_TTL = 3600.0


@dataclass(slots=True)
class Parked:
    id: str
    principal: str
    digest: str
    task: asyncio.Task[JsonObj]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    asked: dict[str, tuple[JsonObj, asyncio.Future[JsonObj]]] = field(default_factory=dict)
    keys: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    expires: float = 0.0
    round: int = 0  # bumped every time the call is parked: each requestState works once


def request_digest(server: str, method: str, params: JsonObj) -> str:
    """What a retry must repeat: the server, the method and the params minus the MRTR fields and _meta.
    The server counts: two servers' tools of one upstream name send the same params (`{"name": "ask"}`),
    and a state resumed under the other's exposed name would pass that tool's guards and exemptions."""
    core = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState", "_meta")}
    return digest([server, method, core])


class InputBridge:
    def __init__(self, sealer: Sealer, ttl: float = PARK_TTL) -> None:
        self.sealer = sealer
        self.ttl = ttl
        self._parked: dict[str, Parked] = {}

    async def start(self, ctx: RequestContext, server: str, method: str, params: JsonObj,
                    forward: Callable[[RequestContext], Awaitable[JsonObj]]) -> JsonObj:
        call_id = secrets.token_urlsafe(12)
        holder: list[Parked] = []

        async def sink(push_method: str, push_params: JsonObj) -> JsonObj:
            parked = holder[0]
            key = f"{push_method.split('/')[0]}-{next(parked.keys)}"
            future: asyncio.Future[JsonObj] = asyncio.get_running_loop().create_future()
            parked.asked[key] = ({"method": push_method, "params": push_params}, future)
            parked.wake.set()
            try:
                # Bounded: an unanswered question must not keep the server (and its session's clock,
                # which stops while a server waits on us) waiting for ever.
                return await asyncio.wait_for(future, self.ttl)
            except TimeoutError:
                raise unanswered() from None
            finally:
                # Answered, or cancelled by the upstream: either way the question is no longer open,
                # and a later retry must not be asked it again.
                parked.asked.pop(key, None)

        ctx.push_sink = sink
        task = asyncio.ensure_future(forward(ctx))
        parked = Parked(call_id, ctx.principal.key, request_digest(server, method, params), task)
        holder.append(parked)
        return await self._next(parked)

    def unseal(self, token: object) -> JsonObj:
        """A `requestState` this gateway sealed (its own or an upstream's), or -32602."""
        try:
            return self.sealer.unseal(token)
        except SealError as exc:
            raise local_error(jsonrpc.INVALID_PARAMS, f"requestState refused: {exc}") from None

    async def resume(self, ctx: RequestContext, server: str, method: str, params: JsonObj,
                     state: JsonObj | None = None) -> JsonObj:
        """Continue a parked call; `state`: its `requestState` already unsealed (default: unseal it here)."""
        if state is None:
            state = self.unseal(params.get("requestState"))
        parked = self._parked.get(str(state.get("call")))
        if parked is None:
            raise local_error(jsonrpc.INVALID_PARAMS, "requestState refused: unknown or already used")
        if state.get("sub") != ctx.principal.key or parked.principal != ctx.principal.key:
            raise local_error(jsonrpc.INVALID_PARAMS, "requestState refused: issued to another principal")
        if state.get("r") != parked.round:
            raise local_error(jsonrpc.INVALID_PARAMS, "requestState refused: already used")
        if parked.digest != request_digest(server, method, params):
            raise local_error(jsonrpc.INVALID_PARAMS, "requestState refused: the retry differs from the request")
        responses = params.get("inputResponses")
        if not isinstance(responses, dict):
            responses = {}
        del self._parked[parked.id]
        for key, (_request, future) in list(parked.asked.items()):
            answer = responses.get(key)
            if isinstance(answer, dict) and not future.done():
                future.set_result(answer)
                del parked.asked[key]
        return await self._next(parked)

    async def _next(self, parked: Parked) -> JsonObj:
        """Run the upstream call until it finishes or needs the client's input."""
        while not parked.task.done():
            if parked.asked:
                break
            parked.wake.clear()
            waiter = asyncio.ensure_future(parked.wake.wait())
            try:
                await asyncio.wait({parked.task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                parked.task.cancel()
                raise
            finally:
                waiter.cancel()
            # Let a push that raced the wake settle so several questions go out together.
            await asyncio.sleep(0)
        if parked.task.done():
            return parked.task.result()
        parked.expires = time.monotonic() + self.ttl
        parked.round += 1
        self._parked[parked.id] = parked
        self._sweep()
        state = self.sealer.seal({"call": parked.id, "sub": parked.principal, "dig": parked.digest,
                                  "r": parked.round}, self.ttl)
        return {
            "resultType": "input_required",
            "inputRequests": {key: request for key, (request, _f) in parked.asked.items()},
            "requestState": state,
        }

    def _sweep(self) -> None:
        now = time.monotonic()
        for call_id, parked in list(self._parked.items()):
            if parked.expires < now:
                del self._parked[call_id]
                _abandon(parked)

    async def close(self) -> None:
        for parked in self._parked.values():
            _abandon(parked)
            with contextlib.suppress(BaseException):
                await parked.task
        self._parked.clear()


def unanswered() -> Exception:
    return local_error(jsonrpc.REQUEST_TIMEOUT, "the client did not answer the server's request in time")


def _abandon(parked: Parked) -> None:
    """The client will not come back: its open questions fail (the server gets an error answer, not
    silence) and the upstream call is cancelled."""
    for _request, future in list(parked.asked.values()):
        if not future.done():
            future.set_exception(unanswered())
    parked.task.cancel()


def seal_upstream_state(sealer: Sealer, ctx: RequestContext, server: str, method: str, params: JsonObj,
                        result: JsonObj) -> JsonObj:
    """`result` with a modern upstream's `requestState` sealed to `ctx`'s principal, `server` and this request."""
    state = result.get("requestState")
    if result.get("resultType") != "input_required" or state is None:
        return result
    sealed = sealer.seal({"kind": "upstream", "srv": server, "sub": ctx.principal.key,
                          "dig": request_digest(server, method, params), "s": state}, UPSTREAM_STATE_TTL)
    return {**result, "requestState": sealed}


def open_upstream_state(state: JsonObj, ctx: RequestContext, server: str, method: str, params: JsonObj) -> JsonObj:
    """The retry's params with the upstream's own `requestState` back in place of the sealed one,
    or -32602 when the sealed state was issued to another principal, server or request."""
    if state.get("sub") != ctx.principal.key:
        raise local_error(jsonrpc.INVALID_PARAMS, "requestState refused: issued to another principal")
    if state.get("srv") != server or state.get("dig") != request_digest(server, method, params):
        raise local_error(jsonrpc.INVALID_PARAMS, "requestState refused: the retry differs from the request")
    return {**params, "requestState": state.get("s")}
