"""T20 (resource exhaustion through the sandbox's /tmp): the tmpfs keeps its size cap.

The sandbox's `/tmp` is a tmpfs, charged to memory; `[servers.x.sandbox.limits] tmp_size` caps it.
A server behind the real gateway in a real bwrap sandbox writes more than a small configured cap
and must stop at ENOSPC, while a write under the cap succeeds (the positive control). Losing
`--size` (or the tmpfs) would let the write through, and this test would fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, PYTHON
from tests.threats.sandbox_support import Gateway, need_bwrap

pytestmark = pytest.mark.timeout(120)
CAP_KIB = 1024


async def fill(gw: Gateway, kib: int) -> dict[str, Any]:
    reply = await gw.call("box__fill_tmp", {"kib": kib}, timeout=60)
    assert "result" in reply, reply
    result: dict[str, Any] = json.loads(reply["result"]["content"][0]["text"])
    return result


async def test_writing_past_tmp_size_hits_enospc_inside_the_sandbox(tmp_path: Path) -> None:
    need_bwrap()
    config = f"""
[servers.box]
command = "{PYTHON}"
args = ["{FIXTURES / 'tmpfill_server.py'}"]
[servers.box.sandbox]
backend = "bwrap"
[servers.box.sandbox.limits]
tmp_size = "{CAP_KIB}K"
"""
    gw = await Gateway.launch(tmp_path, config)
    try:
        under = await fill(gw, CAP_KIB // 4)
        over = await fill(gw, CAP_KIB * 8)
    finally:
        await gw.close()
    assert under == {"written": (CAP_KIB // 4) << 10, "errno": None, "size": CAP_KIB << 10}, under
    assert over["errno"] == "ENOSPC" and over["written"] <= CAP_KIB << 10, over
