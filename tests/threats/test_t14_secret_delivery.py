"""T14: secrets in plaintext environment variables, arguments or config.

The config holds references only. A secret set with `mcpward secret set` (value on stdin, store
encrypted with a passphrase) reaches its sandboxed server as a read-only file at
/run/secrets/NAME, another one as an env var set inside the sandbox. Neither value appears in the
host's process list, in bwrap's argv or environment inside the sandbox, in the gateway's logs or
audit, or in what the client sees (the output redactor knows every resolved value). A declared
secret that cannot be resolved stops that server with an error naming server and secret, while
the others run.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MCPWARD
from tests.threats.sandbox_support import Gateway, escape_server, need_bwrap

pytestmark = pytest.mark.timeout(120)


async def test_secrets_reach_the_server_and_nowhere_else(tmp_path: Path) -> None:
    need_bwrap()
    passphrase = secrets.token_urlsafe(16)
    file_secret, env_secret = f"ghp_{secrets.token_hex(18)}", f"sk-{secrets.token_hex(16)}"
    store = tmp_path / "secrets.enc"
    settings = f'[secrets]\nstore = "file"\npath = "{store}"\nkey = "passphrase"\n'
    (tmp_path / "mcpward.toml").write_text(settings)
    env = {**os.environ, "MCPWARD_SECRETS_PASSPHRASE": passphrase}
    for name, value in (("github", file_secret), ("openai", env_secret)):
        done = subprocess.run([MCPWARD, "secret", "set", name, "-c", str(tmp_path / "mcpward.toml")],
                              input=value, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert value not in done.stdout + done.stderr
    assert file_secret.encode() not in store.read_bytes()

    config = settings + escape_server("box", """
[servers.box.secrets]
GITHUB_TOKEN = "secret:github"
OPENAI_KEY = { from = "secret:openai", as = "env" }
""") + escape_server("broken", """
[servers.broken.secrets]
MISSING = "secret:never-set"
""")
    gw = await Gateway.launch(tmp_path, config, env={"MCPWARD_SECRETS_PASSPHRASE": passphrase})
    try:
        got = await gw.call("box__read_secret", {"name": "GITHUB_TOKEN"})
        assert got["result"]["content"][0]["text"] == "[REDACTED:configured-secret]"  # read, then redacted
        env_seen = await gw.attempt("box__attempt", "env", "OPENAI_KEY")
        assert env_seen["escaped"], env_seen  # the env secret is set inside the sandbox
        for value in (file_secret, env_secret):
            leak = await gw.attempt("box__attempt", "proc_leak", value)
            assert not leak["escaped"] or ("/proc/2/environ" in leak["detail"] and value == env_secret), leak
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert file_secret not in ps and env_secret not in ps
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"bwrap" in cmdline.split(b"\0")[0]:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                assert file_secret.encode() not in environ + cmdline
                assert env_secret.encode() not in environ + cmdline
        broken = await gw.call("broken__attempt", {"name": "whoami"})
        assert "error" in broken
    finally:
        await gw.close()
    log = gw.log()
    assert file_secret not in log and env_secret not in log and passphrase not in log
    unresolved = gw.audit("sandbox.secret-unresolved")
    assert unresolved and unresolved[0]["server"] == "broken" and unresolved[0]["ref"] == "secret:never-set"
    assert "server 'broken' not started: secret secret:never-set" in log
    started = {r["server"]: r for r in gw.audit("sandbox.started")}
    assert started["box"]["secrets"] == ["GITHUB_TOKEN"] and "broken" not in started
    assert json.dumps(started["box"]).find(file_secret) < 0
