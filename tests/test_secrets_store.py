"""mcpward's secret store: the encrypted file (passphrase or keyring key), the keyring and env stores,
and `secret:NAME` resolution through them."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from mcpward.secrets import SecretError, SecretResolver, SecretSettings, StoreError, envelope, open_store, parse_ref
from mcpward.secrets.store import FILE_KEY_PREFIX, KEYRING_INDEX, EnvStore, FileStore, Keyring, KeyringStore

keyring = pytest.importorskip("keyring")
keyring_backend = pytest.importorskip("keyring.backend")
alt_file = pytest.importorskip("keyrings.alt.file")

PASS = "correct horse battery"
VALUE = "s3cr3t-VALUE-4242"


def _file_store(path: Path, passphrase: str = PASS, key: Any = "passphrase") -> FileStore:
    return FileStore(path, key, lambda _new: passphrase, Keyring())


@pytest.fixture
def clean_keyring_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No keyring choice from this machine's environment or config files leaks into a test."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    previous = keyring.get_keyring()
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def plain_keyring(tmp_path: Path, clean_keyring_config: None) -> Any:
    """keyrings.alt's plaintext file backend, in tmp_path (not chosen explicitly)."""
    backend = alt_file.PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring_pass.cfg")
    keyring.set_keyring(backend)
    return backend


@pytest.fixture
def chosen_keyring(plain_keyring: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The same backend, chosen by the operator through PYTHON_KEYRING_BACKEND."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    return plain_keyring


class MemoryKeyring(keyring_backend.KeyringBackend):  # type: ignore[misc]
    """A keyring backend with the priority of a real OS keyring, holding entries in memory."""

    priority = 5

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.entries[(service, username)]


# --- encrypted file, passphrase --------------------------------------------------------------------

def test_file_store_round_trip_and_file_properties(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "secrets.enc"
    store = _file_store(path)
    assert store.get("db.password") is None and store.names() == []
    store.set("db.password", VALUE)
    store.set("api_key", "other")
    fresh = _file_store(path)  # a new process would see the same
    assert fresh.get("db.password") == VALUE
    assert fresh.names() == ["api_key", "db.password"]
    assert fresh.updated("api_key") is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = path.read_bytes()
    assert VALUE.encode() not in data and b"db.password" not in data
    assert data.startswith(b"mcpward-secrets/1\n")
    assert fresh.delete("db.password") is True
    assert fresh.delete("db.password") is False
    assert _file_store(path).names() == ["api_key"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["secrets.enc", "secrets.enc.lock"]  # no temp left
    assert repr(fresh) == f"FileStore({str(path)!r})"


def test_each_write_has_a_fresh_nonce_and_keeps_the_salt(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    store = _file_store(path)
    store.set("a", VALUE)
    first = path.read_bytes().split(b"\n")
    store.set("a", VALUE)
    second = path.read_bytes().split(b"\n")
    assert first[1] == second[1]  # same header: salt and parameters
    assert base64.b64decode(first[2])[:12] != base64.b64decode(second[2])[:12]


def test_wrong_passphrase_is_named_and_shows_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)
    with pytest.raises(StoreError) as info:
        _file_store(path, passphrase="not the passphrase").get("a")
    assert str(info.value) == (f"{path}: the passphrase is wrong for this file, or its header (kdf, salt or check) "
                               "was modified")


def _rewrite(path: Path, change: Any) -> None:
    magic, header, body, _ = path.read_bytes().split(b"\n")
    header, body = change(header, body)
    path.write_bytes(b"\n".join([magic, header, body, b""]))


def test_tampered_ciphertext_is_an_authentication_failure(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)

    def flip(header: bytes, body: bytes) -> tuple[bytes, bytes]:
        raw = bytearray(base64.b64decode(body))
        raw[20] ^= 1
        return header, base64.b64encode(bytes(raw))

    _rewrite(path, flip)
    with pytest.raises(StoreError, match="authentication failed: the file was modified or damaged"):
        _file_store(path).get("a")


def test_tampered_header_parameters(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)

    def with_kdf(**params: Any) -> Any:
        def change(header: bytes, body: bytes) -> tuple[bytes, bytes]:
            parsed = orjson.loads(header)
            parsed["kdf"].update(params)
            return orjson.dumps(parsed), body
        return change

    original = path.read_bytes()
    # A different key comes out of a changed parameter, salt or check: it cannot be told from a wrong passphrase,
    # so the message names both causes.
    salt = base64.b64encode(os.urandom(16)).decode()
    for change in (with_kdf(iterations=4), with_kdf(salt=salt)):
        path.write_bytes(original)
        _rewrite(path, change)
        with pytest.raises(StoreError, match=r"passphrase is wrong for this file, or its header \(kdf, salt or "
                                             r"check\) was modified"):
            _file_store(path).get("a")
    path.write_bytes(original)
    _rewrite(path, with_kdf(memory_cost=2**30))  # refused before any memory is spent on it
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"memory_cost must be an integer in 19456\.\.262144"):
        _file_store(path).get("a")
    assert time.monotonic() - started < 1
    path.write_bytes(original)
    _rewrite(path, with_kdf(name="md5"))
    with pytest.raises(StoreError, match="unsupported kdf 'md5'"):
        _file_store(path).get("a")


def _scrypt_header(n: int, r: int, p: int) -> Any:
    def change(header: bytes, body: bytes) -> tuple[bytes, bytes]:
        parsed = orjson.loads(header)
        parsed["kdf"] = {"name": "scrypt", "salt": parsed["kdf"]["salt"], "n": n, "r": r, "p": p}
        return orjson.dumps(parsed), body
    return change


def test_a_planted_header_cannot_demand_gigabytes(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)
    # each parameter within its own range, but together 128 x r x n = 4 GiB: refused before the KDF runs
    _rewrite(path, _scrypt_header(2**20, 32, 16))
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"scrypt needs 128 x r x n = 4096 MiB, more than the 256 MiB allowed"):
        _file_store(path).get("a")
    assert time.monotonic() - started < 1


def test_a_kdf_that_runs_out_of_memory_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)

    def no_memory(kdf: dict[str, Any], secret: bytes) -> bytes:
        raise MemoryError

    monkeypatch.setattr(envelope, "derive", no_memory)  # as under a memory limit smaller than the KDF's need
    with pytest.raises(StoreError, match=r"the key derivation its header asks for \(\w+\) failed here "
                                         r"\(MemoryError\)"):
        _file_store(path).get("a")


