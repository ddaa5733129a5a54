"""The anomaly alert webhook: a JSON POST per alert, delivered off the request path.

`send()` only appends to a bounded queue (a call never waits for the receiver); one worker task
posts the alerts in order with a short timeout and a couple of retries. When the queue is full the
newest alert is dropped and that is logged and audited. Delivery failures are logged and audited
(`anomaly.webhook-failed`) and never raised into a call.

Hook URLs often carry their credential in the path (Slack, Teams), so logs and audit records name
only the endpoint's origin (scheme://host:port), and header values are never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from mcpward.audit import events
from mcpward.gateway.config import (
    Resolver,
    is_address_literal,
    is_loopback_host,
    is_non_public_address,
    resolution_problem,
    system_resolver,
)
from mcpward.transport.vetted_dial import PinningUnavailable, dial_refusal, pinned_transport

log = logging.getLogger("mcpward.anomaly")

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Answers below 500 that may succeed on a later attempt; any other 4xx (and any 3xx) is final.
_RETRYABLE = frozenset({408, 425, 429})


class WebhookError(ValueError):
    """A webhook that must not be built (bad URL, bad header). Never repeats a header value."""


def origin(url: str) -> str:
    """scheme://host[:port] of `url`: safe to log (the path and query may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    with contextlib.suppress(ValueError):
        if parts.port is not None:
            netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}"


