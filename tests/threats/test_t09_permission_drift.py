"""T09 downstream permission drift: a policy edit shows as a changed permission matrix and hash.

`mcpward check` prints who may call what (each principal against each tool, with the deciding
rule) and each server's isolation; the policy hash printed with it is the one every audit record
of a decision carries. Editing the policy changes the printed matrix and the recorded hash.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.audit_reader import committed
from tests.conftest import MCPWARD, with_policy
from tests.threats.identity_support import Keys, modern_call, reply_of
from tests.threats.test_t01_ssrf import recording_config

BEFORE = """
@id("alice-echoes")
permit (principal == User::"alice", action == Action::"call_tool", resource)
when { resource.name == "echo" };
"""
AFTER = BEFORE + """
@id("alice-runs")
permit (principal == User::"alice", action == Action::"call_tool", resource)
when { resource.name == "run" };
"""


def config(tmp_path: Path, keys: Keys, policy: Path) -> str:
    base = recording_config(tmp_path / "calls.jsonl").replace('[policy]\nbase = "permit-all"\n', "")
    return base + keys.table() + f'[policy]\nbase = "none"\nfiles = ["{policy}"]\n'


def check(path: Path) -> dict[str, Any]:
    done = subprocess.run([MCPWARD, "check", "-c", str(path), "--json", "--principal", "api-key:alice",
                           "--principal", "api-key:bob"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    report: dict[str, Any] = orjson.loads(done.stdout)["permissions"]
    return report


def decisions(report: dict[str, Any], who: str) -> dict[str, bool]:
    return {row["name"]: row["decisions"][who]["allowed"] for row in report["items"]}


def recorded_hashes(config_dir: Path, calls: int) -> set[str]:
    bodies = [orjson.loads(row) for row in committed(config_dir / "mcpward-audit.sqlite", "request", calls)]
    return {b["policy_hash"] for b in bodies if b.get("method") == "tools/call"}


def test_a_policy_edit_changes_the_matrix_and_the_recorded_hash(serve_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = Keys()
    policy = tmp_path / "team.cedar"
    policy.write_text(BEFORE)
    path = tmp_path / "mcpward.toml"
    path.write_text(with_policy(config(tmp_path, keys, policy)))

    before = check(path)
    assert decisions(before, "api-key:alice")["rec__echo"] is True
    assert decisions(before, "api-key:alice")["rec__run"] is False
    assert not any(decisions(before, "api-key:bob").values())  # default deny
    isolation = before["isolation"]["rec"]
    assert isolation["sandbox"] in ("auto", "bwrap") and isolation["network"] == "none"
    url = serve_gateway(config(tmp_path, keys, policy))
    with httpx.Client(trust_env=False, timeout=30) as http:
        echo = {"name": "rec__echo", "arguments": {"text": "hi"}}
        assert "result" in reply_of(modern_call(http, url, "tools/call", echo, keys.alice))
    assert recorded_hashes(tmp_path, 1) == {before["policy_hash"]}

    policy.write_text(AFTER)
    after = check(path)
    assert after["policy_hash"] != before["policy_hash"]
    assert decisions(after, "api-key:alice")["rec__run"] is True
    assert decisions(after, "api-key:alice")["rec__echo"] is True
    url = serve_gateway(config(tmp_path, keys, policy))
    with httpx.Client(trust_env=False, timeout=30) as http:
        run = {"name": "rec__run", "arguments": {"command": "make report"}}
        assert "result" in reply_of(modern_call(http, url, "tools/call", run, keys.alice))
    assert after["policy_hash"] in recorded_hashes(tmp_path, 2)


def test_an_edit_too_deep_for_cedar_is_refused_and_the_gateway_keeps_running(tmp_path: Path) -> None:
    # Before: 1000 nested parentheses crashed Cedar's parser (a segfault), so a SIGHUP reload of such
    # an edit killed a running gateway. Now the edit is refused by name and the old policy stays.
    from tests.conftest import stop
    from tests.test_reload import Gateway, echo, start_with_team_policy

    gateway = Gateway(tmp_path)
    try:
        rules = start_with_team_policy(gateway)
        assert "result" in echo(gateway)
        rules.write_text('@id("team.all")\npermit (principal, action, resource) when { '
                         + "(" * 1000 + "true" + ")" * 1000 + " };\n")
        gateway.hangup(lambda: "policy reload refused" in gateway.log.read_text())
        assert gateway.proc is not None and gateway.proc.poll() is None
        assert "result" in echo(gateway)  # the policy in force is unchanged
        failed = committed(tmp_path / "mcpward-audit.sqlite", "policy.reload-failed")
        assert len(failed) == 1 and "nested too deeply" in failed[0]
    finally:
        if gateway.proc is not None:
            stop(gateway.proc)