def test_a_world_writable_store_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)
    path.chmod(0o666)
    with pytest.raises(StoreError, match=r"s\.enc is writable by every user \(mode 0666\); chmod o-w it"):
        _file_store(path).get("a")
    path.chmod(0o640)  # group-readable is the operator's choice: the contents are encrypted
    assert _file_store(path).get("a") == VALUE


@pytest.mark.parametrize(("data", "problem"), [
    (b"hello\n", "not an mcpward secrets file"),
    (b"mcpward-secrets/1\n{}\n", "expected a header line and a data line"),
    (b"mcpward-secrets/1\nnot json\nAAAA\n", "the header is not JSON"),
    (b'mcpward-secrets/1\n{"check":"AA==","kdf":{"name":"keyring","key_id":"zz"}}\nAAAA\n', "32-hex-digit key_id"),
])
def test_damaged_files(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "s.enc"
    path.write_bytes(data)
    with pytest.raises(StoreError, match=problem):
        _file_store(path).get("a")


def test_scrypt_when_argon2_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "has_argon2", lambda: False)
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)
    kdf = orjson.loads(path.read_bytes().split(b"\n")[1])["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", 2**17, 8, 1)
    assert _file_store(path).get("a") == VALUE


def test_argon2_is_the_default_kdf(tmp_path: Path) -> None:
    if not envelope.has_argon2():
        pytest.skip("this cryptography build has no Argon2id")
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)
    kdf = orjson.loads(path.read_bytes().split(b"\n")[1])["kdf"]
    assert (kdf["name"], kdf["memory_cost"], kdf["iterations"], kdf["lanes"]) == ("argon2id", 65536, 3, 4)
    assert len(base64.b64decode(kdf["salt"])) == 16


def test_new_store_passphrase_rules(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="at least 8 characters"):
        _file_store(tmp_path / "a.enc", passphrase="short").set("a", VALUE)
    with pytest.raises(StoreError, match="an empty passphrase is refused"):
        _file_store(tmp_path / "b.enc", passphrase="").set("a", VALUE)
    assert not (tmp_path / "a.enc").exists() and not (tmp_path / "b.enc").exists()


def test_configured_key_must_match_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("a", VALUE)
    with pytest.raises(StoreError, match=r"keyed by a passphrase but secrets\.key = 'keyring'"):
        _file_store(path, key="keyring").get("a")
    assert _file_store(path, key=None).get("a") == VALUE  # no setting: the file's header decides


