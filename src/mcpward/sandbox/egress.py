"""The egress proxy: one asyncio HTTP forward proxy per sandbox, served on a planted listener.

The launcher plants a listening socket at 127.0.0.1:3128 inside the sandbox's network
namespace and hands it to `EgressProxy.start`; the sandboxed server reaches it through
HTTP(S)_PROXY. The sandbox has no other route out, so every connection it makes to the
outside world passes through `_serve_one`, which:

- reads one request head (16 KiB cap, `header_timeout` for the whole head: slowloris);
- accepts `CONNECT host:port` (answered 200, then both directions are spliced) and
  absolute-form plain HTTP (rewritten to origin-form with Proxy-* and hop-by-hop headers
  removed and `Connection: close`); anything else is a 400;
- checks the name against the policy before resolving it, resolves once, drops non-public
  and host addresses, dials a vetted IP (never the name) and reports one `EgressDecision`
  per request through `on_decision`.

Refusals are `403` with `X-Proxy-Error: <rule>`; 502 when the name does not resolve or the
dial fails, 504 on a connect timeout, 400/408/431 for bad requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mcpward.guards.ip_forms import IPAddress
from mcpward.sandbox.egress_policy import (
    RULE_ALLOWED,
    RULE_AUDIT_FAILED,
    RULE_BAD_REQUEST,
    RULE_BYTE_LIMIT,
    RULE_CONNECT_TIMEOUT,
    RULE_DIAL_FAILED,
    RULE_TOO_MANY_TUNNELS,
    RULE_UNRESOLVABLE,
    EgressDecision,
    EgressPolicy,
    ResolveError,
    Resolver,
    canonical_host,
    host_addresses,
    ip_literal,
    split_host_port,
)

log = logging.getLogger(__name__)

HEADER_CAP = 16 * 1024
RESPONSE_HEADER_CAP = 64 * 1024  # upstream heads (cookies, CSP) are legitimately larger than requests
CHUNK = 64 * 1024
MAX_DIAL_ATTEMPTS = 4

Dial = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"})
_REASONS = {200: "Connection established", 400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
            504: "Gateway Timeout"}


async def dial_tcp(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a vetted IP. AI_NUMERICHOST makes a name here an error instead of a lookup."""
    return await asyncio.open_connection(address, port, flags=socket.AI_NUMERICHOST, limit=CHUNK)


class _BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class _Request:
    method: str
    version: str
    host: str
    port: int
    path: str  # origin-form target; "" for CONNECT
    headers: list[tuple[str, str]]


@dataclass
class _Tunnel:
    last: float
    bytes: int = 0
    cut: bool = False


async def _read_head(reader: asyncio.StreamReader, cap: int, initial: bytes = b"") -> tuple[bytes, bytes] | None:
    """(head without the blank line, bytes read past it); None on EOF before a full head."""
    buf = bytearray(initial)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            if end + 4 > cap:
                raise _BadRequest(431, f"request head is larger than {cap // 1024} KiB")
            return bytes(buf[:end]), bytes(buf[end + 4:])
        if len(buf) > cap:
            raise _BadRequest(431, f"request head is larger than {cap // 1024} KiB")
        chunk = await reader.read(4096)
        if not chunk:
            return None
        buf += chunk


def _parse_request(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].isascii():
        raise _BadRequest(400, "the request line must be ASCII (host names in IDNA form)")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        raise _BadRequest(400, "control characters in the request target")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        # Bare CR/LF and obs-fold are how requests get smuggled past a parser; refuse them.
        if "\r" in line or "\n" in line or "\x00" in line or line[:1] in (" ", "\t"):
            raise _BadRequest(400, "malformed header line")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise _BadRequest(400, "malformed header line")
        headers.append((name, value.strip(" \t")))
    if method == "CONNECT":
        host, port = _authority(target)
        if port is None:
            raise _BadRequest(400, "CONNECT needs host:port")
        return _Request(method, version, host, port, "", headers)
    if target.startswith("/") or target == "*":
        raise _BadRequest(400, "origin-form request: this is a forward proxy, send an absolute URL or CONNECT")
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise _BadRequest(400, "only http:// URLs can be forwarded; use CONNECT for TLS")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "#" in path:
        raise _BadRequest(400, "a request target cannot carry a fragment")
    host, port = _authority(authority)
    path = path if path.startswith("/") else "/" + path
    _check_framing(headers)
    return _Request(method, version, host, port if port is not None else 80, path, headers)


def _authority(text: str) -> tuple[str, int | None]:
    if "@" in text:
        raise _BadRequest(400, "credentials in the URL are not supported")
    try:
        host, port = split_host_port(text)
        return canonical_host(host), port
    except ValueError as exc:
        raise _BadRequest(400, f"bad host: {exc}") from None


