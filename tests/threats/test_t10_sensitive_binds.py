"""T10: escape through a mounted Docker socket or a sensitive host path.

Servers whose config asks to bind a host unix socket (a stand-in for docker.sock), `~/.ssh`, a
directory that contains credentials, a home directory, `/proc`, or `/` do not start: each gets a
clear error naming the path and the rule, audited as `sandbox.refused`, while a server with an
ordinary declared directory starts. `mcpward doctor` reports the same before anything runs.
A directory with a live host socket anywhere below it, and directories that hold host sockets
(`/tmp`, `/var`), are refused the same way, and the socket never sees a connection. A declared
directory swapped for a symlink between the plan and bwrap's start is not bound.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from pathlib import Path

import pytest

from mcpward.gateway.config import parse
from mcpward.sandbox.bwrap import BwrapSpawner
from mcpward.sandbox.launcher import Launcher
from mcpward.transport.base import LinkError
from tests.conftest import MCPWARD, PYTHON
from tests.threats.sandbox_support import ESCAPE, Gateway, escape_server, need_bwrap

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
    sockdir = tmp_path / "sockdir"  # the audit's case: a live socket two levels below a declared directory
    (sockdir / "sub").mkdir(parents=True)
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.bind(str(sockdir / "sub" / "agent.sock"))
    agent.listen()
    agent.setblocking(False)
    home = os.path.expanduser("~")
    bad = {
        "sock": (sock_path, "unix socket"),
        "sockdir": (sockdir, f"contains the unix socket {sockdir / 'sub' / 'agent.sock'}"),
        "tmp": (Path("/tmp"), "shared temporary directory"),
        "var": (Path("/var"), "contains /var/run"),
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
        assert "result" in await gw.call("ok__attempt", {"name": "whoami"}, timeout=60)  # nine refusals first
        with pytest.raises(BlockingIOError):
            agent.accept()  # nothing connected to the host socket (the server never started: audited below)
    finally:
        await gw.close()
        sock.close()
        agent.close()
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


async def test_a_directory_swapped_for_a_symlink_after_the_plan_is_not_bound(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The check (at plan time) and the bind (bwrap's descriptors) are apart in time; a swap there is refused."""
    need_bwrap()
    hostonly = tmp_path / "hostonly"  # a stand-in for /etc/ssh
    hostonly.mkdir(mode=0o700)
    (hostonly / "id_key").write_text("private")
    ref = tmp_path / "project" / "ref"
    ref.mkdir(parents=True)
    server = {"command": PYTHON, "args": [str(ESCAPE)],
              "sandbox": {"backend": "bwrap", "cache": False, "ro": [str(ref)]}}
    launch = Launcher(parse({"servers": {"box": server}, "sandbox": {"state_dir": str(tmp_path / "state")}}))
    spawner = await launch._spawner(launch.cfg.servers["box"], 1 << 20)
    assert isinstance(spawner, BwrapSpawner)
    ref.rename(ref.with_name("ref.old"))
    ref.symlink_to(hostonly)
    caplog.set_level(logging.INFO, "mcpward.audit")
    with pytest.raises(LinkError, match=f"not started: refused to bind {ref}: is no longer what was checked"):
        await spawner.spawn(1 << 20)
    refused = [json.loads(r.getMessage()) for r in caplog.records if '"sandbox.refused"' in r.getMessage()]
    assert refused and refused[0]["server"] == "box" and refused[0]["rule"] == "sandbox.bind-changed"
    assert str(ref) in refused[0]["reason"]
