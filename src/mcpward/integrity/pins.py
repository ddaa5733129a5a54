"""Judging one listed definition against the lock file: shown, pinned now, or held for a person.

| lock says                      | strict            | tofu                                   |
|--------------------------------|-------------------|----------------------------------------|
| nothing (first sight)          | held (unpinned)   | pinned now, unless the scan is at the  |
|                                |                   | hide level or the tool is destructive  |
| same fingerprint, approved     | shown             | shown (a tofu pin is re-held if a      |
|                                |                   | newer scan reaches the hide level)     |
| other fingerprint              | held (changed)    | held (changed)                         |
| revoked                        | held              | held                                   |

With `mode = "off"` nothing is pinned and only the scanner's hide level applies. Every held
definition is written to the pending file once, with its scan and, for a change, a classified
diff; the audit record is written at the same moment, so a person is asked once per definition,
never once per call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mcpward.audit import events as audit
from mcpward.gateway.config import GatewayConfig
from mcpward.integrity import changes
from mcpward.integrity.fingerprint import ServerIdentity
from mcpward.integrity.launch import hide_secret_args, hide_url_secrets
from mcpward.integrity.lock import Entry, LockError, PinFile, PinSet
from mcpward.integrity.scanner import Report, Scanner
from mcpward.integrity.settings import IntegritySettings

log = logging.getLogger("mcpward.integrity")
State = Literal["pinned", "pending", "unpinned"]
NOUN = {"tools": "tool", "prompts": "prompt", "resourceTemplates": "resource template"}
WHY = {
    "unpinned": "is not pinned yet (strict mode)",
    "changed": "changed since it was approved",
    "high-risk": "was flagged by the poisoning scanner",
    "revoked": "had its approval revoked",
    "held-destructive": "is new and declares itself destructive",
}
UNREADABLE = "integrity.lock-unreadable"


def unreadable() -> Verdict:
    """Fail closed: while the lock or pending file cannot be read, nothing is trusted."""
    return Verdict(False, "pending", UNREADABLE, "the lock file cannot be read; nothing is trusted until it is fixed")


@dataclass(slots=True)
class Verdict:
    visible: bool
    state: State
    rule: str = ""
    message: str = ""


@dataclass(slots=True)
class Batch:
    """Lock and pending changes from one listing, written in one transaction each."""

    pins: list[tuple[str, str, str, Entry, str | None]] = field(default_factory=list)
    pending: list[tuple[str, str, str, Entry, str | None]] = field(default_factory=list)
    resolved: list[tuple[str, str, str]] = field(default_factory=list)  # no longer pending
    # Every verdict decided for this listing: hidden after the fact if the lock turns out unreadable at commit.
    verdicts: list[Verdict] = field(default_factory=list)


class Judge:
    def __init__(self, cfg: GatewayConfig, settings: IntegritySettings, scanner: Scanner, lock: PinFile,
                 pending: PinFile, identities: Mapping[str, ServerIdentity]) -> None:
        self.cfg = cfg
        self.settings = settings
        self.scanner = scanner
        self.lock = lock
        self.pending = pending
        self.launch = {name: display_launch(cfg, ident.launch) for name, ident in identities.items()}
        self.identity = {name: ident.digest for name, ident in identities.items()}
        self._announced: set[tuple[str, str, str, str]] = set()  # audited "off"-mode hides

    def decide(self, batch: Batch, server: str, kind: str, name: str, view: dict[str, Any], fingerprint: str,
               instructions: str, instructions_text: str | None, report: Report) -> Verdict:
        entry = Entry(fingerprint=fingerprint, definition=view, identity=self.identity[server],
                      instructions=instructions, risk=report.severity.name.lower(),
                      findings=report.to_json()["findings"][:20])
        high = int(report.severity) >= self.settings.hide_at
        if not self.settings.pinning:
            if not high:
                return Verdict(True, "unpinned")
            if (server, kind, name, fingerprint) not in self._announced:
                self._announced.add((server, kind, name, fingerprint))
                audit.record("integrity.hidden", server=server, kind=kind, name=name, risk=entry.risk,
                             fingerprint=fingerprint, rules=[f.rule for f in report.findings][:10])
            return self._held(server, kind, name, "high-risk")
        verdict = self._judge(batch, server, kind, name, view, fingerprint, entry, instructions_text, high)
        batch.verdicts.append(verdict)
        return verdict

    def _judge(self, batch: Batch, server: str, kind: str, name: str, view: dict[str, Any], fingerprint: str,
               entry: Entry, instructions_text: str | None, high: bool) -> Verdict:
        if self.lock.problem is not None or self.pending.problem is not None:
            return unreadable()  # what is in memory is stale: never judge from it
        pin = self.lock.pins.get(server, kind, name)
        if pin is not None and pin.status == "revoked":
            return self._hold(batch, server, kind, name, entry, instructions_text, "revoked")
        if pin is not None and pin.fingerprint == fingerprint:
            if pin.by == "tofu" and high:
                return self._hold(batch, server, kind, name, entry, instructions_text, "high-risk")
            if self.pending.pins.get(server, kind, name) is not None:
                batch.resolved.append((server, kind, name))
            return Verdict(True, "pinned")
        if pin is not None:
            old_text = self.lock.pins.server(server).instructions.get(pin.instructions) \
                if server in self.lock.pins.servers else None
            old_launch: dict[str, Any] | None = None
            new_launch: dict[str, Any] | None = None
            if pin.identity != self.identity[server]:  # launched differently: show the reviewer how
                stored = self.lock.pins.servers.get(server)
                old_launch = stored.launch.get(pin.identity, {}) if stored is not None else {}
                new_launch = self.launch[server]
            change = changes.classify(kind, pin.definition, view, self.scanner,
                                      old_instructions=old_text, new_instructions=instructions_text,
                                      old_launch=old_launch, new_launch=new_launch)
            entry.change = {**change.to_json(), "diff": change.diff}
            return self._hold(batch, server, kind, name, entry, instructions_text, "changed")
        if high:
            return self._hold(batch, server, kind, name, entry, instructions_text, "high-risk")
        if self.settings.hold_destructive and kind == "tools" and self._destructive(server, name, view):
            return self._hold(batch, server, kind, name, entry, instructions_text, "held-destructive")
        if self.settings.mode == "tofu":
            entry.by = "tofu"
            batch.pins.append((server, kind, name, entry, instructions_text))
            if self.pending.pins.get(server, kind, name) is not None:
                batch.resolved.append((server, kind, name))
            return Verdict(True, "pinned")
        return self._hold(batch, server, kind, name, entry, instructions_text, "unpinned")

    def _destructive(self, server: str, name: str, view: Mapping[str, Any]) -> bool:
        claimed = view.get("annotations")
        effective = dict(claimed) if isinstance(claimed, Mapping) else {}
        override = self.cfg.servers[server].tools.get(name)
        if override is not None:
            effective.update(override.annotations)  # the operator's word wins
        return effective.get("destructiveHint") is True and effective.get("readOnlyHint") is not True

    def _held(self, server: str, kind: str, name: str, reason: str) -> Verdict:
        noun = NOUN[kind]
        message = (f"{noun} {name!r} of server {server!r} {WHY[reason]}; it is hidden until a person approves it "
                   f"(`mcpward tools diff {server}/{name}`, then `mcpward tools approve {server}/{name}`)")
        return Verdict(False, "pending", f"integrity.{reason}", message)

    def _hold(self, batch: Batch, server: str, kind: str, name: str, entry: Entry, instructions_text: str | None,
              reason: str) -> Verdict:
        entry.reason = reason
        waiting = self.pending.pins.get(server, kind, name)
        if waiting is None or waiting.fingerprint != entry.fingerprint or waiting.reason != reason:
            batch.pending.append((server, kind, name, entry, instructions_text))
        return self._held(server, kind, name, reason)

    def commit(self, batch: Batch) -> None:
        """Write what one listing decided, then audit it (a record for every pin and every hold)."""
        pinned = held = True
        if batch.pins:
            def pin(pins: PinSet) -> None:
                for s, k, n, e, t in batch.pins:
                    pins.put(s, k, n, e, self.launch[s], t or "")
                redisplay(self.cfg, pins)
            pinned = self.write(self.lock, pin)
        if batch.pending or batch.resolved:
            def apply(pins: Any) -> None:
                for s, k, n, e, t in batch.pending:
                    pins.put(s, k, n, e, self.launch[s], t or "")
                for s, k, n in batch.resolved:
                    pins.remove(s, k, n)
            held = self.write(self.pending, apply)
        # Audit what reached the files: a pin or hold whose file broke under us was not written.
        for server, kind, name, entry, _ in batch.pins if pinned else ():
            audit.record("integrity.pinned", server=server, kind=kind, name=name, by="tofu",
                         fingerprint=entry.fingerprint, risk=entry.risk)
        for server, kind, name, entry, _ in batch.pending if held else ():
            fields: dict[str, Any] = {"server": server, "kind": kind, "name": name, "reason": entry.reason,
                                      "fingerprint": entry.fingerprint, "risk": entry.risk,
                                      "rules": [f.get("rule") for f in entry.findings][:10]}
            if entry.change:
                fields.update(severity=entry.change["severity"], score=entry.change["score"],
                              reasons=entry.change["reasons"][:10], diff=str(entry.change.get("diff", ""))[:4000])
            audit.record("integrity.held", **fields)
            log.warning("integrity: %s %s/%s held for approval: %s", NOUN[kind], server, name, entry.reason)
        if not (pinned and held):
            # The lock or pending file broke under us: nothing this listing decided is trusted until it reads
            # again (the guard hides the rest when it next looks at the files, within a second).
            hidden = unreadable()
            for verdict in batch.verdicts:
                verdict.visible, verdict.state, verdict.rule, verdict.message = \
                    hidden.visible, hidden.state, hidden.rule, hidden.message

    def write(self, target: PinFile, change: Any) -> bool:
        """False when the file on disk cannot be read (LockError): the caller fails closed."""
        try:
            with target.transaction() as pins:
                change(pins)
        except LockError as exc:
            log.error("integrity: %s; hiding what this listing decided until it is fixed", exc)
            audit.record(UNREADABLE, problem=str(exc))
            return False
        except OSError as exc:
            # Keep deciding from memory so this run stays consistent; say loudly that it will not persist.
            log.error("integrity: cannot write %s (%s); pins made now last only until restart",
                      target.path, exc.strerror)
            change(target.pins)
        return True


def redisplay(cfg: GatewayConfig, pins: PinSet) -> None:
    """Redact every launch stored in `pins` again: a lock file written before a redaction rule existed may
    still hold a secret in plain text, and redacting redacted text changes nothing."""
    for server in pins.servers.values():
        server.launch = {digest: display_launch(cfg, shown) if isinstance(shown, dict) else shown
                         for digest, shown in server.launch.items()}


def display_launch(cfg: GatewayConfig, launch: dict[str, Any]) -> dict[str, Any]:
    """The launch identity as a reviewer reads it in the lock file (which is committed), with secrets
    redacted: values the redactor knows, the value of a secret-named flag (`--token VALUE` as well as
    `--token=VALUE`), and URL passwords and token-named query parameters. Only the display changes: the
    identity digest is computed from the launch itself."""
    from mcpward.guards.output import redactor_for

    redactor = redactor_for(cfg)

    def clean(text: str) -> str:
        return redactor.redact(text) or text

    shown = dict(launch)
    if "args" in shown:
        shown["args"] = [clean(a) for a in hide_secret_args([str(a) for a in shown["args"]])]
    if isinstance(shown.get("url"), str):
        shown["url"] = clean(hide_url_secrets(shown["url"]))
    return shown
