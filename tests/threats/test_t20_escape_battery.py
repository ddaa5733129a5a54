"""T20: a server runs on the host with broad privileges.

A hostile server (tests/fixtures/escape_server.py) runs behind the real gateway in the default
sandbox and tries its way out, one attempt per call: host secrets, another server's secret,
writes outside its declared paths, host loopback and unix sockets, any route or DNS, fork and
memory bombs, ptrace, unshare, mount, chroot, setuid, bpf, io_uring, raw and netlink sockets,
signalling the gateway, reading bwrap's argv and environment, and sockets of families the network
namespace does not isolate (vsock, which reaches the hypervisor; created only, never connected).
Every attempt must fail, while the positive controls (its own secret, its declared read-write
directory) work, so a broken fixture cannot pass for a tight sandbox.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from tests.threats.sandbox_support import ESCAPE, Gateway, escape_server, need_bwrap

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def host(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Things on the host the sandbox must not reach."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY----- fake")
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o755)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    unix_path = tmp_path / "host.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    unix.listen()
    abstract_name = f"mcpward-escape-{secrets.token_hex(4)}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    yield {"home": home, "data": data, "readonly": readonly, "listener": listener, "unix": unix_path,
           "abstract": "@" + abstract_name}
    for s in (listener, unix, abstract):
        s.close()


async def test_every_escape_attempt_fails(tmp_path: Path, host) -> None:  # type: ignore[no-untyped-def]
    need_bwrap()
    box_secret, other_secret, host_secret = (f"{k}-{secrets.token_hex(8)}" for k in ("box", "other", "host"))
    config = escape_server("box", f"""
[servers.box.sandbox]
rw = ["{host['data']}"]
ro = ["{host['readonly']}"]
[servers.box.sandbox.limits]
pids = 64
memory = "256M"
[servers.box.secrets]
BOX_TOKEN = "env:BOX_TOKEN_SRC"
""") + escape_server("other", """
[servers.other.secrets]
OTHER_TOKEN = "env:OTHER_TOKEN_SRC"
""")
    gw = await Gateway.launch(tmp_path, config, env={
        "BOX_TOKEN_SRC": box_secret, "OTHER_TOKEN_SRC": other_secret, "HOSTSECRET": host_secret})
    port = host["listener"].getsockname()[1]
    attempts = [
        ("read_file", "/etc/shadow"),
        ("read_file", "/root/.bashrc"),
        ("read_file", "/root/.profile"),
        ("list_dir", "/home"),
        ("read_file", str(host["home"] / ".ssh" / "id_rsa")),
        ("read_file", "/run/secrets/OTHER_TOKEN"),
        ("list_dir", str(tmp_path / "state" / "cache" / "other")),
        ("write_file", str(ESCAPE.parent / "escaped.txt")),
        ("write_file", "/etc/passwd"),
        ("write_file", "/usr/escaped"),
        ("write_file", str(host["readonly"] / "escaped.txt")),
        ("write_file", "/proc/sys/kernel/hostname"),
        ("connect_tcp", f"127.0.0.1:{port}"),
        ("connect_unix", str(host["unix"])),
        ("connect_unix", host["abstract"]),
        ("connect_unix", "/var/run/docker.sock"),
        ("routes", ""),
        ("dns", "example.com"),
        ("fork_bomb", ""),
        ("memory_bomb", ""),
        ("ptrace", ""),
        ("unshare_user", ""),
        ("unshare_mount", ""),
        ("mount", ""),
        ("chroot", ""),
        ("setuid_root", ""),
        ("bpf", ""),
        ("io_uring", ""),
        ("raw_socket", ""),
        ("netlink", ""),
        ("signal_host", str(os.getpid())),
        ("proc_leak", host_secret),
        ("proc_leak", box_secret),
        ("proc_leak", other_secret),
        ("env", "HOSTSECRET"),
        ("env", "BOX_TOKEN"),
        ("fds", ""),
        ("whoami", ""),
        ("caps", ""),
    ]
    try:
        # Positive controls: the fixture can succeed where the sandbox allows it.
        # (the server reads its own secret; the output guard redacts the value on its way back out)
        own = (await gw.call("box__read_secret", {"name": "BOX_TOKEN"}))["result"]["content"][0]["text"]
        assert own == "[REDACTED:configured-secret]", own
        control = await gw.attempt("box__attempt", "write_file", str(host["data"] / "allowed.txt"))
        assert control["escaped"], control
        assert (host["data"] / "allowed.txt").read_text() == "escaped"
        escaped = {}
        for name, target in attempts:
            result = await gw.attempt("box__attempt", name, target)
            if result["escaped"]:
                escaped[f"{name} {target}"] = result["detail"]
        assert not escaped, escaped
        with pytest.raises(BlockingIOError):
            host["listener"].accept()  # the host listener never saw a connection
        assert not (ESCAPE.parent / "escaped.txt").exists()
    finally:
        await gw.close()
    log = gw.log()
    for value in (box_secret, other_secret, host_secret):
        assert value not in log
    started = {r["server"]: r for r in gw.audit("sandbox.started")}
    assert started["box"]["backend"] == "bwrap" and started["box"]["secrets"] == ["BOX_TOKEN"]
    if os.geteuid() == 0:
        assert started["box"]["uid"] and started["box"]["uid"] != started["other"]["uid"]
    hits = [r for r in gw.audit("sandbox.limit-hit") if r["server"] == "box"]
    if "pids" in started["box"]["cgroups"]:
        assert hits and (hits[0].get("pids_max_hits") or hits[0].get("oom_kill")), gw.audit("sandbox.limit-hit")


# A server that tries to create (never connect: CID 2 is the hypervisor) sockets of families that bypass the network
# namespace, and one ordinary family as a control. Written per test: the escape fixture has no such attempt.
FAMILY_PROBE = """
import json, socket
from mcp.server.mcpserver import MCPServer
app = MCPServer("family-probe")

@app.tool()
def create(family: int, kind: int) -> str:
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        return json.dumps({"created": False, "errno": exc.errno})
    sock.close()
    return json.dumps({"created": True})

app.run()
"""


async def test_vsock_and_other_unisolated_families_are_refused(tmp_path: Path) -> None:
    need_bwrap()
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    probe_dir.chmod(0o755)  # a root gateway runs the server as its own uid: it must be able to read the script
    script = probe_dir / "family_probe.py"
    script.write_text(FAMILY_PROBE)
    script.chmod(0o644)
    gw = await Gateway.launch(tmp_path, f'[servers.fam]\ncommand = "{PYTHON}"\nargs = ["{script}"]\n')
    families = {"vsock": (socket.AF_VSOCK, socket.SOCK_STREAM), "netlink": (socket.AF_NETLINK, socket.SOCK_RAW),
                "packet": (socket.AF_PACKET, socket.SOCK_RAW), "alg": (socket.AF_ALG, socket.SOCK_SEQPACKET),
                "inet (control)": (socket.AF_INET, socket.SOCK_STREAM)}
    try:
        answers = {}
        for name, (family, kind) in families.items():
            reply = await gw.call("fam__create", {"family": int(family), "kind": int(kind)}, timeout=60)
            assert "result" in reply, (reply, gw.log()[-3000:])
            answers[name] = json.loads(reply["result"]["content"][0]["text"])
    finally:
        await gw.close()
    assert answers.pop("inet (control)") == {"created": True}
    assert answers == {name: {"created": False, "errno": errno.EAFNOSUPPORT} for name in answers}
    assert gw.audit("sandbox.started")[0]["backend"] == "bwrap"
