"""`mcpward doctor` and secret references: references embedded in env and headers must resolve, as
declared secrets must, or doctor reports the server as not starting (exit 1). Never a value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, MCPWARD

SECRET = "sk-doctor-" + "Zx8" * 6


def doctor(tmp_path: Path, config: str, **env: str) -> tuple[int, dict[str, Any] | None, str]:
    path = tmp_path / "mcpward.toml"
    path.write_text(config + f'\n[sandbox]\nstate_dir = "{tmp_path / "state"}"\n')
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")} | env
    done = subprocess.run([MCPWARD, "doctor", "-c", str(path), "--json"], capture_output=True, text=True,
                          env=run_env, timeout=120)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = None
    return done.returncode, report, done.stdout + done.stderr


def server(report: dict[str, Any] | None, name: str) -> dict[str, Any]:
    assert report is not None
    return next(s for s in report["servers"] if s["server"] == name)


BOX = f"""
[servers.box]
command = "{sys.executable}"
args = ["{FIXTURES / 'escape_server.py'}"]
env = {{ T = "Bearer ${{env:AUDIT_T}}", PLAIN = "x" }}
[servers.remote]
url = "http://127.0.0.1:9/mcp"
allow_http = true
allow_private = true
headers = {{ Authorization = "Bearer ${{env:AUDIT_H}}" }}
"""


def test_unresolved_embedded_references_are_problems(tmp_path: Path) -> None:
    code, report, text = doctor(tmp_path, BOX)
    assert code == 1, text
    box, remote = server(report, "box"), server(report, "remote")
    assert any("env.T (env:AUDIT_T)" in p and "AUDIT_T is not set" in p for p in box["problems"])
    assert any("headers.Authorization (env:AUDIT_H)" in p for p in remote["problems"])
    assert box["secret_status"]["env.T (env:AUDIT_T)"].startswith("does not resolve")


def test_resolved_embedded_references_pass_and_short_ones_are_warned(tmp_path: Path) -> None:
    code, report, text = doctor(tmp_path, BOX, AUDIT_T=SECRET, AUDIT_H="abc")
    assert code == 0, text
    box, remote = server(report, "box"), server(report, "remote")
    assert not box["problems"] and not remote["problems"]
    assert box["secret_status"] == {"env.T (env:AUDIT_T)": "resolves"}
    assert any("shorter than 6" in w for w in remote["warnings"])
    assert SECRET not in text and "abc" not in json.dumps(remote)


def test_a_bad_reference_is_a_config_error_not_a_clean_bill(tmp_path: Path) -> None:
    code, _, text = doctor(tmp_path, BOX.replace("${env:AUDIT_T}", "${HOME}"))
    assert code == 2
    assert "servers.box.env.T" in text and "not a secret reference" in text
    assert "Traceback" not in text


def test_a_principals_secret_that_does_not_resolve_is_a_problem(tmp_path: Path) -> None:
    config = f"""
