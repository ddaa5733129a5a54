"""Numbers no double holds and lone surrogate escapes cross the gateway unchanged (transparency).

orjson reads an integer beyond 64 bits as a float and rounds long decimals, and refuses a lone
surrogate escape: before, `10000000000000000000001` reached the other side as `1e+22` and a reply
holding `"\\ud83d"` became a -32603. These tests compare the raw JSON text on both sides.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mcpward.protocol import exact, jsonrpc
from tests.conftest import FIXTURES, MCPWARD, PYTHON, toml_list, with_policy
from tests.fixtures import exact_numbers_server as srv
from tests.rawclient import end

MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "exact-test", "version": "1"}}
SERVER = f'[servers.x]\ncommand = "{PYTHON}"\nargs = {toml_list([str(FIXTURES / "exact_numbers_server.py")])}\n'
ARG_BIG = "99999999999999999999999"
ARG_LONG = "0.12345678901234567890123"
# A raw tools/call: the arguments hold numbers orjson would change, written as text.
CALL_PARAMS = ('{"name":"x__echo","arguments":{"a":' + ARG_BIG + ',"f":' + ARG_LONG + ',"n":7},"_meta":'
               + json.dumps(META) + "}")


def request_line(rid: int, method: str, params: str) -> bytes:
    return ('{"jsonrpc":"2.0","id":' + str(rid) + ',"method":"' + method + '","params":' + params + "}").encode()


def check_listing(raw: bytes) -> None:
    assert b'"default":' + srv.BIG_DEFAULT.encode() in raw
    assert b'"minimum":' + srv.LONG_BOUND.encode() in raw


def check_call(raw: bytes) -> None:
    reply = json.loads(raw)  # the standard library keeps big ints; the text checks cover the decimals
    assert "error" not in reply, reply
    # What the server received (its request line, echoed as text): the client's number tokens, exactly.
    seen = reply["result"]["content"][0]["text"]
    assert '"a":' + ARG_BIG in seen and '"f":' + ARG_LONG in seen and '"n":7' in seen
    # What the client receives: the server's tokens, exactly, and the lone surrogate as its escape.
    for token in (srv.RESULT_BIG, srv.RESULT_NEG, srv.RESULT_PI, srv.U64_MAX):
        assert re.search(rb"[:,\[]" + re.escape(token.encode()) + rb"[,}\]]", raw), token
    assert b'"small":42' in raw and b'"half":0.5' in raw
    assert b'"s":"' + srv.LONE.encode() + b'"' in raw


async def test_stdio_run_keeps_exact_numbers_both_ways(tmp_path: Path) -> None:
    config = tmp_path / "mcpward.toml"
    config.write_text(with_policy(SERVER))
    proc = await asyncio.create_subprocess_exec(MCPWARD, "run", "-c", str(config), stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    replies: dict[int, bytes] = {}

    async def ask(rid: int, method: str, params: str) -> bytes:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(request_line(rid, method, params) + b"\n")
        await proc.stdin.drain()
        while rid not in replies:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the gateway closed stdout"
            head = orjson.loads(line) if not exact.needs_slow_parse(line) else {"id": json.loads(line).get("id")}
            if "method" not in head:
                replies[head["id"]] = line.rstrip(b"\n")
        return replies[rid]

    try:
        check_listing(await ask(1, "tools/list", '{"_meta":' + json.dumps(META) + "}"))
        check_call(await ask(2, "tools/call", CALL_PARAMS))
        # The ordinary path is unchanged: a call without long numbers still gets its usual answer.
        plain = json.loads(await ask(3, "tools/call", '{"name":"x__echo","arguments":{"n":1},"_meta":'
                                     + json.dumps(META) + "}"))
        assert '"arguments":{"n":1}' in plain["result"]["content"][0]["text"]
    finally:
        await end(proc)


def http_post(http: httpx.Client, url: str, method: str, name: str | None, params: str) -> bytes:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    response = http.post(url, content=request_line(1, method, params), headers=headers)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[6:] for line in response.content.split(b"\n") if line.startswith(b"data: ")]
        return data[-1]
    return response.content


def test_http_serve_keeps_exact_numbers_both_ways(serve_gateway: Any) -> None:
    url = serve_gateway(SERVER)
    with httpx.Client(timeout=30) as http:
        check_listing(http_post(http, url, "tools/list", None, '{"_meta":' + json.dumps(META) + "}"))
        check_call(http_post(http, url, "tools/call", "x__echo", CALL_PARAMS))


# ------------------------------------------------------------------ the codec itself


def test_ordinary_frames_stay_on_the_fast_path() -> None:
    ordinary = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"t":1700000000000,"x":0.25}}}'
    assert not exact.needs_slow_parse(ordinary)
    assert exact.needs_slow_parse(b'{"a":1234567890.1234567}')  # 17 significant digits around a dot
    assert exact.needs_slow_parse('{"a":10000000000000000000001}')
    message = jsonrpc.decode(ordinary, 1 << 20)
    assert jsonrpc.encode(message) == ordinary


def test_decode_and_encode_keep_the_text_of_every_number() -> None:
    raw = (b'{"i":10000000000000000000001,"n":-10000000000000000000001,"u":18446744073709551615,'
           b'"d":3.14159265358979323846264338327950288,"r":0.30000000000000004,'
           b'"z":[1,2.5,true,null,"t"],"s":"\xc3\xa9\\ud83d\\ude00"}')
    message = jsonrpc.decode(raw, 1 << 20)
    assert message["i"] == 10**22 + 1 and type(message["i"]) is int  # an integer to every guard
    assert isinstance(message["d"], float) and abs(message["d"] - 3.141592653589793) < 1e-15
    assert type(message["r"]) is float  # a double's own shortest text needs no memory
    assert jsonrpc.encode(message) == raw.replace(b"\\ud83d\\ude00", "\U0001f600".encode())
    assert jsonrpc.encode(copy.deepcopy(message)) == jsonrpc.encode(message)  # copies keep the text


def test_a_lone_surrogate_is_kept_as_its_escape_not_a_parse_error() -> None:
    raw = b'{"jsonrpc":"2.0","id":3,"result":{"text":"cut \\ud83d end","k":"\\uDC00"}}'
    message = jsonrpc.decode(raw, 1 << 20)
    assert message["result"]["text"] == "cut \ud83d end"
    assert jsonrpc.encode(message) == raw.replace(b"DC00", b"dc00")
    # A string a guard built from it (no memory of the input) is written the same way.
    assert exact.dumps({"t": message["result"]["text"] + "!"}) == b'{"t":"cut \\ud83d end!"}'


def test_bad_json_still_fails_on_the_slow_path() -> None:
    for raw in (b'{"a":10000000000000000000001', b'{"a":10000000000000000000001,}', b'{"s":"\\ud800"',
                b'{"a":NaN,"b":10000000000000000000001}', b"\xef\xbb\xbf{\"a\":10000000000000000000001}",
                b'{"s":"\xff","a":10000000000000000000001}'):
        with pytest.raises(jsonrpc.ProtocolError) as info:
            jsonrpc.decode(raw, 1 << 20)
        assert info.value.code == jsonrpc.PARSE_ERROR, raw
