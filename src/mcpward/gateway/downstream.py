"""One client connection as the gateway sees it: era detection, legacy session state,
server->client requests, cancellation. Shared by the stdio and HTTP fronts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from mcpward.audit.events import AuditUnavailable
from mcpward.gateway.accounting import Ticket
from mcpward.gateway.context import Principal, RequestContext, RequestSource
from mcpward.gateway.core import Gateway
from mcpward.gateway.peer import PeerError
from mcpward.gateway.upstream import GATEWAY_INFO
from mcpward.protocol import jsonrpc
from mcpward.protocol import versions as v
from mcpward.protocol.jsonrpc import JsonObj, ProtocolError, RequestId

log = logging.getLogger("mcpward.downstream")
Writer = Callable[[JsonObj], Awaitable[None]]


class RequestChannel:
    """Talks back to the client on one request's own stream."""

    def __init__(self, conn: ClientConnection, write: Writer, can_ask: bool) -> None:
        self._conn = conn
        self._write = write
        self._can_ask = can_ask

    @property
    def can_ask(self) -> bool:
        return self._can_ask

    async def notify(self, message: JsonObj) -> None:
        await self._write(message)

    async def ask(self, method: str, params: JsonObj, timeout: float) -> JsonObj:
        return await self._conn.ask(self._write, method, params, timeout)


