"""Interceptor credentials: `env` (exec) and `headers` (http) given by secret reference.

The values reach the hook (its environment, its request headers) and nowhere else: not argv, and
once resolved the output redactor knows them, so no log line, audit record or client sees them. A
literal credential in the config is refused at load, naming the key and never the value; a
reference that cannot be resolved fails the hook (closed by default) with a message naming the
reference, never a value.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway.config import ConfigError, GatewayConfig, parse
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards import output
from mcpward.guards.base import Call, Guard, Refusal
from mcpward.guards.interceptors import from_config
from mcpward.guards.redactor import Profile

HELD = Profile("held-values", frozenset({"exact"}))  # only the values the gateway was given to redact

SCRIPTS = Path(__file__).parent / "fixtures" / "interceptor_scripts"
TOKEN = "hk_" + "Zq81vX0pLm4Rt7Yw2Ns5Bc9Kd3Fg6Hj"  # random-looking, as a real credential is


def make_call() -> Call:
    ctx = RequestContext(era="modern", protocol_version="2026-07-28", capabilities={},
                         client_info={"name": "test-client", "version": "1"},
                         principal=Principal(subject="alice", kind="local-user"), channel=SilentChannel(),
                         transport="stdio")
    params = {"name": "echo", "arguments": {"text": "hi"}}
    return Call(ctx=ctx, method="tools/call", params=params, server="ev", target="echo", exposed="ev__echo")


def config(tmp_path: Path, table: dict[str, Any]) -> GatewayConfig:
    return parse({"interceptors": [table]}, "test.toml", tmp_path)


def one(cfg: GatewayConfig) -> Guard:
    (guard,) = from_config(cfg)
    return guard


def exec_table(tmp_path: Path, env: dict[str, str], *names: str) -> dict[str, Any]:
    return {"kind": "exec", "when": "before", "name": "hook",
            "command": [sys.executable, str(SCRIPTS / "env_hook.py"), str(tmp_path / "seen.jsonl"), *names],
            "env": env}


def seen(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ exec: env
async def test_exec_env_references_reach_the_environment_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HOOK_TOKEN_SRC", TOKEN)
    (tmp_path / "team.txt").write_text("platform\n")
    (tmp_path / "team.txt").chmod(0o600)  # the file store refuses a world-readable secret file
    cfg = config(tmp_path, exec_table(tmp_path, {"HOOK_TOKEN": "env:HOOK_TOKEN_SRC", "TEAM": "file:team.txt",
                                                 "AUTH": "Bearer ${env:HOOK_TOKEN_SRC}", "MODE": "audit"},
                                      "HOOK_TOKEN", "TEAM", "AUTH", "MODE", "HOOK_TOKEN_SRC"))
    guard = one(cfg)
    assert output.redactor_for(cfg).redact(f"leaked {TOKEN}", HELD) is None  # nothing resolved at load
    with caplog.at_level(logging.DEBUG):
        assert await guard.on_request(make_call()) is None  # no answer: the call goes on
    [got] = seen(tmp_path)
    assert got["env"] == {"HOOK_TOKEN": TOKEN, "TEAM": "platform", "AUTH": f"Bearer {TOKEN}", "MODE": "audit",
                          "HOOK_TOKEN_SRC": None}  # the gateway's own variable is not inherited
    assert TOKEN not in json.dumps(got["argv"]) and TOKEN not in caplog.text
    # Resolved values join the config's redactor: no log line, audit record or client can carry them.
    assert output.redactor_for(cfg).redact(f"leaked {TOKEN}", HELD) == "leaked [REDACTED:configured-secret]"


async def test_exec_env_reference_that_cannot_be_resolved_fails_closed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("HOOK_TOKEN_SRC", raising=False)
    guard = one(config(tmp_path, exec_table(tmp_path, {"HOOK_TOKEN": "env:HOOK_TOKEN_SRC"})))
    with pytest.raises(Refusal) as refused, caplog.at_level(logging.ERROR):
        await guard.on_request(make_call())
    assert refused.value.rule == "interceptor.hook"
    assert "interceptors[0].env.HOOK_TOKEN" in caplog.text and "HOOK_TOKEN_SRC" in caplog.text
    assert not (tmp_path / "seen.jsonl").exists()  # the hook never ran without its credential


# ------------------------------------------------------------------------------------ http: headers
class Recorder(BaseHTTPRequestHandler):
    headers_seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        Recorder.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.headers_seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


async def test_http_headers_references_are_sent_to_the_hook(tmp_path: Path, recorder: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN_SRC", TOKEN)
    cfg = config(tmp_path, {"kind": "http", "when": "before", "name": "web", "url": recorder,
                            "headers": {"Authorization": "Bearer ${env:HOOK_TOKEN_SRC}", "X-Team": "platform"}})
    guard = one(cfg)
    assert await guard.on_request(make_call()) is None
    assert await guard.on_request(make_call()) is None
    assert len(Recorder.headers_seen) == 2
    for got in Recorder.headers_seen:
        assert got["authorization"] == f"Bearer {TOKEN}" and got["x-team"] == "platform"
        assert got["content-type"] == "application/json"
    assert output.redactor_for(cfg).redact(TOKEN, HELD) == "[REDACTED:configured-secret]"


async def test_http_header_reference_that_cannot_be_resolved_fails_closed(tmp_path: Path, recorder: str) -> None:
    guard = one(config(tmp_path, {"kind": "http", "when": "before", "name": "web", "url": recorder,
                                  "headers": {"Authorization": "file:missing-token.txt"}}))
    with pytest.raises(Refusal) as refused:
        await guard.on_request(make_call())
    assert refused.value.rule == "interceptor.web" and Recorder.headers_seen == []  # nothing was sent


# ------------------------------------------------------------------------------------ load-time checks
@pytest.mark.parametrize(("kind", "values", "key", "problem"), [
    ("http", {"Authorization": f"Bearer {TOKEN}"}, "headers.Authorization", "literal credential"),
    ("http", {"X-Api-Key": TOKEN}, "headers.X-Api-Key", "literal credential"),
    ("http", {"X-Anything": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"}, "headers.X-Anything",
     "literal credential"),
    ("exec", {"HOOK_TOKEN": TOKEN}, "env.HOOK_TOKEN", "literal credential"),
    ("exec", {"DB_PASSWORD": "Tr0ub4dor&3xq!"}, "env.DB_PASSWORD", "literal credential"),
    ("http", {"Authorization": "secret:"}, "headers.Authorization", ""),
    ("exec", {"T": "${nope:X}"}, "env.T", ""),
    ("http", {"Content-Type": "text/plain"}, "headers.Content-Type", "set by the gateway"),
    ("http", {"Bad Name": "x"}, "headers.Bad Name", "not a valid HTTP header name"),
    ("http", {"X-Split": "a\r\nInjected: 1"}, "headers.X-Split", "control character"),
    ("exec", {"1BAD": "x"}, "env.1BAD", "not a valid environment variable name"),
    ("exec", {"MCPWARD_INTERCEPTOR": "x"}, "env.MCPWARD_INTERCEPTOR", "set by the gateway"),
])
def test_bad_credentials_are_refused_at_load_naming_the_key(tmp_path: Path, kind: str, values: dict[str, str],
                                                           key: str, problem: str) -> None:
    table: dict[str, Any] = {"kind": kind, "when": "before"}
    if kind == "exec":
        table.update(command=[sys.executable, str(SCRIPTS / "env_hook.py"), "x"], env=values)
    else:
        table.update(url="http://127.0.0.1:9/hook", headers=values)
    with pytest.raises(ConfigError) as err:
        from_config(config(tmp_path, table))
    assert err.value.key == f"interceptors[0].{key}" and problem in err.value.problem
    for value in values.values():  # never the value, only where it is
        if len(value) > 12:
            assert value not in str(err.value)


@pytest.mark.parametrize(("kind", "key"), [("exec", "headers"), ("http", "env")])
def test_each_kind_takes_only_its_own_credentials_table(tmp_path: Path, kind: str, key: str) -> None:
    table: dict[str, Any] = {"kind": kind, "when": "before", key: {"X": "secret:x"}}
    if kind == "exec":
        table["command"] = [sys.executable, str(SCRIPTS / "env_hook.py"), "x"]
    else:
        table["url"] = "http://127.0.0.1:9/hook"
    with pytest.raises(ConfigError, match="does not apply"):
        from_config(config(tmp_path, table))
