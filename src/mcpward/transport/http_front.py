"""The Streamable HTTP front: both eras on one endpoint, DNS-rebinding protection.

Era routing follows the `MCP-Protocol-Version` header: a modern version goes down
the stateless path (every POST stands alone, closing its stream cancels it);
anything else is the legacy session path (`initialize`, `Mcp-Session-Id`, GET stream).
A reply is plain JSON when the answer comes before anything else needs saying,
and an SSE stream as soon as a notification or server->client request must go first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mcpward.audit import events as audit
from mcpward.auth import Authenticator, AuthFailure
from mcpward.gateway import after_reply
from mcpward.gateway.context import Principal, RequestSource, session_digest
from mcpward.gateway.core import Gateway
from mcpward.gateway.downstream import ClientConnection
from mcpward.protocol import jsonrpc
from mcpward.protocol import versions as v
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.event_store import EventStore, StreamLog
from mcpward.transport.http_checks import (
    HttpRejection,
    allowed_hosts,
    allowed_origins,
    check_modern_headers,
    status_for,
)
from mcpward.transport.http_exchange import (
    DISCONNECTED,
    KEEPALIVE,
    KEEPALIVE_TICK,
    SSE_HEADERS,
    event,
    exchange,
    next_or_disconnect,
    respond,
    wait_disconnect,
)
from mcpward.transport.http_limits import BodyDeadline, DoorRefusal
from mcpward.transport.http_metrics import check_metrics_reader
from mcpward.transport.http_sessions import SessionRoom
from mcpward.transport.sse import encode_comment, encode_event

if TYPE_CHECKING:
    from mcpward.gateway.assembly import Assembly

log = logging.getLogger("mcpward.http")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
OUTBOX_LIMIT = 1000
RETRY_MS = 1000
ANONYMOUS = Principal.anonymous()
# Refusals at the door (rebinding checks, the routing-header ladder): each one audited, but at most
# this many records per second; the rest are counted into one `http.refused-summary` record.
REFUSAL_RECORDS_PER_SECOND = 20
SUMMARY_SOURCES = 16  # distinct source addresses a summary names (the rest are only counted)
SHOWN_VALUE = 128  # characters of a refused Host or Origin value kept in its record
LADDER_RULES = {jsonrpc.HEADER_MISMATCH: "http.header-mismatch",
                jsonrpc.UNSUPPORTED_PROTOCOL_VERSION: "http.protocol-version",
                jsonrpc.INVALID_PARAMS: "http.envelope"}


class RefusalAudit:
    """Audits refusals at the HTTP front without letting a flood of bad requests flood the log.

    The first REFUSAL_RECORDS_PER_SECOND refusals of each second get an `<event>` record each
    (`http.refused`, or `auth.refused` for failed authentication: no credentials are needed to cause
    those either); the others are counted (per rule, and per source address for up to SUMMARY_SOURCES
    of them) and written as one `<event>-summary` record when the second is over: by a timer, by the
    next refusal, or at shutdown. So a flood costs at most that many records plus one per second.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 per_second: int = REFUSAL_RECORDS_PER_SECOND, event: str = "http.refused") -> None:
        self.event = event
        self.clock = clock
        self.per_second = per_second
        self._second = float("-inf")
        self._written = 0
        self._rules: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, rule: str, status: int, source_ip: str | None, **fields: Any) -> None:
        now = self.clock()
        if now - self._second >= 1.0:
            self.flush()
            self._second, self._written = now, 0
        if self._written < self.per_second:
            self._written += 1
            audit.record(self.event, rule=rule, status=status, source_ip=source_ip, **fields)
            return
        self._rules[rule] += 1
        source = source_ip or "unknown"
        if source in self._sources or len(self._sources) < SUMMARY_SOURCES:
            self._sources[source] += 1
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next refusal or shutdown writes it
                self._timer = asyncio.get_running_loop().call_later(1.0, self.flush)

    def flush(self) -> None:
        """Write the summary of the refusals not recorded one by one, if there are any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._rules:
            return
        total = sum(self._rules.values())
        audit.record(f"{self.event}-summary", suppressed=total, rules=dict(self._rules),
                     sources=dict(self._sources), unlisted_sources=total - sum(self._sources.values()))
        self._rules.clear()
        self._sources.clear()


class LegacySession:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        # A session id is a handle, never authentication: every request on it must come from the
        # principal that opened it (another principal's token with this id finds no session).
        self.owner = conn.principal.key
        self.outbox: asyncio.Queue[JsonObj] = asyncio.Queue(OUTBOX_LIMIT)
        self.streaming = False
        self.events = EventStore()
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_seen = time.monotonic()

    async def push(self, message: JsonObj) -> None:
        if self.outbox.full():
            dropped = self.outbox.get_nowait()
            log.warning("session %s: GET stream backlog full; dropped %s", self.conn.session_id[:8],
                        dropped.get("method"))
        self.outbox.put_nowait(message)


class HttpFront:
    def __init__(self, gateway: Gateway, manage_gateway: bool = True, parts: Assembly | None = None) -> None:
        self.gateway = gateway
        self.cfg = gateway.cfg
        self.manage_gateway = manage_gateway
        self.parts = parts
        self.auth: Authenticator | None = parts.auth if parts else None
        telemetry = parts.telemetry if parts else None
        self.metrics_path = telemetry.metrics_path if telemetry is not None else None
        self.metrics = telemetry.render_metrics if telemetry is not None and self.metrics_path else None
        self.metrics_readers = frozenset(telemetry.settings.metrics_principals if telemetry is not None else ())
        self.sessions: dict[str, LegacySession] = {}
        self.hosts = allowed_hosts(self.cfg)
        self.origins = allowed_origins(self.cfg)
        self.modern = ClientConnection(gateway, "http", Principal.anonymous(), self._no_session_writer,
                                       stateless=True)
        self.refusals = RefusalAudit()
        self.auth_refusals = RefusalAudit(event="auth.refused")
        self.room = SessionRoom(self.sessions, self.refusals, per_principal=self.cfg.max_sessions_per_principal)

    @staticmethod
    async def _no_session_writer(message: JsonObj) -> None:
        log.debug("dropped %s: a modern request has no session stream", message.get("method"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._http(scope, receive, send)
        except HttpRejection as rej:
            if isinstance(rej, DoorRefusal):  # the request's shape, refused by a named rule (http_limits.py)
                rej.audit(self.refusals, scope)
            await respond(send, rej.status, rej.body, rej.headers)
        finally:
            after_reply.run()  # the response is written: now the bookkeeping it did not wait for

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.auth is not None:
                    await self.auth.start()
                if self.parts is not None:
                    await self.parts.start()
                if self.manage_gateway:
                    await self.gateway.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.refusals.flush()
                self.auth_refusals.flush()
                for session in self.sessions.values():
                    session.conn.close()
                if self.manage_gateway:
                    await self.gateway.stop()
                if self.auth is not None:
                    await self.auth.close()
                if self.parts is not None:
                    await self.parts.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Field values lose surrounding whitespace (RFC 9110 5.5): h11 strips it, httptools does not.
        headers = {k.decode("latin-1").lower(): val.decode("latin-1").strip(" \t") for k, val in scope["headers"]}
        host = headers.get("host", "")
        client = scope.get("client")
        remote = client[0] if client else None
        path, method = scope["path"], scope["method"]
        if host.lower() not in self.hosts:
            self.refusals.refused("http.host", 421, remote, host=host[:SHOWN_VALUE], http_method=method)
            raise HttpRejection(421, None, text="Invalid Host header (refused by http.host)")
        if path != self.cfg.http_path:
            await self._side_path(path, method, headers, send, remote)
            return
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            self.refusals.refused("http.origin", 403, remote, origin=origin[:SHOWN_VALUE], http_method=method)
            raise HttpRejection(403, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "Origin not allowed",
                                                   {"rule": "http.origin"}))
        principal = await self._authenticate(headers, scope)
        version = headers.get("mcp-protocol-version")
        modern = version is not None and version not in v.LEGACY_VERSIONS
        source = RequestSource(remote=remote, user_agent=headers.get("user-agent"),
                               traceparent=headers.get("traceparent"), tracestate=_joined(scope, b"tracestate"))
        if method == "POST":
            await self._post(scope, receive, send, headers, modern, principal, source)
        elif method == "GET" and not modern:
            await self._get(send, receive, headers, principal)
        elif method == "DELETE" and not modern:
            session = self._session(headers, principal)
            del self.sessions[session.conn.session_id]
            session.conn.close()
            await respond(send, 200, None)
        else:
            raise DoorRefusal(405, "http.method", f"method {method} not allowed",
                              headers=[(b"allow", b"POST" if modern else b"GET, POST, DELETE")])

    async def _side_path(self, path: str, method: str, headers: dict[str, str], send: Send,
                         remote: str | None) -> None:
        """Protected Resource Metadata (RFC 9728) and Prometheus metrics; anything else is 404."""
        if self.auth is not None and path in self.auth.metadata_paths:
            if method != "GET":
                raise DoorRefusal(405, "http.method", f"method {method} not allowed", headers=[(b"allow", b"GET")])
            await respond(send, 200, self.auth.metadata())
            return
        if self.metrics is not None and path == self.metrics_path:
            if method != "GET":
                raise DoorRefusal(405, "http.method", f"method {method} not allowed", headers=[(b"allow", b"GET")])
            principal = await self._authenticate(headers, None)  # metrics name tools and servers: same door as MCP
            check_metrics_reader(principal, self.metrics_readers, self.auth is not None, self.refusals, remote)
            body, content_type = self.metrics()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        raise HttpRejection(404, None)

    async def _authenticate(self, headers: dict[str, str], scope: Scope | None,
                            method: str | None = None) -> Principal:
        """The request's principal; no credentials or bad ones end here with 401/403 (RFC 6750, RFC 9728)."""
        if self.auth is None:
            return ANONYMOUS
        try:
            return await self.auth.authenticate(headers.get("authorization"), method)
        except AuthFailure as failure:
            client = scope.get("client") if scope else None
            self.auth_refusals.refused(failure.reason, failure.status, client[0] if client else None,
                                       error=failure.error or "missing", credential=failure.credential,
                                       token_id=failure.token_id, principal=failure.principal, method=method,
                                       user_agent=headers.get("user-agent"))
            body: JsonObj = {"error": failure.error or "unauthorized", "error_description": failure.description}
            raise HttpRejection(failure.status, body,
                                headers=[(b"www-authenticate", failure.www_authenticate().encode())]) from None

    def _session(self, headers: dict[str, str], principal: Principal) -> LegacySession:
        session_id = headers.get("mcp-session-id")
        if session_id is None:
            raise HttpRejection(400, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "missing Mcp-Session-Id"))
        session = self.sessions.get(session_id)
        if session is not None and session.owner != principal.key:
            audit.record("session.refused", reason="session belongs to another principal",
                         principal=principal.key, session=session_digest(session_id))
            session = None
        if session is None:
            raise HttpRejection(404, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "Session not found"))
        session.last_seen = time.monotonic()
        return session

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        deadline = BodyDeadline()  # all of it within a bound, or 408 (http.body-timeout)
        while True:
            message = await deadline.receive(receive)
            if message["type"] == "http.disconnect":
                raise HttpRejection(400, None)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.cfg.max_message_bytes:
                raise DoorRefusal(413, "http.body-size", f"request body exceeds {self.cfg.max_message_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _post(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                    modern: bool, principal: Principal, source: RequestSource) -> None:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise DoorRefusal(415, "http.content-type", "Content-Type must be application/json")
        accept = headers.get("accept", "")
        wants_sse = "text/event-stream" in accept or "*/*" in accept
        if not ("application/json" in accept or "*/*" in accept):
            raise DoorRefusal(406, "http.accept", "Accept must include application/json and text/event-stream")
        message: JsonObj | None = None
        try:
            body = await self._read_body(receive)
            message = jsonrpc.decode(body, self.cfg.max_message_bytes)
            jsonrpc.check_forwardable(message, body)
            kind = jsonrpc.classify(message)
        except jsonrpc.ProtocolError as exc:
            # A parsed but invalid message is answered under its own id when it has a usable one.
            raise HttpRejection(400, exc.response(jsonrpc.usable_id(message))) from None
        if kind is jsonrpc.Kind.REQUEST and self.auth is not None and self.auth.scoped(message["method"]):
            # Step-up: this method needs scopes beyond the door's (403 insufficient_scope names them).
            principal = await self._authenticate(headers, scope, message["method"])
        if modern:
            await self._post_modern(scope, receive, send, headers, message, kind, wants_sse, principal, source)
        else:
            await self._post_legacy(receive, send, headers, message, kind, wants_sse, principal, source)

    async def _post_modern(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                           message: JsonObj, kind: jsonrpc.Kind, wants_sse: bool, principal: Principal,
                           source: RequestSource) -> None:
        if kind is not jsonrpc.Kind.REQUEST:
            if kind is jsonrpc.Kind.RESPONSE:
                raise HttpRejection(400, jsonrpc.error(None, jsonrpc.INVALID_REQUEST,
                                                       "a 2026-07-28 client cannot post responses"))
            if headers.get("mcp-protocol-version") not in v.MODERN_VERSIONS:
                raise HttpRejection(400, self._ladder_refusal(
                    jsonrpc.error(None, jsonrpc.UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                                  {"supported": list(v.MODERN_VERSIONS)}), message.get("method"), principal, source))
            await respond(send, 202, None)
            return
        rejection = await check_modern_headers(self.gateway, message, headers, scope["headers"], principal)
        if rejection is not None:
            reply = self._ladder_refusal(rejection, message["method"], principal, source)
            await respond(send, status_for(reply), reply)
            return
        method = message["method"]
        if not self.gateway.serves(method, "modern") and method != "subscriptions/listen":
            await respond(send, 404, jsonrpc.error(message["id"], jsonrpc.METHOD_NOT_FOUND,
                                                   f"method not found: {method}"))
            return
        await exchange(receive, send, lambda stream: self.modern.on_request(message, stream, principal, source),
                       message["id"], principal.key, wants_sse, cancel_on_disconnect=True, status_table=True)

    def _ladder_refusal(self, reply: JsonObj, method: Any, principal: Principal, source: RequestSource) -> JsonObj:
        """A routing-header or envelope rejection: its rule goes into the error's data, and into the
        (bounded) audit. The record names the header at fault, never a header's value."""
        error = reply["error"]
        rule = LADDER_RULES.get(error.get("code"), "http.envelope")
        data = error.get("data")
        error["data"] = {**data, "rule": rule} if isinstance(data, dict) else {"rule": rule}
        self.refusals.refused(rule, status_for(reply), source.remote, principal=principal.key,
                              method=method if isinstance(method, str) else None, detail=error.get("message"))
        return reply

    async def _post_legacy(self, receive: Receive, send: Send, headers: dict[str, str],
                           message: JsonObj, kind: jsonrpc.Kind, wants_sse: bool, principal: Principal,
                           source: RequestSource) -> None:
        if kind is jsonrpc.Kind.REQUEST and message["method"] == "initialize":
            session_id = secrets.token_urlsafe(24)
            holder: list[LegacySession] = []

            async def to_get_stream(msg: JsonObj) -> None:
                await holder[0].push(msg)

            with self.room.reserve(principal, source.remote):  # idle expiry, and the caps (http_sessions)
                conn = ClientConnection(self.gateway, "http", principal, to_get_stream, session_id)
                session = LegacySession(conn)
                holder.append(session)
                reply = await conn.on_request(message, None, principal, source)
                if reply is not None and "result" in reply:
                    self.sessions[session_id] = session
            if reply is not None and "result" in reply:
                await respond(send, 200, reply, [(b"mcp-session-id", session_id.encode())])
            else:
                await respond(send, 200, reply)
            return
        params = message.get("params") if isinstance(message.get("params"), dict) else None
        if "mcp-session-id" not in headers and params and v.META_VERSION in (params.get("_meta") or {}):
            raise HttpRejection(400, self._ladder_refusal(
                jsonrpc.error(message.get("id"), jsonrpc.HEADER_MISMATCH, "MCP-Protocol-Version header is required"),
                message.get("method"), principal, source))
        session = self._session(headers, principal)
        conn = session.conn
        if kind is jsonrpc.Kind.NOTIFICATION:
            await conn.on_notification(message)
            await respond(send, 202, None)
            return
        if kind is jsonrpc.Kind.RESPONSE:
            await conn.on_response(message)
            await respond(send, 202, None)
            return
        rid = message["id"]

        async def run(stream: Callable[[JsonObj], Awaitable[None]]) -> JsonObj | None:
            task = asyncio.current_task()
            assert task is not None
            conn.running[rid] = task
            try:
                return await conn.on_request(message, stream, principal, source)
            finally:
                conn.running.pop(rid, None)

        if not wants_sse:
            await exchange(receive, send, run, rid, principal.key, wants_sse, cancel_on_disconnect=False,
                           status_table=False)
            return
        log = session.events.open()

        async def record(msg: JsonObj) -> None:
            log.append(msg)

        async def runner() -> None:
            reply: JsonObj | None = None
            try:
                reply = await run(record)
            finally:
                if reply is not None:
                    log.append(reply)
                log.finish()

        task = asyncio.ensure_future(runner())
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)
        await _replay(send, receive, log, 0)

    async def _get(self, send: Send, receive: Receive, headers: dict[str, str], principal: Principal) -> None:
        if "text/event-stream" not in headers.get("accept", ""):
            raise DoorRefusal(406, "http.accept", "Accept must include text/event-stream")
        session = self._session(headers, principal)
        last_event_id = headers.get("last-event-id")
        if last_event_id is not None:
            point = session.events.resume_point(last_event_id)
            if point is None:
                raise HttpRejection(404, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "unknown Last-Event-ID"))
            await _replay(send, receive, *point)
            return
        if session.streaming:
            raise HttpRejection(409, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "a GET stream is already open"))
        session.streaming = True
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await send({"type": "http.response.body", "body": encode_comment("stream open"), "more_body": True})
            while session.conn.session_id in self.sessions:
                item: Any = await next_or_disconnect(session.outbox, watcher)
                if item is DISCONNECTED:
                    return
                body = encode_comment("ping") if item is KEEPALIVE_TICK else event(item)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            session.streaming = False
            watcher.cancel()


