"""Backends without an engine: the docker/podman argv as data, the choice of backend (and the refusal
when none works), and the loud `none` backend. No container engine is run here."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway.config import parse
from mcpward.sandbox import probe
from mcpward.sandbox.backends import UnsandboxedSpawner, choose_backend
from mcpward.sandbox.containers import container_args
from mcpward.sandbox.launcher import Launcher
from mcpward.sandbox.paths import BindRefused, sensitive_paths
from mcpward.sandbox.plan import make_plan
from mcpward.sandbox.settings import Limits, SandboxProfile, read_settings
from mcpward.transport.base import LinkError

FIXTURE = Path(__file__).parent / "fixtures" / "escape_server.py"
SECRET = "s3cr3t-" + "v4lue" * 4


def caps(**changes: Any) -> probe.HostCapabilities:
    return dataclasses.replace(probe.probe(), **changes)


NOTHING = {"bwrap_works": False, "bwrap_problem": "simulated", "docker": None, "podman": None,
           "docker_problem": "no daemon", "podman_problem": "not installed"}


# ---------------------------------------------------------------- container argv

@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_container_argv_is_locked_down_and_carries_no_secret(engine: str, tmp_path: Path) -> None:
    cfg = parse({"servers": {"a": {"command": sys.executable, "args": [str(FIXTURE)], "env": {"MODE": "x"},
                                   "sandbox": {"backend": engine, "image": "local/a:1", "ro": [str(tmp_path)],
                                               "limits": {"memory": "256M", "pids": 32, "cpu": 0.5,
                                                          "nofile": 512}}}},
                 "sandbox": {"state_dir": str(tmp_path / "state")}})
    settings = read_settings(cfg)
    plan = make_plan("a", sys.executable, [str(FIXTURE)], {"MODE": "x"}, None, settings.profile("a"), settings,
                     sensitive=sensitive_paths())
    plan.files = {"TOKEN": SECRET.encode()}
    plan.env["TOKEN_FILE"] = "/run/secrets/TOKEN"
    secrets_dir = tmp_path / "secrets"
    argv = container_args(engine, "local/a:1", plan, plan.argv, secrets_dir, "mcpward-a-1234")
    joined = " ".join(argv)

    assert argv[:4] == [engine, "run", "--rm", "-i"]
    assert SECRET not in joined
    assert argv[argv.index("--network") + 1] == "none"
    assert "--read-only" in argv and "--init" in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"
    uid = plan.uid if plan.uid is not None else 65534
    assert argv[argv.index("--user") + 1] == f"{uid}:{uid}" and uid != 0
    assert argv[argv.index("--memory") + 1] == str(256 << 20)
    assert argv[argv.index("--memory-swap") + 1] == str(256 << 20)  # no swap beyond the limit
    assert argv[argv.index("--pids-limit") + 1] == "32"
    assert argv[argv.index("--cpus") + 1] == "0.5"
    ulimits = [argv[i + 1] for i, a in enumerate(argv) if a == "--ulimit"]
    # Both explicit: without CAP_SYS_RESOURCE, podman's own attempt to raise them fails every start.
    assert ulimits == ["nofile=512:512", "nproc=32:32"]
    assert f"{secrets_dir / 'TOKEN'}:/run/secrets/TOKEN:ro" in argv
    assert f"{tmp_path.resolve()}:{tmp_path.resolve()}:ro" in argv
    # Environment by name only: values come from the engine CLI's own environment, never argv.
    env_names = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert "MODE" in env_names and "TOKEN_FILE" in env_names
    assert all("=" not in name for name in env_names)
    assert argv[-3:] == ["local/a:1", *plan.argv]
    assert "--privileged" not in argv and "host" not in argv


def test_container_argv_without_limits_or_secrets() -> None:
    from mcpward.sandbox.plan import SandboxPlan

    plan = SandboxPlan(server="b", argv=["/srv/server"], env={}, limits=Limits(memory=None, pids=None, cpu=None))
    argv = container_args("podman", "local/b:2", plan, plan.argv, None, "mcpward-b-1")
    for flag in ("--memory", "--pids-limit", "--cpus"):
        assert flag not in argv
    assert not any(a.startswith("/run/secrets") or ":/run/secrets/" in a for a in argv)
    assert argv[argv.index("-w") + 1] == "/tmp" and argv[-2:] == ["local/b:2", "/srv/server"]


def _plan_binding(tmp_path: Path, declared: Path, engine: str = "docker") -> Any:
    cfg = parse({"servers": {"a": {"command": sys.executable, "sandbox": {
                     "backend": engine, "image": "local/a:1", "ro": [str(declared)], "auto_bind": False}}},
                 "sandbox": {"state_dir": str(tmp_path / "state")}})
    settings = read_settings(cfg)
    return make_plan("a", sys.executable, [], {}, None, settings.profile("a"), settings, sensitive=sensitive_paths())


def _swap_for_symlink(path: Path, target: Path) -> None:
    path.rename(path.with_name(path.name + ".old"))
    path.symlink_to(target, target_is_directory=True)


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_container_bind_swapped_for_a_symlink_after_the_plan_is_refused(engine: str, tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    plan = _plan_binding(tmp_path, project, engine)
    assert f"{project}:{project}:ro" in container_args(engine, "local/a:1", plan, plan.argv, None, "n")
    _swap_for_symlink(project, elsewhere)  # the engine would follow it to `elsewhere`, never checked
    with pytest.raises(BindRefused, match="no longer what was checked"):
        container_args(engine, "local/a:1", plan, plan.argv, None, "n")


def test_container_bind_through_a_swapped_parent_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    (parent / "data").mkdir(parents=True)
    decoy = tmp_path / "decoy"
    (decoy / "data").mkdir(parents=True)
    plan = _plan_binding(tmp_path, parent / "data")
    _swap_for_symlink(parent, decoy)  # same path text, and it still resolves: but through a symlink
    assert (parent / "data").is_dir()
    with pytest.raises(BindRefused, match="changed since it was checked"):
        container_args("docker", "local/a:1", plan, plan.argv, None, "n")


def test_container_bind_replaced_by_another_directory_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    plan = _plan_binding(tmp_path, project)
    project.rename(tmp_path / "moved")
    project.mkdir()  # the same path text, another directory: not what was searched for sockets
    with pytest.raises(BindRefused, match="no longer what was checked"):
        container_args("podman", "local/a:1", plan, plan.argv, None, "n")


def test_container_bind_without_a_recorded_identity_or_with_a_colon_is_refused(tmp_path: Path) -> None:
    from mcpward.sandbox.paths import Bind
    from mcpward.sandbox.plan import SandboxPlan

    plan = SandboxPlan(server="b", argv=["/srv/server"], env={}, binds=[Bind(tmp_path.resolve(), False, "declared")])
    with pytest.raises(BindRefused, match="no longer what was checked"):
        container_args("docker", "local/b:2", plan, plan.argv, None, "n")
    odd = tmp_path / "a:/etc:rw"  # `-v` splits on ':': this would mount something else entirely
    odd.mkdir(parents=True)
    plan = _plan_binding(tmp_path, odd)
    with pytest.raises(BindRefused, match="cannot contain ':'"):
        container_args("docker", "local/a:1", plan, plan.argv, None, "n")


async def test_container_spawn_refuses_a_changed_bind_and_audits_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    from mcpward.sandbox import containers

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    plan = _plan_binding(tmp_path, project)
    plan.files = {"TOKEN": SECRET.encode()}
    made: list[Path] = []
    real_secret_dir = containers.secret_dir

    def tracked_secret_dir(*args: Any) -> Path:
        made.append(real_secret_dir(*args))
        return made[-1]

    monkeypatch.setattr(containers, "secret_dir", tracked_secret_dir)
    monkeypatch.setattr(containers.shutil, "which", lambda name: "/bin/true")  # an engine that would do nothing
    _swap_for_symlink(project, elsewhere)
    spawner = containers.ContainerSpawner("docker", "local/a:1", plan, plan.argv)
    with pytest.raises(LinkError, match=r"not started: refused to bind .*no longer what was checked"):
        await spawner.spawn(1 << 16)
    refused = [f for e, f in recorded if e == "sandbox.refused"]
    assert len(refused) == 1 and refused[0]["rule"] == "sandbox.bind-changed"
    assert not [e for e, _ in recorded if e == "sandbox.started"]
    assert made and not made[0].exists()  # the secret files were removed
    odd = tmp_path / "a:b"
    odd.mkdir()
    spawner = containers.ContainerSpawner("podman", "local/a:1", _plan_binding(tmp_path, odd, "podman"), plan.argv)
    with pytest.raises(LinkError, match="cannot contain ':'"):
        await spawner.spawn(1 << 16)
    assert [f["rule"] for e, f in recorded if e == "sandbox.refused"] == ["sandbox.bind-changed", "sandbox.bind-path"]


# ---------------------------------------------------------------- choosing a backend

def test_choose_backend() -> None:
    with_image = SandboxProfile(image="local/x:1")
    assert choose_backend(SandboxProfile(), caps(bwrap_works=True)) == "bwrap"
    assert choose_backend(with_image, caps(**{**NOTHING, "podman": "/usr/bin/podman"})) == "podman"
    assert choose_backend(with_image, caps(**{**NOTHING, "docker": "/usr/bin/docker"})) == "docker"
    with pytest.raises(LinkError, match="no sandbox backend works here"):
        choose_backend(SandboxProfile(), caps(**{**NOTHING, "docker": "/usr/bin/docker"}))  # no image
    with pytest.raises(LinkError, match="backend docker is not usable here: no daemon"):
        choose_backend(SandboxProfile(backend="docker", image="local/x:1"), caps(**NOTHING))
    with pytest.raises(LinkError, match="backend bwrap is not usable here: simulated"):
        choose_backend(SandboxProfile(backend="bwrap"), caps(**NOTHING))


async def test_no_backend_means_the_server_does_not_start_and_is_audited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    fake = caps(**NOTHING)
    monkeypatch.setattr(probe, "probe", lambda *a, **k: fake)
    cfg = parse({"servers": {"box": {"command": sys.executable, "args": [str(FIXTURE)]}},
                 "sandbox": {"state_dir": str(tmp_path / "state")}})
    with pytest.raises(LinkError, match="does not start"):
        await Launcher(cfg)._spawner(cfg.servers["box"], 1 << 20)
    refused = [f for e, f in recorded if e == "sandbox.refused"]
    assert len(refused) == 1 and refused[0]["server"] == "box" and refused[0]["rule"] == "sandbox.no-backend"
    assert "bwrap: simulated" in refused[0]["reason"]
    assert not [e for e, _ in recorded if e in ("sandbox.started", "sandbox.unsandboxed")]


async def test_the_sandbox_plan_is_made_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its bind checks search declared directories for sockets: on the loop, every client would wait.
    import threading

    fake = caps(**NOTHING)
    monkeypatch.setattr(probe, "probe", lambda *a, **k: fake)
    cfg = parse({"servers": {"box": {"command": sys.executable, "args": [str(FIXTURE)]}},
                 "sandbox": {"state_dir": str(tmp_path / "state")}})
    launcher = Launcher(cfg)
    threads: list[threading.Thread] = []
    real_plan = launcher.plan

    def watched_plan(*args: Any) -> Any:
        threads.append(threading.current_thread())
        return real_plan(*args)

    monkeypatch.setattr(launcher, "plan", watched_plan)
    with pytest.raises(LinkError, match="does not start"):
        await launcher._spawner(cfg.servers["box"], 1 << 20)
    assert threads and threads[0] is not threading.main_thread()


# ---------------------------------------------------------------- the `none` backend

async def test_none_backend_warns_and_audits_at_every_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        recorded: list[tuple[str, dict[str, Any]]]) -> None:
    monkeypatch.setenv("AUDIT_SRC", SECRET)
    code = ("import os, sys; print(open(os.environ['TOKEN_FILE']).read() == os.environ['SRC_CHECK'], flush=True); "
            "sys.stdin.read()")
    cfg = parse({"servers": {"box": {"command": sys.executable, "args": ["-c", code],
                                     "env": {"SRC_CHECK": SECRET},
                                     "sandbox": {"backend": "none", "acknowledge_unsandboxed": True},
                                     "secrets": {"TOKEN": "env:AUDIT_SRC"}}},
                 "sandbox": {"state_dir": str(tmp_path / "state")}})
    launcher = Launcher(cfg)
    for start in (1, 2):
        spawner = await launcher._spawner(cfg.servers["box"], 1 << 20)
        assert isinstance(spawner, UnsandboxedSpawner) and spawner.describe().startswith("[UNSANDBOXED]")
        with caplog.at_level(logging.WARNING, logger="mcpward.sandbox"):
            proc = await spawner.spawn(1 << 20)
        try:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"True"
            secret_file = Path(spawner.env["TOKEN_FILE"])
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o400
            assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
        finally:
            proc.kill()
            await proc.wait()
            await spawner.cleanup()
        assert not secret_file.exists() and not secret_file.parent.exists()
        unsandboxed = [f for e, f in recorded if e == "sandbox.unsandboxed"]
        assert unsandboxed == [{"server": "box"}] * start
        warnings = [r.getMessage() for r in caplog.records if "UNSANDBOXED" in r.getMessage()]
        assert len(warnings) == start and "box" in warnings[-1]
    assert os.environ.get("TOKEN_FILE") is None  # the gateway's own environment is untouched
