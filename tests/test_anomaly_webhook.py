"""The alert webhook against a real receiver on 127.0.0.1: delivery, retries, failures that are
logged and audited, never a blocked `observe`, no redirects, no private names."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcpward.audit import events
from mcpward.audit.anomaly import AnomalyDetector, build_webhook, load_settings
from mcpward.audit.webhook import Webhook, WebhookError
from mcpward.gateway import config
from mcpward.secrets.refs import SecretError, parse_ref

Records = list[tuple[str, dict[str, Any]]]
TOKEN = "hook-token-s3cr3t"
PATH_TOKEN = "T000/B000/pathsecret"


class Receiver:
    """Records every POST; answers with the next queued status (200 when none), after `delay`."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.got.append({"path": request.url.path, "headers": dict(request.headers), "body": json.loads(body)})
            status = self.statuses.pop(0) if self.statuses else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"location": "http://127.0.0.1:9/elsewhere"} if 300 <= status < 400 else None
        return Response(b"ok", status_code=status, headers=headers)

    async def elsewhere(self, request: Request) -> Response:
        with self.lock:
            self.got.append({"path": "/elsewhere", "headers": {}, "body": None})
        return Response(b"")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hooks/{rest:path}", receiver.hook, methods=["POST"]),
                            Route("/elsewhere", receiver.elsewhere, methods=["POST", "GET"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@pytest.fixture
def receiver(served: tuple[Receiver, str]) -> Receiver:
    rec = served[0]
    with rec.lock:
        rec.got.clear()
        rec.statuses.clear()
    rec.delay = 0.0
    return rec


@pytest.fixture
def base(served: tuple[Receiver, str]) -> str:
    return served[1]


@pytest.fixture
def audit(monkeypatch: pytest.MonkeyPatch) -> Records:
    got: Records = []
    monkeypatch.setattr(events, "record", lambda event, **fields: got.append((event, fields)))
    return got


ALERT = {"rule": "rapid_calls", "principal": "oauth:alice", "detail": "6 tool calls within 0.5 s",
         "evidence": ["fs__read"], "action": "alert"}


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------ delivery
async def test_delivers_json_with_headers(receiver: Receiver, base: str, audit: Records) -> None:
    hook = Webhook(f"{base}/hooks/{PATH_TOKEN}", {"Authorization": f"Bearer {TOKEN}"}, instance="gw-test")
    await hook.start()
    try:
        hook.send(ALERT)
        await until(lambda: hook.delivered == 1)
    finally:
        await hook.close()
    assert len(receiver.got) == 1
    got = receiver.got[0]
    assert got["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert got["headers"]["content-type"] == "application/json"
    body = got["body"]
    assert {k: body[k] for k in ALERT} == ALERT
    assert body["instance"] == "gw-test" and abs(body["ts"] - time.time()) < 60
    assert not [e for e, _ in audit if e.startswith("anomaly.webhook")]


async def test_detector_alerts_reach_the_webhook_once(receiver: Receiver, base: str, audit: Records) -> None:
    hook = Webhook(f"{base}/hooks/x", {})
    det = AnomalyDetector(load_settings(config.parse({}, "t.toml")), webhook=hook)
    await hook.start()
    try:
        for i in range(6):
            det.observe("request", 100.0 + i * 0.1, {"principal": "oauth:mallory", "method": "tools/call",
                                                     "target": f"fs__t{i}", "outcome": "success"})
        await until(lambda: hook.delivered == 1)
        await asyncio.sleep(0.1)
    finally:
        await hook.close()
    assert len(receiver.got) == 1
    body = receiver.got[0]["body"]
    assert body["rule"] == "rapid_calls" and body["principal"] == "oauth:mallory"
    assert body["evidence"] == [f"fs__t{i}" for i in range(6)]
    assert [e for e, _ in audit] == ["anomaly.alert"]


async def test_send_from_another_thread(receiver: Receiver, base: str) -> None:
    hook = Webhook(f"{base}/hooks/x", {})
    await hook.start()
    try:
        await asyncio.to_thread(hook.send, ALERT)
        await until(lambda: hook.delivered == 1)
    finally:
        await hook.close()


async def test_queued_before_start_is_delivered_on_start(receiver: Receiver, base: str) -> None:
    hook = Webhook(f"{base}/hooks/x", {})
    hook.send(ALERT)
    hook.send(ALERT)
    await hook.start()
    try:
        await until(lambda: hook.delivered == 2)
    finally:
        await hook.close()


# ------------------------------------------------------------------------------ failures
async def test_a_500_is_retried(receiver: Receiver, base: str, audit: Records) -> None:
    receiver.statuses[:] = [500, 503]
    hook = Webhook(f"{base}/hooks/x", {}, backoff=0.01)
    await hook.start()
    try:
        hook.send(ALERT)
        await until(lambda: hook.delivered == 1)
    finally:
        await hook.close()
    assert len(receiver.got) == 3 and audit == []


async def test_persistent_500_is_logged_and_audited(receiver: Receiver, base: str, audit: Records,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses[:] = [500, 500, 500]
    hook = Webhook(f"{base}/hooks/{PATH_TOKEN}", {"Authorization": TOKEN}, retries=2, backoff=0.01)
    await hook.start()
    with caplog.at_level(logging.WARNING, "mcpward.anomaly"):
        try:
            hook.send(ALERT)
            await until(lambda: hook.failed == 1)
        finally:
            await hook.close()
    assert len(receiver.got) == 3
    failed = [f for e, f in audit if e == "anomaly.webhook-failed"]
    assert len(failed) == 1
    assert failed[0]["reason"] == "answered HTTP 500" and failed[0]["attempts"] == 3
    assert failed[0]["endpoint"] == base and failed[0]["rule"] == "rapid_calls"
    # The path (a hook's credential, for many services) and the header never reach logs or audit.
    text = caplog.text + repr(audit)
    assert PATH_TOKEN not in text and TOKEN not in text and "failed after 3 attempt(s)" in caplog.text


@pytest.mark.parametrize(("status", "reason"), [(403, "answered HTTP 403"), (302, "redirect")])
async def test_a_4xx_or_a_redirect_fails_at_once(receiver: Receiver, base: str, audit: Records, status: int,
                                                 reason: str) -> None:
    receiver.statuses[:] = [status]
    hook = Webhook(f"{base}/hooks/x", {}, backoff=0.01)
    await hook.start()
    try:
        hook.send(ALERT)
        await until(lambda: hook.failed == 1)
    finally:
        await hook.close()
    assert [g["path"] for g in receiver.got] == ["/hooks/x"]  # one attempt, no retry, no redirect followed
    reasons = [f["reason"] for e, f in audit if e == "anomaly.webhook-failed"]
    assert len(reasons) == 1 and reason in reasons[0]


async def test_receiver_down_is_audited_and_observe_never_blocks(audit: Records) -> None:
    hook = Webhook(f"http://127.0.0.1:{free_port()}/hooks/x", {}, retries=1, backoff=0.01)
    det = AnomalyDetector(load_settings(config.parse({}, "t.toml")), webhook=hook)
    await hook.start()
    try:
        worst = 0.0
        for i in range(6):
            start = time.perf_counter()
            det.observe("request", 100.0 + i * 0.1, {"principal": "oauth:a", "method": "tools/call",
                                                     "target": "t", "outcome": "success"})
            worst = max(worst, time.perf_counter() - start)
        assert worst < 0.05
        await until(lambda: hook.failed == 1)
    finally:
        await hook.close()
    failed = [f for e, f in audit if e == "anomaly.webhook-failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 2 and "ConnectError" in failed[0]["reason"]


async def test_slow_receiver_times_out_and_send_does_not_wait(receiver: Receiver, base: str,
                                                              audit: Records) -> None:
    receiver.delay = 2.0
    hook = Webhook(f"{base}/hooks/x", {}, timeout=0.2, retries=0)
    await hook.start()
    try:
        start = time.perf_counter()
        for _ in range(3):
            hook.send(ALERT)
        assert time.perf_counter() - start < 0.05
        await until(lambda: hook.failed >= 1)
    finally:
        started = time.perf_counter()
        await hook.close(timeout=0.3)
        # close waits a bounded time, then gives up on what is left.
        assert time.perf_counter() - started < 1.5
    reasons = [f["reason"] for e, f in audit if e == "anomaly.webhook-failed"]
    assert reasons and reasons[0] == "no answer within 0.2 s"
    assert hook.failed + hook.dropped + hook.delivered == 3


async def test_full_queue_drops_and_audits(audit: Records, caplog: pytest.LogCaptureFixture) -> None:
    hook = Webhook("http://127.0.0.1:9/hooks/x", {}, queue_size=2)  # never started: nothing is sent
    with caplog.at_level(logging.WARNING, "mcpward.anomaly"):
        for _ in range(3):
            hook.send(ALERT)
    assert hook.pending == 2 and hook.dropped == 1
    dropped = [f for e, f in audit if e == "anomaly.webhook-dropped"]
    assert len(dropped) == 1 and "queue is full" in dropped[0]["reason"]
    assert "queue is full" in caplog.text
    await hook.close()
    assert hook.dropped == 3


async def test_a_name_resolving_to_a_private_address_is_not_dialled(audit: Records) -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["169.254.169.254"]  # the metadata service: never contacted, the name is refused first

    hook = Webhook("https://hooks.test/x", {}, resolver=resolver, retries=3, backoff=0.01)
    await hook.start()
    try:
        hook.send(ALERT)
        await until(lambda: hook.failed == 1)
    finally:
        await hook.close()
    assert asked == ["hooks.test"]  # refused, not retried
    reasons = [f["reason"] for e, f in audit if e == "anomaly.webhook-failed"]
    assert len(reasons) == 1 and "non-public address" in reasons[0]


# ------------------------------------------------------------------------------ construction
@pytest.mark.parametrize(("url", "problem"), [
    ("http://hooks.example.com/x", "only to a loopback"),
    ("https://192.168.1.10/x", "private"),
    ("https://[fd00::1]/x", "private"),
    ("https://a:b@hooks.example.com/x", "credentials"),
    ("https:///x", "no host"),
])
def test_bad_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(WebhookError) as caught:
        Webhook(url, {})
    assert problem in str(caught.value) and "/x" not in str(caught.value)


def test_http_loopback_needs_the_flag() -> None:
    with pytest.raises(WebhookError):
        Webhook("http://127.0.0.1:9/x", {}, allow_loopback_http=False)
    Webhook("http://[::1]:9/x", {})


def test_build_webhook_resolves_secret_references(base: str) -> None:
    cfg = config.parse({"anomaly": {"webhook": "env:HOOK_URL",
                                    "webhook_headers": {"Authorization": "secret:hook-token",
                                                        "X-Team": "team ${env:TEAM}"}}}, "t.toml")
    values = {"env:HOOK_URL": f"{base}/hooks/{PATH_TOKEN}", "secret:hook-token": TOKEN, "env:TEAM": "blue"}
    hook = build_webhook(load_settings(cfg), lambda ref: values[str(ref)])
    assert hook is not None
    assert hook.url.endswith(PATH_TOKEN) and hook.origin == base
    assert hook.headers["Authorization"] == TOKEN and hook.headers["X-Team"] == "team blue"
    assert build_webhook(load_settings(config.parse({}, "t.toml")), lambda ref: "") is None


def test_build_webhook_errors_never_show_values() -> None:
    def missing(text: str) -> str:
        raise SecretError(parse_ref(text), "is not in the store")

    cfg = config.parse({"anomaly": {"webhook": "https://hooks.example.com/x",
                                    "webhook_headers": {"Authorization": "secret:hook-token"}}}, "t.toml")
    with pytest.raises(config.ConfigError) as caught:
        build_webhook(load_settings(cfg), missing)
    assert caught.value.key == "anomaly.webhook_headers.Authorization"
    assert "secret:hook-token" in caught.value.problem and "not in the store" in caught.value.problem
    # A resolved URL that is refused: say why, not what it was.
    cfg = config.parse({"anomaly": {"webhook": "secret:hook-url"}}, "t.toml")
    with pytest.raises(config.ConfigError) as caught:
        build_webhook(load_settings(cfg), lambda ref: f"http://hooks.example.com/{PATH_TOKEN}")
    assert caught.value.key == "anomaly.webhook" and PATH_TOKEN not in str(caught.value)
    # A header value that resolves to something that would split the request.
    cfg = config.parse({"anomaly": {"webhook": "https://hooks.example.com/x",
                                    "webhook_headers": {"Authorization": "secret:hook-token"}}}, "t.toml")
    with pytest.raises(config.ConfigError) as caught:
        build_webhook(load_settings(cfg), lambda ref: f"{TOKEN}\r\nX-Evil: 1")
    assert caught.value.key == "anomaly.webhook_headers.Authorization"
    assert "control character" in str(caught.value) and TOKEN not in str(caught.value)
    # References with no resolver at all: refused, naming the key.
    with pytest.raises(config.ConfigError) as caught:
        build_webhook(load_settings(cfg))
    assert caught.value.key == "anomaly.webhook_headers.Authorization" and "no secret resolver" in str(caught.value)


def test_load_settings_with_a_resolver_resolves_once(base: str) -> None:
    cfg = config.parse({"anomaly": {"webhook": f"{base}/hooks/x", "webhook_timeout": 1.5, "webhook_retries": 0,
                                    "webhook_headers": {"Authorization": "Bearer ${secret:hook-token}"}}}, "t.toml")
    asked: list[str] = []

    def resolve(text: str) -> str:
        asked.append(text)
        return "env:LOOKS_LIKE_A_REF"  # a value that looks like a reference must not be resolved again

    resolved = load_settings(cfg, resolve)
    assert resolved.resolved and resolved.webhook_headers["Authorization"] == "Bearer env:LOOKS_LIKE_A_REF"
    hook = build_webhook(resolved)
    assert hook is not None and asked == ["secret:hook-token"]
    assert hook.headers["Authorization"] == "Bearer env:LOOKS_LIKE_A_REF"
    assert (hook.timeout, hook.retries) == (1.5, 0)