async def _replay(send: Send, receive: Receive, log: StreamLog, start: int) -> None:
    """Send a stream log's events from `start`, then follow it live until it is done."""
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        index = start
        while True:
            while index < log.end:
                index, message = log.at(index)  # past events the replay bounds dropped (event_store.py)
                if message is None:  # priming: an id to resume from, and how soon to retry
                    body = encode_event(b"", log.event_id(index), retry=RETRY_MS)
                else:
                    body = encode_event(message, log.event_id(index), "message")
                await send({"type": "http.response.body", "body": body, "more_body": True})
                index += 1
            if log.done:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                log.delivered()  # all of it sent: the log is not kept for a resume
                return
            changed = asyncio.ensure_future(log.changed.wait())
            try:
                done, _ = await asyncio.wait({changed, watcher}, timeout=KEEPALIVE,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            if watcher in done:
                return  # the client went away; the request goes on and can be resumed
            if not done:
                await send({"type": "http.response.body", "body": encode_comment("ping"), "more_body": True})
    finally:
        watcher.cancel()


def _joined(scope: Scope, name: bytes) -> str | None:
    """A header that may be split over several fields (W3C `tracestate`), joined with commas as RFC 9110
    says; None when absent."""
    values = [val.decode("latin-1").strip(" \t") for key, val in scope["headers"] if key.lower() == name]
    return ",".join(values) if values else None