def check_webhook_url(url: str, *, allow_loopback_http: bool = True, allow_private: bool = False) -> str | None:
    """Why `url` may not receive alerts, or None: https anywhere public, plain http only to loopback."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http"):
        return f"scheme must be https, got {parts.scheme or 'none'!r}"
    host = (parts.hostname or "").lower()
    if not host:
        return "no host"
    if parts.username or parts.password:
        return "credentials in the URL are refused; use webhook_headers with a secret reference"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return str(exc)
    loopback = is_loopback_host(host)
    if parts.scheme == "http" and not (allow_loopback_http and loopback):
        return "plain http is allowed only to a loopback address; use https"
    if not loopback and not allow_private and is_address_literal(host) \
            and is_non_public_address(host.strip("[]").split("%")[0]):
        return f"{host} is a private/link-local address; set webhook_allow_private = true to allow it"
    if not loopback and not allow_private and host.endswith(".internal"):
        return f"{host} is an internal name; set webhook_allow_private = true to allow it"
    return None


def check_header(name: str, value: str) -> str | None:
    if not HEADER_NAME.match(name):
        return "not a valid HTTP header name"
    if _CONTROL.search(value):
        return "the value contains a control character (CR/LF would split the request)"
    return None


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Webhook:
    """POSTs alerts as JSON: {rule, principal, detail, evidence, action, ts, instance}."""

    def __init__(self, url: str, headers: Mapping[str, str], *, allow_loopback_http: bool = True,
                 allow_private: bool = False, timeout: float = 5.0, retries: int = 2, backoff: float = 0.5,
                 queue_size: int = 256, instance: str | None = None,
                 resolver: Resolver = system_resolver) -> None:
        problem = check_webhook_url(url, allow_loopback_http=allow_loopback_http, allow_private=allow_private)
        if problem is not None:
            raise WebhookError(f"webhook {origin(url)}: {problem}")
        for name, value in headers.items():
            if (problem := check_header(name, value)) is not None:
                raise WebhookError(f"webhook header {name[:64]!r}: {problem}")
        self.url = url
        self.origin = origin(url)
        self.headers = {**headers, "content-type": "application/json"}
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.queue_size = queue_size
        self.instance = instance or default_instance()
        self.resolver = resolver
        self.allow_private = allow_private
        parts = urllib.parse.urlsplit(url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # A literal address was checked above; a name is resolved and vetted before every POST, so a
        # name that points at the metadata service or a private host is refused.
        self._vet = not allow_private and not is_address_literal(self._host) and not is_loopback_host(self._host)
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # send() may run on a worker thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._busy = False
        self._closed = False
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    # ------------------------------------------------------------------ the caller's side
    def send(self, alert: Mapping[str, Any]) -> None:
        """Queue one alert; never blocks, never raises."""
        item = {"rule": alert.get("rule"), "principal": alert.get("principal"), "detail": alert.get("detail"),
                "evidence": list(alert.get("evidence") or ()), "action": alert.get("action", "alert"),
                "ts": round(time.time(), 3), "instance": self.instance}
        with self._lock:
            full = self._closed or len(self._queue) >= self.queue_size
            if not full:
                self._queue.append(item)
        if full:
            self.dropped += 1
            reason = "the webhook is closed" if self._closed else f"the queue is full ({self.queue_size} alerts)"
            log.warning("anomaly alert %s for %s not sent to %s: %s", item["rule"], item["principal"],
                        self.origin, reason)
            events.record("anomaly.webhook-dropped", rule=item["rule"], principal=item["principal"],
                          endpoint=self.origin, reason=reason)
            return
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not started yet: start() delivers what is queued
        if threading.get_ident() == self._loop_thread:
            wake.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed: the alert stays queued
            loop.call_soon_threadsafe(wake.set)

    @property
    def pending(self) -> int:
        return len(self._queue) + (1 if self._busy else 0)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        # No proxies from the environment (alerts go where the config says) and no redirects. Every
        # connection dials the address it resolved and vetted (transport/vetted_dial.py): the check in
        # `_attempt` gives the clear early reason, this one closes the DNS-rebinding window after it.
        # A loopback URL (allowed without opting in) may reach loopback, as `check_webhook_url` says.
        try:
            transport = pinned_transport(allow_private=self.allow_private, resolver=self.resolver, loopback_ok=True)
        except PinningUnavailable as exc:
            raise WebhookError(f"webhook {self.origin}: {exc}") from None
        self._client = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False,
                                         timeout=httpx.Timeout(self.timeout))
        self._task = asyncio.create_task(self._run(), name="mcpward-anomaly-webhook")
        if self._queue:
            self._wake.set()

    async def close(self, timeout: float = 2.0) -> None:
        """Stop taking alerts, deliver what is queued for at most `timeout` seconds, then stop."""
        with self._lock:
            self._closed = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while self._queue or self._busy:
                        await asyncio.sleep(0.01)
        in_flight = 1 if self._busy else 0  # cut off mid-delivery: counted with the undelivered
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = len(self._queue) + in_flight
        self._queue.clear()
        if left:
            self.dropped += left
            log.warning("anomaly webhook %s closed with %d undelivered alert(s)", self.origin, left)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ the worker
    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                self._busy = True
                try:
                    await self._deliver(item)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the worker must outlive any one alert
                    log.error("anomaly webhook %s: unexpected %s", self.origin, type(exc).__name__)
                finally:
                    self._busy = False

    async def _deliver(self, item: dict[str, Any]) -> None:
        body = orjson.dumps(item, default=str)
        attempts, reason = 0, ""
        while True:
            attempts += 1
            reason, retry = await self._attempt(body)
            if not reason:
                self.delivered += 1
                return
            if not retry or attempts > self.retries:
                break
            await asyncio.sleep(self.backoff * (2 ** (attempts - 1)))
        self.failed += 1
        log.warning("anomaly webhook %s failed after %d attempt(s): %s", self.origin, attempts, reason)
        events.record("anomaly.webhook-failed", rule=item["rule"], principal=item["principal"],
                      endpoint=self.origin, reason=reason, attempts=attempts)

    async def _attempt(self, body: bytes) -> tuple[str, bool]:
        """("", _) when delivered, else (why, whether another attempt may help)."""
        assert self._client is not None
        try:
            async with asyncio.timeout(self.timeout):
                if self._vet:
                    problem = await resolution_problem(self._host, self._port, self.resolver)
                    if problem is not None:
                        return problem, False
                # Streamed and never read: the receiver's answer body is not ours to buffer.
                async with self._client.stream("POST", self.url, content=body, headers=self.headers) as resp:
                    status = resp.status_code
        except TimeoutError:
            return f"no answer within {self.timeout:g} s", True
        except httpx.HTTPError as exc:
            refusal = dial_refusal(exc)
            if refusal is not None:  # the connect-time address rule: it names host, address and rule
                return str(refusal), False
            detail = str(exc).replace(self.url, self.origin)[:200]
            return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__, True
        if 200 <= status < 300:
            return "", False
        if 300 <= status < 400:
            return f"answered HTTP {status} (a redirect; redirects are not followed)", False
        return f"answered HTTP {status}", status >= 500 or status in _RETRYABLE
