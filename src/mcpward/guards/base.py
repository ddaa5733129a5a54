"""The guard hook interface: every message passes an ordered chain of guards.

A guard overrides only the hooks it needs:

- `on_request(call)`: before routing. Return None to allow unchanged, a new params
  dict to transform, or raise `Refusal` to refuse.
- `on_result(call, result)`: after the upstream answered. Return None, a new
  result, or raise `Refusal`.
- `on_error(call, error)`: the upstream answered with a JSON-RPC error. Return None
  or the error the client gets instead.
- `on_list(call, kind, items)`: for `tools/list`, `prompts/list`, `resources/list`
  and `resources/templates/list`, each item with the server and upstream name it came
  from. Return None or the items to show (filtering makes the list `cacheScope: private`).
- `on_message(ctx, server, method, params)`: a server sends a client something that is not a
  result: a server->client request (`sampling/createMessage`, `elicitation/create`) or a
  notification (`notifications/message`, `notifications/progress`). Return None or new params;
  raise `Refusal` to stop it (a request is then answered to the server with the refusal, a
  notification is dropped).
- `on_published(server, kind, items)`: a server listed these items (for a client's list or
  the gateway's own refresh), before any client-facing filtering. Synchronous: it records
  facts (pins, scans) that later hooks decide on.
- `bind(gateway)`: the gateway this chain serves, for guards that need to ask it something
  (a server's instructions, a fresh listing).

The chain skips hooks a guard does not override, so a guard costs nothing on paths
it does not watch, and an empty chain costs nothing at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcpward.audit import events as audit
from mcpward.gateway.context import Principal, RequestContext
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj


@dataclass(slots=True)
class Call:
    """What guards see of one request."""

    ctx: RequestContext
    method: str
    params: JsonObj
    server: str | None = None
    target: str | None = None  # upstream tool/prompt name, or resource URI
    exposed: str | None = None  # the name the client used (namespaced), or the URI
    # The upstream's own listed definition of the tool/prompt/resource (None when it was
    # never listed): the source of annotations and schemas. Never mutate it.
    definition: JsonObj | None = None
    started: float = field(default_factory=time.perf_counter)
    notes: dict[str, Any] = field(default_factory=dict)  # guards may leave facts for later guards


@dataclass(slots=True)
class Listed:
    """One list item as the client will see it, with where it came from."""

    server: str
    name: str  # the upstream's name; the URI for resources, the URI template for templates
    item: JsonObj  # the published item (namespaced name); replace, never mutate, to change it


class Refusal(Exception):
    """A guard says no. `rule` names the rule so the client and the audit can tell why."""

    def __init__(self, rule: str, message: str, *, as_tool_error: bool = False) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.as_tool_error = as_tool_error

    def to_error(self) -> jsonrpc.ProtocolError:
        return jsonrpc.ProtocolError(jsonrpc.REFUSED, f"refused by {self.rule}: {self.message}", {"rule": self.rule})

    def to_tool_result(self) -> JsonObj:
        return {"content": [{"type": "text", "text": f"refused by {self.rule}: {self.message}"}], "isError": True}


def audit_refusal(call: Call, rule: str) -> None:
    """The one audit record of a refused request, whoever refused it."""
    call.notes["refused"] = rule  # and the request's own record says it was denied, and by which rule
    # `principal` is the key (`kind:subject`), as in the request's own record: `audit search --principal`
    # finds both, and `api-key:alice` and `oauth:alice` stay apart.
    principal = call.ctx.principal
    audit.record("refusal", rule=rule, method=call.method, server=call.server, target=call.exposed,
                 principal=principal.key, subject=principal.subject, transport=call.ctx.transport)


class Answer(Exception):
    """A request hook answers the call itself (an interceptor's short-circuit): the upstream is not
    called, and the answer passes only the result hooks of the guards before the answering one."""

    def __init__(self, result: JsonObj) -> None:
        super().__init__("answered by a guard")
        self.result = result


class GatewayView(Protocol):
    """What a guard may ask of the gateway it is bound to."""

    def server_instructions(self, server: str) -> str | None: ...

    async def relist(self, kind: str, principal: Principal | None = None) -> None: ...


class Guard:
    name = "guard"

    def bind(self, gateway: GatewayView) -> None:
        return None

    def on_published(self, server: str, kind: str, items: list[Listed]) -> None:
        return None

    async def on_request(self, call: Call) -> JsonObj | None:
        return None

    async def on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        return None

    async def on_error(self, call: Call, error: jsonrpc.ProtocolError) -> jsonrpc.ProtocolError | None:
        return None

    async def on_list(self, call: Call, kind: str, items: list[Listed]) -> list[Listed] | None:
        return None

    async def on_message(self, ctx: RequestContext, server: str, method: str, params: JsonObj) -> JsonObj | None:
        return None


def _overrides(guard: Guard, hook: str) -> bool:
    return getattr(type(guard), hook) is not getattr(Guard, hook)


class GuardChain:
    def __init__(self, guards: list[Guard] | None = None) -> None:
        self.guards = list(guards or [])
        self._request = [g for g in self.guards if _overrides(g, "on_request")]
        self._result = [g for g in self.guards if _overrides(g, "on_result")]
        self._list = [g for g in self.guards if _overrides(g, "on_list")]
        self._error = [g for g in self.guards if _overrides(g, "on_error")]
        self._published = [g for g in self.guards if _overrides(g, "on_published")]
        self._message = [g for g in self.guards if _overrides(g, "on_message")]
        self._position = {id(g): i for i, g in enumerate(self.guards)}

    @property
    def empty(self) -> bool:
        return not self.guards

    def bind(self, gateway: GatewayView) -> None:
        for guard in self.guards:
            guard.bind(gateway)

    def published(self, server: str, kind: str, items: list[Listed]) -> None:
        for guard in self._published:
            guard.on_published(server, kind, items)

    async def request(self, call: Call) -> JsonObj | None:
        """Runs the request hooks. Returns a guard's own answer (it raised `Answer`), already through
        the result hooks of the guards before it; the caller then skips the upstream. Else None."""
        for guard in self._request:
            try:
                replaced = await guard.on_request(call)
            except Answer as answer:
                return await self._unwind(call, self._position[id(guard)], answer.result)
            if replaced is not None:
                call.params = replaced
        return None

    async def _unwind(self, call: Call, below: int, result: JsonObj) -> JsonObj:
        for guard in reversed(self._result):
            if self._position[id(guard)] < below:
                replaced = await guard.on_result(call, result)
                if replaced is not None:
                    result = replaced
        return result

    async def result(self, call: Call, result: JsonObj) -> JsonObj:
        # Result hooks run in reverse, like unwinding middleware.
        for guard in reversed(self._result):
            replaced = await guard.on_result(call, result)
            if replaced is not None:
                result = replaced
        return result

    async def error(self, call: Call, error: jsonrpc.ProtocolError) -> jsonrpc.ProtocolError:
        for guard in reversed(self._error):
            replaced = await guard.on_error(call, error)
            if replaced is not None:
                error = replaced
        return error

    @property
    def watches_messages(self) -> bool:
        return bool(self._message)

    async def message(self, ctx: RequestContext, server: str, method: str, params: JsonObj) -> JsonObj:
        """A server's request or notification on its way to a client; outbound, so in reverse like results."""
        for guard in reversed(self._message):
            replaced = await guard.on_message(ctx, server, method, params)
            if replaced is not None:
                params = replaced
        return params

    async def listing(self, call: Call, kind: str, items: list[Listed]) -> tuple[list[Listed], bool]:
        """Returns the items and whether any guard changed them."""
        changed = False
        for guard in self._list:
            replaced = await guard.on_list(call, kind, items)
            if replaced is not None:
                items, changed = replaced, True
        return items, changed
