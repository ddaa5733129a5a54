"""The host probe against independent checks of the same facts, and its behaviour when things are missing."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpward.sandbox import cgroups, probe, seccomp
from mcpward.sandbox.cgroups import CgroupLimits, CgroupSet
from mcpward.sandbox.probe import HostCapabilities, summary_rows


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A probe computed for this test only, with the engines pointed at sockets that do not exist (no daemon is
    contacted, nothing leaves the machine); the cache is cleared again afterwards."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("CONTAINER_HOST", f"unix://{tmp_path}/no-podman.sock")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    probe._probe.cache_clear()
    yield
    probe._probe.cache_clear()


def test_probe_is_cached_and_refreshable(fresh: None) -> None:
    first = probe.probe()
    assert probe.probe() is first
    again = probe.probe(refresh=True)
    assert again is not first
    assert again.bwrap == first.bwrap and again.cgroup == first.cgroup


def test_identity_and_capabilities(fresh: None) -> None:
    caps = probe.probe()
    assert caps.is_root == (os.geteuid() == 0)
    # Independent check of CAP_SYS_RESOURCE: can a child raise a hard limit it lowered?
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))\n"
            "try:\n"
            "    resource.setrlimit(resource.RLIMIT_NOFILE, (100, 200))\n"
            "    print('raised')\n"
            "except (ValueError, OSError):\n"
            "    print('refused')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True)
    assert caps.has_cap_sys_resource == (done.stdout.strip() == "raised")


def test_bwrap_fields_match_reality(fresh: None) -> None:
    caps = probe.probe()
    installed = shutil.which("bwrap")
    if installed is None:
        assert caps.bwrap is None and not caps.bwrap_works
        assert caps.bwrap_problem and "bubblewrap" in caps.bwrap_problem
        return
    assert caps.bwrap is not None and os.path.samefile(caps.bwrap, installed)
    version = subprocess.run([installed, "--version"], capture_output=True, text=True, timeout=5, check=True)
    assert version.stdout.split() == ["bubblewrap", caps.bwrap_version]
    ran = subprocess.run([installed, "--unshare-all", "--unshare-user", "--disable-userns", "--ro-bind", "/usr", "/usr",
                          "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--", "/usr/bin/true"],
                         capture_output=True, timeout=5, check=False)
    assert caps.bwrap_works == (ran.returncode == 0)
    assert (caps.bwrap_problem is None) == caps.bwrap_works


def test_user_namespaces(fresh: None) -> None:
    caps = probe.probe()
    maximum = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    assert caps.max_user_namespaces == maximum
    if caps.bwrap_works:  # bwrap --unshare-user just worked, so user namespaces are available to us
        assert caps.user_namespaces
    assert (caps.userns_problem is None) == caps.user_namespaces


def test_seccomp_field(fresh: None) -> None:
    caps = probe.probe()
    try:
        seccomp.filter_bpf()
        buildable = True
    except seccomp.SeccompUnavailable:
        buildable = False
    kernel = Path("/proc/sys/kernel/seccomp/actions_avail").exists()
    assert caps.seccomp == (buildable and kernel)
    assert (caps.seccomp_problem is None) == caps.seccomp


def test_landlock_abi_is_real(fresh: None) -> None:
    caps = probe.probe()
    if caps.landlock_abi is None:
        assert caps.landlock_problem
        pytest.skip(f"Landlock unavailable here: {caps.landlock_problem}")
    assert isinstance(caps.landlock_abi, int) and caps.landlock_abi >= 1

    # Independent check: a ruleset handling "execute" can really be created (returns a file descriptor).
    class Attr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64)]

    libc = ctypes.CDLL(None, use_errno=True)
    attr = Attr(1)  # LANDLOCK_ACCESS_FS_EXECUTE
    fd = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)


def test_cgroup_fields_match_reality(fresh: None) -> None:
    caps = probe.probe()
    assert caps.cgroup == cgroups.hierarchy_kind()
    assert set(caps.cgroup_writable) == set(cgroups.CONTROLLERS)
    limits = {"memory": CgroupLimits(memory_bytes=64 * 1024 * 1024), "pids": CgroupLimits(pids=16),
              "cpu": CgroupLimits(cpu=0.5)}
    for controller, ok in caps.cgroup_writable.items():
        assert caps.cgroup_detail[controller]
        made = CgroupSet.create(f"probe-{controller}", limits[controller])
        try:
            # "writable" must mean a real, limited group can be created there, and "not writable" that it cannot
            assert (made is not None) == ok, CgroupSet.last_problem
            if made is not None:
                assert made.versions[controller] in ("v1", "v2")
        finally:
            if made is not None:
                made.remove()
    places = cgroups._discover()
    assert not [p for place in places.values() for p in place.base.glob("mcpward-probe-*")]  # nothing left over


def test_engines_without_daemons(fresh: None) -> None:
    caps = probe.probe()
    # the fixture points both CLIs at sockets that do not exist, so neither engine can answer
    for name, version, problem in (("docker", caps.docker, caps.docker_problem),
                                   ("podman", caps.podman, caps.podman_problem)):
        assert version is None
        assert problem
        if shutil.which(name) is None:
            assert problem == f"{name} not found on PATH"
        else:
            assert problem.startswith(f"{name} engine did not answer")


def test_missing_bwrap_is_explained(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find = probe._find
    monkeypatch.setattr(probe, "_find", lambda program: None if program == "bwrap" else real_find(program))
    caps = probe.probe(refresh=True)
    assert caps.bwrap is None and caps.bwrap_version is None and not caps.bwrap_works
    assert caps.bwrap_problem == "bwrap not found (install the 'bubblewrap' package)"
    rows = {item: (value, meaning) for item, value, meaning in summary_rows(caps)}
    assert rows["bubblewrap"] == ("not found", "install 'bubblewrap'")
    assert rows["bubblewrap works"] == ("no", caps.bwrap_problem)


def test_failing_bwrap_is_explained(fresh: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(probe, "_find", lambda program: str(fake) if program == "bwrap" else None)
    caps = probe.probe(refresh=True)
    assert caps.bwrap == str(fake) and not caps.bwrap_works
    assert caps.bwrap_problem == "bwrap probe failed: bwrap: No permissions to create new namespace"


def test_seccomp_unavailable_is_explained(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> bytes:
        raise seccomp.SeccompUnavailable("libseccomp (libseccomp.so.2) cannot be loaded: gone")

    monkeypatch.setattr(seccomp, "filter_bpf", unavailable)
    caps = probe.probe(refresh=True)
    assert not caps.seccomp
    assert caps.seccomp_problem == "libseccomp (libseccomp.so.2) cannot be loaded: gone"


def test_probe_never_raises(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise RuntimeError("mountinfo exploded")

    monkeypatch.setattr(cgroups, "hierarchy_kind", broken)
    caps = probe.probe(refresh=True)
    assert isinstance(caps, HostCapabilities)
    assert not caps.bwrap_works and caps.cgroup == "none"
    assert caps.bwrap_problem == "host probe failed: RuntimeError: mountinfo exploded"
    assert all(len(row) == 3 for row in summary_rows(caps))


def test_summary_rows(fresh: None) -> None:
    caps = probe.probe()
    rows = summary_rows(caps)
    items = [item for item, _, _ in rows]
    assert len(items) == len(set(items))
    for item in ("running as root", "bubblewrap", "bubblewrap works", "seccomp filter", "Landlock", "cgroups",
                 "cgroup memory", "cgroup pids", "cgroup cpu", "docker", "podman"):
        assert item in items
    for item, value, meaning in rows:
        assert item and value and meaning, (item, value, meaning)
    by_item = {item: (value, meaning) for item, value, meaning in rows}
    assert by_item["cgroups"][0] == caps.cgroup
    assert by_item["docker"] == ("unavailable", caps.docker_problem)
    if caps.landlock_abi:
        assert by_item["Landlock"][0] == f"ABI {caps.landlock_abi}"

