"""A change notification is checked by the gateway itself, not only when a client lists again.

The rug-pull fixture swaps its `weather` tool after 3 calls and announces it: to a legacy session
as `notifications/tools/list_changed`, to modern listeners on `subscriptions/listen`. After that the
client never lists again, yet the gateway has relisted the server on its own: the audit holds the
change (`integrity.held`), the next call to `weather` is refused, and the other tools keep working.
Both upstream eras, from both client eras. Unit tests below show the relists are bounded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcpward.gateway.context import Principal, RequestContext, SilentChannel, system_context
from mcpward.gateway.list_changes import ListChanges, relist_context
from mcpward.gateway.upstream_sessions import Session
from tests.conftest import FIXTURES, PYTHON
from tests.threats.integrity_support import audit

REFUSED = -32004


def config(era: str) -> str:
    extra = ', "--legacy"' if era == "legacy" else ""
    # probe_timeout lands in the fixture's [gateway] table: an SDK server on a loaded machine may take
    # longer than the default to answer the probe, and would then be taken for a legacy one.
    return ('probe_timeout = 60\n\n'
            f'[servers.rug]\ncommand = "{PYTHON}"\n'
            f'args = ["{FIXTURES / "rugpull_server.py"}", "--after", "3", "--change", "description"{extra}]\n')


@pytest.mark.parametrize("client_mode", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("upstream_era", ["legacy", "modern"])
async def test_a_change_notification_is_checked_without_a_client_list(serve_gateway, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                      upstream_era: str, client_mode: str) -> None:
    url = serve_gateway(config(upstream_era))
    info = types.Implementation(name="recheck-test", version="1.0")
    async with Client(url, mode=client_mode, client_info=info, read_timeout_seconds=30) as c:  # type: ignore[arg-type]
        # One list: the gateway pins the three tools on first sight (tofu).
        assert {t.name for t in (await c.list_tools()).tools} == {"rug__add", "rug__echo", "rug__weather"}
        assert audit(tmp_path, "integrity.held") == []
        for i in range(3):  # the third call makes the server change `weather` and announce it
            await c.call_tool("rug__echo", {"text": f"call {i}"})
        deadline = time.monotonic() + 15
        while not (held := audit(tmp_path, "integrity.held")):
            assert time.monotonic() < deadline, "the gateway did not relist the server after its notification"
            await asyncio.sleep(0.2)
        assert [(r["name"], r["reason"]) for r in held] == [("weather", "changed")]
        spoken = "2026-07-28" if upstream_era == "modern" else "the legacy (initialize) era"
        assert f"server rug speaks {spoken}" in next(tmp_path.glob("gw-*.log")).read_text()
        # Still no list from the client: the changed tool is refused, the others answer.
        with pytest.raises(MCPError) as refused:
            await c.call_tool("rug__weather", {"city": "Oslo"})
        assert refused.value.code == REFUSED
        assert refused.value.data == {"rule": "integrity.changed"}
        assert (await c.call_tool("rug__add", {"a": 2, "b": 3})).content[0].text == "5"  # type: ignore[union-attr]
        assert (await c.call_tool("rug__echo", {"text": "still"})).content[0].text == "still"  # type: ignore[union-attr]


# ------------------------------------------------------------------- bounded relists (unit)


class Recorder:
    def __init__(self, seconds: float = 0.0) -> None:
        self.relists: list[tuple[str, float]] = []
        self.told: list[tuple[str, float]] = []
        self.running = 0
        self.most_at_once = 0
        self.seconds = seconds

    async def relist(self, ctx: RequestContext, kind: str) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.relists.append((kind, time.monotonic()))
        await asyncio.sleep(self.seconds)
        self.running -= 1

    def tell(self, kind: str) -> None:
        self.told.append((kind, time.monotonic()))


async def settle(changes: ListChanges) -> None:
    while changes._running:
        await asyncio.gather(*changes._running.values())


async def test_a_burst_of_announcements_is_coalesced_into_bounded_relists() -> None:
    seen = Recorder(seconds=0.05)
    changes = ListChanges("s", seen.tell, seen.relist, interval=0.3)
    ctx = system_context()
    for _ in range(50):
        changes.pend("tools", "modern", ctx)
    await asyncio.sleep(0.02)  # the first relist is under way; these arrive during it
    for _ in range(50):
        changes.pend("tools", "modern", ctx)
    await settle(changes)
    # 100 announcements: one relist at once, then one more for everything that came during it.
    assert [kind for kind, _ in seen.relists] == ["tools", "tools"]
    assert seen.most_at_once == 1
    assert seen.relists[1][1] - seen.relists[0][1] >= 0.3 - 0.01  # the minimum interval
    # Clients are told after each relist, never before the first one.
    assert [kind for kind, _ in seen.told] == ["tools", "tools"]
    assert seen.told[0][1] >= seen.relists[0][1]


async def test_each_kind_relists_on_its_own_and_failures_still_tell_clients() -> None:
    seen = Recorder()

    async def failing(ctx: RequestContext, kind: str) -> None:
        await seen.relist(ctx, kind)
        if kind == "prompts":
            raise RuntimeError("server went away")

    changes = ListChanges("s", seen.tell, failing, interval=0.0)
    ctx = system_context()
    changes.pend("tools", "modern", ctx)
    changes.pend("prompts", "modern", ctx)
    changes.pend("resources", "modern", None)  # nobody to list as: only told
    await settle(changes)
    assert sorted(kind for kind, _ in seen.relists) == ["prompts", "tools"]
    assert sorted(kind for kind, _ in seen.told) == ["prompts", "resources", "tools"]


async def test_each_announcing_legacy_session_is_relisted() -> None:
    seen = Recorder()
    contexts: list[RequestContext] = []

    async def relist(ctx: RequestContext, kind: str) -> None:
        contexts.append(ctx)
        await seen.relist(ctx, kind)

    changes = ListChanges("s", seen.tell, relist, interval=0.0)
    first, second = system_context(), system_context()
    changes.pend("tools", "session-a", first)
    changes.pend("tools", "session-b", second)
    changes.pend("tools", "session-a", first)
    await settle(changes)
    assert contexts == [first, second]
    assert len(seen.told) == 1


def test_a_legacy_session_is_relisted_as_its_own_client_but_silently() -> None:
    """The relist goes to the announcing session (same capabilities, principal and connection), but
    never talks to that client nor becomes the session's last client (where its log lines go)."""
    client = replace(system_context(Principal.local_user()), era="legacy", protocol_version="2025-11-25",
                     capabilities={"sampling": {}}, connection_id="c1", progress_token="p", log_level="info")
    session = Session(peer=None, era="legacy", key="k")  # type: ignore[arg-type]
    session.active[1] = client
    ctx = relist_context(session, None)
    assert ctx is not None
    assert (ctx.capabilities, ctx.principal, ctx.connection_id) == (client.capabilities, client.principal, "c1")
    assert ctx.era == "modern" and isinstance(ctx.channel, SilentChannel) and ctx.progress_token is None
    assert client.era == "legacy" and client.progress_token == "p"  # the client's own context is untouched
    assert relist_context(Session(peer=None, era="legacy", key="k"), None) is None  # type: ignore[arg-type]
    assert relist_context(None, None) is None
    modern = relist_context(Session(peer=None, era="modern", key="modern"), Principal.local_user())  # type: ignore[arg-type]
    assert modern is not None and modern.principal == Principal.local_user()


async def test_an_unknown_list_kind_is_neither_relisted_nor_told() -> None:
    seen = Recorder()
    changes = ListChanges("s", seen.tell, seen.relist, interval=0.0)
    session = Session(peer=None, era="modern", key="modern")  # type: ignore[arg-type]
    for i in range(100):
        changes.announce(f"invented{i}", session)
    changes.announce("tools", session)
    await settle(changes)
    assert [kind for kind, _ in seen.relists] == ["tools"] and [kind for kind, _ in seen.told] == ["tools"]
