"""`mcpward audit verify|tail|search|export` against real logs."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcpward.audit.chain import verify
from mcpward.audit.settings import AuditSettings
from mcpward.audit.store import AuditLog
from mcpward.cli.audit import audit_app, parse_since

runner = CliRunner()
KEY_VALUE = "cli-test-audit-key-0123456789"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mcpward.toml"
    path.write_text('[audit]\npath = "logs/audit.sqlite"\n')
    log = AuditLog(AuditSettings(path=tmp_path / "logs" / "audit.sqlite"))
    log.append("refusal", {"rule": "policy.deny", "principal": "api-key:alice", "tool": "rm_rf"})
    log.append("call", {"principal": "oauth:bob", "tool": "read_file", "note": "line1\nline2 \x1b[2J"})
    log.append("integrity.approved", {"by": "carol", "server": "files"})
    log.close()
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(audit_app, list(args))
    return result.exit_code, result.output


def test_verify_from_config(config: Path) -> None:
    code, output = invoke("verify", "-c", str(config))
    assert code == 0 and "3 records verified (sha256)" in output
    head = verify(config.parent / "logs" / "audit.sqlite").head
    assert f"head {head}" in output
    code, output = invoke("verify", "-c", str(config), "--json")
    assert code == 0 and json.loads(output) == {"file": str(config.parent / "logs" / "audit.sqlite"), "ok": True,
                                                "records": 3, "first_bad": None, "reason": None, "head": head,
                                                "algorithm": "sha256"}


def test_verify_keyed_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLI_AUDIT_KEY", KEY_VALUE)
    config = tmp_path / "mcpward.toml"
    config.write_text('[audit]\nkey = "env:CLI_AUDIT_KEY"\n')
    log = AuditLog(AuditSettings(path=tmp_path / "mcpward-audit.sqlite"), KEY_VALUE.encode())
    log.append("e", {"a": 1})
    log.close()
    code, output = invoke("verify", "-c", str(config))
    assert code == 0 and "hmac-sha256" in output and KEY_VALUE not in output
    code, output = invoke("verify", "--file", str(tmp_path / "mcpward-audit.sqlite"))
    assert code == 1 and "key needed" in output
    code, output = invoke("verify", "--file", str(tmp_path / "mcpward-audit.sqlite"), "--key", "env:CLI_AUDIT_KEY")
    assert code == 0, output
    monkeypatch.setenv("CLI_AUDIT_KEY", "x" * 40)
    code, output = invoke("verify", "-c", str(config))
    assert code == 1 and "key mismatch" in output and "x" * 40 not in output
    monkeypatch.delenv("CLI_AUDIT_KEY")
    code, output = invoke("verify", "-c", str(config))
    assert code == 2 and "audit.key" in output


def test_usage_errors_exit_2(tmp_path: Path, config: Path) -> None:
    code, output = invoke("verify", "--file", str(tmp_path / "nope.sqlite"))
    assert code == 2 and "no audit log at" in output
    junk = tmp_path / "junk.txt"
    junk.write_text("hello, not json\n")
    code, output = invoke("verify", "--file", str(junk))
    assert code == 2 and "neither an SQLite audit log nor a JSONL export" in output
    bad = tmp_path / "bad.toml"
    bad.write_text('[audit]\nfsync = "never"\n')
    code, output = invoke("verify", "-c", str(bad))
    assert code == 2 and "audit.fsync" in output
    code, output = invoke("search", "-c", str(config), "--since", "yesterday-ish")
    assert code == 2 and "--since: not a time" in output
    code, output = invoke("verify", "-c", str(config), "--anchor", "abc")
    assert code == 2 and "--anchor" in output


def test_tail_is_one_escaped_line_per_record(config: Path) -> None:
    code, output = invoke("tail", "-c", str(config), "-n", "2")
    assert code == 0
    lines = output.strip().split("\n")
    assert len(lines) == 2 and "#2 call" in lines[0] and "#3 integrity.approved" in lines[1]
    assert "\x1b" not in output and "line1\\nline2" in lines[0]
    code, output = invoke("tail", "-c", str(config), "--json")
    records = [json.loads(x) for x in output.strip().split("\n")]
    assert [r["seq"] for r in records] == [1, 2, 3] and records[0]["fields"]["rule"] == "policy.deny"


def test_json_output_of_an_edited_body_is_escaped_and_still_json(config: Path) -> None:
    db = config.parent / "logs" / "audit.sqlite"
    with sqlite3.connect(db) as conn:  # an edit outside the gateway: raw ESC, and text that is not one JSON value
        conn.execute("UPDATE records SET body = ? WHERE seq = 2", ('{"principal":"oauth:bob\x1b[31mRED","x":1}',))
        conn.execute("UPDATE records SET body = ? WHERE seq = 3", ('{"a":1},"seq":99,"b":{}',))
    for args in (["tail", "-c", str(config), "--json"], ["search", "-c", str(config), "--json"]):
        code, output = invoke(*args)
        assert code == 0 and "\x1b" not in output
        records = [json.loads(x) for x in output.strip().split("\n")]  # every line is JSON again
        assert [r["seq"] for r in records] == [1, 2, 3]
        assert records[0]["fields"]["rule"] == "policy.deny"  # an untouched body is as stored
        assert records[1]["fields"] == {"unparsable_body": '{"principal":"oauth:bob\x1b[31mRED","x":1}'}
        assert records[2]["fields"] == {"unparsable_body": '{"a":1},"seq":99,"b":{}'}
    assert invoke("verify", "-c", str(config))[0] == 1  # the edit is still caught where it matters


@pytest.mark.parametrize(("args", "seqs"), [
    (["--event", "refusal"], [1]),
    (["--event", "integrity.*"], [3]),
    (["--principal", "bob"], [2]),
    (["--principal", "api-key:alice"], [1]),
    (["--rule", "policy.deny"], [1]),
    (["--text", "READ_FILE"], [2]),
    (["--since", "-1h"], [1, 2, 3]),
    (["--since", "2000-01-01T00:00:00+00:00", "--limit", "2"], [2, 3]),
    (["--event", "call", "--principal", "alice"], []),
])
def test_search_filters(config: Path, args: list[str], seqs: list[int]) -> None:
    code, output = invoke("search", "-c", str(config), "--json", *args)
    assert code == 0, output
    assert [json.loads(x)["seq"] for x in output.strip().split("\n") if x] == seqs


def test_parse_since() -> None:
    now = 1_000_000.0
    assert parse_since("-1h", now) == now - 3600 and parse_since("30m", now) == now - 1800
    assert parse_since("2d", now) == now - 2 * 86400
    assert parse_since("1970-01-02T00:00:00+00:00") == 86400
    with pytest.raises(ValueError, match="not a time"):
        parse_since("soon")


def test_export_then_verify(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    code, output = invoke("export", "-c", str(config), "--jsonl", str(out))
    assert code == 0 and "3 records exported" in output
    assert out.stat().st_mode & 0o077 == 0
    code, output = invoke("verify", "--file", str(out))
    assert code == 0 and "3 records verified" in output
    # Exporting a log that is being written: a consistent prefix that verifies.
    log = AuditLog(AuditSettings(path=config.parent / "logs" / "audit.sqlite"))
    log.append("later", {"t": time.time()})
    log.close()
    code, output = invoke("export", "-c", str(config), "--jsonl", "-")
    assert code == 0 and len([x for x in output.split("\n") if x.startswith('{"seq"')]) == 4
    with sqlite3.connect(config.parent / "logs" / "audit.sqlite") as db:
        assert db.execute("SELECT count(*) FROM records").fetchone() == (4,)
