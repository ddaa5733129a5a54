"""Limits shared through a real redis-server on loopback: one global limit for several gateways,
fail closed when Redis goes away (or open, when configured)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards.base import Call, Guard
from mcpward.limits import LimitRefusal, guards_from_config
from tests.conftest import free_port
from tests.tls_support import self_signed

REDIS = "/usr/bin/redis-server"
pytestmark = pytest.mark.skipif(shutil.which(REDIS) is None, reason="redis-server is not installed at /usr/bin")
PASSWORD = "redis-test-password-4471"


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_redis(*extra: str, tls: bool = False) -> RedisServer:
    port = free_port()
    # With TLS the plain port is off (0) and only the TLS port listens.
    ports = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    proc = subprocess.Popen([REDIS, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return RedisServer(port, proc)
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise TimeoutError("redis-server did not listen within 10 s")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.kill()


def call_for(subject: str, tool: str = "paid__search") -> Call:
    ctx = RequestContext(era="modern", protocol_version="2025-11-25", capabilities={}, client_info=None,
                         principal=Principal(subject=subject, kind="oauth"), channel=SilentChannel(),
                         transport="http")
    return Call(ctx=ctx, method="tools/call", params={"name": tool}, server="paid", target=tool, exposed=tool)


def gateway(table: dict[str, Any], resolve: Any = None) -> Guard:
    """One gateway replica's rate guard: its own storage object and its own connections."""
    return guards_from_config(GatewayConfig(source="mcpward.toml", limits=table), resolve)[0]


async def attempt(guard: Guard, subject: str, tool: str = "paid__search") -> str:
    try:
        await guard.on_request(call_for(subject, tool))
        return "ok"
    except LimitRefusal as refusal:
        return refusal.rule


async def test_two_gateways_on_one_redis_enforce_one_global_limit(redis_server: RedisServer) -> None:
    table = {"storage": redis_server.uri, "rate": 60, "burst": 10}
    a, b = gateway(table), gateway(table)
    outcomes = [await attempt(a if i % 2 else b, "alice") for i in range(30)]
    assert outcomes.count("ok") == 10
    assert set(outcomes[10:]) == {"limits.rate"}
    # each replica alone would have admitted 10: the limit is global, not per replica
    assert await attempt(gateway(table), "alice") == "limits.rate"
    assert await attempt(a, "bob") == "ok"


async def test_gateway_wide_quota_across_replicas_never_exceeds_the_budget(redis_server: RedisServer) -> None:
    table = {"storage": redis_server.uri, "rate": 100_000, "burst": 10_000,
             "tools": {"paid__*": {"cost": 3, "budget": 100, "per": "gateway", "period": "hour"}}}
    replicas = [gateway(table) for _ in range(3)]
    # T07 with concurrency: 300 calls from many principals through three replicas at once.
    outcomes = await asyncio.gather(*(attempt(replicas[i % 3], f"user{i % 7}") for i in range(300)))
    admitted = outcomes.count("ok")
    assert admitted <= 100 // 3
    assert admitted >= 100 // 3 - 5  # races at the edge burn at most a few calls' units
    assert set(outcomes) <= {"ok", "limits.quota"}
    # sequentially, a fresh tool gets exactly floor(budget / cost)
    sequential = [await attempt(replicas[i % 3], "carol", "paid__other") for i in range(50)]
    assert sequential.count("ok") == 100 // 3


async def test_redis_killed_midway_refuses_with_storage_unavailable(redis_server: RedisServer) -> None:
    guard = gateway({"storage": redis_server.uri, "rate": 1000, "burst": 100, "storage_timeout": 0.5})
    assert await attempt(guard, "alice") == "ok"
    redis_server.kill()
    started = time.monotonic()
    with pytest.raises(LimitRefusal) as refused:
        await guard.on_request(call_for("alice"))
    assert time.monotonic() - started < 5
    assert refused.value.rule == "limits.storage-unavailable"
    error = refused.value.to_error()
    assert error.data["rule"] == "limits.storage-unavailable" and error.data["retryAfter"] == 1.0
    assert str(redis_server.port) not in error.message  # the client learns the rule, not our topology


async def test_redis_killed_midway_allows_when_configured(redis_server: RedisServer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    guard = gateway({"storage": redis_server.uri, "rate": 60, "burst": 1, "on_storage_error": "allow"})
    assert "calls pass uncounted" in caplog.text  # warned at start
    assert await attempt(guard, "alice") == "ok"
    assert await attempt(guard, "alice") == "limits.rate"
    redis_server.kill()
    assert [await attempt(guard, "alice") for _ in range(3)] == ["ok", "ok", "ok"]


async def test_password_comes_from_a_secret_reference() -> None:
    server = start_redis("--requirepass", PASSWORD)
    try:
        asked: list[str] = []

        def resolve(ref: str) -> str:
            asked.append(ref)
            return PASSWORD if ref == "secret:redis" else "wrong-password"

        good = gateway({"storage": server.uri, "storage_password": "secret:redis"}, resolve)
        assert await attempt(good, "alice") == "ok"
        bad = gateway({"storage": server.uri, "storage_password": "secret:other"}, resolve)
        assert await attempt(bad, "alice") == "limits.storage-unavailable"  # auth failure: fail closed
        assert asked == ["secret:redis", "secret:other"]
    finally:
        server.kill()


async def test_a_slow_redis_holds_a_call_for_one_timeout_not_three(redis_server: RedisServer) -> None:
    guard = gateway({"storage": redis_server.uri, "rate": 1000, "burst": 100, "storage_timeout": 0.3})
    assert await attempt(guard, "alice") == "ok"
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        assert await attempt(guard, "alice") == "limits.storage-unavailable"
        # coredis's default policy retried twice (about 0.9 s here); one attempt is bounded by the timeout
        assert time.monotonic() - started < 0.8
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def tls_redis(cert: Path, key: Path) -> RedisServer:
    return start_redis("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                       "--tls-auth-clients", "no", tls=True)


@pytest.mark.parametrize(("san", "trust", "outcome"), [
    # signed by the trusted CA, names the host dialled: the only case that may pass
    (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), True, "ok"),
    # trusted CA, but the certificate is for another host: refused (coredis alone accepted it)
    (x509.DNSName("not-this-host.example"), True, "limits.storage-unavailable"),
    # the right name, but no storage_ca_cert: the system's CAs do not know this one
    (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), False, "limits.storage-unavailable"),
])
async def test_rediss_checks_the_certificate_and_its_host_name(tmp_path: Path, san: x509.GeneralName, trust: bool,
                                                               outcome: str) -> None:
    cert, key = self_signed(tmp_path, "redis", san)
    server = tls_redis(cert, key)
    try:
        table: dict[str, Any] = {"storage": f"rediss://127.0.0.1:{server.port}/0", "rate": 1000, "burst": 100}
        if trust:
            table["storage_ca_cert"] = str(cert)
        assert await attempt(gateway(table), "alice") == outcome
    finally:
        server.kill()