[servers.box]
command = "{sys.executable}"
args = ["{FIXTURES / 'escape_server.py'}"]
[servers.box.principals."api-key:ci"]
env = {{ T = "${{env:AUDIT_CI}}" }}
secrets = {{ K = "env:AUDIT_CI_KEY" }}
"""
    code, report, text = doctor(tmp_path, config)
    assert code == 1, text
    problems = " | ".join(server(report, "box")["problems"])
    assert 'principals."api-key:ci".env.T (env:AUDIT_CI)' in problems
    assert 'principals."api-key:ci".K (env:AUDIT_CI_KEY)' in problems


def test_doctor_reports_an_env_secret_for_a_container_backend(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from mcpward.cli.doctor import _server_report
    from mcpward.gateway.config import parse
    from mcpward.sandbox import probe
    from mcpward.sandbox.launcher import Launcher

    monkeypatch.setenv("AUDIT_T", SECRET)
    caps = dataclasses.replace(probe.probe(), docker="/usr/bin/docker", docker_problem=None)
    cfg = parse({"servers": {"box": {"command": sys.executable, "args": [str(FIXTURES / "escape_server.py")],
                                     "env": {"T": "${env:AUDIT_T}"},
                                     "sandbox": {"backend": "docker", "image": "local/x:1"}}},
                 "sandbox": {"state_dir": str(tmp_path / "state")}}, str(tmp_path / "t.toml"), tmp_path)
    report = _server_report(Launcher(cfg), "box", caps)
    assert report["backend"] == "docker"
    assert any("sandbox.container-env-secret" in p and "T" in p for p in report["problems"])
    assert SECRET not in json.dumps(report)


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_stop_on_a_bad_reference_with_a_config_error(tmp_path: Path, command: str) -> None:
    path = tmp_path / "mcpward.toml"
    path.write_text(BOX.replace("${env:AUDIT_H}", "${TOKEN}") + f'\n[sandbox]\nstate_dir = "{tmp_path / "s"}"\n')
    done = subprocess.run([MCPWARD, command, "-c", str(path)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "servers.remote.headers.Authorization" in done.stderr and "not a secret reference" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


NONE_AND_BOX = f"""
[servers.open]
command = "{sys.executable}"
args = ["{FIXTURES / 'escape_server.py'}"]
[servers.open.sandbox]
backend = "none"
acknowledge_unsandboxed = true
[servers.open.sandbox.limits]
memory = "256M"
[servers.box]
command = "{sys.executable}"
args = ["{FIXTURES / 'escape_server.py'}"]
"""


def test_an_unsandboxed_server_is_not_described_as_sandboxed(tmp_path: Path) -> None:
    code, report, text = doctor(tmp_path, NONE_AND_BOX)
    assert code == 0, text
    open_ = server(report, "open")
    assert open_["backend"] == "none" and any("UNSANDBOXED" in w for w in open_["warnings"])
    # what the unsandboxed spawn really gives: host network and filesystem, nothing enforcing limits
    assert open_["network"] == "host (unrestricted)" and open_["filesystem"] == "host (unrestricted)"
    assert open_["limits_enforced_by"] == "none"
    assert not {"limits", "package_cache", "read_only", "read_write"} & set(open_)
    # the human output says the same and shows no limits for it
    done = subprocess.run([MCPWARD, "doctor", "-c", str(tmp_path / "mcpward.toml")], capture_output=True, text=True,
                          timeout=120)
    section = done.stdout.split("open: backend none", 1)[1]
    assert "network: host (unrestricted)" in section and "limits_enforced_by: none" in section
    assert "limits: {" not in section and "package_cache" not in section


# Run doctor with pyseccomp hidden, as on a host without pyseccomp or libseccomp.
NO_SECCOMP = ("import sys; sys.modules['pyseccomp'] = None\n"
              "from mcpward.cli.main import app\n"
              "sys.argv = ['mcpward', 'doctor', '-c', sys.argv[1], '--json']\n"
              "app()\n")


def test_a_bwrap_server_without_seccomp_is_a_problem(tmp_path: Path) -> None:
    from mcpward.sandbox import probe

    if not probe.probe().bwrap_works:
        pytest.skip("bubblewrap does not work here")
    path = tmp_path / "mcpward.toml"
    path.write_text(NONE_AND_BOX + f'\n[sandbox]\nstate_dir = "{tmp_path / "state"}"\n')
    done = subprocess.run([sys.executable, "-c", NO_SECCOMP, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert next(r for r in report["host"] if r["item"] == "seccomp filter")["value"] == "no"
    box = server(report, "box")
    assert box["backend"] == "bwrap"
    assert any("rule sandbox.seccomp-unavailable" in p and "pyseccomp" in p for p in box["problems"])
    assert not server(report, "open")["problems"]  # an unsandboxed server needs no seccomp
