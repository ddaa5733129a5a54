"""mcpward's own secret store (`secret:NAME`): an encrypted file, the OS keyring, or the environment.

Every error here is a StoreError whose message names the store and the secret, never a value,
a passphrase or a key.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import contextlib
import datetime
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from mcpward.secrets import envelope
from mcpward.secrets.refs import SECRET_NAME
from mcpward.secrets.settings import ENV_STORE_PREFIX, KEYRING_SERVICE, PASSPHRASE_ENV, KeyKind, SecretSettings

MAX_VALUE = 64 * 1024
MIN_NEW_PASSPHRASE = 8
# Keyring usernames that hold our own bookkeeping start with '#', which no secret name can.
KEYRING_INDEX = "#index"
FILE_KEY_PREFIX = "#file-key:"

# confirm_new -> the passphrase; confirm_new is True when it will key a new file (ask twice).
PassphrasePrompt = Callable[[bool], str]


class StoreError(Exception):
    """The store cannot do what was asked; the message never holds a secret value."""


class SecretStore(Protocol):
    kind: str

    @property
    def location(self) -> str: ...  # for messages: which store, where

    def get(self, name: str) -> str | None: ...
    def set(self, name: str, value: str) -> None: ...
    def delete(self, name: str) -> bool: ...
    def names(self) -> list[str]: ...


def check_name(name: str) -> None:
    if not SECRET_NAME.fullmatch(name):
        raise StoreError(f"a secret name must match {SECRET_NAME.pattern} (got {len(name)} characters that do not)")


def check_value(name: str, value: str) -> None:
    if not value:
        raise StoreError(f"refusing an empty value for {name}: a secret that is empty is a mistake, not a secret")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE:
        raise StoreError(f"the value for {name} is larger than {MAX_VALUE // 1024} KiB")
    if "\x00" in value:
        raise StoreError(f"the value for {name} contains a NUL character, which no environment variable or "
                         "argument can carry")


def open_store(settings: SecretSettings, environ: Mapping[str, str] | None = None,
               prompt: PassphrasePrompt | None = None) -> SecretStore:
    """The store `settings` name. `prompt` is asked for a passphrase when the environment has none."""
    env = os.environ if environ is None else environ
    if settings.store == "env":
        return EnvStore(env)
    if settings.store == "keyring":
        return KeyringStore(Keyring())

    def passphrase(confirm_new: bool) -> str:
        value = env.get(PASSPHRASE_ENV)
        if value:
            return value
        if prompt is None:
            raise StoreError(f"{settings.path} is protected by a passphrase: set {PASSPHRASE_ENV} in the "
                             "gateway's environment")
        return prompt(confirm_new)

    return FileStore(settings.path, settings.key, passphrase, Keyring())


class Keyring:
    """The OS keyring through `keyring`, refusing backends that would not actually protect a key."""

    def backend(self) -> Any:
        backend, problem = self._probe()
        if problem:
            raise StoreError(problem)
        return backend

    def problem(self) -> str | None:
        return self._probe()[1]

    def describe(self) -> str:
        backend, problem = self._probe()
        return _class_name(backend) if backend is not None else f"unavailable: {problem}"

    def _probe(self) -> tuple[Any, str | None]:
        try:
            import keyring
            import keyring.backends.chainer
            import keyring.backends.fail
            import keyring.backends.null
        except ImportError:
            return None, "the keyring package is not installed (pip install keyring)"
        try:
            backend = keyring.get_keyring()
        except Exception as exc:  # keyring runs third-party backend code on import
            return None, f"the OS keyring could not be loaded: {type(exc).__name__}"
        name = _class_name(backend)
        if isinstance(backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring):
            return backend, (f"no OS keyring is usable here (keyring chose {name}); set [secrets] key = "
                             f"\"passphrase\" and give the passphrase in {PASSPHRASE_ENV}")
        members = backend.backends if isinstance(backend, keyring.backends.chainer.ChainerBackend) else [backend]
        priority = max((float(member.priority) for member in members), default=0.0)
        # keyring itself calls a backend under priority 1 "not recommended": keyrings.alt's
        # plaintext file is one. Installing a package must not silently put keys in clear text,
        # so such a backend is used only when the operator chose it.
        if priority < 1 and not _keyring_chosen_explicitly():
            return backend, (f"the only keyring backend here is {name}, which keyring does not recommend (it may "
                             f"keep keys unencrypted); set [secrets] key = \"passphrase\", or choose that backend "
                             "explicitly with PYTHON_KEYRING_BACKEND")
        return backend, None

    def get(self, username: str) -> str | None:
        try:
            value = self.backend().get_password(KEYRING_SERVICE, username)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"the OS keyring refused a read ({type(exc).__name__}; is it locked?)") from None
        return value if isinstance(value, str) else None

    def set(self, username: str, value: str) -> None:
        try:
            self.backend().set_password(KEYRING_SERVICE, username, value)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"the OS keyring refused a write ({type(exc).__name__}; is it locked?)") from None

    def delete(self, username: str) -> bool:
        if self.get(username) is None:
            return False
        try:
            self.backend().delete_password(KEYRING_SERVICE, username)
        except Exception as exc:
            raise StoreError(f"the OS keyring refused a delete ({type(exc).__name__})") from None
        return True


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _keyring_chosen_explicitly() -> bool:
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return True
    try:
        from keyring.util import platform_

        config = configparser.RawConfigParser()
        config.read(platform_.config_root() / "keyringrc.cfg", encoding="utf-8")
        return config.has_option("backend", "default-keyring")
    except (ImportError, OSError, configparser.Error):
        return False


class EnvStore:
    """NAME -> MCPWARD_SECRET_NAME in the gateway's environment. Read-only: the environment is set by
    whoever starts the gateway."""

    kind = "env"

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    @property
    def location(self) -> str:
        return f"the environment ({ENV_STORE_PREFIX}<NAME>)"

    def get(self, name: str) -> str | None:
        check_name(name)
        return self.environ.get(ENV_STORE_PREFIX + name)

    def set(self, name: str, value: str) -> None:
        raise StoreError(f"the env store is read-only: set {ENV_STORE_PREFIX}{name} in the gateway's environment")

    def delete(self, name: str) -> bool:
        raise StoreError(f"the env store is read-only: unset {ENV_STORE_PREFIX}{name} in the gateway's environment")

    def names(self) -> list[str]:
        return sorted(k[len(ENV_STORE_PREFIX):] for k in self.environ
                      if k.startswith(ENV_STORE_PREFIX) and SECRET_NAME.fullmatch(k[len(ENV_STORE_PREFIX):]))


class KeyringStore:
    """One keyring entry per secret (service "mcpward", username NAME). A keyring cannot list its
    entries, so the names are kept in one more entry, `#index`."""

    kind = "keyring"

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @property
    def location(self) -> str:
        return f"the OS keyring (service {KEYRING_SERVICE!r}, {self.keyring.describe()})"

    def get(self, name: str) -> str | None:
        check_name(name)
        return self.keyring.get(name)

    def set(self, name: str, value: str) -> None:
        check_name(name)
        check_value(name, value)
        self.keyring.set(name, value)
        names = set(self.names())
        if name not in names:
            self.keyring.set(KEYRING_INDEX, orjson.dumps(sorted(names | {name})).decode())

    def delete(self, name: str) -> bool:
        check_name(name)
        removed = self.keyring.delete(name)
        names = set(self.names())
        if name in names:
            self.keyring.set(KEYRING_INDEX, orjson.dumps(sorted(names - {name})).decode())
        return removed

    def names(self) -> list[str]:
        raw = self.keyring.get(KEYRING_INDEX)
        try:
            items = orjson.loads(raw) if raw else []
        except orjson.JSONDecodeError:
            items = []
        return sorted(n for n in items if isinstance(n, str) and SECRET_NAME.fullmatch(n)) \
            if isinstance(items, list) else []


class FileStore:
    """An encrypted file (see envelope.py), re-read on every access so a `mcpward secret set` is seen
    by a running gateway the next time it starts a server. Derived keys are cached per header, so
    only the first read pays for the passphrase KDF."""

    kind = "file"

    def __init__(self, path: Path, key: KeyKind | None, passphrase: Callable[[bool], str],
                 keyring: Keyring) -> None:
        self.path, self.key, self.passphrase, self.keyring = path, key, passphrase, keyring
        self._masters: dict[bytes, bytes] = {}

    def __repr__(self) -> str:  # the cached keys must never show up in a debug print
        return f"FileStore({str(self.path)!r})"

    @property
    def location(self) -> str:
        return f"the encrypted file {self.path}" + ("" if self.path.exists() else " (not created yet)")

    def get(self, name: str) -> str | None:
        check_name(name)
        loaded = self._load()
        if loaded is None:
            return None
        entry = loaded[2].get(name)
        return entry["value"] if entry else None

    def names(self) -> list[str]:
        loaded = self._load()
        return sorted(loaded[2]) if loaded else []

    def updated(self, name: str) -> str | None:
        loaded = self._load()
        entry = loaded[2].get(name) if loaded else None
        return entry["updated"] if entry else None

    def set(self, name: str, value: str) -> None:
        check_name(name)
        check_value(name, value)
        with self._locked():
            loaded = self._load()
            kdf, master, secrets = loaded if loaded else (*self._new_key(), {})
            secrets[name] = {"value": value, "updated": _now()}
            self._write(envelope.seal(master, kdf, {"secrets": secrets}))

    def delete(self, name: str) -> bool:
        check_name(name)
        with self._locked():
            loaded = self._load()
            if loaded is None or name not in loaded[2]:
                return False
            kdf, master, secrets = loaded
            del secrets[name]
            self._write(envelope.seal(master, kdf, {"secrets": secrets}))
            return True

    def _load(self) -> tuple[dict[str, Any], bytes, dict[str, dict[str, str]]] | None:
        data = self._read()
        if data is None:
            return None
        try:
            header = envelope.read_header(data)
            kdf = header["kdf"]
            self._check_key_mode(kdf["name"])
            master = self._master(kdf)
            contents = envelope.unseal(master, data)
        except envelope.WrongKeyError:
            self._masters.clear()
            # The key check covers the header's kdf, salt and check as much as the key: the two cannot be told
            # apart (a changed salt or parameter derives another key), so the message names both.
            what = "the keyring key" if kdf["name"] == "keyring" else "the passphrase"
            raise StoreError(f"{self.path}: {what} is wrong for this file, or its header (kdf, salt or check) "
                             "was modified") from None
        except envelope.EnvelopeError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        return kdf, master, _entries(self.path, contents)

    def _check_key_mode(self, name: str) -> None:
        mode = "keyring" if name == "keyring" else "passphrase"
        if self.key is not None and self.key != mode:
            raise StoreError(f"{self.path} is keyed by {'the OS keyring' if mode == 'keyring' else 'a passphrase'} "
                             f"but secrets.key = {self.key!r}; remove the setting or point secrets.path elsewhere")

    def _master(self, kdf: dict[str, Any]) -> bytes:
        cache_key = orjson.dumps(kdf, option=orjson.OPT_SORT_KEYS)
        if cache_key in self._masters:
            return self._masters[cache_key]
        if kdf["name"] == "keyring":
            master = self._keyring_key(kdf["key_id"])
        else:
            passphrase = self._ask(confirm_new=False).encode("utf-8")
            try:
                master = envelope.derive(kdf, passphrase)
            except (MemoryError, ValueError, OverflowError) as exc:
                # The header's parameters are bounded, but the machine may still lack the memory (a low ulimit,
                # a small container): an error naming the cause, not a traceback.
                raise StoreError(f"{self.path}: the key derivation its header asks for ({kdf['name']}) failed "
                                 f"here ({type(exc).__name__}); is the memory limit too low?") from None
        self._masters[cache_key] = master
        return master

    def _keyring_key(self, key_id: str) -> bytes:
        try:
            text = self.keyring.get(FILE_KEY_PREFIX + key_id)
        except StoreError as exc:
            raise StoreError(f"{self.path}: its key is kept in the OS keyring, which cannot be used: {exc}") from None
        if text is None:
            raise StoreError(f"{self.path}: its key (id {key_id[:8]}) is not in the OS keyring "
                             f"({self.keyring.describe()}); the file was written by another user or machine, "
                             "or the keyring entry was removed")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise StoreError(f"{self.path}: the keyring entry for its key is not base64") from None

    def _new_key(self) -> tuple[dict[str, Any], bytes]:
        mode = self.key
        if mode is None:
            problem = self.keyring.problem()
            if problem:
                raise StoreError(f"cannot create {self.path} keyed by the OS keyring: {problem}")
            mode = "keyring"
        if mode == "keyring":
            self.keyring.backend()  # a precise error before anything is generated
            kdf = envelope.new_keyring_kdf()
            master = os.urandom(envelope.KEY_BYTES)
            self.keyring.set(FILE_KEY_PREFIX + kdf["key_id"], base64.b64encode(master).decode("ascii"))
            return kdf, master
        passphrase = self._ask(confirm_new=True)
        if len(passphrase) < MIN_NEW_PASSPHRASE:
            raise StoreError(f"a passphrase for a new store needs at least {MIN_NEW_PASSPHRASE} characters")
        kdf = envelope.new_passphrase_kdf()
        return kdf, envelope.derive(kdf, passphrase.encode("utf-8"))

    def _ask(self, confirm_new: bool) -> str:
        passphrase = self.passphrase(confirm_new)
        if not passphrase:
            raise StoreError(f"{self.path}: an empty passphrase is refused")
        return passphrase

    def _read(self) -> bytes | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StoreError(f"{self.path} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & stat.S_IWOTH:
                # As for file: references: anyone could swap the file (an older version, or another key's).
                raise StoreError(f"{self.path} is writable by every user (mode {mode:04o}); chmod o-w it")
            with os.fdopen(os.dup(fd), "rb") as handle:
                return handle.read(envelope.MAX_FILE + 1)
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def _write(self, data: bytes) -> None:
        """tempfile + fsync + rename: a crash leaves the old file or the new one, never half of one."""
        directory = self.path.parent
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Two `mcpward secret set` at once must not lose one of the writes."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _entries(path: Path, contents: dict[str, Any]) -> dict[str, dict[str, str]]:
    secrets = contents.get("secrets")
    if not isinstance(secrets, dict):
        raise StoreError(f"{path}: damaged contents (no 'secrets' table)")
    for name, entry in secrets.items():
        if not (SECRET_NAME.fullmatch(name) and isinstance(entry, dict) and isinstance(entry.get("value"), str)
                and isinstance(entry.get("updated"), str)):
            raise StoreError(f"{path}: damaged contents (a bad entry)")
    return secrets


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
