"""The launcher's handling of secret references: container backends refuse env-delivered secrets
(declared or embedded in `env`), bad references are config errors (or a named refusal, never a
traceback), secrets too short to redact are announced, and the gateway's own files are never bound.

No engine and no sandbox is started here: the host's probe is replaced where a backend matters.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway.config import ConfigError, GatewayConfig, ServerConfig, load, parse
from mcpward.sandbox import probe
from mcpward.sandbox.launcher import Launcher
from mcpward.sandbox.plan import PlanError
from mcpward.transport.base import LinkError

FIXTURE = Path(__file__).parent / "fixtures" / "escape_server.py"
SECRET = "sk-live-" + "Q7w9" * 6


@pytest.fixture
def docker_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe says docker answers (it is never run: these tests stop before any spawn)."""
    fake = dataclasses.replace(probe.probe(), docker="/usr/bin/docker", docker_problem=None)
    monkeypatch.setattr(probe, "probe", lambda *a, **k: fake)


def box(tmp_path: Path, server: dict[str, Any]) -> GatewayConfig:
    table = {"command": sys.executable, "args": [str(FIXTURE)], **server}
    return parse({"servers": {"box": table}, "sandbox": {"state_dir": str(tmp_path / "state")}},
                 str(tmp_path / "t.toml"), tmp_path)


def docker_box(tmp_path: Path, **extra: Any) -> GatewayConfig:
    return box(tmp_path, {"sandbox": {"backend": "docker", "image": "local/x:1"}, **extra})


# ---------------------------------------------------------------- containers take no env secret

async def test_container_refuses_a_reference_embedded_in_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_here: None,
        recorded: list[tuple[str, dict[str, Any]]]) -> None:
    monkeypatch.setenv("MY_TOKEN_SRC", SECRET)
    cfg = docker_box(tmp_path, env={"GITHUB_TOKEN": "Bearer ${env:MY_TOKEN_SRC}", "PLAIN": "ok"})
    with pytest.raises(LinkError, match="takes secrets as files only") as err:
        await Launcher(cfg)._spawner(cfg.servers["box"], 1 << 20)
    assert "GITHUB_TOKEN" in str(err.value) and "PLAIN" not in str(err.value)
    refused = [f for e, f in recorded if e == "sandbox.refused"]
    assert len(refused) == 1
    assert refused[0]["rule"] == "sandbox.container-env-secret"
    assert refused[0]["env"] == ["GITHUB_TOKEN"] and refused[0]["backend"] == "docker"
    assert SECRET not in repr(recorded) and SECRET not in str(err.value)


async def test_container_refuses_an_env_declared_secret_and_audits_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_here: None,
        recorded: list[tuple[str, dict[str, Any]]]) -> None:
    monkeypatch.setenv("AUDIT_SRC", SECRET)
    cfg = docker_box(tmp_path, secrets={"OPENAI_KEY": {"from": "env:AUDIT_SRC", "as": "env"}})
    with pytest.raises(LinkError, match="files only"):
        await Launcher(cfg)._spawner(cfg.servers["box"], 1 << 20)
    refused = [f for e, f in recorded if e == "sandbox.refused"]
    assert [(f["rule"], f["env"]) for f in refused] == [("sandbox.container-env-secret", ["OPENAI_KEY"])]


async def test_container_takes_a_file_secret_and_plain_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_here: None,
        recorded: list[tuple[str, dict[str, Any]]]) -> None:
    from mcpward.sandbox.containers import ContainerSpawner, container_args

    monkeypatch.setenv("AUDIT_SRC", SECRET)
    cfg = docker_box(tmp_path, env={"MODE": "fast", "LITERAL": "$${not a ref}"},
                     secrets={"TOKEN": "env:AUDIT_SRC"})
    spawner = await Launcher(cfg)._spawner(cfg.servers["box"], 1 << 20)
    assert isinstance(spawner, ContainerSpawner)
    assert spawner.plan.files == {"TOKEN": SECRET.encode()}
    assert spawner.plan.env["LITERAL"] == "${not a ref}"
    argv = container_args("docker", "local/x:1", spawner.plan, spawner.argv, tmp_path, spawner.name)
    assert SECRET not in " ".join(argv)
    assert not [e for e, _ in recorded if e == "sandbox.refused"]


