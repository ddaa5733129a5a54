"""The docker and podman backends against a real engine: a server starts in a container and answers
one call through the gateway.

Runs only where an engine answers (the gateway's own probe: `podman info` / `docker version`, with its
bounded timeout); otherwise each engine's test skips with the probe's reason. The image is built here
from the host's own interpreter and imported (`<engine> import`), never pulled: no registry is
contacted. It holds only the C libraries the interpreter links against outside its install root; the
interpreter itself and the server script reach the container as the sandbox's automatic read-only
binds, as they would for an operator's image that lacks them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mcpward.sandbox import probe
from mcpward.sandbox.paths import install_root
from tests.conftest import FIXTURES
from tests.threats.sandbox_support import Gateway

pytestmark = pytest.mark.timeout(240)
SERVER = FIXTURES / "stdlib_server.py"
ENGINE_TIMEOUT_S = 120


def engine_or_skip(engine: str) -> str:
    caps = probe.probe()
    if getattr(caps, engine) is None:
        pytest.skip(f"no {engine} engine answers here: {getattr(caps, f'{engine}_problem')}")
    return engine


def linked_libraries(executable: Path) -> list[Path]:
    """The shared objects `executable` loads (ldd's resolved paths), loader included."""
    out = subprocess.run(["ldd", str(executable)], capture_output=True, text=True, timeout=30, check=True).stdout
    found = []
    for line in out.splitlines():
        words = line.replace("=>", " ").split()
        found += [Path(w) for w in words if w.startswith("/")]
    return found


def build_image(engine: str, tmp_path: Path) -> str:
    """A local image with the interpreter's libraries outside its install root; its tag."""
    python = Path(sys.executable).resolve()
    root = install_root(python)
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        for name in ("tmp", "proc", "dev", "sys", "run", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for lib in linked_libraries(python):
            if root is not None and lib.resolve().is_relative_to(root):
                continue  # the install root is bound in by the sandbox
            tar.add(lib.resolve(), arcname=str(lib).lstrip("/"))
    tag = f"localhost/mcpward-test-python:{secrets.token_hex(4)}"
    done = subprocess.run([engine, "import", str(tarball), tag], capture_output=True, text=True,
                          timeout=ENGINE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return tag


async def answer_from_a_container(engine: str, tmp_path: Path, sandbox: str = "") -> None:
    """One call to the fixture in `engine` through the gateway; checks what the container allowed."""
    engine_or_skip(engine)
    image = build_image(engine, tmp_path)
    runs_containers_or_skip(engine, image)
    token = f"container-secret-{secrets.token_hex(8)}"
    config = f"""
[servers.box]
command = "{Path(sys.executable).resolve()}"
args = ["{SERVER}"]
[servers.box.sandbox]
backend = "{engine}"
image = "{image}"
{sandbox}
[servers.box.secrets]
TOKEN = "env:BOX_TOKEN_SRC"
"""
    try:
        gw = await Gateway.launch(tmp_path, config, env={"BOX_TOKEN_SRC": token})
        try:
            listed = await gw.request("tools/list", {}, timeout=120)
            assert [t["name"] for t in listed.get("result", {}).get("tools", [])] == ["box__facts"], listed
            reply = await gw.call("box__facts", {})
        finally:
            await gw.close()
    finally:
        subprocess.run([engine, "rmi", "-f", image], capture_output=True, timeout=ENGINE_TIMEOUT_S)
    assert "result" in reply, (reply, gw.log()[-2000:])
    facts = json.loads(reply["result"]["content"][0]["text"])
    # No network but loopback, a read-only root, not root, and the secret through its file (redacted
    # by the output guard on its way back, which shows the gateway knew the value came from there).
    assert facts["interfaces"] == ["lo"] and not facts["root_writable"], facts
    assert facts["uid"] != 0 and facts["secret"] == "[REDACTED:configured-secret]", facts
    assert [r["backend"] for r in gw.audit("sandbox.started")] == [engine]
    assert token not in gw.log()


def runs_containers_or_skip(engine: str, image: str) -> None:
    """Skip when the engine answers but cannot start any container here (e.g. crun on a host with
    hybrid cgroups). The limits are explicit so that a host without CAP_SYS_RESOURCE passes; the
    gateway's own argv is what the test then checks."""
    python = Path(sys.executable).resolve()
    root = install_root(python) or python.parent
    done = subprocess.run([engine, "run", "--rm", "--network", "none", "--ulimit", "nofile=64:64", "--ulimit",
                           "nproc=64:64", "-v", f"{root}:{root}:ro", image, str(python), "-c", "pass"],
                          capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
    if done.returncode != 0:
        subprocess.run([engine, "rmi", "-f", image], capture_output=True, timeout=ENGINE_TIMEOUT_S)
        pytest.skip(f"{engine} answers but cannot run a container here: {done.stderr.strip()[-300:]}")


@pytest.mark.parametrize("engine", ["podman", "docker"])
async def test_a_server_answers_from_inside_a_container(engine: str, tmp_path: Path) -> None:
    await answer_from_a_container(engine, tmp_path, "cache = false")


@pytest.mark.parametrize("engine", ["podman", "docker"])
async def test_a_container_gets_its_package_cache(engine: str, tmp_path: Path) -> None:
    await answer_from_a_container(engine, tmp_path)  # the default profile: a package cache at /cache
