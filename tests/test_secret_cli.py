"""`mcpward secret set|get|list|rm`: values only from stdin or a no-echo prompt, never from argv."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcpward.cli.secret import secret_app
from mcpward.secrets import SecretResolver, SecretSettings, parse_ref
from tests.conftest import PYTHON

PASS = "correct horse battery"
VALUE = "s3cr3t-cli-VALUE-77"
RUN_CLI = "from mcpward.cli.secret import secret_app; secret_app(prog_name='mcpward secret')"
runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mcpward.toml"
    path.write_text('[secrets]\npath = "store/secrets.enc"\nkey = "passphrase"\n')
    return path


@pytest.fixture
def env() -> dict[str, str]:
    return {"MCPWARD_SECRETS_PASSPHRASE": PASS}


def _run(args: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(secret_app, args, input=stdin, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_set_get_list_rm(config: Path, env: dict[str, str]) -> None:
    code, out, _ = _run(["set", "db.pw", "-c", str(config)], env, VALUE + "\n")
    assert code == 0 and "stored db.pw in the encrypted file" in out
    assert (config.parent / "store" / "secrets.enc").exists()
    code, out, _ = _run(["set", "api", "--config", str(config), "--from-stdin"], env, "no-newline")
    assert code == 0

    code, out, _ = _run(["get", "db.pw", "-c", str(config)], env)
    digest = hashlib.sha256(VALUE.encode()).hexdigest()[:8]
    assert code == 0 and VALUE not in out
    assert f"db.pw: set in the encrypted file {config.parent / 'store' / 'secrets.enc'}, {len(VALUE)} characters, " \
           f"sha256 {digest}" in out
    code, out, _ = _run(["get", "db.pw", "--reveal", "-c", str(config)], env)
    assert (code, out) == (0, VALUE + "\n")  # the trailing newline of the input is not part of the value
    assert _run(["get", "api", "--reveal", "-c", str(config)], env)[1] == "no-newline\n"

    code, out, _ = _run(["list", "-c", str(config)], env)
    assert (code, out) == (0, "api\ndb.pw\n")

    assert _run(["rm", "db.pw", "-c", str(config)], env)[0] == 0
    code, _, err = _run(["rm", "db.pw", "-c", str(config)], env)
    assert code == 1 and "no secret named db.pw" in err
    code, _, err = _run(["get", "db.pw", "-c", str(config)], env)
    assert code == 1 and "no secret named db.pw in the encrypted file" in err


def test_the_gateway_resolves_what_the_cli_stored(config: Path, env: dict[str, str]) -> None:
    assert _run(["set", "token", "-c", str(config)], env, VALUE)[0] == 0
    settings = SecretSettings(path=config.parent / "store" / "secrets.enc", base_dir=config.parent)
    assert SecretResolver(settings, env).resolve(parse_ref("secret:token")) == VALUE


def test_a_value_on_the_command_line_is_refused_and_not_echoed(config: Path, env: dict[str, str]) -> None:
    code, out, err = _run(["set", "db.pw", VALUE, "-c", str(config)], env, "from-stdin\n")
    assert code == 2
    assert "a value is never taken from the command line" in err
    assert VALUE not in out + err
    assert not (config.parent / "store").exists()


def test_a_value_given_as_the_name_is_not_echoed(config: Path, env: dict[str, str]) -> None:
    code, out, err = _run(["set", "sk live key with spaces", "-c", str(config)], env, "v\n")
    assert code == 1 and "a secret name must match" in err
    assert "sk live" not in out + err


@pytest.mark.parametrize(("stdin", "problem"), [
    ("", "refusing an empty value"),
    ("\n", "refusing an empty value"),
    ("a\x00b", "NUL character"),
])
def test_bad_values_are_refused(config: Path, env: dict[str, str], stdin: str, problem: str) -> None:
    code, _, err = _run(["set", "x", "-c", str(config)], env, stdin)
    assert code == 1 and problem in err
    assert not (config.parent / "store").exists()


def test_wrong_passphrase(config: Path, env: dict[str, str]) -> None:
    _run(["set", "x", "-c", str(config)], env, VALUE)
    code, out, err = _run(["get", "x", "--reveal", "-c", str(config)], {"MCPWARD_SECRETS_PASSPHRASE": "wrong one!"})
    assert code == 1 and "the passphrase is wrong for this file, or its header (kdf, salt or check) was modified" in err
    assert VALUE not in out + err


def test_config_errors(tmp_path: Path, env: dict[str, str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[secrets]\nstroe = "file"\n')
    code, _, err = _run(["list", "-c", str(bad)], env)
    assert code == 2 and "secrets.stroe: unknown key" in err
    bad.write_text("[secrets\n")
    code, _, err = _run(["list", "-c", str(bad)], env)
    assert code == 2 and "invalid TOML" in err
    code, _, err = _run(["list", "-c", str(tmp_path / "absent.toml")], env)
    assert code == 2 and "the file given with -c/--config does not exist" in err


def test_a_value_run_together_with_c_is_not_echoed(config: Path, env: dict[str, str]) -> None:
    # click reads "-cS3cret..." as "-c S3cret...": the value becomes a config path that does not exist
    code, out, err = _run(["set", "db.pw", f"-c{LEAK}"], env, "from-stdin\n")
    assert code == 2 and "does not exist" in err
    assert "S3cret" not in out + err


def test_default_config_in_the_working_directory(config: Path, env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(config.parent)
    assert _run(["set", "here", "--from-stdin"], env, VALUE)[0] == 0
    assert (config.parent / "store" / "secrets.enc").exists()


@pytest.fixture
def no_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    keyring = pytest.importorskip("keyring")
    fail = pytest.importorskip("keyring.backends.fail")

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


def test_without_config_or_keyring_the_operator_is_told_to_choose(tmp_path: Path, no_keyring: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["set", "x"], {}, VALUE)
    assert code == 1
    assert "no OS keyring is usable here" in err and 'key = "passphrase"' in err
    assert not (tmp_path / "xdg" / "mcpward" / "secrets.enc").exists()


def test_env_store_lists_and_is_read_only(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[secrets]\nstore = "env"\n')
    env = {"MCPWARD_SECRET_gh": VALUE}
    code, out, _ = _run(["list", "-c", str(config)], env)
    assert (code, out) == (0, "gh\n")
    code, _, err = _run(["set", "gh", "-c", str(config)], env, "v")
    assert code == 1 and "the env store is read-only" in err


def _child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPWARD_")}
    env["HOME"] = str(tmp_path)
    return env


def test_no_terminal_for_the_passphrase_is_a_clear_error(config: Path, tmp_path: Path) -> None:
    # A new session has no controlling terminal, as under cron or a service manager.
    done = subprocess.run([PYTHON, "-c", RUN_CLI, "set", "x", "-c", str(config)], input=VALUE.encode(),
                          capture_output=True, env=_child_env(tmp_path), start_new_session=True, timeout=60)
    assert done.returncode == 1
    assert b"no terminal to ask for the store's passphrase: set MCPWARD_SECRETS_PASSPHRASE" in done.stderr
    assert VALUE.encode() not in done.stdout + done.stderr
    assert not (config.parent / "store" / "secrets.enc").exists()


def _expect(fd: int, text: bytes, seen: bytearray, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"waited for {text!r}; the terminal showed {bytes(seen)!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            raise AssertionError(f"the program ended before {text!r}; the terminal showed {bytes(seen)!r}")
        seen.extend(chunk)


def test_prompts_on_a_terminal_ask_twice_without_echo(config: Path, tmp_path: Path, env: dict[str, str]) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        os.chdir(tmp_path)
        os.execve(PYTHON, [PYTHON, "-c", RUN_CLI, "set", "db.pw", "-c", str(config)], _child_env(tmp_path))
    seen = bytearray()
    try:
        for prompt, answer in ((b"Value for db.pw: ", VALUE), (b"Value for db.pw again: ", VALUE),
                               (b"Passphrase for the secret store: ", PASS),
                               (b"the same passphrase again: ", PASS)):
            _expect(fd, prompt, seen)
            os.write(fd, answer.encode() + b"\n")
        _expect(fd, b"stored db.pw", seen)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert VALUE.encode() not in seen and PASS.encode() not in seen  # nothing typed was echoed
    assert _run(["get", "db.pw", "--reveal", "-c", str(config)], env)[1] == VALUE + "\n"


def test_different_values_at_the_prompt_write_nothing(config: Path, tmp_path: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(PYTHON, [PYTHON, "-c", RUN_CLI, "set", "db.pw", "-c", str(config)], _child_env(tmp_path))
    seen = bytearray()
    try:
        _expect(fd, b"Value for db.pw: ", seen)
        os.write(fd, b"one-value\n")
        _expect(fd, b"again: ", seen)
        os.write(fd, b"another-value\n")
        _expect(fd, b"nothing was written", seen)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 1
    assert not (config.parent / "store").exists()


LEAK = "S3cretValue_xyz"


@pytest.mark.parametrize("args", [
    ["set", "db.pw", f"--{LEAK}"],  # click alone: "No such option: --S3cretValue_xyz"
    ["set", "db.pw", f"-{LEAK}"],  # click alone: "No such option: -S"
    ["set", f"--{LEAK}", "db.pw"],  # the value before the name: the name is not echoed either
    ["set", LEAK, "db.pw"],
    ["get", "db.pw", LEAK],  # click alone: "Got unexpected extra argument (S3cretValue_xyz)"
    ["get", "db.pw", "--reveal", f"--{LEAK}"],
    ["get", LEAK, "db.pw"],
    ["rm", "db.pw", LEAK],
    ["rm", "db.pw", f"-{LEAK}"],
    ["list", LEAK],
    [LEAK],  # a value where the command goes: click alone: "No such command 'S3cretValue_xyz'"
    [LEAK, "db.pw"],
])
def test_a_stray_argument_is_refused_and_never_echoed(config: Path, env: dict[str, str], args: list[str]) -> None:
    assert _run(["set", "db.pw", "-c", str(config)], env, VALUE)[0] == 0
    code, out, err = _run([*args, "-c", str(config)], env, "from-stdin\n")
    assert code == 2, out + err
    assert "not shown" in err or "a value is never taken from the command line" in err
    assert LEAK not in out + err and "S3cret" not in out + err and VALUE not in out + err
    assert _run(["get", "db.pw", "--reveal", "-c", str(config)], env)[1] == VALUE + "\n"  # nothing was changed
