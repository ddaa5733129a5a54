"""An upstream MCP server reached over Streamable HTTP, in either protocol era.

Each message is its own POST in its own task; whatever comes back (a JSON body or
an SSE stream) reaches `on_message` in arrival order. Modern (2026-07-28) requests
name their version in `_meta` and get it, the method and the name mirrored into
headers. Legacy ones ride the session that an `initialize` answer set up, plus a
standalone GET stream. A request is never left unanswered: HTTP errors, broken
bodies and streams that end early become a JSON-RPC error response for its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from mcpward.gateway.config import Resolver, system_resolver
from mcpward.protocol import jsonrpc
from mcpward.protocol.headers import encode_value
from mcpward.protocol.jsonrpc import JsonObj, RequestId
from mcpward.protocol.versions import META_VERSION
from mcpward.transport.base import LinkError, MessageLink, SendHints
from mcpward.transport.lines import reply_id
from mcpward.transport.sse import SseLimitError, SseParser
from mcpward.transport.vetted_dial import PinningUnavailable, dial_refusal, pinned_transport

log = logging.getLogger("mcpward.upstream")

MAX_RECONNECTS = 5  # consecutive fruitless GET (re)connections before giving up
RECONNECT_BASE_DELAY = 0.5
MIN_RECONNECT_DELAY = 0.25  # under a server's `retry:` too: `retry: 0` must not make a tight reconnect loop
MAX_RECONNECT_DELAY = 30.0
DELETE_TIMEOUT = 2.0
_NAMED_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


@dataclass(slots=True)
class _Exchange:
    """What one POST (or the GET stream) is waiting for, and where its stream stands."""

    request_id: RequestId | None
    method: str | None
    session: str | None  # the session id this exchange carries, if any
    resumable: bool  # legacy only: modern HTTP has no Last-Event-ID resumption
    answered: bool = False
    abandoned: bool = False
    last_event_id: str | None = None
    retry_ms: int | None = None
    # Messages the stream delivered: a stream that keeps delivering is not "failing". A priming or retry-only
    # event is no progress: a server sending only those would otherwise be reconnected to for ever.
    events: int = 0
    new_session: str | None = None  # Mcp-Session-Id on an initialize answer
    task: asyncio.Task[None] | None = None


class HttpLink(MessageLink):
    def __init__(self, url: str, headers: dict[str, str], *, client: httpx.AsyncClient | None = None,
                 max_message_bytes: int = 4 * 1024 * 1024, connect_timeout: float = 10.0,
                 allow_private: bool = False, loopback_ok: bool = False,
                 resolver: Resolver = system_resolver) -> None:
        """`allow_private`, `loopback_ok` and `resolver` shape the link's own client (read at `open()`):
        every connection dials an address resolved once and, without allow_private, found public.
        `loopback_ok`: a URL whose host itself names this machine (127.0.0.1, localhost) may reach
        loopback without allow_private (off by default: the gateway's config makes a server opt in).
        An injected `client` is used as it is."""
        super().__init__()
        self.url = url
        self.allow_private, self.loopback_ok, self.resolver = allow_private, loopback_ok, resolver
        self.max_message_bytes = max_message_bytes
        self._static_headers = dict(headers)
        self._client = client
        self._owns_client = client is None
        # No read timeout: SSE streams may stay quiet for long; the gateway bounds
        # each request itself and calls abandon(). Passed per request, so an injected
        # client's own read timeout cannot cut a long stream.
        self._timeout = httpx.Timeout(connect_timeout, read=None)
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[RequestId, _Exchange] = {}
        self._session_id: str | None = None
        self._legacy_version: str | None = None
        self._listen_task: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return _safe_url(self.url)

    async def open(self) -> None:
        if self._closed:
            raise LinkError(f"link to {self.describe()} is closed")
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise LinkError(f"not an http(s) URL: {self.describe()}")
        if self._client is None:
            try:
                transport = pinned_transport(allow_private=self.allow_private, resolver=self.resolver,
                                             loopback_ok=self.loopback_ok)
            except PinningUnavailable as exc:
                raise LinkError(f"cannot connect to {self.describe()}: {exc}") from None
            # No redirects (a 3xx could carry our credentials elsewhere) and no proxy
            # settings from the environment (they could reroute upstream traffic).
            self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False,
                                             timeout=self._timeout)

    async def send(self, message: JsonObj, hints: SendHints | None = None) -> None:
        if self._closed or self._client is None:
            raise LinkError(f"link to {self.describe()} is {'closed' if self._closed else 'not open'}")
        method = message.get("method")
        method = method if isinstance(method, str) else None
        request_id: RequestId | None = message.get("id") if method is not None else None
        if request_id is not None and request_id in self._inflight:
            raise LinkError(f"request id {request_id!r} is already in flight")
        modern = _modern_version(message) is not None
        # A (re-)initialize must go without the old session id, and modern requests have none.
        session = None if modern or method == "initialize" else self._session_id
        ex = _Exchange(request_id, method, session, resumable=not modern)
        headers = self._post_headers(message, method, session, hints)
        ex.task = self._spawn(self._post(jsonrpc.encode(message), headers, ex), f"POST {method or 'reply'}")
        if request_id is not None:
            self._inflight[request_id] = ex

    def abandon(self, request_id: RequestId) -> None:
        ex = self._inflight.pop(request_id, None)
        if ex is not None:
            ex.abandoned = True  # also silences events already parsed from the current chunk
            if ex.task is not None:
                ex.task.cancel()  # drops the stream: on modern HTTP that is the cancellation

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=DELETE_TIMEOUT)
            if self._session_id is not None and self._client is not None:
                # Ending the session is a courtesy: 405 (not allowed) or a failure is fine.
                with contextlib.suppress(Exception):
                    headers = self._get_headers(self._session_id, None)
                    await asyncio.wait_for(self._client.delete(self.url, headers=headers), DELETE_TIMEOUT)
            if self._owns_client and self._client is not None:
                await self._client.aclose()
        except Exception as exc:  # close() never raises
            log.debug("closing %s: %s", self.describe(), type(exc).__name__)
        self._session_id = None

    def _post_headers(self, message: JsonObj, method: str | None, session: str | None,
                      hints: SendHints | None) -> dict[str, str]:
        headers = dict(self._static_headers)
        if hints is not None:
            headers.update(hints.headers)
        # Protocol headers go last: they must mirror the body, whatever a hint says.
        version = _modern_version(message)
        if version is not None:
            headers["MCP-Protocol-Version"] = version
            if method is not None:
                headers["Mcp-Method"] = method
                params = message.get("params")
                field = _NAMED_METHODS.get(method)
                value = params.get(field) if field and isinstance(params, dict) else None
                if isinstance(value, str):
                    headers["Mcp-Name"] = encode_value(value)
        elif method != "initialize" and self._legacy_version is not None:
            headers["MCP-Protocol-Version"] = self._legacy_version
        if session is not None:
            headers["Mcp-Session-Id"] = session
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json, text/event-stream"
        return headers

    def _get_headers(self, session: str | None, last_event_id: str | None) -> dict[str, str]:
        headers = {**self._static_headers, "Accept": "text/event-stream"}
        extra = {"Mcp-Session-Id": session, "MCP-Protocol-Version": self._legacy_version,
                 "Last-Event-ID": last_event_id}
        headers.update({name: value for name, value in extra.items() if value is not None})
        return headers

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{name} -> {self.describe()}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _post(self, body: bytes, headers: dict[str, str], ex: _Exchange) -> None:
        assert self._client is not None
        try:
            try:
                async with self._client.stream(
                    "POST", self.url, content=body, headers=headers, timeout=self._timeout
                ) as resp:
                    await self._handle_post(resp, ex)
            except httpx.TransportError:
                if not (ex.resumable and ex.last_event_id):
                    raise  # a legacy stream with an event id can be resumed; others cannot
            await self._resume_post_stream(ex)
        except Exception as exc:  # anything at all: the waiter above must get an answer
            refusal = dial_refusal(exc)
            if refusal is not None:
                # Our own refusal: its text names the host, the address and the rule, never the URL.
                # The client learns the rule only, not the address inside the network.
                log.warning("POST to %s refused: %s", self.describe(), refusal)
                self._fail(ex, f"upstream connection refused by rule {refusal.rule}", transport=type(exc).__name__)
            else:
                # Only the exception's kind: its text can quote the URL.
                log.warning("POST to %s failed: %s", self.describe(), type(exc).__name__)
                self._fail(ex, f"upstream request failed ({type(exc).__name__})", transport=type(exc).__name__)
        finally:
            if ex.request_id is not None and self._inflight.get(ex.request_id) is ex:
                del self._inflight[ex.request_id]
        self._fail(ex, "upstream ended the response without answering the request")

    async def _handle_post(self, resp: httpx.Response, ex: _Exchange) -> None:
        status = resp.status_code
        if status == 404 and ex.session is not None:
            self._fail(ex, "upstream session expired", http_status=status)
            self._session_expired(ex.session)
            return
        if not 200 <= status < 300:
            await self._fail_from_body(resp, ex)
            return
        session = str(resp.headers.get("mcp-session-id", ""))
        # The spec allows visible ASCII only; anything else is dropped, never echoed back.
        if ex.method == "initialize" and 0 < len(session) <= 1024 and all("!" <= c <= "~" for c in session):
            ex.new_session = session
        if ex.request_id is None:
            idle = self._listen_task is None or self._listen_task.done()
            if ex.method == "notifications/initialized" and self._legacy_version is not None and idle:
                self._listen_task = self._spawn(self._listen(self._session_id), "GET stream")
            return  # 202 Accepted: nothing to read for a notification or a response
        media_type = _media_type(resp)
        if media_type == "text/event-stream":
            await self._read_stream(resp, ex)
        elif media_type == "application/json":
            data = await _read_limited(resp, self.max_message_bytes)
            if data is None:
                self._too_large(ex)
                return
            self._deliver_raw(data, ex)
            self._fail(ex, "upstream sent an invalid JSON-RPC response body", http_status=status)
        else:
            self._fail(ex, f"upstream HTTP {status} without a JSON or SSE body", http_status=status)

    async def _fail_from_body(self, resp: httpx.Response, ex: _Exchange) -> None:
        """Deliver the server's own JSON-RPC error if the error body is one, else synthesize one."""
        status = resp.status_code
        log.info("%s answered %s with HTTP %d", self.describe(), ex.method or "a response", status)
        if ex.request_id is None:
            return
        error = None
        with contextlib.suppress(jsonrpc.ProtocolError):
            body = await _read_limited(resp, self.max_message_bytes)
            message = jsonrpc.decode(body or b"", self.max_message_bytes)
            error = None if "result" in message else message.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            # Servers often answer here with id null; re-key it so the waiter receives it.
            # The gateway tells eras apart by this error (modern servers always send one).
            self._deliver({"jsonrpc": "2.0", "id": ex.request_id, "error": error}, ex)
        else:
            self._fail(ex, f"upstream HTTP {status}", http_status=status)

    async def _resume_post_stream(self, ex: _Exchange) -> None:
        """Legacy servers may end a request's stream early and expect a GET to resume it."""
        for _attempt in range(MAX_RECONNECTS):
            if ex.request_id is None or ex.answered or not ex.resumable or not ex.last_event_id:
                return
            await asyncio.sleep(_delay(ex.retry_ms, 0))
            with contextlib.suppress(httpx.TransportError):  # dropped again: try again
                if await self._get_stream(ex) != 200:
                    return

    async def _get_stream(self, ex: _Exchange) -> int:
        """One GET, reading its SSE stream into `ex`; the HTTP status (0: 200 without SSE)."""
        assert self._client is not None
        headers = self._get_headers(ex.session, ex.last_event_id)
        async with self._client.stream("GET", self.url, headers=headers, timeout=self._timeout) as resp:
            if resp.status_code != 200:
                return resp.status_code
            if _media_type(resp) != "text/event-stream":
                return 0
            await self._read_stream(resp, ex)
            return 200

    async def _read_stream(self, resp: httpx.Response, ex: _Exchange) -> None:
        """Deliver every message on one SSE response until it ends or answers `ex`."""
        parser = SseParser(max_data_bytes=self.max_message_bytes)
        try:
            async for chunk in resp.aiter_bytes():
                for event in parser.feed(chunk):
                    if event.id is not None:
                        ex.last_event_id = event.id
                    if event.retry is not None:
                        ex.retry_ms = event.retry
                    if event.data and event.event == "message":
                        ex.events += 1
                        self._deliver_raw(event.data, ex)
                    if ex.answered:
                        return  # the answer should end the stream; no need to wait for that
        except SseLimitError:
            self._too_large(ex)
            ex.last_event_id = None  # never resume into the same oversized message

    async def _listen(self, session: str | None) -> None:
        """The legacy standalone GET stream: server-initiated requests and notifications."""
        ex = _Exchange(None, None, session, resumable=True)
        failures = 0
        while not self._closed and self._session_id == session:
            seen = ex.events
            try:
                status = await self._get_stream(ex)
            except Exception as exc:
                refusal = dial_refusal(exc)
                log.info("GET stream to %s dropped: %s", self.describe(), refusal or type(exc).__name__)
                status = 200  # a dropped connection is worth another try
            if status == 404 and session is not None:
                self._session_expired(session)
                return
            if status != 200:
                if status != 405:  # 405: the server offers no standalone stream, which is fine
                    log.info("%s refused the GET stream (HTTP %d)", self.describe(), status)
                return
            failures = 0 if ex.events != seen else failures + 1
            if failures >= MAX_RECONNECTS:
                log.warning("giving up on the GET stream to %s", self.describe())
                return
            await asyncio.sleep(_delay(ex.retry_ms, failures))

    def _deliver_raw(self, data: bytes | str, ex: _Exchange) -> None:
        message: JsonObj | None = None
        try:
            message = jsonrpc.decode(data, self.max_message_bytes)
            jsonrpc.classify(message)
        except jsonrpc.ProtocolError as exc:
            log.warning("%s sent an invalid JSON-RPC message (%s); dropped", self.describe(), exc.message)
            # The reply to this exchange's request, but unusable (not valid JSON, or neither a result nor an
            # error): answered now, not when the stream ends or the request times out, as on stdio.
            raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
            rid = message.get("id") if message is not None else reply_id(raw)
            if ex.request_id is not None and rid == ex.request_id and not isinstance(rid, bool):
                self._fail(ex, f"upstream sent an unusable reply ({exc.message})", code=jsonrpc.INTERNAL_ERROR)
            return
        self._deliver(message, ex)

    def _deliver(self, message: JsonObj, ex: _Exchange) -> None:
        if self._closed or ex.abandoned:
            return
        if ex.request_id is not None and message.get("id") == ex.request_id and "method" not in message:
            if ex.answered:
                return  # one answer per request, whatever the server repeats
            ex.answered = True
            if ex.method == "initialize":
                self._adopt_session(message, ex)
        try:
            self.on_message(message)
        except Exception:
            log.exception("message handler failed on a message from %s", self.describe())

    def _fail(self, ex: _Exchange, text: str, *, code: int = jsonrpc.UPSTREAM_UNAVAILABLE,
              http_status: int | None = None, transport: str | None = None) -> None:
        """Answer a still-waiting request with a synthesized error (a no-op otherwise).

        `data` says what failed: `httpStatus`, or `transport` (the kind of connection
        error), so the gateway can tell "unreachable" from "answered with an error".
        """
        if ex.request_id is None or ex.answered:
            return
        data: JsonObj | None = {"httpStatus": http_status} if http_status is not None else None
        if transport is not None:
            data = {"transport": transport}
        self._deliver(jsonrpc.gateway_error(ex.request_id, code, text, data), ex)

    def _too_large(self, ex: _Exchange) -> None:
        log.warning("%s sent a message over the %d-byte limit", self.describe(), self.max_message_bytes)
        self._fail(ex, f"upstream message exceeded the {self.max_message_bytes}-byte limit",
                   code=jsonrpc.INTERNAL_ERROR)

    def _adopt_session(self, message: JsonObj, ex: _Exchange) -> None:
        result = message.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if not isinstance(version, str):
            return  # an error answer starts no session
        if self._listen_task is not None:
            self._listen_task.cancel()  # a re-initialize replaces the old session's stream
            self._listen_task = None
        self._session_id = ex.new_session
        self._legacy_version = version

    def _session_expired(self, session: str) -> None:
        if self._session_id != session:
            return  # already reported, or a newer session has replaced it
        self._session_id = None
        self._legacy_version = None
        if self._listen_task is not None and self._listen_task is not asyncio.current_task():
            self._listen_task.cancel()
        self._listen_task = None
        log.info("legacy session with %s expired", self.describe())
        self.on_closed("session expired")


def _modern_version(message: JsonObj) -> str | None:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(META_VERSION) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _media_type(resp: httpx.Response) -> str:
    return str(resp.headers.get("content-type", "")).split(";", 1)[0].strip().lower()


async def _read_limited(resp: httpx.Response, limit: int) -> bytes | None:
    """The body, or None if it is larger than `limit` (reading stops there)."""
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _delay(retry_ms: int | None, failures: int) -> float:
    if retry_ms is not None:  # the server's own `retry:` wins
        return min(max(retry_ms / 1000, MIN_RECONNECT_DELAY), MAX_RECONNECT_DELAY)
    return min(RECONNECT_BASE_DELAY * (1 << failures), MAX_RECONNECT_DELAY)


def _safe_url(url: str) -> str:
    """scheme://host[:port]/path: no userinfo, query or fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"
