"""`mcpward.lock` (approved pins) and `mcpward.pending.json` (definitions waiting for a person).

Both are plain JSON with sorted keys and one field per line, so a lock file reviews and
diffs like code. Each entry keeps the definition it pins, so a later change can be shown
as a readable diff. Server instructions and launch identities are stored once per server,
keyed by digest, because every entry of that server refers to them.

Writers (the gateway pinning on first sight, `mcpward tools approve`) hold an exclusive
`flock` on the directory while they read, change and atomically replace a file, so two
writers never lose each other's entries. Readers need no lock: replacement is atomic.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from mcpward.integrity.fingerprint import PINNED_KINDS
from mcpward.protocol import exact

FORMAT_VERSION = 1
Status = Literal["approved", "revoked"]
STATUSES = ("approved", "revoked")


class LockError(Exception):
    """A lock or pending file that cannot be read or trusted; the gateway refuses to start."""


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Entry:
    """One pinned or pending definition."""

    fingerprint: str
    definition: dict[str, Any]
    identity: str  # digest of the server's launch identity when seen
    instructions: str  # digest of the server's instructions when seen
    at: str = field(default_factory=now)
    status: Status = "approved"  # lock entries only
    by: str = ""  # "tofu" or the person who approved (lock entries)
    risk: str = "none"  # scanner verdict when seen
    findings: list[dict[str, Any]] = field(default_factory=list)  # pending: the scanner's evidence
    reason: str = ""  # pending: new | changed | high-risk | revoked | destructive
    change: dict[str, Any] = field(default_factory=dict)  # pending changes: severity, score, reasons
    # Its JSON, made once: a lock file with thousands of pins is rewritten on every new pin.
    # Whoever changes a field after creation sets it back to None.
    cached: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        if self.cached is not None:
            return self.cached
        out: dict[str, Any] = {"fingerprint": self.fingerprint, "definition": self.definition,
                               "identity": self.identity, "instructions": self.instructions, "at": self.at,
                               "risk": self.risk}
        if self.reason:
            out.update(reason=self.reason, findings=self.findings, change=self.change)
        else:
            out.update(status=self.status, by=self.by)
        self.cached = out
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Entry:
        if not isinstance(raw, dict):
            raise LockError(f"{where}: expected an object")
        try:
            entry = cls(fingerprint=_str(raw, "fingerprint"), definition=raw["definition"],
                        identity=_str(raw, "identity"), instructions=_str(raw, "instructions"),
                        at=_str(raw, "at"), risk=str(raw.get("risk", "none")),
                        status=raw.get("status", "approved"), by=str(raw.get("by", "")),
                        findings=_findings(raw.get("findings") or []), reason=str(raw.get("reason", "")),
                        change=_change(raw.get("change") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise LockError(f"{where}: {exc}") from None
        if not isinstance(entry.definition, dict) or not entry.fingerprint.startswith("sha256:"):
            raise LockError(f"{where}: malformed definition or fingerprint")
        if entry.status not in STATUSES:
            raise LockError(f"{where}: status must be one of {', '.join(STATUSES)}")
        return entry


def _str(raw: dict[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


# A pending file is plain JSON a person may edit: what `tools diff` and the audit read from it is checked
# here, so a hand-edited entry is a precise LockError, never a traceback later.
def _findings(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(f, dict) for f in value):
        raise TypeError("findings must be a list of objects")
    return list(value)


def _change(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("change must be an object")
    if not value:
        return {}
    reasons = value.get("reasons", [])
    score = value.get("score", 0)
    if not isinstance(value.get("severity"), str):
        raise TypeError("change.severity must be a string")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise TypeError("change.score must be a number")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise TypeError("change.reasons must be a list of strings")
    if not isinstance(value.get("diff", ""), str):
        raise TypeError("change.diff must be a string")
    return {**value, "score": score, "reasons": reasons}


@dataclass(slots=True)
class InstructionsPin:
    """A server's instructions judged on their own (text kept in `ServerPins.instructions`).

    In the lock: the text a person approved on its own, or the one trusted on first use (`by = "tofu"`);
    in the pending file: a text the gateway held, with its scan. Old files have none: the field is optional."""

    at: str = field(default_factory=now)
    by: str = ""
    risk: str = "none"
    reason: str = ""  # pending only: the rule's suffix (high-risk, unpinned, changed)
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at, "risk": self.risk}
        if self.reason:
            out.update(reason=self.reason, findings=self.findings)
        else:
            out.update(by=self.by)
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str) -> InstructionsPin:
        if not isinstance(raw, dict):
            raise LockError(f"{where}: expected an object")
        try:
            return cls(at=_str(raw, "at"), by=str(raw.get("by", "")), risk=str(raw.get("risk", "none")),
                       reason=str(raw.get("reason", "")), findings=_findings(raw.get("findings") or []))
        except (KeyError, TypeError, ValueError) as exc:
            raise LockError(f"{where}: {exc}") from None


@dataclass(slots=True)
class ServerPins:
    launch: dict[str, Any] = field(default_factory=dict)  # identity digest -> launch description
    instructions: dict[str, str] = field(default_factory=dict)  # instructions digest -> text
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in PINNED_KINDS})
    # instructions digest -> its own pin (lock: at most one, the current one) or hold (pending)
    instructions_pins: dict[str, InstructionsPin] = field(default_factory=dict)

    def prune(self) -> None:
        """Keep only the instructions and launch texts an entry or an instructions pin still refers to."""
        used_i = {e.instructions for kind in self.entries.values() for e in kind.values()}
        used_i.update(self.instructions_pins)
        used_l = {e.identity for kind in self.entries.values() for e in kind.values()}
        self.instructions = {k: v for k, v in self.instructions.items() if k in used_i}
        self.launch = {k: v for k, v in self.launch.items() if k in used_l}

    @property
    def empty(self) -> bool:
        return not any(self.entries.values()) and not self.instructions_pins


@dataclass(slots=True)
class PinSet:
    """The parsed content of a lock or pending file."""

    servers: dict[str, ServerPins] = field(default_factory=dict)

    def get(self, server: str, kind: str, name: str) -> Entry | None:
        pins = self.servers.get(server)
        return None if pins is None else pins.entries[kind].get(name)

    def server(self, name: str) -> ServerPins:
        return self.servers.setdefault(name, ServerPins())

    def put(self, server: str, kind: str, name: str, entry: Entry, launch: dict[str, Any],
            instructions_text: str) -> None:
        pins = self.server(server)
        pins.entries[kind][name] = entry
        pins.launch[entry.identity] = launch
        pins.instructions[entry.instructions] = instructions_text

    def put_instructions(self, server: str, digest: str, pin: InstructionsPin, text: str, *, only: bool) -> None:
        """Record `server`'s instructions pin; `only` (the lock) keeps it as the server's one current text."""
        pins = self.server(server)
        if only:
            pins.instructions_pins.clear()
        pins.instructions_pins[digest] = pin
        pins.instructions[digest] = text

    def remove_instructions(self, server: str) -> dict[str, InstructionsPin]:
        """Take every instructions pin of `server` out (approval of what the pending file held)."""
        pins = self.servers.get(server)
        if pins is None:
            return {}
        gone, pins.instructions_pins = pins.instructions_pins, {}
        if pins.empty:
            del self.servers[server]
        return gone

    def remove(self, server: str, kind: str, name: str) -> Entry | None:
        pins = self.servers.get(server)
        if pins is None:
            return None
        gone = pins.entries[kind].pop(name, None)
        if pins.empty:
            del self.servers[server]
        return gone

    def walk(self) -> Iterator[tuple[str, str, str, Entry]]:
        for server in sorted(self.servers):
            for kind in PINNED_KINDS:
                for name, entry in sorted(self.servers[server].entries[kind].items()):
                    yield server, kind, name, entry

    def to_json(self) -> dict[str, Any]:
        servers: dict[str, Any] = {}
        for name, pins in self.servers.items():
            pins.prune()
            body: dict[str, Any] = {"launch": pins.launch, "instructions": pins.instructions}
            if pins.instructions_pins:
                body["instructions_pins"] = {d: p.to_json() for d, p in pins.instructions_pins.items()}
            for kind in PINNED_KINDS:
                if pins.entries[kind]:
                    body[kind] = {n: e.to_json() for n, e in pins.entries[kind].items()}
            servers[name] = body
        return {"version": FORMAT_VERSION, "servers": servers}

    @classmethod
    def from_json(cls, raw: Any, source: str) -> PinSet:
        if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
            raise LockError(f"{source}: not a version {FORMAT_VERSION} mcpward pin file")
        servers = raw.get("servers")
        if not isinstance(servers, dict):
            raise LockError(f"{source}: 'servers' must be an object")
        out = cls()
        for server, body in servers.items():
            if not isinstance(body, dict):
                raise LockError(f"{source}: servers.{server}: expected an object")
            pins = out.server(server)
            launch, texts = body.get("launch", {}), body.get("instructions", {})
            if not isinstance(launch, dict) or not isinstance(texts, dict) \
                    or not all(isinstance(t, str) for t in texts.values()):
                raise LockError(f"{source}: servers.{server}: malformed launch or instructions")
            pins.launch, pins.instructions = launch, texts
            own = body.get("instructions_pins", {})  # absent in files written before it existed
            if not isinstance(own, dict):
                raise LockError(f"{source}: servers.{server}.instructions_pins: expected an object")
            for digest, item in own.items():
                if digest not in texts:
                    raise LockError(f"{source}: servers.{server}.instructions_pins.{digest}: no such instructions")
                pins.instructions_pins[digest] = InstructionsPin.from_json(
                    item, f"{source}: servers.{server}.instructions_pins.{digest}")
            for kind in PINNED_KINDS:
                items = body.get(kind, {})
                if not isinstance(items, dict):
                    raise LockError(f"{source}: servers.{server}.{kind}: expected an object")
                for name, item in items.items():
                    pins.entries[kind][name] = Entry.from_json(item, f"{source}: servers.{server}.{kind}.{name}")
        return out


class PinFile:
    """One JSON pin file on disk, re-parsed only when its content changed.

    A change is told by a digest of the bytes, not by (mtime, size): `mcpward tools approve` can
    rewrite the file within one timestamp tick of the gateway's own write, to the same size (a
    fingerprint swapped for another), and a stat stamp would then miss it, so the gateway would keep
    judging from stale pins and its next write would put them back. Reading a lock file once a
    second (the guard's recheck) costs far less than that lost update.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: bytes | None = None  # digest of the bytes `pins` came from (or were written as)
        self.pins = PinSet()
        # Why the file on disk could not be read last time we tried; None once it reads again. While it
        # is set, `pins` is stale memory that must not be trusted (pins.Judge hides everything).
        self.problem: str | None = None

    def load(self) -> PinSet:
        """Re-read when the file changed on disk; a broken file raises LockError."""
        data = self._fetch()
        stamp = _digest(data)
        if stamp == self._stamp and stamp is not None:
            return self.pins
        self.pins = self._read(data)
        self._stamp = stamp
        return self.pins

    def changed_on_disk(self) -> bool:
        if self.problem is not None:
            return True  # known broken: look again every time (it may be fixed back to the very same bytes)
        try:
            data = self._bytes()
        except LockError:
            return True  # load() says why, and the caller fails closed
        return _digest(data) != self._stamp

    def _bytes(self) -> bytes | None:
        """The file's content, None when there is no file."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LockError(f"{self.path}: cannot read: {exc.strerror}") from None

    def _fetch(self) -> bytes | None:
        try:
            return self._bytes()
        except LockError as exc:
            self._broken(exc)
            raise

    def _read(self, data: bytes | None) -> PinSet:
        try:
            pins = self._parse(data)
        except LockError as exc:
            self._broken(exc)
            raise
        self.problem = None
        return pins

    def _broken(self, exc: LockError) -> None:
        """`pins` no longer describes any bytes on disk: never take it as current again."""
        self.problem, self._stamp = str(exc), None

    def _parse(self, data: bytes | None) -> PinSet:
        if data is None:
            return PinSet()
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise LockError(f"{self.path}: not valid JSON: {exc}") from None
        return PinSet.from_json(raw, str(self.path))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PinSet]:
        """Read fresh under an exclusive lock, let the caller change it, write it back atomically."""
        with _directory_lock(self.path.parent):
            data = self._fetch()
            stamp = _digest(data)
            # The same bytes as we read or wrote: what we hold is current (no re-parse).
            unchanged = stamp is not None and stamp == self._stamp
            pins = self.pins if unchanged else self._read(data)
            yield pins
            body = self._write(pins)
            self.pins, self._stamp = pins, _digest(body)

    def _write(self, pins: PinSet) -> bytes:
        body = exact.dumps(pins.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return body


def _digest(data: bytes | None) -> bytes | None:
    return None if data is None else hashlib.blake2b(data, digest_size=32).digest()


_held: dict[Path, int] = {}  # directories this process holds the lock on (approve nests lock + pending)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    key = directory.resolve()
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held[key] = 1
        yield
    finally:
        _held.pop(key, None)
        os.close(fd)  # closing releases the lock