def test_passphrase_from_environment_or_a_clear_error(tmp_path: Path) -> None:
    settings = SecretSettings(path=tmp_path / "s.enc", key="passphrase", base_dir=tmp_path)
    open_store(settings, {"MCPWARD_SECRETS_PASSPHRASE": PASS}).set("a", VALUE)
    assert open_store(settings, {"MCPWARD_SECRETS_PASSPHRASE": PASS}).get("a") == VALUE
    with pytest.raises(StoreError, match="protected by a passphrase: set MCPWARD_SECRETS_PASSPHRASE"):
        open_store(settings, {}).get("a")
    asked: list[bool] = []

    def prompt(confirm_new: bool) -> str:
        asked.append(confirm_new)
        return PASS

    assert open_store(settings, {}, prompt).get("a") == VALUE
    open_store(SecretSettings(path=tmp_path / "new.enc", key="passphrase"), {}, prompt).set("b", VALUE)
    assert asked == [False, True]  # a new store asks with confirmation


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _file_store(path).set("seed", VALUE)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            _file_store(path).set(f"name{i}", f"value{i}")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = _file_store(path)
    assert store.names() == ["name0", "name1", "name2", "name3", "name4", "name5", "seed"]
    assert store.get("name3") == "value3"


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("ok", "", "refusing an empty value"),
    ("ok", "a\x00b", "NUL character"),
    ("ok", "x" * (64 * 1024 + 1), "larger than 64 KiB"),
    ("bad name", "v", "a secret name must match"),
    ("#index", "v", "a secret name must match"),
])
def test_value_and_name_checks(tmp_path: Path, name: str, value: str, problem: str) -> None:
    with pytest.raises(StoreError, match=problem):
        _file_store(tmp_path / "s.enc").set(name, value)
    assert not (tmp_path / "s.enc").exists()


# --- encrypted file, key in the OS keyring -----------------------------------------------------------

def test_keyring_keyed_file(tmp_path: Path, chosen_keyring: Any) -> None:
    path = tmp_path / "s.enc"
    store = _file_store(path, key=None)  # no passphrase is ever asked: the lambda would supply one
    store.set("a", VALUE)
    header = orjson.loads(path.read_bytes().split(b"\n")[1])
    assert header["kdf"]["name"] == "keyring"
    key_entry = FILE_KEY_PREFIX + header["kdf"]["key_id"]
    stored = chosen_keyring.get_password("mcpward", key_entry)
    assert len(base64.b64decode(stored)) == 32
    assert FileStore(path, None, lambda _new: "", Keyring()).get("a") == VALUE
    chosen_keyring.delete_password("mcpward", key_entry)
    with pytest.raises(StoreError, match=r"its key \(id [0-9a-f]{8}\) is not in the OS keyring"):
        FileStore(path, None, lambda _new: "", Keyring()).get("a")