# ---------------------------------------------------------------- bad references

@pytest.mark.parametrize(("server", "key"), [
    ({"command": "x", "env": {"X": "${HOME}"}}, "servers.box.env.X"),
    ({"command": "x", "env": {"X": "a ${env:OK} b ${nope"}}, "servers.box.env.X"),
    ({"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
     "servers.box.headers.Authorization"),
    ({"command": "x", "principals": {"api-key:ci": {"env": {"T": "${unknown:x}"}}}},
     'servers.box.principals."api-key:ci".env.T'),
    ({"url": "https://mcp.example.com/mcp", "principals": {"oauth:alice": {"headers": {"A": "${env:}"}}}},
     'servers.box.principals."oauth:alice".headers.A'),
])
def test_a_bad_reference_is_a_config_error_naming_server_and_key(server: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse({"servers": {"box": server}})
    assert err.value.key == key
    assert "$${" in err.value.problem or "scheme" in err.value.problem or "nothing after" in err.value.problem


def test_valid_references_and_escapes_load() -> None:
    cfg = parse({"servers": {"box": {"command": "x", "env": {"A": "Bearer ${secret:api}", "B": "$${HOME}"}}}})
    assert cfg.servers["box"].env["B"] == "$${HOME}"


async def test_a_bad_reference_built_in_code_is_a_named_refusal(
        tmp_path: Path, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    """Configs built in code (mcpward scan --connect) skip the load check: the launcher still refuses
    with the key named, instead of a traceback that takes every server down."""
    cfg = GatewayConfig(source="<code>", sandbox={"state_dir": str(tmp_path / "state")})
    stdio = ServerConfig(name="box", prefix="box", command=sys.executable, args=[str(FIXTURE)],
                         env={"X": "${HOME}"})
    remote = ServerConfig(name="web", prefix="web", url="https://mcp.example.com/mcp",
                          headers={"Authorization": "Bearer ${TOKEN}"})
    launcher = Launcher(cfg)
    with pytest.raises(LinkError, match=r"server 'box' not started: env\.X: .*not a secret reference"):
        await launcher._spawner(stdio, 1 << 20)
    with pytest.raises(LinkError, match=r"server 'web' not started: headers\.Authorization"):
        await launcher.link(remote, 1 << 20)
    refused = [(f["server"], f["rule"], f["key"]) for e, f in recorded if e == "sandbox.refused"]
    assert refused == [("box", "secrets.bad-reference", "env.X"),
                       ("web", "secrets.bad-reference", "headers.Authorization")]


# ---------------------------------------------------------------- short secrets

async def test_a_secret_too_short_to_redact_is_warned_and_audited_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        recorded: list[tuple[str, dict[str, Any]]]) -> None:
    monkeypatch.setenv("AUDIT_PIN", "4821")
    monkeypatch.setenv("AUDIT_LONG", SECRET)
    cfg = box(tmp_path, {"sandbox": {"backend": "none", "acknowledge_unsandboxed": True},
                         "secrets": {"PIN": "env:AUDIT_PIN", "LONGER": "env:AUDIT_LONG"}})
    launcher = Launcher(cfg)
    with caplog.at_level(logging.WARNING, logger="mcpward.sandbox"):
        await launcher._spawner(cfg.servers["box"], 1 << 20)
        await launcher._spawner(cfg.servers["box"], 1 << 20)  # a restart: not announced again
    short = [f for e, f in recorded if e == "secrets.too-short-to-redact"]
    assert short == [{"server": "box", "ref": "env:AUDIT_PIN", "min_length": 6}]
    warnings = [r.getMessage() for r in caplog.records if "shorter than" in r.getMessage()]
    assert len(warnings) == 1 and "env:AUDIT_PIN" in warnings[0] and "NOT redacted" in warnings[0]
    assert "4821" not in repr(recorded) and "4821" not in warnings[0]


# ---------------------------------------------------------------- the gateway's own files

def test_the_gateways_own_files_are_never_bound(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "policies").mkdir(parents=True)
    (project / "policies" / "team.cedar").write_text("")
    (project / "mcpward.lock").write_text("{}")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "gh").write_text(SECRET)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "audit.sqlite").write_bytes(b"")
    (tmp_path / "data").mkdir()
    config = project / "mcpward.toml"
    config.write_text(f"""
[policy]
files = ["policies/team.cedar"]
[audit]
path = "{logs / 'audit.sqlite'}"
[sandbox]
state_dir = "{tmp_path / 'state'}"
[servers.box]
command = "{sys.executable}"
args = ["{FIXTURE}"]
env = {{ AUTH = "Bearer ${{file:{keys / 'gh'}}}" }}
""")
    launcher = Launcher(load(config))
    sensitive = set(launcher.sensitive)
    for path in (config, project / "policies" / "team.cedar", project / "mcpward.lock",
                 logs / "audit.sqlite", keys / "gh"):
        assert path.resolve() in sensitive, path
    server = launcher.cfg.servers["box"]
    for bind, rule in ((project, "contains"), (project / "policies", "contains"), (keys, "contains"),
                       (keys / "gh", "lies in"), (logs, "contains"), (config, "lies in")):
        launcher.settings.profiles["box"] = dataclasses.replace(launcher.settings.profile("box"), ro=(bind,))
        with pytest.raises(PlanError, match=rule):
            launcher.plan(server)
    launcher.settings.profiles["box"] = dataclasses.replace(launcher.settings.profile("box"),
                                                            rw=(tmp_path / "data",), ro=())
    assert any(b.path == (tmp_path / "data").resolve() for b in launcher.plan(server).binds)


