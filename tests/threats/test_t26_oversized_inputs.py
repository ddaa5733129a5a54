"""T26: oversized or deeply nested inputs. Each limit is accepted; limit + 1 is refused naming the limit.

Defaults: string 8192 bytes (UTF-8), 1000 items, depth 15 (the arguments object is level 1), total
262144 serialised bytes. Then the same with smaller configured limits, to show they are honoured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.threats.integrity_support import described
from tests.threats.mcp_http import call
from tests.threats.test_t01_ssrf import recorded, recording_config, tool


def nested(levels: int) -> dict[str, Any]:
    """`data` for the store tool such that the arguments nest `levels` containers deep."""
    inner: Any = {}
    for _ in range(levels - 2):
        inner = {"d": inner}
    return inner


def total_of(size: int, max_string: int) -> dict[str, Any]:
    """`data` such that {"data": data} serialises to exactly `size` bytes, no string over `max_string`."""
    data: dict[str, Any] = {}
    i = 0
    while size - len(orjson.dumps({"data": data})) > max_string:
        data[f"k{i}"] = "a" * (max_string - 40)
        i += 1
    data["last"] = ""
    data["last"] = "a" * (size - len(orjson.dumps({"data": data})))
    assert len(orjson.dumps({"data": data})) == size
    return data


def euros(size: int) -> str:
    """`size` UTF-8 bytes, mostly 3-byte '€': the limit counts bytes, not characters."""
    return "€" * (size // 3) + "a" * (size % 3)


def cases(max_string: int, max_items: int, max_depth: int, max_total: int) -> list[tuple[str, str, Any, Any]]:
    """(limit name, tool, arguments at the limit, arguments one over)."""
    return [
        ("max_string", "echo", {"text": "a" * max_string}, {"text": "a" * (max_string + 1)}),
        ("max_string", "echo", {"text": euros(max_string)}, {"text": euros(max_string + 1)}),
        ("max_items", "store", {"data": {"list": [0] * max_items}}, {"data": {"list": [0] * (max_items + 1)}}),
        ("max_depth", "store", {"data": nested(max_depth)}, {"data": nested(max_depth + 1)}),
        ("max_total", "store", {"data": total_of(max_total, max_string)},
         {"data": total_of(max_total + 1, max_string)}),
    ]


RULES = {"max_string": "args.limit.string", "max_items": "args.limit.items", "max_depth": "args.limit.depth",
         "max_total": "args.limit.total"}


def check_limits(url: str, record: Path, limits: tuple[int, int, int, int]) -> None:
    accepted = []
    with httpx.Client(trust_env=False, timeout=60) as http:
        for rid, (limit, name, at_limit, over) in enumerate(cases(*limits), start=1):
            reply = tool(http, url, name, at_limit, rid * 2)
            assert "result" in reply and not reply["result"].get("isError"), (limit, reply)
            accepted.append(at_limit)
            reply = tool(http, url, name, over, rid * 2 + 1)
            error = reply["error"]
            assert error["code"] == -32004 and error["data"]["rule"] == RULES[limit], (limit, error)
            assert limit in error["message"], error["message"]
    assert [r["arguments"] for r in recorded(record)] == [
        {"text": a["text"]} if "text" in a else {"data": a["data"]} for a in accepted]


def test_default_limits(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "calls.jsonl"
    check_limits(serve_gateway(recording_config(record)), record, (8192, 1000, 15, 262144))


def test_configured_limits(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "calls.jsonl"
    config = "max_string = 300\nmax_items = 20\nmax_depth = 5\nmax_total = 5000\n"
    check_limits(serve_gateway(recording_config(record, config)), record, (300, 20, 5, 5000))


def doubling_schema(links: int) -> dict[str, Any]:
    """Audit 3, gap 1: each $defs link names the next twice, so validation work doubles per link."""
    defs: dict[str, Any] = {f"a{i}": {"anyOf": [{"$ref": f"#/$defs/a{i + 1}"},
                                                {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}]}]} for i in range(links)}
    defs[f"a{links}"] = False
    return {"type": "object", "properties": {"q": {"$ref": "#/$defs/a0"}}, "$defs": defs}


def test_an_exploding_schema_is_refused_without_freezing_the_gateway(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tools = [{"name": "search", "description": "Search the catalogue.", "inputSchema": doubling_schema(30)},
             {"name": "ping", "description": "Answer pong.", "inputSchema": {"type": "object", "properties": {}}}]
    url = serve_gateway(described(tmp_path, "up", tools))
    with httpx.Client(trust_env=False, timeout=30) as http:
        _, reply = call(http, url, "tools/call", {"name": "up__ping", "arguments": {}})  # the first call warms up
        assert "called ping" in str(reply["result"]), reply
        started = time.perf_counter()
        _, reply = call(http, url, "tools/call", {"name": "up__search", "arguments": {"q": "weather"}}, rid=2)
        assert time.perf_counter() - started < 2  # 2**30 steps if it were validated
        assert reply["error"]["data"]["rule"] == "args.schema.too-complex", reply
        assert "weather" not in reply["error"]["message"]
        _, reply = call(http, url, "tools/call", {"name": "up__ping", "arguments": {}}, rid=3)
        assert "called ping" in str(reply["result"]), reply


def test_content_parameters_have_their_own_limit(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A file or message body (content kind, here declared by the operator) may exceed max_string up to
    max_content (docs/arguments.md: at 8 KiB, 1.3 % of real benign calls would be refused); one byte more is
    refused by the same rule. Any other parameter stays at max_string."""
    record = tmp_path / "calls.jsonl"
    config = recording_config(record) + '\n[servers.rec.tools.echo]\nparams = { text = "content" }\n'
    url = serve_gateway(config.replace("[guards.arguments]\n", "[guards.arguments]\nmax_content = 20000\n"))
    with httpx.Client(trust_env=False, timeout=60) as http:
        reply = tool(http, url, "echo", {"text": "a" * 20000}, 1)
        assert "result" in reply and not reply["result"].get("isError"), reply
        error = tool(http, url, "echo", {"text": euros(20001)}, 2)["error"]
        assert error["data"]["rule"] == "args.limit.string" and "max_content" in error["message"], error
        error = tool(http, url, "store", {"data": {"note": "a" * 8193}}, 3)["error"]  # not content: 8 KiB
        assert error["data"]["rule"] == "args.limit.string", error
    assert [r["arguments"] for r in recorded(record)] == [{"text": "a" * 20000}]
