"""A broken config names the file, the key and what is wrong; never a traceback."""

from __future__ import annotations

import subprocess

import pytest

from mcpward.gateway import config
from mcpward.gateway.config import ConfigError
from tests.conftest import MCPWARD


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[servers.a]\nargs = []\n", "servers.a.command", "exactly one of"),
        ('[servers.a]\ncommand = "x"\nurl = "https://h/mcp"\n', "servers.a.command", "exactly one of"),
        ("[servers.a]\ncommand = 3\n", "servers.a.command", "expected a string"),
        ('[servers.a]\ncommand = "x"\nargs = ["ok", 1]\n', "servers.a.args[1]", "expected a string"),
        ('[servers.a]\ncommand = "x"\ncomand = "y"\n', "servers.a.comand", "unknown key"),
        ('[servers.a]\nurl = "http://example.com/mcp"\n', "servers.a.url", "plain http is refused"),
        ('[servers.a]\nurl = "https://127.0.0.1/mcp"\n', "servers.a.url", "loopback/private"),
        ('[servers.a]\nurl = "https://[::ffff:169.254.169.254]/mcp"\n', "servers.a.url", "loopback/private"),
        ('[servers.a]\nurl = "https://10.1.2.3/mcp"\n', "servers.a.url", "loopback/private"),
        ('[servers.a]\nurl = "https://u:p@example.com/mcp"\n', "servers.a.url", "credentials in the URL"),
        ('[servers.a]\nurl = "file:///etc/passwd"\n', "servers.a.url", "scheme must be https"),
        ('[servers.a]\ncommand = "x"\ntimeout = -1\n', "servers.a.timeout", "between"),
        ('[servers.a]\ncommand = "x"\nenv = { "BAD-NAME" = "1" }\n', "servers.a.env.BAD-NAME", "not a valid"),
        ('[servers."bad name"]\ncommand = "x"\n', 'servers.bad name', "server name must match"),
        ('[gateway]\nseparator = "::::::"\n', "gateway.separator", "1-4 characters"),
        ("[gateway]\nport = 70000\n", "gateway.port", "between"),
        ('[gateway]\nstart = "sometimes"\n', "gateway.start", "'eager' or 'lazy'"),
        ("[servers]\na = 1\n", "servers.a", "expected a table"),
        ("unknown_top = 1\n", "unknown_top", "unknown key"),
        # Per-principal credentials: who, what kind of credential, and never a shared secret beside them.
        ('[servers.a]\ncommand = "x"\n[servers.a.principals.alice]\n', "servers.a.principals.\"alice\"",
         "expected a principal such as"),
        ('[servers.a]\ncommand = "x"\n[servers.a.principals."anonymous:anonymous"]\n',
         'servers.a.principals."anonymous:anonymous"', "expected a principal such as"),
        ('[servers.a]\ncommand = "x"\n[servers.a.principals."api-key:ci"]\nheaders = { A = "b" }\n',
         'servers.a.principals."api-key:ci".headers', "headers are for remote"),
        ('[servers.a]\nurl = "https://example.com/mcp"\n[servers.a.principals."oauth:bob"]\nenv = { A = "b" }\n',
         'servers.a.principals."oauth:bob".env', "a remote (url) server takes headers"),
        ('[servers.a]\ncommand = "x"\n[servers.a.principals."api-key:ci"]\ntokn = "b"\n',
         'servers.a.principals."api-key:ci".tokn', "unknown key"),
        ('[servers.a]\ncommand = "x"\nenv = { T = "${secret:t}" }\n[servers.a.principals."api-key:ci"]\n',
         "servers.a.env.T", "every principal would share it"),
        ('[servers.a]\ncommand = "x"\nsecrets = { T = "secret:t" }\n[servers.a.principals."api-key:ci"]\n',
         "servers.a.secrets", "every principal would share it"),
        ('[servers.a]\nurl = "https://example.com/mcp"\nheaders = { Authorization = "Bearer ${env:T}" }\n'
         '[servers.a.principals."oauth:bob"]\n', "servers.a.headers.Authorization", "every principal would share it"),
    ],
)
def test_config_errors_name_key_and_problem(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(__import__("tomllib").loads(text), "conf.toml")
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith("conf.toml: ")


def test_valid_config_defaults() -> None:
    cfg = config.parse({"servers": {"t": {"command": "mcp-server-time"}}}, "c.toml")
    assert cfg.http_host == "127.0.0.1" and cfg.http_port == 8811 and cfg.http_path == "/mcp"
    assert cfg.servers["t"].prefix == "t" and cfg.servers["t"].timeout == 60.0


def test_cli_reports_config_error_without_traceback(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config("[servers.a]\ncommand = 3\n")
    for verb in ("run", "serve", "check"):
        proc = subprocess.run([MCPWARD, verb, "-c", str(path)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2
        assert f"{path}: servers.a.command: expected a string" in proc.stderr.replace("\n", "")
        assert "Traceback" not in proc.stderr


def test_cli_missing_and_invalid_files(write_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([MCPWARD, "check", "-c", str(tmp_path / "nope.toml")], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot read the file" in proc.stderr
    bad = write_config("[servers.a\n", name="bad.toml")
    proc = subprocess.run([MCPWARD, "check", "-c", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid TOML" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_refuses_non_loopback_bind(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config('[servers.a]\ncommand = "true"\n')
    proc = subprocess.run([MCPWARD, "serve", "-c", str(path), "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "allow_non_loopback" in proc.stderr


def test_per_principal_credentials_add_to_the_servers_own_settings() -> None:
    cfg = config.parse(__import__("tomllib").loads(
        '[servers.gh]\ncommand = "x"\nenv = { LOG = "debug" }\n'
        '[servers.gh.principals."api-key:ci"]\nenv = { TOKEN = "${secret:ci_token}" }\n'
        '[servers.gh.principals."api-key:ci".secrets]\nKEY = "secret:ci_key"\n'
        '[servers.gh.principals."oauth:alice"]\nenv = { TOKEN_FILE_HINT = "none" }\n'), "c.toml")
    server = cfg.servers["gh"]
    ci = server.for_principal("api-key:ci")
    assert ci is not None and ci.principal == "api-key:ci" and ci.start == "lazy" and not ci.principals
    assert ci.env == {"LOG": "debug", "TOKEN": "${secret:ci_token}"}
    alice = server.for_principal("oauth:alice")
    assert alice is not None and "TOKEN" not in alice.env  # never another principal's
    assert server.for_principal("api-key:other") is None
    assert server.env == {"LOG": "debug"}  # the server's own settings are unchanged

    from mcpward.sandbox.settings import read_settings

    profile = read_settings(cfg).profile("gh")
    assert [(d.name, d.ref, d.deliver) for d in profile.principal_secrets["api-key:ci"]] == [
        ("KEY", "secret:ci_key", "file")]
    assert profile.principal_secrets["oauth:alice"] == () and profile.secrets == ()


def test_a_principals_secret_is_checked_like_a_servers() -> None:
    from mcpward.sandbox.settings import read_settings

    cfg = config.parse(__import__("tomllib").loads(
        '[servers.gh]\ncommand = "x"\n[servers.gh.principals."api-key:ci"]\nenv = { KEY = "v" }\n'
        '[servers.gh.principals."api-key:ci".secrets]\nKEY = "secret:k"\n'), "c.toml")
    with pytest.raises(ConfigError) as info:
        read_settings(cfg)
    assert info.value.key == 'servers.gh.principals."api-key:ci".secrets.KEY'
    assert "also set in env" in info.value.problem


def test_literal_per_principal_credentials_are_redacted_like_the_servers() -> None:
    from mcpward.guards.setup import held_secrets

    cfg = config.parse(__import__("tomllib").loads(
        '[servers.gh]\nurl = "https://example.com/mcp"\n'
        '[servers.gh.principals."api-key:ci".headers]\nAuthorization = "Bearer literal-ci-credential"\n'), "c.toml")
    assert "literal-ci-credential" in held_secrets(cfg)
