"""T24: MRTR requestState issued by the gateway is sealed; forged, altered or replayed state is refused.

A modern client in front of a legacy server that pushes sampling: the gateway parks the
call and hands out its own sealed requestState. Only the exact retry resumes it, once.
"""

from __future__ import annotations

import httpx

from tests.threats.identity_support import Keys, modern_call, reply_of
from tests.threats.mcp_http import LEGACY_PUSHER, call

CAPS = {"sampling": {}}


def test_gateway_request_state_cannot_be_forged_altered_or_replayed(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(LEGACY_PUSHER)
    params = {"name": "legacy__sample", "arguments": {"prompt": "2+2?"}}
    with httpx.Client(trust_env=False, timeout=30) as http:
        _, first = call(http, url, "tools/call", params, CAPS)
        required = first["result"]
        assert required["resultType"] == "input_required"
        (key, request), = required["inputRequests"].items()
        assert request["method"] == "sampling/createMessage"
        state = required["requestState"]
        assert state.startswith("mcpward1.")

        answer = {key: {"role": "assistant", "content": {"type": "text", "text": "4"}, "model": "m"}}
        forged = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
        retry = {**params, "requestState": forged, "inputResponses": answer}
        status, reply = call(http, url, "tools/call", retry, CAPS)
        assert status == 400 and reply["error"]["code"] == -32602 and "integrity" in reply["error"]["message"]

        altered = {**params, "arguments": {"prompt": "something else"}, "requestState": state, "inputResponses": answer}
        status, reply = call(http, url, "tools/call", altered, CAPS)
        assert status == 400 and "differs from the request" in reply["error"]["message"]

        _, done = call(http, url, "tools/call", {**params, "requestState": state, "inputResponses": answer}, CAPS)
        assert '"4"' in done["result"]["content"][0]["text"]

        status, reply = call(http, url, "tools/call", {**params, "requestState": state, "inputResponses": answer}, CAPS)
        assert status == 400 and "requestState refused" in reply["error"]["message"]  # spent: no replay


def test_request_state_is_bound_to_the_principal_it_was_issued_to(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    keys = Keys()
    url = serve_gateway(LEGACY_PUSHER + keys.table())
    params = {"name": "legacy__sample", "arguments": {"prompt": "2+2?"}}
    with httpx.Client(trust_env=False, timeout=30) as http:
        required = reply_of(modern_call(http, url, "tools/call", params, keys.alice, caps=CAPS))["result"]
        (key, _), = required["inputRequests"].items()
        answer = {key: {"role": "assistant", "content": {"type": "text", "text": "4"}, "model": "m"}}
        retry = {**params, "requestState": required["requestState"], "inputResponses": answer}
        stolen = reply_of(modern_call(http, url, "tools/call", retry, keys.bob, caps=CAPS))
        assert "another principal" in stolen["error"]["message"]
        done = reply_of(modern_call(http, url, "tools/call", retry, keys.alice, caps=CAPS))
        assert '"4"' in done["result"]["content"][0]["text"]


def test_a_modern_upstreams_request_state_is_bound_to_its_principal(serve_gateway) -> None:  # type: ignore[no-untyped-def]
    # The gateway reaches a modern upstream with one set of credentials for everyone, so the upstream
    # cannot tell whose multi-round flow a state belongs to: the gateway seals it to the principal.
    from tests.conftest import fixture_server, toml_list

    keys = Keys()
    cmd = fixture_server()
    # A long probe timeout: this dual-era fixture, slow to start on a loaded machine, must be probed modern.
    url = serve_gateway('probe_timeout = 60\n\n'  # lands in the fixture's own [gateway] table
                        f'[servers.fx]\ncommand = "{cmd[0]}"\nargs = {toml_list(cmd[1:])}\nprefix = ""\n'
                        + keys.table())
    caps = {"elicitation": {"form": {}}}
    params = {"name": "test_input_required_result_multi_round", "arguments": {}}
    with httpx.Client(trust_env=False, timeout=30) as http:
        first = reply_of(modern_call(http, url, "tools/call", params, keys.alice, caps=caps))["result"]
        assert first["resultType"] == "input_required" and first["requestState"].startswith("mcpward1.")
        step1 = {"step1": {"action": "accept", "content": {"name": "AliceSecretName"}}}
        second = reply_of(modern_call(http, url, "tools/call", {**params, "requestState": first["requestState"],
                                                                "inputResponses": step1}, keys.alice, caps=caps))
        state = second["result"]["requestState"]
        step2 = {"step2": {"action": "accept", "content": {"color": "blue"}}}
        retry = {**params, "requestState": state, "inputResponses": step2}
        stolen = reply_of(modern_call(http, url, "tools/call", retry, keys.bob, caps=caps))
        assert "another principal" in stolen["error"]["message"] and "AliceSecretName" not in str(stolen)
        other = {**retry, "arguments": {"x": 1}}
        moved = reply_of(modern_call(http, url, "tools/call", other, keys.alice, caps=caps))
        assert "differs from the request" in moved["error"]["message"]
        bare = {**retry, "requestState": "eyJzdGVwIjoyfQ"}  # a state the gateway never issued
        assert "not issued by this gateway" in reply_of(
            modern_call(http, url, "tools/call", bare, keys.alice, caps=caps))["error"]["message"]
        done = reply_of(modern_call(http, url, "tools/call", retry, keys.alice, caps=caps))
        assert "AliceSecretName likes blue" in done["result"]["content"][0]["text"]
