"""The audit log's write side: settings, group commit, redaction, durability errors, the JSONL mirror."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from mcpward.audit import events
from mcpward.audit.chain import GENESIS, Hasher, canonical, verify
from mcpward.audit.events import AuditError, AuditUnavailable
from mcpward.audit.settings import AuditSettings, load_settings, resolve_key
from mcpward.audit.store import BATCH_DELAY, AuditLog, RedactWith, open_from_config
from mcpward.gateway import config as config_mod
from mcpward.gateway.config import ConfigError
from mcpward.guards.redactor import Redactor

KEY = b"k" * 32
GH_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT seq, ts, event, body, prev, hash FROM records ORDER BY seq").fetchall()


def cfg_with(tmp_path: Path, audit: dict[str, Any], **extra: Any) -> config_mod.GatewayConfig:
    return config_mod.parse({"audit": audit, **extra}, str(tmp_path / "mcpward.toml"), tmp_path)


# ------------------------------------------------------------------------------------------------ settings


def test_settings_defaults_and_paths(tmp_path: Path) -> None:
    s = load_settings(cfg_with(tmp_path, {}))
    assert s.enabled and s.fsync == "commit" and s.key_ref is None and s.jsonl is None
    assert s.path == tmp_path / "mcpward-audit.sqlite"
    s = load_settings(cfg_with(tmp_path, {"path": "logs/a.sqlite", "jsonl": "/var/tmp/x.jsonl", "fsync": "always",
                                          "key": "env:AUDIT_KEY", "enabled": False}))
    assert s.path == tmp_path / "logs" / "a.sqlite" and s.jsonl == Path("/var/tmp/x.jsonl")
    assert (s.fsync, s.key_ref, s.enabled) == ("always", "env:AUDIT_KEY", False)


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"fsync": "sometimes"}, "audit.fsync", "'commit' or 'always'"),
    ({"pth": "x"}, "audit.pth", "unknown key"),
    ({"enabled": "yes"}, "audit.enabled", "true or false"),
    ({"key": "sk-live-123456"}, "audit.key", "not a secret reference"),
    ({"path": "a.sqlite", "jsonl": "a.sqlite"}, "audit.jsonl", "different file"),
    ({"path": ""}, "audit.path", "non-empty"),
])
def test_settings_errors_name_the_key(tmp_path: Path, table: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(cfg_with(tmp_path, table))
    assert info.value.key == key and words in str(info.value)
    assert "sk-live" not in str(info.value)


def test_key_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_KEY_T", "a-long-enough-audit-key-value")
    cfg = cfg_with(tmp_path, {"key": "env:AUDIT_KEY_T"})
    s = load_settings(cfg)
    from mcpward.audit.settings import config_key

    assert config_key(cfg, s) == b"a-long-enough-audit-key-value"
    monkeypatch.setenv("AUDIT_KEY_T", "short")
    with pytest.raises(ConfigError, match="at least 16 bytes") as info:
        config_key(cfg, s)
    assert "short" not in str(info.value).replace("16 bytes", "")
    monkeypatch.delenv("AUDIT_KEY_T")
    with pytest.raises(ConfigError, match="cannot resolve the audit key"):
        config_key(cfg, s)
    assert resolve_key(AuditSettings(), lambda ref: "unused") is None


# ------------------------------------------------------------------------------------------------ writing


def test_records_are_chained_and_file_is_private(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"))
    log.append("refusal", {"rule": "policy.deny", "n": 1})
    log.append("call", {"server": "s", "nested": {"b": [1, 2.5, None, True], "a": "x"}})
    log.close()
    got = rows(tmp_path / "a.sqlite")
    assert [r[0] for r in got] == [1, 2] and got[0][4] == GENESIS and got[1][4] == got[0][5]
    assert json.loads(got[1][3]) == {"nested": {"a": "x", "b": [1, 2.5, None, True]}, "server": "s"}
    hasher = Hasher(None)
    for seq, ts, event, body, prev, digest in got:
        assert hasher(prev, seq, ts, event, body.encode()) == digest
    for name in ("a.sqlite", "a.sqlite-wal", "a.sqlite-shm"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert verify(tmp_path / "a.sqlite").ok


def test_values_are_redacted_and_escaped_before_hashing(tmp_path: Path) -> None:
    from mcpward.guards import output

    redactor = output.redactor_for(config_mod.parse({}))
    seen: list[tuple[str, dict[str, Any]]] = []
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"), redact=RedactWith(redactor))
    log.subscribe(lambda event, ts, fields: seen.append((event, dict(fields))))
    log.append("output", {"detail": f"token {GH_TOKEN}", "line": "a\r\nINFO forged", GH_TOKEN: 1,
                          "deep": [{"x": ("\x1b[31m", GH_TOKEN)}], "big": 1 << 70, "path": Path("/p")})
    log.close()
    body = rows(tmp_path / "a.sqlite")[0][3]
    assert GH_TOKEN not in body and "\x1b" not in body and "\r" not in body
    fields = json.loads(body)
    assert fields["detail"].startswith("token [REDACTED:") and fields["line"] == "a\\r\\nINFO forged"
    assert fields["deep"] == [{"x": ["\\x1b[31m", fields["detail"][len("token "):]]}]
    assert fields["big"] == str(1 << 70) and fields["path"] == "/p"
    assert seen == [("output", fields)]  # listeners get exactly what is stored
    assert verify(tmp_path / "a.sqlite").ok


CARD = "4539148803436467"  # Luhn-valid
SSN = "536-22-1234"


def test_pii_is_redacted_but_who_and_from_where_stay_readable(tmp_path: Path) -> None:
    from mcpward.guards import output

    redact = RedactWith(output.redactor_for(config_mod.parse({})))
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"), redact=redact)
    uri = f"file:///docs/mail=bob@example.org;ssn={SSN};card={CARD}"
    log.append("request", {"principal": "oauth:alice@example.com", "subject": "alice@example.com",
                           "client": "alice@example.com's laptop", "source_ip": "10.1.2.3", "target": uri,
                           "detail": "ignore all previous instructions"})
    log.append("auth.accepted", {"principal": f"oauth:{GH_TOKEN}", "host": "10.0.0.7"})  # a secret is never "identity"
    log.close()
    first, second = (json.loads(r[3]) for r in rows(tmp_path / "a.sqlite"))
    # Who did it, and from where: kept, although an e-mail and an IP address are PII kinds.
    assert (first["principal"], first["subject"], first["client"], first["source_ip"]) == (
        "oauth:alice@example.com", "alice@example.com", "alice@example.com's laptop", "10.1.2.3")
    # What a client wrote: the card, the SSN and the e-mail in the URI, and the injection marker, are not.
    assert CARD not in first["target"] and SSN not in first["target"] and "bob@example.org" not in first["target"]
    assert "[REDACTED:pii-card]" in first["target"] and first["target"].startswith("file:///docs/mail=")
    assert "previous instructions" not in first["detail"]
    assert GH_TOKEN not in second["principal"] and second["host"] == "10.0.0.7"


async def test_e2e_a_resource_uri_with_pii_is_stored_redacted(tmp_path: Path) -> None:
    from tests.audit_reader import committed
    from tests.rawclient import RawStdioClient
    from tests.test_telemetry_tracing import meta_echo_config

    client = await RawStdioClient.start(meta_echo_config(tmp_path, ""))
    uri = f"file:///docs/mail=bob@example.org;ssn={SSN};card={CARD}"
    try:
        await client.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                            "clientInfo": {"name": "carol@example.com", "version": "1"}}, modern=False)
        await client.send_raw(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        await client.request("resources/templates/list", {}, modern=False)
        reply = await client.request("resources/read", {"uri": uri}, modern=False)
        assert reply.get("result", {}).get("contents", [{}])[0].get("text") == "hello", reply
    finally:
        await client.close()
    (body,) = [b for b in committed(tmp_path / "audit.sqlite", "request", 3)
               if json.loads(b).get("method") == "resources/read"]
    assert CARD not in body and SSN not in body and "bob@example.org" not in body
    record = json.loads(body)
    assert "[REDACTED:pii-card]" in record["target"] and record["client"] == "carol@example.com"


def test_redaction_cache_drops_when_a_secret_value_is_added(tmp_path: Path) -> None:
    redactor = Redactor([])
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"), redact=RedactWith(redactor))
    log.append("e", {"v": "value-held-by-gateway-42"})
    redactor.add_exact(["value-held-by-gateway-42"])  # the gateway learns a secret after the string was cached
    log.append("e", {"v": "value-held-by-gateway-42"})
    log.close()
    first, second = (json.loads(r[3])["v"] for r in rows(tmp_path / "a.sqlite"))
    assert first == "value-held-by-gateway-42" and "value-held-by-gateway-42" not in second


def test_gateway_digests_skip_the_redactor_and_nothing_else_does(tmp_path: Path) -> None:
    calls: list[str] = []

    def redact(text: str) -> str:
        calls.append(text)
        return text.replace("ab" * 32, "**")

    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"), redact=redact)
    log.append("e", {"args_sha256": events.Digest("ab" * 32), "plain": "ab" * 32})
    log.close()
    assert json.loads(rows(tmp_path / "a.sqlite")[0][3]) == {"args_sha256": "ab" * 32, "plain": "**"}
    assert calls.count("ab" * 32) == 1  # the plain string with the same text was scanned
    with pytest.raises(ValueError, match="not a lowercase hex digest"):
        events.Digest("ghp_not-a-digest")
    computed = events.Digest.sha256(b'{"a":1}')
    assert isinstance(computed, events.Digest) and computed == hashlib.sha256(b'{"a":1}').hexdigest()


def test_made_values_skip_the_cleaning_and_fields_never_do(tmp_path: Path) -> None:
    calls: list[str] = []

    def redact(text: str) -> str:
        calls.append(text)
        return text.replace(GH_TOKEN, "[gone]")

    seen: list[dict[str, Any]] = []
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"), redact=redact)
    log.subscribe(lambda event, ts, fields: seen.append(dict(fields)))
    log.append("request", {"user_agent": f"x {GH_TOKEN}\r\n", "principal": "api-key:a"},
               {"outcome": "success", "duration_ms": 0.5, "request_id": 7, "big": 1 << 70,
                "args_sha256": events.Digest("ab" * 32), "odd": ["a\nb"]})
    log.close()
    body = rows(tmp_path / "a.sqlite")[0][3]
    assert json.loads(body) == {"user_agent": "x [gone]\\r\\n", "principal": "api-key:a", "outcome": "success",
                                "duration_ms": 0.5, "request_id": 7, "big": str(1 << 70), "args_sha256": "ab" * 32,
                                "odd": ["a\\nb"]}
    assert body == canonical(json.loads(body)).decode()  # one canonical body, whichever part a key came from
    # The gateway's own scalars were never scanned; every peer-written string was, and so was
    # anything in `made` that is not a plain scalar (a list, an over-wide integer).
    assert "success" not in calls and "ab" * 32 not in calls
    assert f"x {GH_TOKEN}\r\n" in calls and "a\nb" in calls and str(1 << 70) in calls
    assert seen == [json.loads(body)]
    assert verify(tmp_path / "a.sqlite").ok


async def test_settled_says_when_durable_would_not_wait(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite", fsync="always"))
    events.install(log)
    try:
        assert events.settled()
        events.record_parts("request", {"principal": "p"}, {"outcome": "success"})
        assert not events.settled()  # "always": not durable until the turn's commit
        await events.durable()
        assert events.settled() and log.settled()
    finally:
        events.install(None)
        log.close()
    journaled = AuditLog(AuditSettings(path=tmp_path / "b.sqlite"))
    journaled.append("request", {"principal": "p"})  # no event loop here: committed at once
    assert journaled.settled()
    journaled.close()
    assert events.settled()  # nothing installed: nothing to wait for


def test_an_unknown_redactor_is_never_cached(tmp_path: Path) -> None:
    calls: list[str] = []

    def redact(text: str) -> str:
        calls.append(text)
        return text.replace("pw", "**")

    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"), redact=redact)
    for _ in range(3):
        log.append("e", {"v": "pw"})
    log.close()
    assert calls.count("pw") == 3 and all(json.loads(r[3]) == {"v": "**"} for r in rows(tmp_path / "a.sqlite"))


def counted(log: AuditLog) -> list[int]:
    """The size of every SQLite transaction `log` commits from now on."""
    commits: list[int] = []
    write = log._write

    def counting(batch: Any, marker: str | None = None) -> Any:
        commits.append(len(batch))
        return write(batch, marker)

    log._write = counting  # type: ignore[method-assign]
    return commits


async def test_always_commits_once_per_loop_turn_before_replies(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite", fsync="always"))
    commits = counted(log)

    async def call(i: int) -> None:
        events_before = log.pending
        log.append("call", {"i": i})
        assert log.pending == events_before + 1  # queued, not yet written
        await log.durable()
        assert log.pending == 0  # committed before the reply may go out

    await asyncio.gather(*(call(i) for i in range(50)))
    assert commits == [50]  # every request of the turn shares one commit
    assert len(rows(tmp_path / "a.sqlite")) == 50
    log.append("late", {})
    await asyncio.sleep(0)  # the scheduled flush runs on the next turn
    assert log.pending == 0 and commits[-1] == 1
    assert list(tmp_path.glob("a.sqlite-journal-*")) == []  # "always" has no journal: SQLite is synced itself
    log.close()


async def test_commit_journals_each_record_and_batches_sqlite(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"))
    commits = counted(log)

    async def call(i: int) -> None:
        log.append("call", {"i": i})
        await log.durable()  # returns at once: the record is in the journal

    await asyncio.gather(*(call(i) for i in range(50)))
    [journal] = tmp_path.glob("a.sqlite-journal-*")
    assert commits == [] and log.pending == 50 and rows(tmp_path / "a.sqlite") == []
    assert len(journal.read_bytes().splitlines()) == 50 and stat.S_IMODE(journal.stat().st_mode) == 0o600
    await asyncio.sleep(BATCH_DELAY * 5)  # the batch is committed off the reply path
    assert commits == [50] and log.pending == 0 and len(rows(tmp_path / "a.sqlite")) == 50
    assert journal.stat().st_size == 0  # emptied once everything in it is committed
    log.close()
    assert not journal.exists() and verify(tmp_path / "a.sqlite").records == 50
    with sqlite3.connect(tmp_path / "a.sqlite") as db:  # its marker goes with it
        assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'journal:%'").fetchone() == (0,)


async def test_two_writers_build_one_chain(tmp_path: Path) -> None:
    a = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"))
    b = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"))
    for i in range(20):
        (a if i % 3 else b).append("e", {"i": i})
        await (a if i % 3 else b).durable()
    a.close()
    b.close()
    report = verify(tmp_path / "a.sqlite")
    assert report.ok and report.records == 20


@pytest.mark.parametrize("fsync", ["always", "commit"])
async def test_locked_database_makes_durable_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   fsync: str) -> None:
    path = tmp_path / "a.sqlite"
    log = AuditLog(AuditSettings(path=path, lock_timeout=0.05, fsync=fsync))  # type: ignore[arg-type]
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.ERROR, logger="mcpward.auditlog"):
        log.append("call", {"i": 1})
        if fsync == "commit":  # durable in the journal; the failure shows at its batch commit
            await log.durable()
            await asyncio.sleep(BATCH_DELAY * 5)
            log.append("call", {"i": 2})  # from now on replies wait for SQLite again: refused while it fails
        with pytest.raises(AuditUnavailable, match="not committed: database is locked"):
            await log.durable()
    assert any("cannot commit" in r.getMessage() for r in caplog.records)
    blocker.execute("ROLLBACK")
    blocker.close()
    log._retry_at = 0.0  # skip the back-off instead of sleeping a second
    await log.durable()
    expected = [{"i": 1}] if fsync == "always" else [{"i": 1}, {"i": 2}]
    assert [json.loads(r[3]) for r in rows(path)] == expected
    if fsync == "commit":  # writable again: the journal is back in use
        log.append("call", {"i": 3})
        await log.durable()
        assert log.pending == 1
    log.close()
    assert verify(path).ok


def test_open_refuses_a_key_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    AuditLog(AuditSettings(path=path), KEY).close()
    with pytest.raises(AuditError, match="key mismatch"):
        AuditLog(AuditSettings(path=path), b"j" * 32)
    with pytest.raises(AuditError, match="has no \\[audit\\] key"):
        AuditLog(AuditSettings(path=path))
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all, really" * 10)
    with pytest.raises(AuditError, match="not a usable audit log"):
        AuditLog(AuditSettings(path=tmp_path / "junk.sqlite"))


def test_keyed_chain_needs_the_key(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    log = AuditLog(AuditSettings(path=path), KEY)
    log.append("e", {"a": 1})
    log.close()
    seq, ts, event, body, prev, digest = rows(path)[0]
    assert Hasher(None)(prev, seq, ts, event, body.encode()) != digest
    assert Hasher(KEY)(prev, seq, ts, event, body.encode()) == digest
    assert verify(path, KEY).ok
    report = verify(path)
    assert not report.ok and "key needed" in (report.reason or "")


# ------------------------------------------------------------------------------------------------ mirror


def test_mirror_matches_the_database_and_catches_up(tmp_path: Path) -> None:
    db, mirror = tmp_path / "a.sqlite", tmp_path / "a.jsonl"
    log = AuditLog(AuditSettings(path=db, jsonl=mirror))
    for i in range(5):
        log.append("e", {"i": i})
    log.close()
    lines = mirror.read_bytes().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["mcpward_audit"] == 1
    assert stat.S_IMODE(mirror.stat().st_mode) == 0o600
    # A crash mid-line, and records committed while the mirror was not written (another process).
    mirror.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:20])
    other = AuditLog(AuditSettings(path=db))
    other.append("e", {"i": 5})
    other.close()
    log = AuditLog(AuditSettings(path=db, jsonl=mirror))
    log.append("e", {"i": 6})
    log.close()
    got = [json.loads(x) for x in mirror.read_bytes().splitlines()[1:]]
    assert [r["seq"] for r in got] == list(range(1, 8)) and [r["fields"]["i"] for r in got] == list(range(7))
    assert verify(mirror).ok and verify(mirror).head == verify(db).head


# ------------------------------------------------------------------------------------------------ events


async def test_record_logs_and_appends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"))
    events.install(log)
    try:
        assert events.installed() is log
        with caplog.at_level(logging.INFO, logger="mcpward.audit"):
            events.record("refusal", rule="r1", server="s")
        await events.durable()
    finally:
        events.install(None)
        log.close()
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcpward.audit"]
    assert logged[0]["event"] == "refusal" and logged[0]["rule"] == "r1"
    assert [(r[2], json.loads(r[3])) for r in rows(tmp_path / "a.sqlite")] == [("refusal", {"rule": "r1",
                                                                                           "server": "s"})]
    await events.durable()  # nothing installed: a no-op


def test_open_from_config(tmp_path: Path) -> None:
    assert open_from_config(cfg_with(tmp_path, {"enabled": False})) is None
    log = open_from_config(cfg_with(tmp_path, {"path": "x/audit.sqlite"}))
    assert log is not None and log.path == tmp_path / "x" / "audit.sqlite"
    log.append("e", {"t": f"leak {GH_TOKEN}"})
    log.close()
    assert GH_TOKEN not in rows(tmp_path / "x" / "audit.sqlite")[0][3]


def test_canonical_round_trips_through_json() -> None:
    fields = {"b": [1, 2.000001, "é\u2028"], "a": {"z": None, "y": -5}, "c": 1e300}
    assert canonical(json.loads(canonical(fields))) == canonical(fields)


def test_a_record_is_wanted_only_where_it_would_go(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events.install(None)
    with caplog.at_level(logging.INFO, logger="mcpward.audit"):
        assert events.wanted("refusal") and not events.wanted("request")  # request lines are DEBUG
    with caplog.at_level(logging.DEBUG, logger="mcpward.audit"):
        assert events.wanted("request")
    log = AuditLog(AuditSettings(path=tmp_path / "a.sqlite"))
    events.install(log)
    try:
        with caplog.at_level(logging.WARNING, logger="mcpward.audit"):
            assert events.wanted("request")  # the audit log takes every record
    finally:
        events.install(None)
        log.close()
