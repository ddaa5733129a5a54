"""Output-guard gaps found by audit round 3 (issue 3, output half), each shown closed.

Errors in block mode, list items and server instructions, the error codes the client acts on,
labelled and numeric PII in structuredContent, passwords with & ; , in them, `_meta` of server
messages, short-named config secrets, the truncation marker after redaction, and the size cap on
server messages. Secret-looking values are assembled at run time.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcpward.gateway.config import parse
from mcpward.gateway.context import system_context
from mcpward.guards import errors, output
from mcpward.guards.base import Call, Listed, Refusal
from mcpward.guards.setup import held_secrets
from mcpward.protocol.jsonrpc import ProtocolError
from tests.conftest import FIXTURES, PYTHON
from tests.threats.mcp_http import call as http_call

AWS = "AKIA" + "QWADE5R4" + "2RDZ4JEM"
GH = "ghp_" + "wWPw5k4aXcaT4fNP" + "0UcnZwJUVFk6LO0pINUx"
TOKEN = "Zq9-plain-" + "configured-8841"
SSN = "078-05-" + "1123"
WIDE_COMMA = "\uff0c"


def guard(**guards: Any) -> output.OutputGuard:
    cfg = parse({"servers": {"s": {"command": "x", "env": {"API_TOKEN": TOKEN}}}, "guards": guards})
    output.redactor_for(cfg).add_exact(held_secrets(cfg))
    made = output.from_config(cfg)
    assert made is not None
    return made


def call(method: str = "tools/call") -> Call:
    return Call(ctx=system_context(), method=method, params={}, server="s", target="t", exposed="s__t")


# ------------------------------------------------------------------------------------------ 1: block mode on errors


@pytest.mark.parametrize(("guards", "rule"), [({"secrets": {"mode": "block"}}, "secrets.aws-access-key-id"),
                                              ({"pii": {"ssn": "block"}}, "pii.ssn")])
async def test_block_mode_refuses_an_upstream_error_naming_the_rule(guards: dict[str, Any], rule: str) -> None:
    g = guard(**guards)
    for code in (-32000, errors.URL_ELICITATION_REQUIRED):
        error = ProtocolError(code, f"need {AWS} for ssn {SSN}", {"url": f"https://x/?t={AWS}&s={SSN}"})
        with pytest.raises(Refusal) as caught:
            await g.on_error(call(), error)
        assert caught.value.rule == rule
        assert AWS not in caught.value.message and SSN not in caught.value.message
    clean = ProtocolError(-32000, "not found", None)
    assert await g.on_error(call(), clean) is None  # an error with nothing to block passes


async def test_block_mode_leaves_the_gateways_own_errors_alone() -> None:
    own = call()
    own.notes["gateway_error"] = True  # a timeout, a crashed server: the text is the gateway's
    # (no refusal: in block mode nothing is redacted either, so the error passes on unchanged)
    assert await guard(secrets={"mode": "block"}).on_error(own, ProtocolError(-32000, f"x {AWS}", None)) is None


# ------------------------------------------------------------------------------------------ 2: lists and instructions


def listed(name: str, item: dict[str, Any]) -> Listed:
    return Listed("s", name, item)


async def test_list_items_are_redacted_in_a_copy_and_identifiers_hide_the_item() -> None:
    g = guard()
    leaky = {"name": "s__desc", "description": f"uses {AWS} and {TOKEN}",
             "inputSchema": {"type": "object", "properties": {"q": {"type": "string", "description": f"pass {GH}"}}},
             "annotations": {"title": f"t {TOKEN}"}}
    original = json.dumps(leaky)
    items = [listed("desc", leaky), listed(AWS, {"name": f"s__{AWS}", "description": "x"}),
             listed("plain", {"name": "s__plain", "description": "lists files"})]
    out = await g.on_list(call("tools/list"), "tools", items)
    assert out is not None and [i.name for i in out] == ["desc", "plain"]  # the secret-named tool is hidden
    shown = json.dumps([i.item for i in out])
    assert AWS not in shown and TOKEN not in shown and GH not in shown and "[REDACTED:github-token]" in shown
    assert json.dumps(leaky) == original  # the published item itself is never changed
    assert out[1] is items[2]  # a clean item passes as it is
    resources = [listed(f"hostile://r/{TOKEN}", {"uri": f"hostile://r/{TOKEN}", "name": "r"}),
                 listed("https://admin:hunter2pw@db.internal/x", {"uri": "https://admin:hunter2pw@db.internal/x",
                                                                  "name": "db"})]
    assert await g.on_list(call("resources/list"), "resources", resources) == []
    assert await g.on_list(call("tools/list"), "tools", items[2:]) is None


async def test_block_mode_hides_list_items_and_leaves_out_instructions(recorded: list[Any]) -> None:
    g = guard(secrets={"mode": "block"})
    items = [listed("desc", {"name": "s__desc", "description": f"uses {AWS}"}),
             listed("plain", {"name": "s__plain", "description": "lists files"})]
    out = await g.on_list(call("tools/list"), "tools", items)
    assert out is not None and [i.name for i in out] == ["plain"]
    assert ("output", {"method": "tools/list", "principal": system_context().principal.key, "outcome": "blocked",
                       "detected": {"aws-access-key-id": 1}, "hidden": {"secrets.aws-access-key-id": 1}}) in recorded
    assert g.instructions_redacted("s", f"Key {AWS}") is None
    assert guard().instructions_redacted("s", f"Key {AWS} token {TOKEN}") == \
        "Key [REDACTED:aws-access-key-id] token [REDACTED:configured-secret]"
    assert guard().instructions_redacted("s", "Use the search tool first.") == "Use the search tool first."


def test_lists_and_instructions_are_redacted_end_to_end(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tools = [{"name": "desc", "description": f"Uses key {AWS} ssn {SSN}",
              "inputSchema": {"type": "object", "properties": {"q": {"type": "string", "description": f"pass {GH}"}}}},
             {"name": AWS, "description": "named after a key", "inputSchema": {"type": "object"}},
             {"name": "plain", "description": "lists files", "inputSchema": {"type": "object"}}]
    spec = tmp_path / "tools.json"
    spec.write_text(json.dumps(tools))
    url = serve_gateway(f'[servers.d]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "described_server.py"}", '
                        f'"--tools", "{spec}", "--instructions", "Key {AWS} for ssn {SSN}"]\n')
    with httpx.Client(trust_env=False, timeout=60) as http:
        _, listing = http_call(http, url, "tools/list", {})
        _, discover = http_call(http, url, "server/discover", {}, rid=2)
    names = [t["name"] for t in listing["result"]["tools"]]
    assert names == ["d__desc", "d__plain"]
    flat = json.dumps(listing) + json.dumps(discover)
    assert AWS not in flat and GH not in flat and SSN not in flat
    assert "[REDACTED:aws-access-key-id]" in discover["result"]["instructions"]


# ------------------------------------------------------------------------------------------ 3: codes the client acts on


async def test_kept_codes_keep_only_their_spec_data_and_a_fixed_message() -> None:
    g = errors.from_config(parse({}))
    assert g is not None
    cases = {-32022: ({"supported": ["2025-06-18"], "env": {"ip": "10.0.0.7"}}, {"supported": ["2025-06-18"]}),
             -32021: ({"requiredCapabilities": {"sampling": {}}, "trace": "x"},
                      {"requiredCapabilities": {"sampling": {}}}),
             -32020: ({"header": "Mcp-Name", "host": "db-prod-7"}, {}),
             -32042: ("not an object", {})}
    for code, (data, kept) in cases.items():
        out = await g.on_error(call(), ProtocolError(code, "Traceback: File /srv/app/db.py host=db-prod-7", data))
        assert out is not None and out.code == code
        assert "Traceback" not in out.message and "db-prod-7" not in out.message
        assert out.data == {**kept, "correlationId": out.data["correlationId"]}


# ------------------------------------------------------------------------------------------ 4: structuredContent


@pytest.mark.parametrize("structured", [{"name": "Jane", "ssn": "078051123"}, {"employee": {"ssn": "078051123"}},
                                        {"card": 4111111111111111}, {"cards": [4111111111111111], "n": "a\nb"},
                                        {"ssn": 234567891}])
async def test_labelled_and_numeric_pii_in_structured_content_is_redacted(structured: dict[str, Any]) -> None:
    result = {"content": [{"type": "text", "text": "ok"}], "structuredContent": structured}
    out = await guard().on_result(call(), json.loads(json.dumps(result)))
    assert out is not None and "[REDACTED:pii-" in json.dumps(out["structuredContent"])
    flat = json.dumps(out)
    assert "078051123" not in flat and "4111111111111111" not in flat and "234567891" not in flat


async def test_numbers_that_are_not_pii_pass_and_block_mode_refuses_a_numeric_card() -> None:
    result = {"content": [{"type": "text", "text": "ok"}], "structuredContent": {"id": 1234567890123, "n": 7}}
    assert await guard().on_result(call(), json.loads(json.dumps(result))) is None
    card = {"content": [{"type": "text", "text": "ok"}], "structuredContent": {"card": 4111111111111111}}
    with pytest.raises(Refusal) as caught:
        await guard(pii={"card": "block"}).on_result(call(), card)
    assert caught.value.rule == "pii.card"


# ------------------------------------------------------------------------------------------ 5: passwords


@pytest.mark.parametrize(("text", "gone"), [("db_password = Tr0ub4dor&3xyz", "&3xyz"),
                                            ("export DB_PASS='Xy7#k&9!qZ'", "&9!qZ"),
                                            ("PASSWORD=ab&cd&ef&gh12", "ab&cd&ef&gh12"),
                                            ("password: hunter2;rm,x", ";rm,x")])
async def test_passwords_are_redacted_whole(text: str, gone: str) -> None:
    out = await guard().on_result(call(), {"content": [{"type": "text", "text": text}]})
    assert out is not None and gone not in out["content"][0]["text"]


async def test_a_password_read_from_a_call_is_not_a_value() -> None:
    assert await guard().on_result(call(), {"content": [{"type": "text", "text": "password = getpass();"}]}) is None


# ------------------------------------------------------------------------------------------ 6, 10: server messages


async def test_meta_of_server_messages_is_scanned() -> None:
    params = {"progressToken": "p1", "progress": 1, "message": "step", "_meta": {"note": f"token {TOKEN}"}}
    out = await guard().on_message(system_context(), "s", "notifications/progress", params)
    assert out is not None and TOKEN not in json.dumps(out)


async def test_overlong_strings_of_server_messages_are_cut_with_a_marker() -> None:
    g = guard(output={"max_result_bytes": 4096})
    out = await g.on_message(system_context(), "s", "notifications/message",
                             {"level": "info", "data": "x" * 100_000})
    assert out is not None and len(out["data"]) < 4200
    assert out["data"].endswith("[mcpward: truncated from 100,000 characters]")


# ------------------------------------------------------------------------------------------ 7: config secrets


def test_short_secret_names_count_as_secrets() -> None:
    env = {"DB_PASS": "pass-value-1", "GH_PAT": "pat-value-22", "STRIPE_SK": "sk-value-333",
           "SMTP_PASSWD": "passwd-value", "API_TOKEN": "token-value", "PATH": "/usr/bin:/bin", "TASK": "nightly-run"}
    cfg = parse({"servers": {"s": {"command": "x", "env": env}}})
    assert held_secrets(cfg) == sorted(["pass-value-1", "pat-value-22", "sk-value-333", "passwd-value", "token-value"])


# ------------------------------------------------------------------------------------------ 8: truncation marker


async def test_a_cut_result_says_so_even_when_redaction_brought_it_under_the_cap() -> None:
    g = guard(output={"max_result_bytes": 4096})
    # Cut before the scan (longer than the cap and its scan margin); redaction then shrinks what is
    # left to a few bytes, under the cap: the client must still learn that the result was cut.
    text = "password=" + "Zz9!" * 50_000
    out = await g.on_result(call(), {"content": [{"type": "text", "text": text}]})
    assert out is not None and "truncated" in out["_meta"]["mcpward/output"]
    assert out["content"][0]["text"] == "password=[REDACTED:generic-password]"
    assert out["content"][-1]["text"].startswith("[mcpward: result truncated from ")


async def test_base64_of_zero_bytes_is_not_a_twitter_token() -> None:
    text = base64.b64encode(b"\0" * 4000 + b"tail data").decode()
    assert await guard().on_result(call(), {"content": [{"type": "text", "text": text}]}) is None


# ------------------------------------------------------------------------------------------ 9: folded forms


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize("hidden", [fullwidth(AWS), AWS[:4] + "\ufe0f" + AWS[4:], fullwidth(TOKEN)])
async def test_fullwidth_and_variation_selector_forms_are_redacted_whole(hidden: str) -> None:
    out = await guard().on_result(call(), {"content": [{"type": "text", "text": f"v {hidden} ok ❤️"}]})
    assert out is not None
    text = out["content"][0]["text"]
    assert text.startswith("v [REDACTED:") and text.endswith(" ok ❤️")  # the rest is left as it was
    structured = {"content": [{"type": "text", "text": "ok"}], "structuredContent": {"k": hidden}}
    out = await guard().on_result(call(), structured)
    assert out is not None and out["structuredContent"]["k"].startswith("[REDACTED:")
    with pytest.raises(Refusal):
        await guard(secrets={"mode": "block"}).on_result(call(), {"content": [{"type": "text", "text": hidden}]})


async def test_fullwidth_text_without_secrets_passes() -> None:
    text = f"{fullwidth('Hello, world!')} ❤️ café"
    assert await guard().on_result(call(), {"content": [{"type": "text", "text": text}]}) is None


async def test_folded_findings_keep_the_text_around_them_exact() -> None:
    # Selectors and wide characters before, between and after two findings shift every offset.
    text = f"日本語❤️ {fullwidth(AWS)}{WIDE_COMMA}中文 {AWS[:4]}\ufe0f{AWS[4:]} end ❤️ {fullwidth('ok')}"
    out = await guard().on_result(call(), {"content": [{"type": "text", "text": text}]})
    assert out is not None
    marker = "[REDACTED:aws-access-key-id]"
    assert out["content"][0]["text"] == f"日本語❤️ {marker}{WIDE_COMMA}中文 {marker} end ❤️ {fullwidth('ok')}"
