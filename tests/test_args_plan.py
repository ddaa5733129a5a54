"""The argument guard's per-tool plan: kinds, roots and private-address permission worked out once per
tool definition, and worked out again when the definition changes (a list_changed, a re-pin)."""

from __future__ import annotations

from typing import Any

from mcpward.guards.arguments_config import ServerArguments
from tests.test_arguments_guard import guard, rule_of

METADATA = "http://169.254.169.254/latest/meta-data/"


def tool(properties: dict[str, Any]) -> dict[str, Any]:
    return {"name": "tool", "inputSchema": {"type": "object", "properties": properties}}


async def test_a_changed_definition_is_planned_again() -> None:
    g = guard()
    plain = tool({"target": {"type": "string"}})  # "target" names no kind: text
    assert await rule_of(g, {"target": METADATA}, definition=plain) is None
    assert await rule_of(g, {"target": METADATA}, definition=plain) is None  # the plan is reused
    as_url = tool({"target": {"type": "string", "format": "uri"}})  # the server changed the tool
    assert await rule_of(g, {"target": METADATA}, definition=as_url) == "args.url.non-public"
    as_path = tool({"target": {"type": "string", "description": "Path to the file to read"}})
    assert await rule_of(g, {"target": "/etc/shadow"}, definition=as_path) == "args.path.sensitive"
    assert await rule_of(g, {"target": METADATA}, definition=plain) is None  # and back


async def test_each_server_is_planned_with_its_own_roots_and_addresses() -> None:
    g = guard(roots=("/srv/shared",), servers={"box": ServerArguments(roots=("/srv/box",), allow_private_urls=True)})
    files = tool({"path": {"type": "string"}, "url": {"type": "string"}})
    for _ in range(2):  # first call plans, the second reuses the plan
        assert await rule_of(g, {"path": "/srv/box/a.txt"}, definition=files, server="box") is None
        assert await rule_of(g, {"path": "/srv/box/a.txt"}, definition=files, server="srv") == "args.path.outside-roots"
        assert await rule_of(g, {"path": "/srv/shared/a.txt"}, definition=files, server="srv") is None
        assert await rule_of(g, {"path": "/srv/shared/a.txt"}, definition=files, server="box") == \
            "args.path.outside-roots"
        assert await rule_of(g, {"url": "http://10.0.0.7/"}, definition=files, server="box") is None
        assert await rule_of(g, {"url": "http://10.0.0.7/"}, definition=files, server="srv") == "args.url.non-public"


async def test_a_prompt_is_planned_from_the_definition_passed_with_each_call() -> None:
    g = guard()

    def prompt(description: str) -> dict[str, Any]:
        return {"name": "tool", "arguments": [{"name": "target", "description": description}]}

    for _ in range(2):
        assert await rule_of(g, {"target": METADATA}, definition=prompt("The URL to fetch"),
                             method="prompts/get") == "args.url.non-public"
        assert await rule_of(g, {"target": METADATA}, definition=prompt("The user's question"),
                             method="prompts/get") is None
