"""Interceptors: config parsing, the JSON contract both ways, failure policy, exec/http/python kinds.

Exec hooks are real processes (tests/fixtures/interceptor_scripts), http hooks POST to a real
loopback server in this process, python plugins load from a real entry point in a subprocess,
and the end-to-end tests run `mcpward serve` in front of the fixture server.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcpward.gateway.config import ConfigError, parse
from mcpward.gateway.context import Principal, RequestContext, SilentChannel
from mcpward.guards.base import Call, Guard, GuardChain, Refusal
from mcpward.guards.interceptors import Answer, HookFailure, HttpRunner, SharedClient, from_config
from mcpward.protocol.jsonrpc import JsonObj
from tests.conftest import PYTHON, fixture_server

SCRIPTS = Path(__file__).parent / "fixtures" / "interceptor_scripts"
HOOK = [sys.executable, str(SCRIPTS / "hook.py")]
RESULT = {"content": [{"type": "text", "text": "upstream said hello"}]}


def make_call(exposed: str = "ev__echo", method: str = "tools/call", **arguments: Any) -> Call:
    ctx = RequestContext(era="modern", protocol_version="2026-07-28", capabilities={},
                         client_info={"name": "test-client", "version": "9.9"},
                         principal=Principal(subject="alice", kind="local-user", groups=("dev",)),
                         channel=SilentChannel(), transport="stdio")
    params = {"name": exposed.split("__")[-1], "arguments": arguments}
    return Call(ctx=ctx, method=method, params=params, server="ev", target=params["name"], exposed=exposed)


def build(tmp_path: Path, *tables: dict[str, Any]) -> list[Guard]:
    return from_config(parse({"interceptors": list(tables)}, "test.toml", tmp_path))


def one(tmp_path: Path, **table: Any) -> Guard:
    (guard,) = build(tmp_path, table)
    return guard


def exec_hook(tmp_path: Path, when: str, *flags: str, **extra: Any) -> Guard:
    return one(tmp_path, kind="exec", when=when, command=[*HOOK, *flags], **extra)


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"kind": "shell", "when": "before"}, "interceptors[0].kind", "must be 'exec', 'http' or 'python'"),
    ({"kind": "exec", "command": HOOK}, "interceptors[0].when", "is required"),
    ({"kind": "exec", "when": "around", "command": HOOK}, "interceptors[0].when", "'before', 'after' or 'both'"),
    ({"kind": "exec", "when": "before"}, "interceptors[0].command", "needs the program"),
    ({"kind": "exec", "when": "before", "command": ["no-such-program-xyz"]}, "interceptors[0].command[0]",
     "not on PATH"),
    ({"kind": "exec", "when": "before", "command": ["./missing.py"]}, "interceptors[0].command[0]",
     "not an executable file"),
    ({"kind": "exec", "when": "before", "command": HOOK, "url": "http://127.0.0.1/"}, "interceptors[0].url",
     "does not apply to kind = 'exec'"),
    ({"kind": "exec", "when": "before", "command": HOOK, "on_eror": "allow"}, "interceptors[0].on_eror",
     "unknown key"),
    ({"kind": "exec", "when": "before", "command": HOOK, "on_error": "ignore"}, "interceptors[0].on_error",
     "'deny' (fail closed) or 'allow'"),
    ({"kind": "exec", "when": "before", "command": HOOK, "timeout": 0}, "interceptors[0].timeout", "between"),
    ({"kind": "exec", "when": "before", "command": HOOK, "methods": ["tools/list"]}, "interceptors[0].methods[0]",
     "unknown method"),
    ({"kind": "exec", "when": "before", "command": HOOK, "methods": []}, "interceptors[0].methods", "not be empty"),
    ({"kind": "exec", "when": "before", "command": HOOK, "name": "bad name"}, "interceptors[0].name", "must match"),
    ({"kind": "exec", "when": "before", "command": HOOK, "format": "docker", "methods": ["*"]},
     "interceptors[0].format", "only applies to tools/call"),
    ({"kind": "http", "when": "before"}, "interceptors[0].url", "needs a url"),
    ({"kind": "http", "when": "before", "url": "ftp://127.0.0.1/"}, "interceptors[0].url", "scheme must be https"),
    ({"kind": "http", "when": "before", "url": "http://hooks.example.com/x"}, "interceptors[0].url",
     "plain http is allowed only to a loopback"),
    ({"kind": "http", "when": "before", "url": "https://169.254.169.254/x"}, "interceptors[0].url",
     "private/link-local"),
    ({"kind": "http", "when": "before", "url": "https://10.0.0.5/x"}, "interceptors[0].url", "allow_private"),
    ({"kind": "http", "when": "before", "url": "http://127.0.0.1:99999/"}, "interceptors[0].url", "out of range"),
    ({"kind": "http", "when": "before", "url": "https://u:p@hooks.example.com/"}, "interceptors[0].url",
     "credentials"),
    ({"kind": "python"}, "interceptors[0].name", "needs the name of its entry point"),
    ({"kind": "python", "name": "nobody-ships-this"}, "interceptors[0].name", "no installed package provides"),
])
def test_bad_config_is_a_precise_startup_error(tmp_path: Path, table: dict[str, Any], key: str,
                                               problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, table)
    assert caught.value.source == "test.toml"
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    table = {"kind": "exec", "when": "before", "command": HOOK, "name": "gate"}
    with pytest.raises(ConfigError, match=r"interceptors\[1\]\.name: another interceptor is already named 'gate'"):
        build(tmp_path, table, table)


def test_good_config_builds_one_guard_per_table_in_order(tmp_path: Path) -> None:
    script = tmp_path / "hooks" / "h.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\ncat >/dev/null\n")
    script.chmod(0o755)
    guards = build(
        tmp_path,
        {"kind": "exec", "when": "before", "command": ["./hooks/h.sh"], "name": "first"},
        {"kind": "http", "when": "after", "url": "http://127.0.0.1:9/hook"},
        {"kind": "http", "when": "both", "url": "https://10.1.2.3/hook", "allow_private": True},
        {"kind": "http", "when": "both", "url": "http://hooks.lan/hook", "allow_http": True, "format": "docker"},
    )
    assert [g.name for g in guards] == ["interceptor.first", "interceptor.1", "interceptor.2", "interceptor.3"]
    # Only the wanted phases exist on each guard, so the chain skips the others for free.
    assert [_hooks(g) for g in guards] == [{"on_request"}, {"on_result"}, {"on_request", "on_result"},
                                           {"on_request", "on_result"}]
    assert guards[0].runner.argv == [str(script)]  # type: ignore[attr-defined]  # relative to the config


def _hooks(guard: Guard) -> set[str]:
    return {h for h in ("on_request", "on_result", "on_error", "on_list")
            if getattr(type(guard), h) is not getattr(Guard, h)}


# ------------------------------------------------------------------------- exec: the contract
async def test_before_payload_carries_call_principal_and_client(tmp_path: Path) -> None:
    seen = tmp_path / "seen.jsonl"
    guard = exec_hook(tmp_path, "both", "--record", str(seen))
    call = make_call(path="/tmp/x")
    assert await guard.on_request(call) is None  # no answer: carry on
    assert await guard.on_result(call, RESULT) is None
    before, after = (json.loads(line) for line in seen.read_text().splitlines())
    assert before == {
        "phase": "before", "method": "tools/call", "server": "ev", "tool": "ev__echo", "target": "echo",
        "params": {"name": "echo", "arguments": {"path": "/tmp/x"}},
        "principal": {"subject": "alice", "kind": "local-user", "groups": ["dev"], "claims": {}},
        "client": {"name": "test-client", "version": "9.9", "transport": "stdio", "protocolVersion": "2026-07-28"},
    }
    assert after == {**before, "phase": "after", "result": RESULT}


async def test_before_may_replace_params_but_not_the_target(tmp_path: Path) -> None:
    guard = exec_hook(tmp_path, "before", "--set-arg", "mode=safe")
    assert await guard.on_request(make_call(q="x")) == {"name": "echo", "arguments": {"q": "x", "mode": "safe"}}
    # Answers without the name keep the routed name; a changed name is a failure (the policy decided on it).
    keep = exec_hook(tmp_path, "before", "--answer", '{"params": {"arguments": {"a": 1}}}')
    assert await keep.on_request(make_call()) == {"arguments": {"a": 1}, "name": "echo"}
    swap = exec_hook(tmp_path, "before", "--answer", '{"params": {"name": "rm_rf", "arguments": {}}}')
    with pytest.raises(Refusal) as caught:
        await swap.on_request(make_call())
    assert caught.value.rule == "interceptor.0"


async def test_before_result_short_circuits_and_deny_refuses(tmp_path: Path) -> None:
    canned = {"content": [{"type": "text", "text": "from the hook"}]}
    answer = exec_hook(tmp_path, "before", "--answer", json.dumps({"result": canned}))
    with pytest.raises(Answer) as answered:
        await answer.on_request(make_call())
    assert answered.value.result == canned
    deny = exec_hook(tmp_path, "before", "--deny-tool", "ev__echo", name="gatekeeper")
    with pytest.raises(Refusal) as caught:
        await deny.on_request(make_call())
    assert caught.value.rule == "interceptor.gatekeeper"
    assert caught.value.message == "ev__echo is off limits"
    assert await deny.on_request(make_call("ev__other")) is None


async def test_after_may_replace_the_result_or_deny(tmp_path: Path) -> None:
    new = {"content": [{"type": "text", "text": "rewritten"}], "isError": False}
    replace = exec_hook(tmp_path, "after", "--answer", json.dumps({"result": new}))
    assert await replace.on_result(make_call(), RESULT) == new
    deny = exec_hook(tmp_path, "after", "--answer", '{"deny": "leaks\\u0007 a\\nsecret"}')
    with pytest.raises(Refusal, match=r"^leaks a secret$"):  # control characters never reach the client
        await deny.on_result(make_call(), RESULT)


@pytest.mark.parametrize(("flags", "logged"), [
    (["--raw", "{not json"], "answered invalid JSON"),
    (["--raw", "[1, 2]"], "answered a JSON list, expected an object"),
    (["--answer", '{"denied": "typo"}'], "answered unknown key(s) denied"),
    (["--answer", '{"deny": "x", "params": {}}'], "give at most one of them"),
    (["--answer", '{"deny": ""}'], "deny without a reason"),
    (["--answer", '{"result": {"text": "no content"}}'], "not a tools/call result"),
    (["--answer", '{"result": {"content": "text"}}'], "content is not an array of blocks"),
    (["--exit", "3", "--stderr", "hook trouble"], "exited with status 3"),
])
async def test_failures_fail_closed_with_the_reason_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               flags: list[str], logged: str) -> None:
    guard = exec_hook(tmp_path, "before", *flags, name="strict")
    with pytest.raises(Refusal) as caught:
        await guard.on_request(make_call())
    assert caught.value.rule == "interceptor.strict"
    assert "gateway log has the details" in caught.value.message and logged not in caught.value.message
    assert any(logged in r.getMessage() and "interceptor.strict" in r.getMessage() for r in caplog.records)


async def test_on_error_allow_fails_open_but_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard = exec_hook(tmp_path, "before", "--exit", "1", on_error="allow")
    assert await guard.on_request(make_call()) is None
    assert any("exited with status 1" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has already died
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("flags", [[], ["--leader-exits"]])
async def test_timeout_kills_the_whole_process_group(tmp_path: Path, flags: list[str]) -> None:
    pidfile = tmp_path / "pids"
    guard = one(tmp_path, kind="exec", when="before", timeout=3.0,
                command=[sys.executable, str(SCRIPTS / "sleeper.py"), str(pidfile), *flags])
    started = time.monotonic()
    with pytest.raises(Refusal):
        await guard.on_request(make_call())
    assert time.monotonic() - started < 10
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2  # the hook and the grandchild it started
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)


async def test_oversized_stdout_is_a_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard = one(tmp_path, kind="exec", when="after", command=[sys.executable, str(SCRIPTS / "flood.py")])
    with pytest.raises(Refusal):
        await guard.on_result(make_call(), RESULT)
    assert any("more than 4194304 bytes" in r.getMessage() for r in caplog.records)


async def test_scope_filters_methods_and_tool_globs(tmp_path: Path) -> None:
    seen = tmp_path / "seen.jsonl"
    guard = exec_hook(tmp_path, "before", "--record", str(seen), tools=["fs__*"])
    await guard.on_request(make_call("ev__echo"))  # not fs__*: no process at all
    await guard.on_request(make_call("fs__read", method="prompts/get"))  # default methods: tools/call only
    assert not seen.exists()
    await guard.on_request(make_call("fs__read"))
    assert [json.loads(x)["tool"] for x in seen.read_text().splitlines()] == ["fs__read"]


async def test_docker_format_sends_docker_shapes_and_takes_bare_results(tmp_path: Path) -> None:
    seen = tmp_path / "seen.jsonl"
    before = exec_hook(tmp_path, "before", "--record", str(seen), format="docker")
    assert await before.on_request(make_call(query="Docker")) is None
    assert json.loads(seen.read_text()) == {"method": "tools/call",
                                            "params": {"name": "echo", "arguments": {"query": "Docker"}}}
    trim = exec_hook(tmp_path, "after", "--docker-trim", "8", format="docker")  # Docker README's jq example
    assert await trim.on_result(make_call(), RESULT) == {"content": [{"type": "text", "text": "upstream"}]}
    bypass = exec_hook(tmp_path, "before", "--answer", json.dumps(RESULT), format="docker")
    with pytest.raises(Answer):
        await bypass.on_request(make_call())


class Marker(Guard):
    """Appends its name to every result it sees: shows which result hooks an answer passed."""

    def __init__(self, mark: str) -> None:
        self.mark = mark

    async def on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        return {**result, "content": [*result["content"], {"type": "text", "text": self.mark}]}


async def test_an_answer_unwinds_only_through_the_guards_before_it(tmp_path: Path) -> None:
    canned = {"content": [{"type": "text", "text": "canned"}]}
    hook = exec_hook(tmp_path, "both", "--answer", json.dumps({"result": canned}))
    chain = GuardChain([Marker("output guard"), hook, Marker("argument guard")])
    call = make_call()
    answered = await chain.request(call)
    # The output guard (before it) still sees the answer; the hook's own after phase and the guards after it do not.
    assert answered == {"content": [{"type": "text", "text": "canned"}, {"type": "text", "text": "output guard"}]}


# ------------------------------------------------------------------------------------- http
class Hooks(BaseHTTPRequestHandler):
    """Answers by path; remembers every body it got."""

    bodies: list[tuple[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.bodies.append((self.path, body))
        if self.path == "/slow":
            time.sleep(3)
        status, answer = {
            "/continue": (200, b""),
            "/deny": (200, b'{"deny": "not today"}'),
            "/rewrite": (200, json.dumps({"result": {"content": [
                {"type": "text", "text": "rewritten: " + str((body.get("result") or {}).get("content"))}]}}).encode()),
            "/redirect": (302, b""),
            "/error": (500, b'{"result": {"content": []}}'),
            "/notjson": (200, b"<html>"),
            "/big": (200, b"[" + b"1," * (3 * 1024 * 1024) + b"1]"),
        }.get(self.path, (404, b""))
        self.send_response(status)
        if status == 302:
            self.send_header("location", "/continue")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    Hooks.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_http_continue_deny_and_rewrite(tmp_path: Path, hook_server: str) -> None:
    go = one(tmp_path, kind="http", when="before", url=hook_server + "/continue")
    assert await go.on_request(make_call(q=1)) is None
    assert Hooks.bodies[0][1]["params"] == {"name": "echo", "arguments": {"q": 1}}
    deny = one(tmp_path, kind="http", when="before", url=hook_server + "/deny", name="web")
    with pytest.raises(Refusal) as caught:
        await deny.on_request(make_call())
    assert (caught.value.rule, caught.value.message) == ("interceptor.web", "not today")
    rewrite = one(tmp_path, kind="http", when="after", url=hook_server + "/rewrite")
    assert (await rewrite.on_result(make_call(), RESULT))["content"][0]["text"].startswith("rewritten: [{")


@pytest.mark.parametrize(("path", "logged"), [
    ("/redirect", "HTTP 302 (a redirect; redirects are not followed)"),
    ("/error", "answered HTTP 500"),
    ("/notjson", "invalid JSON"),
    ("/big", "more than 4194304 bytes"),
    ("/slow", "no answer within 0.5s"),
])
async def test_http_failures_fail_closed(tmp_path: Path, hook_server: str, caplog: pytest.LogCaptureFixture,
                                         path: str, logged: str) -> None:
    guard = one(tmp_path, kind="http", when="before", url=hook_server + path, timeout=0.5)
    with pytest.raises(Refusal, match="gateway log"):
        await guard.on_request(make_call())
    assert any(logged in r.getMessage() for r in caplog.records)
    if path == "/redirect":
        assert [p for p, _ in Hooks.bodies] == ["/redirect"]  # the redirect was not followed


async def test_http_names_are_checked_before_any_connection() -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(f"{host}:{port}")
        return ["169.254.169.254"]  # what an attacker-influenced DNS answer could be

    runner = HttpRunner("https://hooks.test/x", 1.0, SharedClient(), vet_names=True, resolver=resolver)
    with pytest.raises(HookFailure, match=r"resolves to the non-public address 169\.254\.169\.254"):
        await runner.run(b"{}")
    assert asked == ["hooks.test:443"]


# ---------------------------------------------------------------------------- python plugins
PLUGIN_PKG = Path(__file__).parent / "fixtures" / "plugin_pkg"


def install_plugin(site: Path) -> dict[str, str]:
    """What pip would leave: a .dist-info whose entry_points.txt comes from the package's pyproject."""
    project = tomllib.loads((PLUGIN_PKG / "pyproject.toml").read_text())["project"]
    dist = site / "mcpward_test_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines: list[str] = []
    for group, eps in project["entry-points"].items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in eps.items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    paths = [str(site), str(PLUGIN_PKG / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


PLUGIN_PROBE = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from mcpward.gateway.config import ConfigError, parse
from mcpward.guards.base import Listed, Refusal
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.guards.interceptors import Answer, from_config
from tests.test_interceptors import make_call

async def main():
    out = {}
    def build(**table):
        return from_config(parse({"interceptors": [table]}, "t.toml"))[0]
    for name in ("picky", "notaguard"):
        try:
            build(kind="python", name=name)
        except ConfigError as exc:
            out[name] = str(exc)
    tagger = build(kind="python", name="tagger", options={"forbidden": "rm -rf", "tag": "[checked]"})
    out["tagged"] = await tagger.on_result(make_call(), {"content": []})
    try:
        await tagger.on_request(make_call(cmd="rm -rf /"))
    except Refusal as r:
        out["refusal"] = [r.rule, r.message]
    try:
        await build(kind="python", name="crasher").on_request(make_call())
    except Refusal as r:
        out["crash"] = [r.rule, r.message]
    out["crash_open"] = await build(kind="python", name="crasher", on_error="allow").on_request(make_call())
    try:
        await build(kind="python", name="answerer").on_request(make_call())
    except Answer as a:
        out["answer"] = a.result
    try:
        await build(kind="python", name="retargeter").on_request(make_call())
    except Refusal as r:
        out["retarget"] = r.rule
    hider = build(kind="python", name="hider", options={"hide": "b"}, methods=["tools/list"])
    items = [Listed("ev", n, {"name": n}) for n in "abc"]
    out["listed"] = [i.name for i in await hider.on_list(make_call(), "tools", items)]
    print(json.dumps(out))

asyncio.run(main())
"""


def test_python_plugin_from_a_real_entry_point(tmp_path: Path) -> None:
    import subprocess

    env = install_plugin(tmp_path / "site")
    root = str(Path(__file__).parent.parent)
    done = subprocess.run([sys.executable, "-c", PLUGIN_PROBE, root], env=env, capture_output=True, timeout=60,
                          cwd=root)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert "interceptors[0].name" in out["picky"] and "refused its options: ValueError: options.level" in out["picky"]
    assert "returned str, not a mcpward.guards.base.Guard" in out["notaguard"]
    assert out["tagged"] == {"content": [{"type": "text", "text": "[checked]"}]}
    assert out["refusal"] == ["interceptor.tagger.forbidden-word", "arguments mention 'rm -rf'"]
    assert out["crash"][0] == "interceptor.crasher" and "gateway log" in out["crash"][1]
    assert out["crash_open"] is None
    assert out["answer"] == {"content": [{"type": "text", "text": "answered by the plugin"}]}
    assert out["listed"] == ["a", "c"]
    assert out["retarget"] == "interceptor.retargeter"  # a plugin cannot retarget a call the policy allowed


class _ListDenier(Guard):
    async def on_list(self, call: Call, kind: str, items: list[Any]) -> list[Any] | None:
        raise Refusal("no-list", "no listing for you")


class _ListCrasher(Guard):
    async def on_list(self, call: Call, kind: str, items: list[Any]) -> list[Any] | None:
        raise RuntimeError("plugin bug")


@pytest.mark.parametrize(("inner", "rule"), [(_ListDenier(), "interceptor.plug.no-list"),
                                             (_ListCrasher(), "interceptor.plug")])
async def test_a_plugin_refusing_or_crashing_in_on_list_is_a_named_audited_refusal(
        inner: Guard, rule: str, caplog: pytest.LogCaptureFixture) -> None:
    from mcpward.gateway.core import Gateway
    from mcpward.gateway.downstream import ClientConnection
    from mcpward.guards.interceptors import Scope
    from mcpward.guards.plugins import wrap
    from mcpward.protocol.jsonrpc import REFUSED

    gateway = Gateway(parse({"servers": {"s": {"command": "true"}}}),
                      GuardChain([wrap(inner, Scope("plug", True, True, 1.0, False, None, None))]))

    async def page(ctx: RequestContext, server: str, kind: str, cursor: Any) -> JsonObj:
        return {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}

    async def write(message: JsonObj) -> None:
        pass

    gateway.lister._page = page  # type: ignore[method-assign]  # an upstream without a process
    conn = ClientConnection(gateway, "stdio", Principal.local_user(), write)
    conn.initialized = True
    with caplog.at_level("INFO"):
        reply = await conn.on_request({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    assert reply is not None and reply["error"]["code"] == REFUSED and reply["error"]["data"] == {"rule": rule}
    refusals = [json.loads(r.getMessage()) for r in caplog.records
                if r.name == "mcpward.audit" and '"refusal"' in r.getMessage()]
    assert [(r["rule"], r["method"]) for r in refusals] == [(rule, "tools/list")]
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


async def test_http_hooks_ignore_proxy_settings(tmp_path: Path, hook_server: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment must not see (or reroute) hook traffic: the config says where it goes.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    guard = one(tmp_path, kind="http", when="before", url=hook_server + "/continue")
    assert await guard.on_request(make_call()) is None
    assert [p for p, _ in Hooks.bodies] == ["/continue"]


# ------------------------------------------------------------------------------ end to end
def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"  # a JSON string is a TOML basic string


def _gateway_config(*interceptors: str) -> str:
    server = f'[servers.ev]\ncommand = "{PYTHON}"\nargs = {toml_list(fixture_server()[1:])}\n'
    return server + "".join(f"\n[[interceptors]]\n{text}" for text in interceptors)


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def test_e2e_exec_denies_a_call_and_http_rewrites_a_result(serve_gateway: Any, hook_server: str) -> None:
    url = serve_gateway(_gateway_config(
        f'kind = "exec"\nname = "gatekeeper"\nwhen = "before"\n'
        f'command = {toml_list([*HOOK, "--deny-tool", "ev__test_simple_text"])}\n',
        f'kind = "http"\nname = "rewriter"\nwhen = "after"\nurl = "{hook_server}/rewrite"\n'
        f'tools = ["ev__test_header_*"]\n',
    ))
    async with Client(url) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("ev__test_simple_text", {})
        assert refused.value.code == -32004
        assert refused.value.message == "refused by interceptor.gatekeeper: ev__test_simple_text is off limits"
        assert refused.value.data == {"rule": "interceptor.gatekeeper"}
        rewritten = await client.call_tool("ev__test_header_param", {"region": "eu"})
        assert _text(rewritten).startswith("rewritten: [{") and "region=eu" in _text(rewritten)
        untouched = await client.call_tool("ev__test_error_handling", {})  # neither hook's business
        assert untouched.is_error
    assert [p for p, _ in Hooks.bodies] == ["/rewrite"]  # the after hook saw only the call it matched
    sent = Hooks.bodies[0][1]
    assert (sent["phase"], sent["tool"], sent["target"]) == ("after", "ev__test_header_param", "test_header_param")


async def test_e2e_before_hook_rewrites_params_and_answers_calls(serve_gateway: Any, tmp_path: Path) -> None:
    canned = {"result": {"content": [{"type": "text", "text": "answered by the hook"}]}}
    url = serve_gateway(_gateway_config(
        f'kind = "exec"\nwhen = "before"\ntools = ["ev__test_header_param"]\n'
        f'command = {toml_list([*HOOK, "--set-arg", "region=rewritten"])}\n',
        f'kind = "exec"\nwhen = "before"\ntools = ["ev__test_simple_text"]\n'
        f'command = {toml_list([*HOOK, "--answer", json.dumps(canned)])}\n',
    ))
    async with Client(url) as client:
        assert _text(await client.call_tool("ev__test_header_param", {"region": "eu"})) == "region=rewritten"
        assert _text(await client.call_tool("ev__test_simple_text", {})) == "answered by the hook"


async def test_e2e_python_plugin_from_an_installed_package(serve_gateway: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", install_plugin(tmp_path / "site")["PYTHONPATH"])  # the gateway inherits it
    url = serve_gateway(_gateway_config(
        'kind = "python"\nname = "tagger"\noptions = { forbidden = "rm -rf", tag = "[checked by plugin]" }\n'))
    async with Client(url) as client:
        tagged = await client.call_tool("ev__test_header_param", {"region": "eu"})
        assert _text(tagged) == "region=eu\n[checked by plugin]"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("ev__test_header_param", {"region": "rm -rf /"})
        assert refused.value.data == {"rule": "interceptor.tagger.forbidden-word"}


# ------------------------------------------------------ methods a hook may see but not rewrite
@pytest.mark.parametrize("answer", [{"params": {"uri": "test://watched"}},
                                    {"result": {"contents": []}}])
async def test_a_rewrite_or_answer_for_subscribe_is_a_named_failure(tmp_path: Path, answer: JsonObj) -> None:
    # methods = ["*"] also reaches resources/subscribe, which has no params key a hook may keep and no
    # result it may stand in for: before the fix, either answer was a KeyError (an unnamed internal error).
    guard = exec_hook(tmp_path, "before", "--answer", json.dumps(answer), name="sub", methods=["*"])
    call = make_call()
    call.method, call.params, call.target, call.exposed = "resources/subscribe", {"uri": "test://watched"}, \
        "test://watched", "test://watched"
    with pytest.raises(Refusal) as refused:
        await GuardChain([guard]).request(call)
    assert refused.value.rule == "interceptor.sub"


async def test_a_plugin_rewriting_subscribe_params_is_a_named_failure(tmp_path: Path) -> None:
    from mcpward.guards.interceptors import Scope
    from mcpward.guards.plugins import wrap

    class Rewriter(Guard):
        async def on_request(self, call: Call) -> JsonObj | None:
            return dict(call.params)

    guard = wrap(Rewriter(), Scope("rw", True, False, 5.0, False, None, None))
    call = make_call()
    call.method, call.params = "resources/subscribe", {"uri": "test://watched"}
    with pytest.raises(Refusal) as refused:
        await GuardChain([guard]).request(call)
    assert refused.value.rule == "interceptor.rw"


async def test_e2e_a_hook_rewriting_a_subscription_refuses_it_by_name(write_config: Any) -> None:
    from tests.conftest import FIXTURES
    from tests.rawclient import RawStdioClient

    hook = [*HOOK, "--answer", json.dumps({"params": {"uri": "test://watched"}})]
    path = write_config(f'[servers.s]\ncommand = "{sys.executable}"\n'
                        f'args = ["{FIXTURES / "session_server.py"}"]\ntimeout = 10\n\n'
                        f'[[interceptors]]\nkind = "exec"\nname = "sub"\nwhen = "before"\nmethods = ["*"]\n'
                        f'command = {toml_list(hook)}\n')
    c = await RawStdioClient.start(path)
    try:
        init = await c.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                              "clientInfo": {"name": "t", "version": "1"}}, modern=False)
        assert "result" in init, init
        await c.send_raw(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        reply = await c.request("resources/subscribe", {"uri": "test://watched"}, modern=False)
        assert reply["error"]["code"] == -32004, reply
        assert reply["error"]["data"] == {"rule": "interceptor.sub"}
    finally:
        await c.close()
