"""T10: escape through a mounted Docker socket or a sensitive host path.

Servers whose config asks to bind a host unix socket (a stand-in for docker.sock), `~/.ssh`, a
directory that contains credentials, a home directory, `/proc`, or `/` do not start: each gets a
clear error naming the path and the rule, audited as `sandbox.refused`, while a server with an
ordinary declared directory starts. `mcpward doctor` reports the same before anything runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MCPWARD
from tests.threats.sandbox_support import Gateway, escape_server, need_bwrap

pytestmark = pytest.mark.timeout(120)


async def test_sensitive_binds_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    need_bwrap()
    sock_path = tmp_path / "docker.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    project = tmp_path / "project"
    (project / ".ssh").mkdir(parents=True)
    (project / ".ssh" / "id_ed25519").write_text("fake key")
    fine = tmp_path / "fine"
    fine.mkdir()
    home = os.path.expanduser("~")
    bad = {
        "sock": (sock_path, "unix socket"),
        "ssh": (project / ".ssh", "holds credentials"),
        "parent": (project, "contains .ssh"),
        "home": (Path(home), "home directory"),
        "proc": (Path("/proc"), "never bound"),
        "root": (Path("/"), "every host file"),
    }
    config = escape_server("ok", f'[servers.ok.sandbox]\nro = ["{fine}"]')
    for name, (path, _why) in bad.items():
        config += escape_server(name, f'[servers.{name}.sandbox]\nro = ["{path}"]')
    gw = await Gateway.launch(tmp_path, config)
    try:
        assert "result" in await gw.call("ok__attempt", {"name": "whoami"})
    finally:
        await gw.close()
        sock.close()
    refused = {r["server"]: r["reason"] for r in gw.audit("sandbox.refused")}
    for name, (path, why) in bad.items():
        assert name in refused, (name, refused)
        assert str(path) in refused[name] and why in refused[name], refused[name]
    assert "ok" not in refused

    doctor = subprocess.run([MCPWARD, "doctor", "--json", "-c", str(tmp_path / "mcpward.toml")],
                            capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1, doctor.stderr
    report = {s["server"]: s for s in json.loads(doctor.stdout)["servers"]}
    assert not report["ok"]["problems"] and report["ok"]["backend"] == "bwrap"
    assert all(report[name]["problems"] for name in bad)