# ---------------------------------------------------------------- every resolved value reaches the redactor

async def test_the_vault_token_and_a_bare_credential_reach_the_redactor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpward.guards import output
    from mcpward.sandbox.launcher import make_launcher
    from tests.test_secrets_refs import VaultFixture

    token, bearer = "hvs.VaultTok3n-Zq8vN3kLpW7xR2", "Zq8vBearerCred-" + "K4m" * 5
    monkeypatch.setenv("VT_SRC", token)
    monkeypatch.setenv("TOK_SRC", f"Bearer {bearer}")
    vault = VaultFixture(token=token)
    try:
        cfg = parse({"servers": {"box": {"command": sys.executable, "args": [str(FIXTURE)],
                                         "env": {"AUTH": "${env:TOK_SRC}"},
                                         "secrets": {"DBPW": "vault:app/db#password"}}},
                     "secrets": {"vault": {"address": vault.address, "allow_http": True, "token": "env:VT_SRC"}},
                     "sandbox": {"state_dir": str(tmp_path / "state")}}, str(tmp_path / "t.toml"), tmp_path)
        server = cfg.servers["box"]
        texts, declared = await make_launcher(cfg)._resolve(server, dict(server.env), {"DBPW": "vault:app/db#password"})
    finally:
        vault.close()
    assert declared == {"DBPW": "pw-from-vault"} and texts["AUTH"] == f"Bearer {bearer}"
    assert vault.requests and vault.requests[0]["token"] == token  # the token really was used
    redactor = output.redactor_for(cfg)  # the one the output guard, error guard and log filter share
    for leaked in (token, bearer, f"Bearer {bearer}", "pw-from-vault"):
        shown = redactor.redact(f"upstream said {leaked} here")
        assert leaked not in shown and "[REDACTED:configured-secret]" in shown, (leaked, shown)
