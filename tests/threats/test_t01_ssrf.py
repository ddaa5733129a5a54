"""T01: SSRF. A fetch tool steered at metadata, loopback or private addresses is refused before the call.

A real `mcpward serve` in front of the recording fixture (its `fetch` only writes the URL to a file,
never connects). DNS is the gateway's test-only static `resolver_map`: `internal-api.example.com`
resolves to 127.0.0.1, `docs.example.com` to a public documentation address, and any other name
is unresolvable, so no real DNS is ever asked. The record file proves refused URLs never reached
the server; the gateway's log carries the audit record with the rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FIXTURES, PYTHON, fixture_server, toml_list
from tests.threats.integrity_support import described
from tests.threats.mcp_http import call, post, reply_of

RESOLVER_MAP = '{ "internal-api.example.com" = "127.0.0.1", "docs.example.com" = "93.184.215.14" }'


def recording_config(record: Path, arguments: str = "") -> str:
    """Gateway config for the recording fixture; the permit-all policy keeps the policy out of the way.
    The fixture runs sandboxed: its record file is the one path it may write (bound read-write)."""
    record.touch()
    record.chmod(0o666)
    return (f'[policy]\nbase = "permit-all"\n\n[servers.rec]\ncommand = "{PYTHON}"\n'
            f'args = ["{FIXTURES / "recording_server.py"}", "--record", "{record}"]\n'
            f'sandbox = {{ rw = ["{record}"] }}\n\n'
            f"[guards.arguments]\n{arguments}\n")


def recorded(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text("utf-8").splitlines()]


def tool(http: httpx.Client, url: str, name: str, arguments: dict[str, Any], rid: int = 1) -> dict[str, Any]:
    _, reply = call(http, url, "tools/call", {"name": f"rec__{name}", "arguments": arguments}, rid=rid)
    return reply


def refused_rule(reply: dict[str, Any]) -> str | None:
    error = reply.get("error")
    if error is None:
        return None
    assert error["code"] == -32004, error
    rule: str = error["data"]["rule"]
    assert error["message"].startswith(f"refused by {rule}: "), error
    return rule


SSRF_TARGETS = [
    ("http://169.254.169.254/latest/meta-data/", "args.url.non-public"),
    ("http://internal-api.example.com/admin", "args.url.non-public"),  # resolves to 127.0.0.1
    ("http://0x7f000001/", "args.url.non-public"),
    ("http://[::ffff:169.254.169.254]/", "args.url.non-public"),
    ("http://metadata.google.internal/computeMetadata/v1/", "args.url.non-public"),
    ("http://2130706433/", "args.url.non-public"),
    ("https://docs.example.com/r?next=http://169.254.169.254/latest/", "args.url.non-public"),
    ("file:///etc/passwd", "args.url.scheme"),
    ("gopher://127.0.0.1:6379/_SET", "args.url.scheme"),
    ("http://never-resolves.example.org/", "args.url.unresolvable"),
]


def test_ssrf_targets_refused_and_never_reach_the_server(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "calls.jsonl"
    url = serve_gateway(recording_config(record, f"resolver_map = {RESOLVER_MAP}"))
    with httpx.Client(trust_env=False, timeout=30) as http:
        for rid, (target, rule) in enumerate(SSRF_TARGETS, start=1):
            assert refused_rule(tool(http, url, "fetch", {"url": target}, rid=rid)) == rule, target
        allowed = tool(http, url, "fetch", {"url": "https://docs.example.com/page"}, rid=99)
        assert refused_rule(allowed) is None and "recorded fetch" in json.dumps(allowed["result"])
    assert recorded(record) == [{"tool": "fetch", "arguments": {"url": "https://docs.example.com/page"}}]
    port = url.split(":")[2].split("/")[0]
    log = (tmp_path / f"gw-{port}.log").read_text()
    audit = [json.loads(line.split("mcpward.audit: ", 1)[1]) for line in log.splitlines() if "mcpward.audit: " in line]
    refusals = [r["rule"] for r in audit if r["event"] == "refusal" and r["target"] == "rec__fetch"]
    assert refusals == [rule for _, rule in SSRF_TARGETS], log
    assert "169.254.169.254/latest" not in json.dumps(audit)  # the audit names the rule, not the argument


def test_allow_private_urls_still_refuses_metadata(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "calls.jsonl"
    url = serve_gateway(recording_config(record, f"allow_private_urls = true\nresolver_map = {RESOLVER_MAP}"))
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert refused_rule(tool(http, url, "fetch", {"url": "http://internal-api.example.com/"})) is None
        assert refused_rule(tool(http, url, "fetch", {"url": "http://169.254.169.254/"}, rid=2)) \
            == "args.url.non-public"
    assert [r["arguments"]["url"] for r in recorded(record)] == ["http://internal-api.example.com/"]


# Audit 3, gap 4: a network target without a scheme, named by its parameter (`host`, format hostname/ipv4).
HOST_TOOL = {"name": "connect", "description": "Open a TCP connection to a host and report the banner.",
             "inputSchema": {"type": "object", "properties": {
                 "host": {"type": "string", "format": "hostname", "description": "Host or IP address to connect to"},
                 "ip": {"type": "string", "format": "ipv4"}}}}


def test_host_parameters_are_screened_like_urls(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = described(tmp_path, "net", [HOST_TOOL]) + f"\n[guards.arguments]\nresolver_map = {RESOLVER_MAP}\n"
    url = serve_gateway(config)
    with httpx.Client(trust_env=False, timeout=30) as http:
        for rid, arguments in enumerate([{"host": "169.254.169.254"}, {"ip": "169.254.169.254"},
                                         {"host": "metadata.google.internal"}, {"host": "0xa9fea9fe"},
                                         {"host": "internal-api.example.com"}], start=1):
            _, reply = call(http, url, "tools/call", {"name": "net__connect", "arguments": arguments}, rid=rid)
            assert refused_rule(reply) == "args.url.non-public", (arguments, reply)
        _, reply = call(http, url, "tools/call", {"name": "net__connect", "arguments": {"host": "docs.example.com"}},
                        rid=9)
        assert refused_rule(reply) is None and "called connect" in json.dumps(reply["result"])


# Audit 3, gap 7: completion values and resource URIs reach the upstream too, so they get the same screens.
def test_completion_values_and_resource_uris_are_screened(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    cmd = fixture_server()
    url = serve_gateway(f'[servers.fx]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\nprefix = ""\n\n'
                        f"[guards.arguments]\nresolver_map = {RESOLVER_MAP}\n")
    prompt = {"type": "ref/prompt", "name": "test_prompt_with_arguments"}
    with httpx.Client(trust_env=False, timeout=30) as http:
        _, reply = call(http, url, "completion/complete", {"ref": prompt, "argument": {"name": "arg1", "value": "pa"}})
        assert reply["result"]["completion"]["values"] == ["paris", "park", "party"], reply
        for rid, (argument, context, rule) in enumerate([
            ({"name": "url", "value": "http://169.254.169.254/latest/"}, None, "args.url.non-public"),
            ({"name": "arg1", "value": "pa"}, {"arguments": {"callback_url": "http://internal-api.example.com/"}},
             "args.url.non-public"),
            ({"name": "arg1", "value": "p\u202ea"}, None, "args.unicode.bidi"),
        ], start=2):
            params: dict[str, Any] = {"ref": prompt, "argument": argument}
            if context is not None:
                params["context"] = context
            _, reply = call(http, url, "completion/complete", params, rid=rid)
            assert refused_rule(reply) == rule, (argument, reply)
        # A 2026-07-28 read names its URI in the Mcp-Name header too (ASCII only: the limit, not a character).
        for rid, (uri, rule) in enumerate([("test://template/42/data", None),
                                           (f"test://template/{'4' * 8200}/data", "args.limit.string")], start=10):
            reply = reply_of(post(http, url, "resources/read", {"uri": uri}, rid=rid, headers={"Mcp-Name": uri}), rid)
            assert refused_rule(reply) == rule and (rule or "result" in reply), reply
