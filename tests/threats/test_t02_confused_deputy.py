"""T02 confused deputy: one upstream session reused across users.

Two principals (API keys alice and bob) reach the same stateful upstream through the gateway.
Upstream sessions are bound to the principal, so whatever alice leaves in hers (here: a note the
server keeps in its memory) bob can never see, over the stateless 2026-07-28 path and over
legacy sessions alike; and the policy decides for the real principal, not for the gateway.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.threats.identity_support import MEMO_SERVER, Keys, LegacyClient, modern_call, reply_of, tool_text

POLICY = """
@id("everyone-everything")
permit (principal, action, resource);
@id("staff-only-writes-notes")
forbid (principal, action == Action::"call_tool", resource)
when { resource.name == "remember" && !(principal in Group::"staff") };
"""


def test_one_principal_never_sees_anothers_upstream_state(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = Keys()
    policy = tmp_path / "deputy.cedar"
    policy.write_text(POLICY)
    url = serve_gateway(MEMO_SERVER + keys.table() + f'[policy]\nbase = "none"\nfiles = ["{policy}"]\n')
    remember = {"name": "memo__remember", "arguments": {"text": "alice's private note"}}
    recall = {"name": "memo__recall", "arguments": {}}
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert tool_text(modern_call(http, url, "tools/call", remember, keys.alice)) == "1 notes"
        assert tool_text(modern_call(http, url, "tools/call", recall, keys.alice)) == "alice's private note"
        assert tool_text(modern_call(http, url, "tools/call", recall, keys.bob)) == ""
        # The policy sees bob, not the gateway's own authority: he may not write notes at all.
        refused = reply_of(modern_call(http, url, "tools/call", remember, keys.bob))
        assert refused["error"]["data"]["rule"] == "staff-only-writes-notes", refused

        # Legacy sessions: bob's own session is not alice's either.
        bob = LegacyClient(http, url, keys.bob)
        bob.open()
        answer = reply_of(bob.post("tools/call", recall), bob.rid)
        assert answer["result"]["content"][0]["text"] == ""


HIDE_NET = """
@id("everyone-everything")
permit (principal, action, resource);
@id("staff-only-see-net")
forbid (principal, action in [Action::"list_tools", Action::"list_prompts", Action::"list_resources",
                              Action::"list_resource_templates"], resource == Server::"net")
when { !(principal in Group::"staff") };
"""


HIDE_NET_TOOLS = """
@id("everyone-everything")
permit (principal, action, resource);
@id("staff-only-use-net")
forbid (principal, action == Action::"call_tool", resource in Server::"net")
when { !(principal in Group::"staff") };
"""


@pytest.mark.parametrize("policy_text", [HIDE_NET, HIDE_NET_TOOLS], ids=["list-forbid", "item-forbid"])
def test_a_servers_instructions_reach_only_principals_who_may_see_it(serve_gateway, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                     policy_text: str) -> None:
    # The instructions describe the server's tools: a principal the policy shows none of them does not
    # get them either (initialize and server/discover), and the answer is marked private.
    from tests.threats.integrity_support import described, tool

    keys = Keys()
    policy = tmp_path / "hide-net.cedar"
    policy.write_text(policy_text)
    server = described(tmp_path, "net", [tool("ping_host", "Ping a host.")],
                       instructions="Net ops: ask before pinging.")
    url = serve_gateway(server + keys.table() + f'[policy]\nbase = "none"\nfiles = ["{policy}"]\n')
    with httpx.Client(trust_env=False, timeout=30) as http:
        listed = reply_of(modern_call(http, url, "tools/list", {}, keys.alice))  # the legacy session starts
        assert [t["name"] for t in listed["result"]["tools"]] == ["net__ping_host"]
        alice = reply_of(modern_call(http, url, "server/discover", {}, keys.alice))["result"]
        bob = reply_of(modern_call(http, url, "server/discover", {}, keys.bob))["result"]
        assert alice["instructions"] == "[net] Net ops: ask before pinging."
        assert "instructions" not in bob and bob["cacheScope"] == "private"
        legacy_bob = LegacyClient(http, url, keys.bob)
        assert "instructions" not in legacy_bob.open()["result"]
        legacy_alice = LegacyClient(http, url, keys.alice)
        assert legacy_alice.open()["result"]["instructions"] == "[net] Net ops: ask before pinging."
