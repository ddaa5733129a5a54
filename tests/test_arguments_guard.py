"""The argument guard as a whole: configuration, limits, modes, kinds, methods, fail-closed.

The screens have their own files (tests/test_args_*.py); this one drives the Guard itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway import config
from mcpward.gateway.config import ConfigError
from mcpward.gateway.context import system_context
from mcpward.guards import arguments as arguments_module
from mcpward.guards.arguments import ArgumentGuard, from_config
from mcpward.guards.arguments_config import ArgumentSettings, parse
from mcpward.guards.base import Call, Refusal
from mcpward.guards.url_screen import static_resolver

PUBLIC = "93.184.215.14"
RESOLVER = static_resolver({"example.com": [PUBLIC], "docs.example.com": [PUBLIC], "inside.example.com": ["10.0.0.7"]})


def make_call(arguments: Any, *, definition: dict[str, Any] | None = None, server: str = "srv", tool: str = "tool",
              method: str = "tools/call") -> Call:
    params: dict[str, Any] = {"name": tool}
    if arguments is not None:
        params["arguments"] = arguments
    return Call(ctx=system_context(), method=method, params=params, server=server, target=tool,
                exposed=f"{server}__{tool}", definition=definition)


async def refusal(guard: ArgumentGuard, arguments: Any, **kw: Any) -> Refusal | None:
    try:
        await guard.on_request(make_call(arguments, **kw))
    except Refusal as exc:
        return exc
    return None


async def rule_of(guard: ArgumentGuard, arguments: Any, **kw: Any) -> str | None:
    found = await refusal(guard, arguments, **kw)
    return None if found is None else found.rule


def guard(**settings: Any) -> ArgumentGuard:
    s = ArgumentSettings()
    for key, value in settings.items():
        setattr(s, key, value)
    return ArgumentGuard(s, RESOLVER)


def cfg_with(arguments: dict[str, Any] | None = None, servers: dict[str, Any] | None = None) -> config.GatewayConfig:
    data: dict[str, Any] = {"servers": servers or {"srv": {"command": "true"}}}
    if arguments is not None:
        data["guards"] = {"arguments": arguments}
    return config.parse(data, "test.toml")


# ------------------------------------------------------------------ configuration
def test_from_config_defaults_and_off_switch() -> None:
    built = from_config(cfg_with())
    assert isinstance(built, ArgumentGuard)
    s = built.settings
    assert (s.max_string, s.max_items, s.max_depth, s.max_total) == (8192, 1000, 15, 262144)
    assert s.mode == "block" and s.additional_properties == "allow" and not s.allow_private_urls
    assert s.url_schemes == ("http", "https", "data")
    assert from_config(cfg_with({"enabled": False})) is None


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"max_strin": 5}, "guards.arguments.max_strin", "unknown key"),
    ({"mode": "warn"}, "guards.arguments.mode", "must be one of block, log"),
    ({"modes": {"urls": "log"}}, "guards.arguments.modes.urls", "unknown check family"),
    ({"modes": {"url": "off"}}, "guards.arguments.modes.url", "must be one of"),
    ({"max_depth": 0}, "guards.arguments.max_depth", "between"),
    ({"additional_properties": "false"}, "guards.arguments.additional_properties", "must be one of allow, deny"),
    ({"resolver_map": {"a.example": "not-an-ip"}}, "guards.arguments.resolver_map.a.example", "not an IP address"),
    ({"roots": ["relative/dir"]}, "guards.arguments.roots[0]", "absolute path"),
    ({"servers": {"nope": {"roots": ["/x"]}}}, "guards.arguments.servers.nope", "no such server"),
    ({"servers": {"srv": {"rots": ["/x"]}}}, "guards.arguments.servers.srv.rots", "unknown key"),
    ({"sensitive_paths_file": "missing.txt"}, "guards.arguments.sensitive_paths_file", "cannot read"),
    ({"url_schemes": []}, "guards.arguments.url_schemes", "at least one"),
])
def test_bad_config_names_the_key(table: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_config(cfg_with(table))
    assert info.value.key == key and problem in info.value.problem


def test_config_values_reach_the_guard(tmp_path: Path) -> None:
    patterns = tmp_path / "sensitive.txt"
    patterns.write_text("# only this\nsecret-dir/\n")
    built = from_config(cfg_with({
        "max_string": 10, "mode": "log", "modes": {"path": "block"}, "roots": ["/srv/data/"],
        "resolver_map": {"Rebind.Example.COM.": ["127.0.0.1"]}, "url_schemes": ["HTTPS"],
        "sensitive_paths_file": str(patterns), "servers": {"srv": {"roots": ["/other"], "allow_private_urls": True}},
    }))
    assert built is not None
    s = built.settings
    assert s.max_string == 10 and s.mode_for("url") == "log" and s.mode_for("path") == "block"
    assert s.roots == ("/srv/data",) and s.roots_for("srv") == ("/other",) and s.roots_for("else") == ("/srv/data",)
    assert s.resolver_map == {"rebind.example.com": ["127.0.0.1"]} and s.url_schemes == ("https",)
    assert s.sensitive_patterns == ["secret-dir/"] and s.allow_private_for("srv") and not s.allow_private_for("x")


def test_operator_param_kinds_come_from_server_tool_overrides() -> None:
    tools = {"tool": {"params": {"target": "url"}}}
    built = from_config(cfg_with(servers={"srv": {"command": "true", "tools": tools}}))
    assert built is not None and built.settings.param_kinds == {("srv", "tool"): {"target": "url"}}


# ------------------------------------------------------------------ limits
@pytest.mark.parametrize(("name", "limit", "rule", "make"), [
    ("max_string", 8192, "args.limit.string", lambda n: {"note": "a" * n}),
    # bytes, not characters: 'é' is two bytes in UTF-8
    ("max_string", 8192, "args.limit.string", lambda n: {"note": "é" * (n // 2) + "a" * (n % 2)}),
    # a content-kind parameter (a file or message body) has its own, larger limit
    ("max_content", 131072, "args.limit.string", lambda n: {"content": "a" * n}),
    ("max_string", 8192, "args.limit.string", lambda n: {"k" * n: 1}),  # object keys count too
    ("max_items", 1000, "args.limit.items", lambda n: {"list": list(range(n))}),
    ("max_items", 1000, "args.limit.items", lambda n: {"map": {str(i): i for i in range(n)}}),
    ("max_depth", 15, "args.limit.depth", lambda n: _nested(n)),
    ("max_total", 262144, "args.limit.total", lambda n: {"t": "a" * (n - len('{"t":""}'))}),
])
async def test_each_limit_accepts_the_limit_and_refuses_one_more(
        name: str, limit: int, rule: str, make: Any) -> None:
    g = guard(max_string=300_000) if name == "max_total" else guard()
    assert await rule_of(g, make(limit)) is None
    found = await refusal(g, make(limit + 1))
    assert found is not None and found.rule == rule
    assert name in found.message and str(limit) in found.message


def _nested(depth: int) -> dict[str, Any]:
    """`depth` containers including the arguments object itself."""
    inner: Any = []
    for _ in range(depth - 2):
        inner = [inner]
    return {"deep": inner}


async def test_limit_messages_name_the_path_not_the_value() -> None:
    found = await refusal(guard(max_string=8), {"files": [{"path": "a"}, {"path": "SECRET-VALUE-123"}]})
    assert found is not None and found.rule == "args.limit.string"
    assert "arguments.files[1].path" in found.message and "SECRET" not in found.message
    assert found.to_error().code == -32004 and found.to_error().data == {"rule": "args.limit.string"}


async def test_depth_is_checked_before_anything_expensive() -> None:
    # 100k levels would break recursive code; the walk is iterative and stops at the limit.
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    assert await rule_of(guard(), {"a": deep}) == "args.limit.depth"


# ------------------------------------------------------------------ modes
async def test_log_mode_allows_and_audits(caplog: pytest.LogCaptureFixture) -> None:
    g = guard(mode="log")
    call = make_call({"url": "http://169.254.169.254/latest/meta-data/", "text": "a\u202eb"})
    with caplog.at_level(logging.INFO, logger="mcpward.audit"):
        assert await g.on_request(call) is None
    assert call.notes["argument_flags"] == ["args.unicode.bidi", "args.url.non-public"]
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcpward.audit"]
    assert {r["rule"] for r in records} == {"args.unicode.bidi", "args.url.non-public"}
    assert all(r["event"] == "argument_flagged" and "169.254" not in json.dumps(r) for r in records)


async def test_limits_in_log_mode_do_not_hide_deeper_values_from_blocking_checks() -> None:
    g = guard(modes={"limit": "log"}, max_depth=3)
    deep = {"a": {"b": {"c": {"url": "http://169.254.169.254/"}}}}
    assert await rule_of(g, deep) == "args.url.non-public"
    assert await rule_of(guard(max_depth=3), deep) == "args.limit.depth"


async def test_mode_per_family() -> None:
    g = guard(modes={"url": "log"})
    assert await rule_of(g, {"url": "http://127.0.0.1/"}) is None
    assert await rule_of(g, {"path": "../../etc/passwd"}) == "args.path.traversal"
    g = guard(mode="log", modes={"command": "block"})
    assert await rule_of(g, {"path": "../x", "command": "; id"}) == "args.command.injection"


# ------------------------------------------------------------------ kinds
async def test_operator_kind_wins_over_name_and_schema() -> None:
    g = guard(param_kinds={("srv", "tool"): {"target": "url", "files.where": "path", "url": "text"}})
    schema = {"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}}
    assert await rule_of(g, {"target": "http://127.0.0.1/"}) == "args.url.non-public"
    assert await rule_of(g, {"files": [{"where": "/etc/shadow"}]}) == "args.path.sensitive"
    # the operator says `url` is plain text here: no URL screening although the schema says uri
    assert await rule_of(g, {"url": "http://127.0.0.1/"}, definition={"inputSchema": schema}) is None
    assert await rule_of(g, {"target": "http://127.0.0.1/"}, tool="other") is None  # override is per tool


async def test_schema_format_and_description_classify_parameters() -> None:
    schema = {"type": "object", "properties": {
        "target": {"type": "string", "format": "uri"},
        "where": {"type": "string", "description": "Path to the file to read"},
        "line": {"type": "string", "description": "The shell command to run"},
        "items": {"type": "array", "items": {"type": "object", "properties": {"src": {"format": "iri"}}}},
    }}
    d = {"inputSchema": schema}
    assert await rule_of(guard(), {"target": "http://10.0.0.1/"}, definition=d) == "args.url.non-public"
    assert await rule_of(guard(), {"where": "/etc/shadow"}, definition=d) == "args.path.sensitive"
    assert await rule_of(guard(), {"line": "ls; id"}, definition=d) == "args.command.injection"
    assert await rule_of(guard(), {"items": [{"src": "gopher://x.example/"}]}, definition=d) == "args.url.scheme"
    assert await rule_of(guard(), {"target": "http://10.0.0.1/"}) is None  # without the schema: plain text


async def test_without_a_schema_names_classify_and_only_generic_checks_apply() -> None:
    g = guard()
    assert await rule_of(g, {"repo_path": "../../x"}) == "args.path.traversal"
    assert await rule_of(g, {"targetUrl": "file:///etc/passwd"}) == "args.url.scheme"
    assert await rule_of(g, {"cmd": "a && $(id)"}) == "args.command.injection"
    assert await rule_of(g, {"note": "see ../../etc/passwd and http://127.0.0.1"}) is None  # text
    assert await rule_of(g, {"note": "zero\u200bwidth"}) == "args.unicode.invisible"  # generic


async def test_prompts_get_arguments_are_screened_with_prompt_argument_kinds() -> None:
    definition = {"name": "p", "arguments": [{"name": "where", "description": "a file path"}]}
    g = guard()
    assert await rule_of(g, {"where": "/etc/shadow"}, method="prompts/get", definition=definition) \
        == "args.path.sensitive"
    assert await rule_of(g, {"topic": "a\u2066b"}, method="prompts/get") == "args.unicode.bidi"
    assert await rule_of(g, {"topic": "fine"}, method="prompts/get", definition=definition) is None


async def test_other_methods_pass_untouched() -> None:
    call = make_call({"url": "http://127.0.0.1/"}, method="resources/subscribe")
    assert await guard().on_request(call) is None


async def test_missing_and_non_object_arguments() -> None:
    assert await rule_of(guard(), None) is None
    assert await rule_of(guard(), ["a"]) == "args.schema.mismatch"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert await rule_of(guard(), None, definition={"inputSchema": schema}) == "args.schema.mismatch"


async def test_an_internal_failure_refuses_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(value: str) -> None:
        raise RuntimeError("bug")

    # Both character screens: a flat call takes the one-pass screen, a nested one the full walk.
    monkeypatch.setattr(arguments_module, "clean_fast", boom)
    monkeypatch.setattr(arguments_module, "screen_characters", boom)
    assert await rule_of(guard(), {"text": "x"}) == "args.internal"
    assert await rule_of(guard(), {"nested": {"text": "x\u200b"}}) == "args.internal"


async def test_typical_call_passes_and_returns_none() -> None:
    schema = {"type": "object", "properties": {"url": {"type": "string", "format": "uri"},
                                               "max_length": {"type": "integer"}}}
    call = make_call({"url": "https://docs.example.com/a?b=c", "max_length": 5000}, definition={"inputSchema": schema})
    assert await guard().on_request(call) is None
    assert call.params["arguments"]["url"] == "https://docs.example.com/a?b=c"


# ------------------------------------------------------------------ content-kind string limit
async def test_a_file_body_over_max_string_is_allowed_but_not_in_other_parameters() -> None:
    body = "line of a report\n" * 700  # ~12 KB: a real file write
    g = guard()
    assert await rule_of(g, {"path": "/srv/data/report.md", "content": body}) is None
    assert await rule_of(g, {"message": {"body": body}}) is None  # nested: the nearest name decides
    for name in ("title", "url", "command", "query", "path"):
        found = await refusal(g, {name: body})
        assert found is not None and found.rule == "args.limit.string", name
        assert "(max_string)" in found.message and f"arguments.{name}" in found.message


async def test_content_kind_from_schema_annotations_and_operator_overrides() -> None:
    big = "QUJD" * 3000  # 12 KB of base64
    definition = {"name": "tool", "inputSchema": {"type": "object", "properties": {
        "blob": {"type": "string", "contentEncoding": "base64"}, "label": {"type": "string"}}}}
    g = guard()
    assert await rule_of(g, {"blob": big}, definition=definition) is None
    assert await rule_of(g, {"label": big}, definition=definition) == "args.limit.string"
    # the operator can say `payload` is content (and that `content` is not)
    g = guard(param_kinds={("srv", "tool"): {"payload": "content", "content": "text"}})
    assert await rule_of(g, {"payload": big}) is None
    assert await rule_of(g, {"content": big}) == "args.limit.string"


async def test_content_stays_bounded_by_max_content_and_max_total() -> None:
    found = await refusal(guard(), {"content": "a" * 200_000})
    assert found is not None and found.rule == "args.limit.string" and "(max_content)" in found.message
    # a larger max_content does not lift the total: a flood of arguments is still refused
    g = guard(max_content=1_000_000)
    assert await rule_of(g, {"content": "a" * 300_000}) == "args.limit.total"
    assert await rule_of(g, {"content": "a" * 100_000, "body": "b" * 100_000, "text": "c" * 100_000}) \
        == "args.limit.total"
    # max_content below max_string never makes content stricter than any other string
    assert await rule_of(guard(max_content=100), {"content": "a" * 8000}) is None


async def test_oversized_strings_in_log_mode_are_flagged_and_screened() -> None:
    call = make_call({"title": "x" * 9000, "url": "http://169.254.169.254/"})
    await guard(mode="log").on_request(call)
    assert call.notes["argument_flags"] == ["args.limit.string", "args.url.non-public"]


def test_max_content_is_configurable() -> None:
    settings = parse(cfg_with({"max_content": 65536}))
    assert settings is not None and settings.max_content == 65536
    with pytest.raises(ConfigError, match="max_content"):
        parse(cfg_with({"max_content": 0}))
    with pytest.raises(ConfigError, match="max_content"):
        parse(cfg_with({"max_content": "big"}))


FLAT_CASES: list[dict[str, Any]] = [
    {"path": "README.md"},
    {"path": "README.md", "n": 3, "ok": True, "none": None, "ratio": 0.5},
    {"query": "a `b` c", "cmd": "ls"},
    {"text": "tab\tand\nnewline\rreturn"},
    {"text": "non\u00a0breaking space"},  # non-printable but allowed: the full walk decides
    {"text": "zero\u200bwidth"},
    {"text": "Persian \u0645\u200c\u06cc"},
    {"k\u200bey": "value"},
    {"big": "x" * 8192},  # over max_string / 4 characters: measured by the full walk
    {"big": "\u00e9" * 2050},
    {"": ""},
    {},
]


@pytest.mark.parametrize("arguments", FLAT_CASES)
def test_the_flat_fast_path_returns_what_the_full_walk_returns(arguments: dict[str, Any]) -> None:
    g = guard(mode="log")
    call = make_call(arguments)
    flat = g._flat(arguments)
    found = arguments_module._Findings(g, call)
    oversized: list[Any] = []
    walked = g._walk(arguments, found, oversized)
    if flat is not None:  # taken only where the full walk has nothing to report
        assert flat == walked
        assert not oversized and "argument_flags" not in call.notes


def test_the_flat_fast_path_leaves_nested_and_limit_cases_to_the_full_walk() -> None:
    assert guard()._flat({"a": {"b": "c"}}) is None
    assert guard()._flat({"a": ["b"]}) is None
    assert guard(max_items=1)._flat({"a": 1, "b": 2}) is None
    assert guard(max_depth=0)._flat({"a": 1}) is None


async def test_refusals_on_flat_calls_are_the_full_walks() -> None:
    assert await rule_of(guard(), {"text": "zero\u200bwidth"}) == "args.unicode.invisible"
    assert await rule_of(guard(), {"k\u202eey": "v"}) == "args.unicode.bidi"
    assert await rule_of(guard(max_depth=0), {"a": 1}) == "args.limit.depth"
    assert await rule_of(guard(max_items=1), {"a": 1, "b": 2}) == "args.limit.items"
    assert await rule_of(guard(), {"path": "a" * 9000}) == "args.limit.string"
    assert await rule_of(guard(), {"path": "../etc/passwd"}) == "args.path.traversal"
    assert await rule_of(guard(), {"path": "php://filter/resource=x"}) == "args.url.scheme"
    assert await rule_of(guard(), {"path": "http://inside.example.com/x"}) == "args.url.non-public"
    assert await rule_of(guard(), {"text": "a ```` b"}) == "args.backticks"


# ------------------------------------------------------------------ hosts (audit 3, gap 4)
HOST_SCHEMA = {"type": "object", "properties": {
    "host": {"type": "string", "format": "hostname", "description": "Host or IP address to connect to"},
    "ip": {"type": "string", "format": "ipv4"}, "peer": {"type": "string", "description": "IP address of the peer"}}}


@pytest.mark.parametrize("arguments", [
    {"host": "169.254.169.254"}, {"ip": "169.254.169.254"}, {"host": "metadata.google.internal"},
    {"host": "0xa9fea9fe"}, {"host": "2852039166"}, {"host": "inside.example.com"}, {"host": "localhost"},
    {"host": "db"}, {"host": "127.0.0.1:5432"}, {"peer": "::ffff:a9fe:a9fe"}, {"peer": "[fd00:ec2::254]"},
    {"host": "http://169.254.169.254/"}, {"host": "never-resolves.example.org"},
])
async def test_host_parameters_get_the_url_screen(arguments: dict[str, str]) -> None:
    found = await refusal(guard(), arguments, definition={"name": "tool", "inputSchema": HOST_SCHEMA})
    assert found is not None and found.rule.startswith("args.url."), (arguments, found)


async def test_public_hosts_pass_and_allow_private_urls_applies() -> None:
    definition = {"name": "tool", "inputSchema": HOST_SCHEMA}
    assert await rule_of(guard(), {"host": "example.com"}, definition=definition) is None
    assert await rule_of(guard(), {"host": "example.com:8443", "ip": "93.184.215.14"}, definition=definition) is None
    assert await rule_of(guard(), {"host": "2606:2800:220:1:248:1893:25c8:1946"}) is None  # by name, no schema
    private = guard(allow_private_urls=True)
    assert await rule_of(private, {"host": "inside.example.com"}, definition=definition) is None
    assert await rule_of(private, {"host": "169.254.169.254"}, definition=definition) == "args.url.non-public"


async def test_host_lists_wildcards_and_prefixes_are_screened_host_by_host() -> None:
    # audit 3 (diff), gap 6: these were refused as malformed authorities.
    definition = {"name": "tool", "inputSchema": HOST_SCHEMA}
    for value in ("example.com,docs.example.com", "example.com docs.example.com", "example.com, docs.example.com",
                  "*.example.com", "2001:4860:4860::8888/64", "8.8.8.0/24", "[2001:4860:4860::8888]:53"):
        assert await rule_of(guard(), {"host": value}, definition=definition) is None, value
    for value in ("example.com,169.254.169.254", "example.com inside.example.com", "*.metadata.google.internal",
                  "10.0.0.0/8", "fd00:ec2::254/64", "docs.example.com,,0xa9fea9fe"):
        found = await refusal(guard(), {"host": value}, definition=definition)
        assert found is not None and found.rule == "args.url.non-public", (value, found)
    many = ",".join(["example.com"] * 17)
    assert await rule_of(guard(), {"hosts": many}) == "args.url.malformed"  # more than MAX_HOSTS: no lookups


async def test_an_operator_can_declare_a_host_parameter() -> None:
    # `target` says nothing of being a host; the operator's [servers.srv.tools.tool.params] says so.
    g = guard(param_kinds={("srv", "tool"): {"target": "host"}})
    assert await rule_of(g, {"target": "169.254.169.254"}) == "args.url.non-public"
    assert await rule_of(guard(), {"target": "169.254.169.254"}) is None
    from mcpward.gateway import config as config_mod

    parsed = config_mod.parse({"servers": {"srv": {"command": "x", "tools": {"tool": {"params": {"target": "host"}}}}}})
    assert parsed.servers["srv"].tools["tool"].param_kinds == {"target": "host"}


# ------------------------------------------------------------------ completion and resource reads (gap 7)
def completion(value: Any, name: str = "city", context: Any = None) -> Call:
    params: dict[str, Any] = {"ref": {"type": "ref/prompt", "name": "p"}, "argument": {"name": name, "value": value}}
    if context is not None:
        params["context"] = context
    return Call(ctx=system_context(), method="completion/complete", params=params, server="srv", target="p",
                exposed="srv__p")


def read(uri: Any) -> Call:
    return Call(ctx=system_context(), method="resources/read", params={"uri": uri}, server="srv", target=uri,
                exposed=uri)


async def rule_for(call: Call, g: ArgumentGuard | None = None) -> str | None:
    try:
        await (g or guard()).on_request(call)
    except Refusal as exc:
        assert "Zq8vN3kL" not in exc.message  # never the value
        return exc.rule
    return None


@pytest.mark.parametrize(("call", "rule"), [
    (completion("Par"), None),
    (completion("Pa\u202eris"), "args.unicode.bidi"),
    (completion("a" * 8193), "args.limit.string"),
    (completion("http://169.254.169.254/latest", name="url"), "args.url.non-public"),
    (completion("../../etc/shadow", name="file_path"), "args.path.traversal"),
    (completion("x; id", name="command"), "args.command.injection"),
    (completion("Zq8vN3kL\x00", name="topic"), "args.unicode.control"),
    (completion(5), "args.schema.mismatch"),
    (completion("Par", context={"arguments": {"country": "France"}}), None),
    (completion("Par", context={"arguments": {"config_path": "/etc/shadow"}}), "args.path.sensitive"),
    (completion("Par", context={"arguments": {"host": "169.254.169.254"}}), "args.url.non-public"),
    (completion("Par", context={"arguments": ["x"]}), "args.schema.mismatch"),
    (completion("Par", context="x"), "args.schema.mismatch"),
])
async def test_completion_values_get_the_argument_screens(call: Call, rule: str | None) -> None:
    assert await rule_for(call) == rule


@pytest.mark.parametrize(("uri", "rule"), [
    ("test://static-text", None), ("db://secrets/aws", None), ("postgres://db.internal/app/users/schema", None),
    ("file:///srv/data/report.txt", None), ("https://example.com/doc", None),
    ("test://template/a\u202eb/data", "args.unicode.bidi"), ("test://x\x1b[2J", "args.unicode.control"),
    ("test://" + "a" * 8200, "args.limit.string"),
    ("file:///etc/shadow", "args.path.sensitive"), ("file:///srv/data/../../etc/passwd", "args.path.traversal"),
    ("http://169.254.169.254/latest", "args.url.non-public"), ("https://inside.example.com/", "args.url.non-public"),
])
async def test_resource_uris_get_limits_characters_and_their_scheme_screen(uri: str, rule: str | None) -> None:
    assert await rule_for(read(uri)) == rule


async def test_resource_uri_roots_and_log_mode() -> None:
    rooted = guard(roots=("/srv/data",))
    assert await rule_for(read("file:///srv/data/a.txt"), rooted) is None
    assert await rule_for(read("file:///opt/other.txt"), rooted) == "args.path.outside-roots"
    logged = guard(mode="log")
    call = read("file:///etc/shadow")
    assert await rule_for(call, logged) is None and call.notes["argument_flags"] == ["args.path.sensitive"]
