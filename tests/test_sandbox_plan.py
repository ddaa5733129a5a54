"""The sandbox as data: settings, what may be bound, the plan, bwrap's flags. Nothing is spawned here."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mcpward.gateway.config import ConfigError, parse
from mcpward.sandbox import paths
from mcpward.sandbox.bwrap import FdBag, build_args
from mcpward.sandbox.paths import BindRefused, auto_binds, check_bind, install_root, sensitive_paths
from mcpward.sandbox.plan import PlanError, SandboxPlan, make_plan
from mcpward.sandbox.settings import SandboxSettings, read_settings

FIXTURE = Path(__file__).parent / "fixtures" / "escape_server.py"


def settings_of(servers: dict[str, object], sandbox: dict[str, object] | None = None) -> SandboxSettings:
    return read_settings(parse({"servers": servers, "sandbox": sandbox or {}}))


def test_defaults_and_limits_parse() -> None:
    s = settings_of({"a": {"command": "x", "sandbox": {"limits": {"memory": "256M", "pids": 64, "cpu": 0.5},
                                                         "egress": {"allow": ["api.example.com:443"]}}}})
    p = s.profile("a")
    assert p.backend == "auto" and p.limits.memory == 256 << 20 and p.limits.pids == 64 and p.limits.cpu == 0.5
    assert p.egress.enabled and p.egress.allow == ("api.example.com:443",)
    assert s.profile("a").cache and s.profile("a").auto_bind


@pytest.mark.parametrize(("sandbox", "key", "problem"), [
    ({"backend": "chroot"}, "backend", "must be one of"),
    ({"backend": "none"}, "backend", "acknowledge_unsandboxed"),
    ({"backend": "docker"}, "image", "needs an image"),
    ({"limits": {"memory": "lots"}}, "limits.memory", "not a size"),
    ({"limits": {"memory": "1M"}}, "limits.memory", "at least 16M"),
    ({"limits": {"swap": "1G"}}, "limits.swap", "unknown key"),
    ({"run_as": 0}, "run_as", "unprivileged uid"),
    ({"egress": {"allow": ["http://x"]}}, "egress.allow", ""),
    ({"verify": {"/x": "md5:abc"}}, "verify./x", "sha256"),
    ({"rw": "/tmp"}, "rw", "expected an array"),
])
def test_bad_sandbox_tables_name_the_key(sandbox: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_of({"a": {"command": "x", "sandbox": sandbox}})
    assert err.value.key == f"servers.a.sandbox.{key}" and problem in err.value.problem


def test_strict_mode_refuses_none_and_remote_servers_take_no_sandbox() -> None:
    with pytest.raises(ConfigError, match="strict"):
        settings_of({"a": {"command": "x", "sandbox": {"backend": "none", "acknowledge_unsandboxed": True}}},
                    {"strict": True})
    with pytest.raises(ConfigError, match="only stdio servers"):
        settings_of({"r": {"url": "https://mcp.example.com/mcp", "sandbox": {"rw": ["/tmp"]}}})


def test_secret_declarations() -> None:
    s = settings_of({"a": {"command": "x", "secrets": {"TOKEN": "secret:gh", "KEY": {"from": "env:K", "as": "env"}}}})
    decl = {d.name: (d.ref, d.deliver) for d in s.profile("a").secrets}
    assert decl == {"TOKEN": ("secret:gh", "file"), "KEY": ("env:K", "env")}
    for bad, problem in ((("sk-live-123"), "reference"), ({"from": "env:K", "as": "argv"}, "'file' or 'env'")):
        with pytest.raises(ConfigError) as err:
            settings_of({"a": {"command": "x", "secrets": {"T": bad}}})
        assert problem in str(err.value) and "sk-live-123" not in str(err.value)
    with pytest.raises(ConfigError, match="declared once"):
        settings_of({"a": {"command": "x", "env": {"T": "v"}, "secrets": {"T": "env:T"}}})


def test_every_server_gets_its_own_stable_uid() -> None:
    s = settings_of({f"s{i}": {"command": "x"} for i in range(20)})
    uids = [s.uid_for(f"s{i}") for i in range(20)]
    assert len(set(uids)) == 20 and all(u >= 610000 for u in uids)
    assert settings_of({"s3": {"command": "x"}}).uid_for("s3") == uids[3]
    with pytest.raises(ConfigError, match="also server"):
        same = {"command": "x", "sandbox": {"run_as": 5000}}
        settings_of({"a": same, "b": same})


def test_sensitive_paths_and_sockets_are_never_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("x")
    (tmp_path / "project" / "src").mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "api.sock"))
    sensitive = sensitive_paths((tmp_path / "state",))
    refused = {
        home / ".aws": "holds credentials", home / ".aws" / "credentials": "holds credentials",
        home: "contains .aws", tmp_path / "api.sock": "unix socket", Path("/proc/self"): "never bound",
        Path("/"): "every host file", Path("/run"): "never bound", Path(os.path.expanduser("~")): "home directory",
        tmp_path / "missing": "does not exist", Path("relative"): "absolute",
    }
    for path, why in refused.items():
        with pytest.raises(BindRefused, match=why):
            check_bind(path, sensitive)
    assert check_bind(tmp_path / "project" / "src", sensitive) == (tmp_path / "project" / "src").resolve()
    sock.close()


def test_auto_binds_cover_the_interpreter_and_script(tmp_path: Path) -> None:
    data = tmp_path / "input.json"
    data.write_text("{}")
    binds = {b.path: b.why for b in auto_binds(sys.executable, [str(FIXTURE), "--tools", str(data)], None, "/usr/bin")}
    assert binds[FIXTURE.parent.resolve()] == "script"
    assert binds[data.resolve()] == "argument"  # a data file: that file, not its directory
    assert tmp_path.resolve() not in binds
    assert install_root(Path("/usr/bin/python3")) is None


def test_an_argument_that_cannot_be_a_file_name_is_just_an_argument() -> None:
    # `python -c <a long script>`: too long for a path (ENAMETOOLONG) must not stop the server.
    script = "print('x')\n" * 2000
    binds = auto_binds(sys.executable, ["-c", script, "a" * 5000 + ".py"], None, "/usr/bin")
    assert all(b.why == "command" for b in binds)


def test_plan_builds_the_environment_from_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ONLY_SECRET", "do-not-pass")
    s = settings_of({"a": {"command": sys.executable, "sandbox": {"egress": {"allow": ["x.example.com"]}}}},
                    {"state_dir": str(tmp_path)})
    plan = make_plan("a", sys.executable, [str(FIXTURE)], {"MODE": "test"}, None, s.profile("a"), s,
                     sensitive=sensitive_paths())
    assert "GATEWAY_ONLY_SECRET" not in plan.env and plan.env["MODE"] == "test"
    assert plan.env["HTTPS_PROXY"] == "http://127.0.0.1:3128" and plan.env["npm_config_cache"] == "/cache/npm"
    assert plan.cache_dir == tmp_path / "cache" / "a" and plan.egress
    assert (plan.uid is not None) == (os.geteuid() == 0)
    with pytest.raises(PlanError, match="No such file"):
        make_plan("a", str(tmp_path / "nope"), [], {}, None, s.profile("a"), s, sensitive=[])


def test_bwrap_flags_carry_no_secret_and_no_host_root(tmp_path: Path) -> None:
    s = settings_of({"a": {"command": sys.executable}}, {"state_dir": str(tmp_path)})
    plan = make_plan("a", sys.executable, [str(FIXTURE)], {}, None, s.profile("a"), s, sensitive=sensitive_paths())
    plan.files = {"TOKEN": b"s3cr3t-value-123"}
    assert plan.cache_dir is not None
    plan.cache_dir.mkdir(parents=True)  # the launcher creates it before spawning
    bag = FdBag()
    try:
        args = build_args(plan, bag, b"\0" * 8)
    finally:
        bag.close()
    joined = "\0".join(args)
    assert "s3cr3t-value-123" not in joined  # secret content goes through a memfd
    assert "--ro-bind\0/\0/" not in joined and "/etc/shadow" not in joined
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv", "--seccomp"):
        assert flag in args
    assert args[args.index("--cap-drop") + 1] == "ALL"
    assert "/run/secrets/TOKEN" in args


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    """A directory with a live unix socket two levels down (a stand-in for an agent's or docker's)."""
    sockdir = tmp_path / "sockdir"
    (sockdir / "sub").mkdir(parents=True)
    (sockdir / "plain.txt").write_text("x")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sockdir / "sub" / "agent.sock"))
    sock.listen()
    try:
        yield sockdir
    finally:
        sock.close()


def test_a_socket_anywhere_below_a_bind_is_refused(listening: Path, tmp_path: Path) -> None:
    sensitive = sensitive_paths()
    agent = listening / "sub" / "agent.sock"
    for path in (listening, listening / "sub"):
        with pytest.raises(BindRefused, match=f"contains the unix socket {agent}"):
            check_bind(path, sensitive)
    s = settings_of({"a": {"command": sys.executable}}, {"state_dir": str(tmp_path / "state")})
    for ro in ([str(listening)], []):  # a declared bind, then the cwd auto-bind
        profile = replace(s.profile("a"), ro=tuple(Path(p) for p in ro))
        with pytest.raises(PlanError, match=f"refused to bind .*{agent}"):
            make_plan("a", sys.executable, [str(FIXTURE)], {}, str(listening), profile, s, sensitive=sensitive)
    script = listening / "server.py"  # a script's directory is searched too
    script.write_text("")
    with pytest.raises(PlanError, match=str(agent)):
        make_plan("a", sys.executable, [str(script)], {}, None, s.profile("a"), s, sensitive=sensitive)
    (listening / "sub" / "agent.sock").unlink()
    assert check_bind(listening, sensitive) == listening.resolve()  # no socket left: bound


def test_the_socket_search_is_bounded_and_says_how_to_narrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(30):
        (wide / f"f{i}").write_text("")
    deep = tmp_path / "deep"
    (deep / "a" / "b" / "c" / "d").mkdir(parents=True)
    monkeypatch.setattr(paths, "MAX_SCAN_ENTRIES", 20)
    monkeypatch.setattr(paths, "MAX_SCAN_DEPTH", 3)
    with pytest.raises(BindRefused, match=r"more than 20 entries.*bind the narrower directories"):
        check_bind(wide, [])
    with pytest.raises(BindRefused, match=r"deeper than 3 levels.*bind the narrower directories"):
        check_bind(deep, [])
    assert check_bind(deep / "a", []) == (deep / "a").resolve()  # three levels below: within the bound


@pytest.mark.parametrize(("path", "why"), [
    ("/", "every host file"), ("/tmp", "shared temporary directory"), ("/var/tmp", "shared temporary directory"),
    ("/var", "contains /var/run"), ("/run", "never bound"), ("/var/lib", "contains /var/lib/docker"),
])
def test_directories_holding_host_sockets_are_refused_whole(path: str, why: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(BindRefused, match=why):
        check_bind(Path(path), [])


def test_a_nul_byte_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(BindRefused, match="NUL byte"):
        check_bind(Path("/tmp/a\0b"), [])
    s = settings_of({"a": {"command": sys.executable, "sandbox": {"ro": ["/tmp/a\0b"]}}},
                    {"state_dir": str(tmp_path)})
    with pytest.raises(PlanError, match=r"server 'a': refused to bind '/tmp/a\\x00b': .*NUL byte"):
        make_plan("a", sys.executable, [str(FIXTURE)], {}, None, s.profile("a"), s, sensitive=[])
    with pytest.raises(PlanError, match="cwd cannot contain a NUL byte"):
        make_plan("a", sys.executable, [], {}, "/tmp/a\0b", s.profile("a"), s, sensitive=[])


def _swap_for_link(path: Path, target: Path) -> None:
    path.rename(path.with_name(path.name + ".old"))
    path.symlink_to(target)


def test_a_path_swapped_after_the_check_is_never_bound(tmp_path: Path) -> None:
    """Plan (check) then bind (bwrap's descriptors) are apart in time: a swap in between is caught."""
    hostonly = tmp_path / "hostonly"  # a stand-in for /etc/ssh: never checked, must never be bound
    (hostonly / "ref").mkdir(parents=True)
    (hostonly / "ref" / "key").write_text("private")
    s = settings_of({"a": {"command": sys.executable}}, {"state_dir": str(tmp_path / "state")})

    def plan_of(*declared: Path) -> SandboxPlan:
        profile = replace(s.profile("a"), ro=declared, cache=False)
        return make_plan("a", sys.executable, [str(FIXTURE)], {}, None, profile, s, sensitive=[])

    def bind_flags(plan: SandboxPlan) -> list[str]:
        bag = FdBag()
        try:
            return build_args(plan, bag, None)
        finally:
            bag.close()

    swaps = {
        "last component made a symlink": lambda d: _swap_for_link(d / "ref", hostonly / "ref"),
        "a parent made a symlink": lambda d: _swap_for_link(d, hostonly),
        "replaced by another directory": lambda d: ((d / "ref").rename(d / "gone"), (d / "ref").mkdir()),
    }
    for i, (what, swap) in enumerate(swaps.items()):
        project = tmp_path / f"p{i}"
        (project / "ref").mkdir(parents=True)
        plan = plan_of(project / "ref")
        assert "--ro-bind-fd" in bind_flags(plan), what  # unchanged: bound
        swap(project)
        with pytest.raises(BindRefused, match=r"no longer what was checked|changed since it was checked"):
            bind_flags(plan)


@pytest.mark.parametrize(("configured", "size"), [(None, 128 << 20), ("2M", 2 << 20)])
def test_the_sandbox_tmp_is_a_tmpfs_capped_at_tmp_size(tmp_path: Path, configured: str | None, size: int) -> None:
    limits = {"limits": {"tmp_size": configured}} if configured else {}
    s = settings_of({"a": {"command": sys.executable, "sandbox": limits}}, {"state_dir": str(tmp_path)})
    plan = make_plan("a", sys.executable, [str(FIXTURE)], {}, None, s.profile("a"), s, sensitive=sensitive_paths())
    assert plan.cache_dir is not None
    plan.cache_dir.mkdir(parents=True)
    bag = FdBag()
    try:
        args = build_args(plan, bag, b"\0" * 8)
    finally:
        bag.close()
    # bwrap applies `--size` and `--perms` to the next `--tmpfs` only: they must sit right before it.
    at = args.index("--tmpfs")
    assert args[at + 1] == "/tmp" and args.count("--tmpfs") == 1
    assert args[at - 4:at] == ["--size", str(size), "--perms", "1777"]