def _check_framing(headers: list[tuple[str, str]]) -> None:
    """Refuse bodies whose length two parsers could read differently (request smuggling)."""
    lengths = {v for n, v in headers if n.lower() == "content-length"}
    codings = [v for n, v in headers if n.lower() == "transfer-encoding"]
    if codings and lengths:
        raise _BadRequest(400, "both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
        raise _BadRequest(400, "invalid or conflicting Content-Length")
    if codings and ",".join(codings).split(",")[-1].strip().lower() != "chunked":
        raise _BadRequest(400, "Transfer-Encoding must end in chunked")


def _hop_by_hop(headers: list[tuple[str, str]]) -> set[str]:
    named = {t.strip().lower() for n, v in headers if n.strip().lower() == "connection" for t in v.split(",")}
    return set(_HOP_BY_HOP) | named


def _origin_head(req: _Request) -> bytes:
    drop = _hop_by_hop(req.headers) | {"host"}
    host = f"[{req.host}]" if ":" in req.host else req.host
    lines = [f"{req.method} {req.path} {req.version}", f"Host: {host}" + (f":{req.port}" if req.port != 80 else "")]
    lines += [f"{n}: {v}" for n, v in req.headers if n.lower() not in drop and not n.lower().startswith("proxy-")]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response_head(head: bytes) -> tuple[bytes, int]:
    """The upstream head with hop-by-hop headers replaced by `Connection: close`, and its status."""
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ")
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit() or len(status[1]) != 3:
        raise ValueError("upstream sent a malformed status line")
    code = int(status[1])
    if code < 200:  # 1xx interim answers (100 Continue, 101) pass unchanged
        return head + b"\r\n\r\n", code
    parsed = [(n.decode("latin-1"), v.decode("latin-1").strip())
              for n, _, v in (ln.partition(b":") for ln in lines[1:])]
    drop = _hop_by_hop(parsed)
    kept = [ln for ln, (n, _) in zip(lines[1:], parsed, strict=True)
            if n.strip().lower() not in drop and not n.strip().lower().startswith("proxy-")]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n", code


class EgressProxy:
    """Serves one sandbox's planted listener; `on_decision` receives every audit record."""

    def __init__(self, server: str, policy: EgressPolicy, resolver: Resolver,
                 on_decision: Callable[[EgressDecision], None], *, max_tunnels: int = 64,
                 max_bytes: int | None = None, connect_timeout: float = 10.0, idle_timeout: float = 300.0,
                 header_timeout: float = 10.0, dial: Dial | None = None,
                 host_addrs: frozenset[IPAddress] | None = None) -> None:
        self._name = server
        self._policy = policy
        self._resolver = resolver
        self._on_decision = on_decision
        self._max_tunnels = max_tunnels
        self._max_bytes = max_bytes
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._dial: Dial = dial or dial_tcp
        self._host_addrs = host_addrs
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tunnels = 0
        self._bytes = 0
        self._exhausted = False  # set once a chunk did not fit the byte budget; stays set
        self._closing = False

    @property
    def bytes_relayed(self) -> int:
        return self._bytes

    @property
    def active_tunnels(self) -> int:
        return self._tunnels

    async def start(self, sock: socket.socket) -> None:
        """Serve an already-listening socket (planted in the sandbox's netns, or loopback)."""
        if self._host_addrs is None:
            self._host_addrs = host_addresses()
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=CHUNK)

    async def close(self) -> None:
        """Stop listening and end every connection and tunnel of this sandbox."""
        self._closing = True  # a connection accepted just before close() must not start serving
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None

    # --- per connection ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            writer.transport.abort()
            return
        self._tasks.add(task)
        try:
            try:
                # Connections still sending their head are bounded too: an idle flood would
                # otherwise use up the gateway's descriptors for every sandbox.
                if len(self._tasks) > 2 * self._max_tunnels + 16:
                    self._refuse(writer, 403, "", 0, "", RULE_TOO_MANY_TUNNELS,
                                 "too many connections to the egress proxy at once")
                else:
                    await self._serve_one(reader, writer)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                pass  # the sandbox or the upstream hung up; nothing to answer
            except Exception as exc:  # a bug must not take the listener down or leak a traceback to the sandbox
                log.error("egress proxy %s: unexpected %s while serving a connection",
                          self._name, type(exc).__name__)
            if not writer.transport.is_closing():
                await _linger(reader, writer)
            await _close(writer)
        except asyncio.CancelledError:
            # close() ends this connection. Not re-raised: this is the connection's own
            # top-level task, and asyncio's stream callback logs a cancelled one as an error.
            writer.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._header_timeout):
                got = await _read_head(reader, HEADER_CAP)
        except TimeoutError:
            self._refuse(writer, 408, "", 0, "", RULE_BAD_REQUEST,
                         f"request head not complete within {self._header_timeout:g} s")
            return
        except _BadRequest as exc:
            self._refuse(writer, exc.status, "", 0, "", RULE_BAD_REQUEST, exc.detail)
            return
        if got is None:
            return
        head, rest = got
        try:
            req = _parse_request(head)
        except _BadRequest as exc:
            method = head.split(b" ", 1)[0].decode("latin-1")
            method = method if _TOKEN.match(method) and len(method) <= 16 else ""
            self._refuse(writer, exc.status, "", 0, method, RULE_BAD_REQUEST, exc.detail)
            return
        if self._exhausted:
            self._refuse(writer, 403, req.host, req.port, req.method, RULE_BYTE_LIMIT,
                         f"the egress byte budget of {self._max_bytes} bytes is used up")
            return
        if self._tunnels >= self._max_tunnels:
            self._refuse(writer, 403, req.host, req.port, req.method, RULE_TOO_MANY_TUNNELS,
                         f"{self._tunnels} tunnels already open (max_tunnels {self._max_tunnels})")
            return
        self._tunnels += 1  # reserved before resolving, so concurrent requests cannot overshoot
        try:
            await self._forward(req, rest, reader, writer)
        finally:
            self._tunnels -= 1

    async def _forward(self, req: _Request, rest: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        rule, why = self._policy.explain_name(req.host, req.port)
        if rule is not None:
            self._refuse(writer, 400 if rule == RULE_BAD_REQUEST else 403, req.host, req.port, req.method, rule, why)
            return
        literal = ip_literal(req.host)
        pinned = self._policy.pinned(req.host)
        if literal is not None:
            addresses, source = [str(literal)], "IP literal"
        elif pinned is not None:
            addresses, source = list(pinned), "resolve map"
        else:
            try:
                addresses, source = await self._resolver.resolve(req.host, req.port), "DNS"
            except ResolveError as exc:
                self._refuse(writer, 502, req.host, req.port, req.method, RULE_UNRESOLVABLE, str(exc))
                return
        vetted, refusal = self._vet(addresses, req.port)
        if not vetted:
            assert refusal is not None
            self._refuse(writer, 403, req.host, req.port, req.method, *refusal)
            return
        dialled = await self._connect(vetted, req, writer)
        if dialled is None:
            return
        address, up_reader, up_writer = dialled
        try:
            ok = self._emit(EgressDecision(self._name, req.host, req.port, req.method, address, True, RULE_ALLOWED,
                                           f"{why}; {source} gave {', '.join(addresses)}; dialled {address}"))
            if not ok:
                _respond(writer, 500, RULE_AUDIT_FAILED, f"{req.host}:{req.port} refused: the audit record failed")
                return
            if req.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await self._splice(req, reader, writer, up_reader, up_writer, rest, http=False)
            else:
                await self._splice(req, reader, writer, up_reader, up_writer, _origin_head(req) + rest, http=True)
        finally:
            await _close(up_writer)

    def _vet(self, addresses: list[str], port: int) -> tuple[list[str], tuple[str, str, str] | None]:
        """Addresses that may be dialled, and (rule, detail, address) of the first refused one."""
        assert self._host_addrs is not None
        vetted: list[str] = []
        refusal: tuple[str, str, str] | None = None
        for address in addresses:
            rule, why = self._policy.vet_address(address, port, self._host_addrs)
            if rule is None:
                vetted.append(address)
            elif refusal is None:
                others = f"; {len(addresses) - 1} other address(es) refused too" if len(addresses) > 1 else ""
                refusal = (rule, why + others, address)
        return vetted, refusal

    async def _connect(self, vetted: list[str], req: _Request, writer: asyncio.StreamWriter
                       ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None:
        timed_out = False
        failures: list[str] = []
        for address in vetted[:MAX_DIAL_ATTEMPTS]:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    up_reader, up_writer = await self._dial(address, req.port)
                return address, up_reader, up_writer
            except TimeoutError:
                timed_out = True
                failures.append(f"{address}: no answer within {self._connect_timeout:g} s")
            except OSError as exc:
                failures.append(f"{address}: {exc.strerror or type(exc).__name__}")
        status, rule = (504, RULE_CONNECT_TIMEOUT) if timed_out else (502, RULE_DIAL_FAILED)
        self._refuse(writer, status, req.host, req.port, req.method, rule, "; ".join(failures),
                     address=vetted[0])
        return None

    async def _splice(self, req: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, first: bytes,
                      *, http: bool) -> None:
        state = _Tunnel(last=time.monotonic())
        if first and self._account(len(first), state):
            up_writer.write(first)
        outbound = asyncio.ensure_future(self._relay(reader, up_writer, state))
        inbound = asyncio.ensure_future(self._relay_response(up_reader, writer, state) if http
                                        else self._relay(up_reader, writer, state))
        watchdog = asyncio.ensure_future(self._watchdog(state))
        pending: set[asyncio.Future[None]] = {outbound, inbound, watchdog}
        try:
            while not state.cut:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if inbound in done or watchdog in done or outbound.cancelled() or (
                        outbound in done and outbound.exception() is not None):
                    break
                if outbound in done:
                    # The sandbox finished sending: pass the half-close on, keep the answer flowing.
                    with contextlib.suppress(OSError):
                        if up_writer.can_write_eof():
                            up_writer.write_eof()
        finally:
            for task in (outbound, inbound, watchdog):
                task.cancel()
            await asyncio.gather(outbound, inbound, watchdog, return_exceptions=True)
        if state.cut:
            self._emit(EgressDecision(self._name, req.host, req.port, req.method, None, False, RULE_BYTE_LIMIT,
                                      f"the egress byte budget of {self._max_bytes} bytes is used up; "
                                      f"connection closed after {state.bytes} bytes"))

    def _account(self, size: int, state: _Tunnel) -> bool:
        state.last = time.monotonic()
        if self._max_bytes is not None and self._bytes + size > self._max_bytes:
            state.cut = self._exhausted = True
            return False
        self._bytes += size
        state.bytes += size
        return True

    async def _relay(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, state: _Tunnel) -> None:
        while True:
            chunk = await src.read(CHUNK)
            if not chunk or not self._account(len(chunk), state):
                return
            dst.write(chunk)
            await dst.drain()

    async def _relay_response(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, state: _Tunnel) -> None:
        """Plain HTTP: rewrite the upstream's head (Connection: close), then relay the body."""
        pending = b""
        answered = False
        while True:
            try:
                got = await _read_head(src, RESPONSE_HEADER_CAP, pending)
                if got is None:
                    raise ValueError("upstream closed before answering")
                out, code = _response_head(got[0])
            except (ValueError, _BadRequest):
                if not answered:  # nothing sent to the client yet, so it can still get a clean error
                    _respond(dst, 502, RULE_DIAL_FAILED,
                             "mcpward egress proxy: the upstream sent no valid HTTP response")
                return
            answered = True
            interim = code < 200 and code != 101  # 100 Continue and friends: the final head follows
            chunk = out if interim else out + got[1]
            if not self._account(len(chunk), state):
                return
            dst.write(chunk)
            await dst.drain()
            if not interim:
                break
            pending = got[1]
        await self._relay(src, dst, state)

    async def _watchdog(self, state: _Tunnel) -> None:
        while (remaining := state.last + self._idle_timeout - time.monotonic()) > 0:
            await asyncio.sleep(remaining)

    # --- decisions and refusals --------------------------------------------------------

    def _emit(self, decision: EgressDecision) -> bool:
        try:
            self._on_decision(decision)
        except Exception as exc:  # an audit sink that fails must not let traffic through unrecorded
            log.error("egress proxy %s: on_decision failed with %s", self._name, type(exc).__name__)
            return False
        return True

    def _refuse(self, writer: asyncio.StreamWriter, status: int, host: str, port: int, method: str, rule: str,
                detail: str, address: str | None = None) -> None:
        self._emit(EgressDecision(self._name, host, port, method, address, False, rule, detail))
        target = f"{host}:{port}" if host else "the request"
        _respond(writer, status, rule, f"mcpward egress proxy: {target} refused ({rule})")


def _respond(writer: asyncio.StreamWriter, status: int, rule: str, text: str) -> None:
    # The body names the rule and host but not the resolved address or the detail: the
    # sandbox is untrusted and learns nothing about internal DNS from a refusal.
    body = (text + "\n").encode("ascii", "replace")
    writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nX-Proxy-Error: {rule}\r\n"
                 f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode("ascii") + body)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drain what the client still sends for a moment before closing.

    Closing a socket with unread input sends a reset, and the client would then lose the
    refusal it was about to read (e.g. the 431 for a head that was still arriving)."""
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
    drained = 0
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(0.5):
            while drained < CHUNK and (chunk := await reader.read(4096)):
                drained += len(chunk)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()  # a peer that stopped reading must not keep the descriptor alive