class ClientConnection:
    def __init__(self, gateway: Gateway, transport: Literal["stdio", "http"], principal: Principal,
                 write: Writer, session_id: str | None = None, stateless: bool = False) -> None:
        self.gateway = gateway
        self.transport = transport
        self.principal = principal
        self.write = write
        self.session_id = session_id or secrets.token_urlsafe(24)
        # The modern HTTP front shares one ClientConnection between unrelated stateless requests.
        self.stateless = stateless
        self.connection_id = None if stateless else self.session_id
        self.initialized = False
        self.protocol_version = v.LATEST_LEGACY
        self.capabilities: JsonObj = {}
        self.client_info: JsonObj | None = None
        self.log_level: str | None = None
        self._asks: dict[RequestId, asyncio.Future[JsonObj]] = {}
        self._ask_ids = itertools.count(1)
        self.running: dict[RequestId, asyncio.Task[Any]] = {}

    # -------------------------------------------------------------- messages in
    async def on_response(self, message: JsonObj) -> None:
        rid = message.get("id")
        future = self._asks.get(rid) if isinstance(rid, (str, int)) else None
        if future is not None and not future.done():
            future.set_result(message)

    async def on_notification(self, message: JsonObj) -> None:
        method = message["method"]
        params = message.get("params") or {}
        if method == "notifications/cancelled":
            target = params.get("requestId")
            task = self.running.get(target) if isinstance(target, (str, int)) else None
            if task is not None:
                task.cancel()
        elif method == "notifications/initialized":
            self.initialized = True
        elif method == "notifications/roots/list_changed":
            try:
                ctx = self.context(message, self.write)
                await self.gateway.roots_changed(ctx)
            except ProtocolError as exc:  # not initialised, or over the principal's rate (audited at the door)
                log.info("notifications/roots/list_changed dropped: %s", exc.message)

    async def on_request(self, message: JsonObj, stream: Writer | None = None, principal: Principal | None = None,
                         source: RequestSource | None = None) -> JsonObj | None:
        """Answer one request; None when it was cancelled (no response is due).

        `principal` and `source` are per request on the shared stateless (modern HTTP) connection;
        otherwise the connection's own principal answers. The request's audit record is durable
        before this returns, so whatever the client receives is on record.
        """
        rid = message["id"]
        who = principal or self.principal
        ticket = self.gateway.accounting.begin(message, self.transport, None if self.stateless else self.session_id,
                                               *((source.traceparent, source.tracestate) if source else ()))
        reply: JsonObj | None = None
        try:
            reply = jsonrpc.result(rid, await self._answer(message, stream or self.write, ticket, who, source))
        except ProtocolError as exc:
            reply = exc.response(rid)
        except PeerError as exc:
            reply = {"jsonrpc": "2.0", "id": rid, "error": exc.error}
        except asyncio.CancelledError:
            if self.running.get(rid) is not asyncio.current_task():
                await self._account(ticket, None, who)
                raise
        except Exception:
            log.exception("internal error answering %s", message.get("method"))
            reply = jsonrpc.error(rid, jsonrpc.INTERNAL_ERROR, "internal error in the gateway")
        return await self._account(ticket, reply, who)

    async def _account(self, ticket: Ticket, reply: JsonObj | None, who: Principal) -> JsonObj | None:
        try:
            await self.gateway.accounting.finish(ticket, reply, who.key, who.subject)
        except AuditUnavailable as exc:
            # Fail closed: an answer whose record cannot be kept is not given.
            log.error("audit log unavailable; refusing to answer: %s", exc)
            rid = ticket.request_id
            return None if reply is None else jsonrpc.error(
                rid, jsonrpc.INTERNAL_ERROR, "the audit log is unavailable; the request was not answered",
                {"rule": "audit.unavailable"})
        return reply

    async def _answer(self, message: JsonObj, stream: Writer, ticket: Ticket, principal: Principal,
                      source: RequestSource | None) -> JsonObj:
        method: str = message["method"]
        params: JsonObj = message.get("params") or {}
        if method == "initialize":
            return self._initialize(params)
        ctx = self.context(message, stream, principal)
        if source is not None:
            ctx.remote, ctx.user_agent = source.remote, source.user_agent
        self.gateway.accounting.attach(ticket, ctx)
        if method == "logging/setLevel" and ctx.era == "legacy":
            await self.gateway.admit(ctx, method, params)  # counted like any request, before any work
            level = params.get("level")
            if level not in v.LOG_LEVELS:
                raise ProtocolError(jsonrpc.INVALID_PARAMS, f"unknown log level: {level!r}")
            self.log_level = ctx.log_level = str(level)
            await self.gateway.set_log_level(ctx, self.log_level)
            return {}
        if method == "subscriptions/listen" and ctx.era == "modern":
            await self.gateway.listen(ctx, message["id"], params, stream)
            return {"resultType": "complete"}
        return await self.gateway.handle(ctx, method, params)

    def _initialize(self, params: JsonObj) -> JsonObj:
        caps = params.get("capabilities")
        if not isinstance(caps, dict):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, "initialize needs a 'capabilities' object")
        info = params.get("clientInfo")
        self.capabilities = caps
        self.client_info = info if isinstance(info, dict) else None
        self.protocol_version = v.negotiate_legacy(params.get("protocolVersion"))
        self.initialized = True
        self.gateway.subscriptions.add_session(self.session_id, self.write, self.principal.key)
        ctx = self.context({"params": {}}, self.write)  # the session's own context: whose instructions
        return {"protocolVersion": self.protocol_version, "serverInfo": GATEWAY_INFO,
                **self.gateway.server_result(ctx)}

    def context(self, message: JsonObj, stream: Writer, principal: Principal | None = None) -> RequestContext:
        params = message.get("params") or {}
        meta = params.get("_meta")
        meta = meta if isinstance(meta, dict) else {}
        forward = {k: val for k, val in meta.items() if k not in v.RESERVED_META and k != "progressToken"}
        principal = principal or self.principal
        if v.META_VERSION in meta:
            return self._modern_context(message, meta, forward, stream, principal)
        if not self.initialized:
            raise ProtocolError(
                jsonrpc.INVALID_PARAMS,
                f"params._meta must carry {v.META_VERSION!r} and {v.META_CAPABILITIES!r} "
                "(2026-07-28), or the session must start with initialize")
        return RequestContext(
            era="legacy", protocol_version=self.protocol_version, capabilities=self.capabilities,
            client_info=self.client_info, principal=principal,
            channel=RequestChannel(self, stream, can_ask=True), transport=self.transport,
            log_level=self.log_level,
            session_id=self.session_id, connection_id=self.connection_id, forward_meta=forward,
            progress_token=meta.get("progressToken"))

    def _modern_context(self, message: JsonObj, meta: JsonObj, forward: JsonObj, stream: Writer,
                        principal: Principal) -> RequestContext:
        version = meta.get(v.META_VERSION)
        if version not in v.MODERN_VERSIONS:
            raise ProtocolError(jsonrpc.UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                                {"supported": list(v.MODERN_VERSIONS), "requested": version})
        caps = meta.get(v.META_CAPABILITIES)
        if not isinstance(caps, dict):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"params._meta needs a {v.META_CAPABILITIES!r} object")
        info = meta.get(v.META_CLIENT_INFO)
        level = meta.get(v.META_LOG_LEVEL)
        if level is not None and level not in v.LOG_LEVELS:
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"unknown log level: {level!r}")
        return RequestContext(
            era="modern", protocol_version=str(version), capabilities=caps,
            client_info=info if isinstance(info, dict) else None, principal=principal,
            channel=RequestChannel(self, stream, can_ask=False), transport=self.transport,
            log_level=level,
            connection_id=self.connection_id, forward_meta=forward, progress_token=meta.get("progressToken"))

    # ------------------------------------------------------- server -> client
    async def ask(self, write: Writer, method: str, params: JsonObj, timeout: float) -> JsonObj:
        rid = f"mcpward-{next(self._ask_ids)}"
        future: asyncio.Future[JsonObj] = asyncio.get_running_loop().create_future()
        self._asks[rid] = future
        try:
            await write(jsonrpc.request(rid, method, params))
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await write(jsonrpc.notification("notifications/cancelled", {"requestId": rid}))
            raise ProtocolError(jsonrpc.REQUEST_TIMEOUT, f"the client did not answer {method}") from None
        except asyncio.CancelledError:
            # The asking server cancelled its request (or its call ended): withdraw the question from the
            # client too, so a form or a sampling dialog does not stay open for nothing.
            with contextlib.suppress(Exception):
                await asyncio.shield(write(jsonrpc.notification("notifications/cancelled", {"requestId": rid})))
            raise
        finally:
            self._asks.pop(rid, None)
        if "error" in reply and isinstance(reply["error"], dict):
            raise PeerError(reply["error"])
        result = reply.get("result")
        if not isinstance(result, dict):
            raise ProtocolError(jsonrpc.INVALID_PARAMS, f"the client's answer to {method} is not an object")
        return result

    def close(self) -> None:
        for task in self.running.values():
            task.cancel()
        for future in self._asks.values():
            if not future.done():
                future.cancel()
        self.gateway.subscriptions.remove_listener(self.session_id)
