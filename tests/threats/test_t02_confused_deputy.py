"""T02 confused deputy: one upstream session reused across users.

Two principals (API keys alice and bob) reach the same stateful upstream through the gateway.
Upstream sessions are bound to the principal, so whatever alice leaves in hers (here: a note the
server keeps in its memory) bob can never see, over the stateless 2026-07-28 path and over
legacy sessions alike; and the policy decides for the real principal, not for the gateway.
"""

from __future__ import annotations

from pathlib import Path

import httpx

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
