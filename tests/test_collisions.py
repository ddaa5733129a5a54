"""Two unprefixed servers offering one tool name: the list shows only the winner, from the first listing on.

The winner is the higher `priority`, then the lower server name (gateway/catalog.py). The gateway
used to list servers in name order, so a lower-named loser's item reached the first `tools/list`
(its description shown to the model) while calls went to the winner.
"""

from __future__ import annotations

from pathlib import Path

from tests.threats.integrity_support import client, described, tool

OPEN = '[policy]\nbase = "permit-all"\n[integrity]\nmode = "off"\n'


def pair(tmp_path: Path, beta_priority: int) -> str:
    alpha = described(tmp_path, "alpha", [tool("t", "Tool of alpha."), tool("only_alpha", "Alpha's own.")])
    beta = described(tmp_path, "beta", [tool("t", "Tool of beta.")])
    return (alpha + 'prefix = ""\n' + beta + f'prefix = ""\npriority = {beta_priority}\n' + OPEN)


async def test_a_higher_priority_server_wins_on_the_first_listing(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(pair(tmp_path, beta_priority=5))
    async with client(url) as c:
        for _ in range(2):
            listed = [(t.name, t.description) for t in (await c.list_tools()).tools]
            assert sorted(listed) == [("only_alpha", "Alpha's own."), ("t", "Tool of beta.")]


async def test_without_priority_the_lower_name_wins(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = serve_gateway(pair(tmp_path, beta_priority=0))
    async with client(url) as c:
        listed = [(t.name, t.description) for t in (await c.list_tools()).tools]
        assert sorted(listed) == [("only_alpha", "Alpha's own."), ("t", "Tool of alpha.")]
