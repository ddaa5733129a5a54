"""T17, the crash half: the gateway is killed with SIGKILL in the middle of a burst of calls.

Four client threads fire tool calls as fast as they can; the gateway process is killed without
warning mid-burst. After a restart on the same config, `mcpward audit verify` passes (the chain
is intact, nothing half-written), and every call a client saw answered has its `request` record:
a reply only leaves the gateway after its record is committed.

Also with a keyed log: its head seal is rewritten in every commit's transaction (and when the
restart chains in the killed process's journal), so verify still passes; and a tail cut while the
gateway is down is not sealed over: the next start refuses the log, naming the cut.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import FIXTURES, MCPWARD, PYTHON, free_port, stop, wait_port, with_policy
from tests.threats.identity_support import modern_call, reply_of

CONFIG = (f'[servers.fault]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "fault_server.py"}"]\n'
          '[limits]\nrate = 1000000\nburst = 100000\n')  # a burst is the point here, not the rate limit
THREADS, PER_THREAD = 4, 400


def start(path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([MCPWARD, "serve", "-c", str(path)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_sigkill_mid_burst_loses_no_answered_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  keyed: bool) -> None:
    port = free_port()
    config = tmp_path / "mcpward.toml"
    audit = ""
    if keyed:
        monkeypatch.setenv("T17_CRASH_AUDIT_KEY", "t17-crash-audit-key-0123456789")  # the gateway inherits it
        audit = '[audit]\nkey = "env:T17_CRASH_AUDIT_KEY"\n'
    config.write_text(f"[gateway]\nport = {port}\n" + with_policy(CONFIG + audit))
    url = f"http://127.0.0.1:{port}/mcp"
    proc = start(config, port, tmp_path / "gw.log")
    answered: list[str] = []
    lock = threading.Lock()

    def burst(worker: int) -> None:
        with httpx.Client(trust_env=False, timeout=10) as http:
            for i in range(PER_THREAD):
                rid = f"w{worker}-{i}"
                try:
                    response = modern_call(http, url, "tools/call", {"name": "fault__echo", "arguments": {"text": rid}},
                                           None, rid=rid)  # type: ignore[arg-type]
                    reply = reply_of(response, rid)  # type: ignore[arg-type]
                except (httpx.HTTPError, ValueError):
                    return  # the gateway is gone
                if reply.get("result", {}).get("content", [{}])[0].get("text") == rid:
                    with lock:
                        answered.append(rid)

    workers = [threading.Thread(target=burst, args=(w,)) for w in range(THREADS)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while len(answered) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for worker in workers:
        worker.join(30)
    assert 150 <= len(answered) < THREADS * PER_THREAD, "the kill did not land mid-burst"

    proc = start(config, port, tmp_path / "gw.log")  # the restart reopens (and repairs) the log
    try:
        verified = subprocess.run([MCPWARD, "audit", "verify", "-c", str(config), "--json"], capture_output=True,
                                  timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert orjson.loads(verified.stdout)["ok"] is True
        with sqlite3.connect(config.parent / "mcpward-audit.sqlite") as db:
            bodies = [orjson.loads(row[0]) for row in db.execute("SELECT body FROM records WHERE event = 'request'")]
        recorded = {b.get("request_id") for b in bodies if b.get("method") == "tools/call"}
        missing = [rid for rid in answered if rid not in recorded]
        assert not missing, f"{len(missing)} answered calls have no audit record, e.g. {missing[:3]}"
    finally:
        stop(proc)
    if not keyed:
        return
    database = config.parent / "mcpward-audit.sqlite"
    with sqlite3.connect(database) as db:
        (last,), = db.execute("SELECT max(seq) FROM records").fetchall()
        db.execute("DELETE FROM records WHERE seq > ?", (last - 5,))
    verified = subprocess.run([MCPWARD, "audit", "verify", "-c", str(config)], capture_output=True, timeout=60)
    assert verified.returncode == 1 and f"records after {last - 5} removed".encode() in verified.stdout
    refused = subprocess.run([MCPWARD, "serve", "-c", str(config)], capture_output=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and b"Traceback" not in refused.stdout + refused.stderr
    assert f"records after {last - 5} were removed".encode() in refused.stdout + refused.stderr