def test_wrong_keyring_key(tmp_path: Path, chosen_keyring: Any) -> None:
    path = tmp_path / "s.enc"
    _file_store(path, key="keyring").set("a", VALUE)
    key_id = orjson.loads(path.read_bytes().split(b"\n")[1])["kdf"]["key_id"]
    chosen_keyring.set_password("mcpward", FILE_KEY_PREFIX + key_id, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(StoreError, match="the keyring key is wrong for this file, or its header"):
        _file_store(path, key="keyring").get("a")


def test_unrecommended_keyring_is_not_used_silently(tmp_path: Path, plain_keyring: Any) -> None:
    problem = Keyring().problem()
    assert problem is not None and "PlaintextKeyring" in problem and "key = \"passphrase\"" in problem
    with pytest.raises(StoreError, match=r"cannot create .* keyed by the OS keyring: the only keyring backend"):
        _file_store(tmp_path / "s.enc", key=None).set("a", VALUE)
    assert not (tmp_path / "s.enc").exists()
    assert not Path(plain_keyring.file_path).exists()  # nothing was written to it


def test_no_keyring_backend(tmp_path: Path, clean_keyring_config: None) -> None:
    import keyring.backends.fail

    keyring.set_keyring(keyring.backends.fail.Keyring())
    with pytest.raises(StoreError, match=r"no OS keyring is usable here .* key = \"passphrase\""):
        _file_store(tmp_path / "s.enc", key=None).set("a", VALUE)


def test_recommended_keyring_is_the_default(tmp_path: Path, clean_keyring_config: None) -> None:
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    assert Keyring().problem() is None
    path = tmp_path / "s.enc"
    FileStore(path, None, lambda _new: pytest.fail("no passphrase should be asked"), Keyring()).set("a", VALUE)
    assert [u for (_, u) in memory.entries] == [FILE_KEY_PREFIX + orjson.loads(
        path.read_bytes().split(b"\n")[1])["kdf"]["key_id"]]


# --- keyring store and env store ---------------------------------------------------------------------

def test_keyring_store(chosen_keyring: Any) -> None:
    store = KeyringStore(Keyring())
    assert "PlaintextKeyring" in store.location
    store.set("gh.token", VALUE)
    store.set("b", "2")
    assert store.get("gh.token") == VALUE
    assert chosen_keyring.get_password("mcpward", "gh.token") == VALUE
    assert store.names() == ["b", "gh.token"]
    assert chosen_keyring.get_password("mcpward", KEYRING_INDEX) == '["b","gh.token"]'
    assert store.delete("gh.token") is True and store.delete("gh.token") is False
    assert store.get("gh.token") is None and store.names() == ["b"]


def test_keyring_store_refuses_an_unusable_backend(plain_keyring: Any) -> None:
    with pytest.raises(StoreError, match="the only keyring backend here is"):
        KeyringStore(Keyring()).get("a")


def test_env_store() -> None:
    environ = {"MCPWARD_SECRET_db.pw": VALUE, "MCPWARD_SECRET_API": "x", "MCPWARD_SECRET_bad name": "y", "HOME": "/"}
    store = EnvStore(environ)
    assert store.get("db.pw") == VALUE and store.get("nope") is None
    assert store.names() == ["API", "db.pw"]
    with pytest.raises(StoreError, match="read-only: set MCPWARD_SECRET_x"):
        store.set("x", "v")
    with pytest.raises(StoreError, match="read-only: unset MCPWARD_SECRET_x"):
        store.delete("x")


# --- secret: references ----------------------------------------------------------------------------

def test_secret_reference_through_each_store(tmp_path: Path, chosen_keyring: Any) -> None:
    env = {"MCPWARD_SECRET_api": "from-env", "MCPWARD_SECRETS_PASSPHRASE": PASS, "MCPWARD_SECRET_blank": ""}
    file_settings = SecretSettings(path=tmp_path / "s.enc", key="passphrase", base_dir=tmp_path)
    open_store(file_settings, env).set("api", "from-file")
    KeyringStore(Keyring()).set("api", "from-keyring")
    ref = parse_ref("secret:api")
    assert SecretResolver(file_settings, env).resolve(ref) == "from-file"
    assert SecretResolver(SecretSettings(store="keyring"), env).resolve(ref) == "from-keyring"
    assert SecretResolver(SecretSettings(store="env"), env).resolve(ref) == "from-env"
    with pytest.raises(SecretError, match=r"^secret:blank: is empty$"):
        SecretResolver(SecretSettings(store="env"), env).resolve(parse_ref("secret:blank"))


def test_secret_reference_errors_name_the_store(tmp_path: Path) -> None:
    settings = SecretSettings(path=tmp_path / "s.enc", key="passphrase", base_dir=tmp_path)
    env = {"MCPWARD_SECRETS_PASSPHRASE": PASS}
    with pytest.raises(SecretError) as info:
        SecretResolver(settings, env).resolve(parse_ref("secret:db"))
    assert str(info.value) == (f"secret:db: not found in the encrypted file {tmp_path / 's.enc'} (not created yet); "
                               "add it with `mcpward secret set db`")
    open_store(settings, env).set("other", VALUE)
    with pytest.raises(SecretError, match=r"^secret:other: .*the passphrase is wrong"):
        SecretResolver(settings, {"MCPWARD_SECRETS_PASSPHRASE": "wrong passphrase"}).resolve(parse_ref("secret:other"))
    with pytest.raises(SecretError, match=r"^secret:x: not found in the environment \(MCPWARD_SECRET_<NAME>\) "):
        SecretResolver(SecretSettings(store="env"), {}).resolve(parse_ref("secret:x"))
    resolver = SecretResolver(settings, env)
    assert resolver.resolve(parse_ref("secret:other")) == VALUE
    assert VALUE not in repr(resolver) and VALUE not in repr(resolver.store)
