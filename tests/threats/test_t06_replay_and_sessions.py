"""T06 replay on an unauthenticated stream, and the session part of T24 (session hijacking).

Every HTTP request is authenticated, whatever session it names: a captured request replayed
without its token gets 401; the same session id presented with another principal's valid key is
"Session not found" (404), for POST, the GET stream and DELETE alike, and the refusal is audited.
Session ids are long random strings, never derived from the principal.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.audit_reader import committed
from tests.threats.identity_support import MEMO_SERVER, Keys, LegacyClient, reply_of


def test_a_session_id_is_not_authentication(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = Keys()
    url = serve_gateway(MEMO_SERVER + keys.table())
    with httpx.Client(trust_env=False, timeout=30) as http:
        alice = LegacyClient(http, url, keys.alice)
        alice.open()
        assert alice.session is not None and len(alice.session) >= 32
        captured = {"name": "memo__remember", "arguments": {"text": "transfer 100"}}
        assert "result" in reply_of(alice.post("tools/call", captured), alice.rid)

        # The captured request, replayed without the token: 401, nothing runs.
        replay = http.post(url, json={"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": captured},
                           headers={k: v for k, v in alice.headers(None).items()})
        assert replay.status_code == 401 and "resource_metadata" in replay.headers["www-authenticate"]

        # Bob's own valid key with alice's session id: no such session for him.
        for response in (alice.post("tools/call", captured, token=keys.bob),
                         http.get(url, headers={**alice.headers(keys.bob), "Accept": "text/event-stream"}),
                         http.delete(url, headers=alice.headers(keys.bob))):
            assert response.status_code == 404, response.text
        # Alice's session is intact, and only her one call ran.
        recall = alice.post("tools/call", {"name": "memo__recall", "arguments": {}})
        assert reply_of(recall, alice.rid)["result"]["content"][0]["text"] == "transfer 100"
    refused = committed(tmp_path / "mcpward-audit.sqlite", "session.refused", 3)
    assert len(refused) == 3 and all("api-key:bob" in row for row in refused)
