"""SIGHUP reloads a running gateway's API keys and policy: a removed key stops working at once, a new
one works, a changed rule decides the next call, and a config or policy that cannot be used leaves
what is in force as it was (loudly, and audited)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mcpward.auth.api_keys import key_digest, new_key
from tests.audit_reader import committed
from tests.conftest import FIXTURES, MCPWARD, PYTHON, free_port, stop, wait_port, with_policy
from tests.threats.identity_support import LegacyClient
from tests.threats.mcp_http import post, reply_of

pytestmark = pytest.mark.timeout(120)


def keys_table(**keys: str) -> str:
    return "".join(f'[auth.api_keys.{name}]\nsha256 = "{key_digest(key)}"\n\n' for name, key in keys.items())


class Gateway:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.path = tmp / "mcpward.toml"
        self.dir = tmp
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = tmp / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, auth: str) -> None:
        self.path.write_text(f"[gateway]\nport = {self.port}\n" + with_policy(auth))

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([MCPWARD, "serve", "-c", str(self.path)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def hangup(self, until: Callable[[], bool]) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not until():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def status(self, key: str) -> int:
        with httpx.Client(timeout=10) as http:
            return post(http, self.url, "tools/list", {}, headers={"Authorization": f"Bearer {key}"}).status_code


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path)
    yield gw
    if gw.proc is not None:
        stop(gw.proc)


def test_sighup_puts_the_new_keys_in_force(gateway: Gateway) -> None:
    alice, bob, carol = new_key(), new_key(), new_key()
    gateway.write(keys_table(alice=alice, bob=bob))
    gateway.start()
    assert (gateway.status(alice), gateway.status(bob), gateway.status(carol)) == (200, 200, 401)

    gateway.write(keys_table(bob=bob, carol=carol))  # alice's key leaked: revoked, carol added
    gateway.hangup(lambda: gateway.status(carol) == 200)
    # At once, although alice's key was verified (and remembered) a moment ago.
    assert (gateway.status(alice), gateway.status(bob)) == (401, 200)
    reloaded = committed(gateway.dir / "mcpward-audit.sqlite", "auth.keys-reloaded")
    assert len(reloaded) == 1 and '"removed":["alice"]' in reloaded[0] and '"added":["carol"]' in reloaded[0]
    assert key_digest(alice) not in reloaded[0]


def test_a_config_that_cannot_be_used_keeps_the_keys_in_force(gateway: Gateway) -> None:
    alice = new_key()
    gateway.write(keys_table(alice=alice))
    gateway.start()
    gateway.path.write_text(gateway.path.read_text() + "\n[auth.api_keys.broken]\nsha256 = \"not-a-digest\"\n")
    gateway.hangup(lambda: "reload refused" in gateway.log.read_text())
    assert gateway.status(alice) == 200  # still in force, and the gateway still runs
    failed = committed(gateway.dir / "mcpward-audit.sqlite", "auth.reload-failed")
    assert len(failed) == 1 and "auth.api_keys.broken" in failed[0]


def test_removing_the_last_key_revokes_it(gateway: Gateway) -> None:
    alice = new_key()
    gateway.write(keys_table(alice=alice))
    gateway.start()
    assert gateway.status(alice) == 200
    gateway.path.write_text(f"[gateway]\nport = {gateway.port}\n" + with_policy(""))  # [auth] gone too
    gateway.hangup(lambda: gateway.status(alice) == 401)
    assert "every request with a key is refused until one is added" in gateway.log.read_text()
    with httpx.Client(timeout=10) as http:  # authentication stays on: no key is no entry either
        assert post(http, gateway.url, "tools/list", {}).status_code == 401
    removed = committed(gateway.dir / "mcpward-audit.sqlite", "auth.keys-reloaded")
    assert len(removed) == 1 and "\"removed\":[\"alice\"]" in removed[0]


# ------------------------------------------------------------------------------ the policy
FAULT = f'[servers.fault]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "fault_server.py"}"]\n'
PERMIT = '@id("team.all")\npermit (principal, action, resource);\n'
NO_ECHO = ('@id("team.no-echo")\nforbid (principal, action == Action::"call_tool", resource)\n'
           'when { resource.name == "echo" };\n')


def echo(gateway: Gateway) -> dict:  # type: ignore[type-arg]
    with httpx.Client(timeout=30) as http:
        return reply_of(post(http, gateway.url, "tools/call", {"name": "fault__echo", "arguments": {"text": "hi"}}))


def start_with_team_policy(gateway: Gateway) -> Path:
    """The fault server behind a policy of one file that permits everything; returns that file."""
    rules = gateway.dir / "team.cedar"
    rules.write_text(PERMIT)
    gateway.path.write_text(f"[gateway]\nport = {gateway.port}\n" + with_policy(
        FAULT + '[policy]\nbase = "none"\nfiles = ["team.cedar"]\n'))
    gateway.start()
    return rules


def test_sighup_reloads_the_policy_and_keeps_it_when_the_new_one_is_broken(gateway: Gateway) -> None:
    rules = start_with_team_policy(gateway)
    assert "result" in echo(gateway)

    rules.write_text(PERMIT + NO_ECHO)
    gateway.hangup(lambda: "policy reloaded" in gateway.log.read_text())
    refused = echo(gateway)
    assert "team.no-echo" in str(refused), refused
    reloaded = committed(gateway.dir / "mcpward-audit.sqlite", "policy.reloaded")
    assert len(reloaded) == 1 and '"mode":"enforce"' in reloaded[0]

    rules.write_text(PERMIT + "forbid (principal, action, resource) when { resource.nosuch == 1 };\n")
    gateway.hangup(lambda: "policy reload refused" in gateway.log.read_text())
    assert "team.no-echo" in str(echo(gateway))  # the last good policy still decides
    failed = committed(gateway.dir / "mcpward-audit.sqlite", "policy.reload-failed")
    assert len(failed) == 1 and "team.cedar" in failed[0]


def test_a_policy_reload_tells_listening_clients_to_list_again(gateway: Gateway) -> None:
    rules = start_with_team_policy(gateway)
    with httpx.Client(timeout=httpx.Timeout(10, read=10)) as http:
        client = LegacyClient(http, gateway.url, None)
        client.open()  # a legacy session hears every list change on its GET stream
        with http.stream("GET", gateway.url, headers={**client.headers(None), "Accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200
            rules.write_text(PERMIT + NO_ECHO)
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGHUP)
            heard = set()
            for line in stream.iter_lines():
                for kind in ("tools", "prompts", "resources"):
                    if f"notifications/{kind}/list_changed" in line:
                        heard.add(kind)
                if heard == {"tools", "prompts", "resources"}:
                    break
    assert heard == {"tools", "prompts", "resources"}


# ------------------------------------------------------------------------ one parse per SIGHUP
def test_a_file_that_does_not_parse_changes_nothing_with_one_error(gateway: Gateway) -> None:
    alice = new_key()
    rules = gateway.dir / "team.cedar"
    rules.write_text(PERMIT)
    good = f"[gateway]\nport = {gateway.port}\n" + with_policy(
        FAULT + '[policy]\nbase = "none"\nfiles = ["team.cedar"]\n' + keys_table(alice=alice))
    gateway.path.write_text(good)
    gateway.start()
    rules.write_text(PERMIT + NO_ECHO)  # a policy change that must not apply from a file that does not parse
    gateway.path.write_text(good + "\n[gateway\n")
    gateway.hangup(lambda: "reload refused" in gateway.log.read_text())
    time.sleep(0.5)  # a second error, if there were one, would follow at once
    errors = [line for line in gateway.log.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "invalid TOML" in errors[0] and str(gateway.path) in errors[0], errors
    assert gateway.status(alice) == 200
    with httpx.Client(timeout=30) as http:
        called = reply_of(post(http, gateway.url, "tools/call", {"name": "fault__echo", "arguments": {"text": "hi"}},
                               headers={"Authorization": f"Bearer {alice}"}))
    assert "result" in called, called  # the old policy still decides
    db = gateway.dir / "mcpward-audit.sqlite"
    failed = committed(db, "config.reload-failed")
    assert len(failed) == 1 and "invalid TOML" in failed[0]
    assert committed(db, "auth.reload-failed", timeout=0) == committed(db, "policy.reload-failed", timeout=0) == []


async def test_sighup_reads_the_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpward.cli import main
    from mcpward.gateway import config as config_mod
    from mcpward.gateway.assembly import assemble
    from mcpward.policy.guard import PolicyGuard

    rules = tmp_path / "team.cedar"
    rules.write_text(PERMIT)
    path = tmp_path / "mcpward.toml"
    path.write_text(with_policy(FAULT + '[policy]\nbase = "none"\nfiles = ["team.cedar"]\n'
                                + keys_table(alice=new_key())) + f'[audit]\npath = "{tmp_path / "a.sqlite"}"\n')
    parts = assemble(config_mod.load(path), front="http")
    try:
        reads: list[Path] = []
        real_load = config_mod.load
        monkeypatch.setattr(config_mod, "load", lambda p: reads.append(p) or real_load(p))
        guard = next(g for g in parts.chain.guards if isinstance(g, PolicyGuard))
        before = guard.engine.policy_hash
        rules.write_text(PERMIT + NO_ECHO)
        assert main.reload_config(path, parts, parts.gateway()) is True
        assert reads == [path]  # before: once for the keys and once more for the policy
        assert guard.engine.policy_hash != before  # and the one reading served the policy too
    finally:
        await parts.stop()  # the audit log assemble() installed
