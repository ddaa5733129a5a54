"""The integrity guard: a tool, prompt or resource template is shown only while it is trusted.

Every time a server lists definitions (`on_published`), each one is fingerprinted, scanned
and judged against the lock file (see `pins.judge`). Lists then show only visible items, and a
call to a hidden one is refused with the reason's rule id, so a rug-pulled tool disappears on
its own while the server's other tools keep working. Approvals made with `mcpward tools approve`
while the gateway runs take effect within a second: the lock file is re-read when it changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mcpward.audit import events as audit
from mcpward.gateway.config import GatewayConfig
from mcpward.guards.base import Call, GatewayView, Guard, Listed, Refusal, audit_refusal
from mcpward.integrity import fingerprint as fp
from mcpward.integrity import pins
from mcpward.integrity.lock import LockError, PinFile
from mcpward.integrity.scanner import Report, ScanContext, Scanner, catalog_key, default_scanner
from mcpward.integrity.settings import IntegritySettings, read_settings
from mcpward.integrity.shadowing import CatalogIndex
from mcpward.policy.entities import SortedLabels
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj

log = logging.getLogger("mcpward.integrity")
KIND_OF_METHOD = {"tools/call": "tools", "prompts/get": "prompts"}
RECHECK_SECONDS = 1.0  # how often the hot path looks at the lock file's mtime


@dataclass(slots=True)
class Seen:
    """The latest listed state of one definition."""

    view: dict[str, object]
    fingerprint: str
    context: tuple[int, int]  # which catalog the shadowing checks saw (scanner.catalog_key)
    instructions: str | None
    report: Report
    verdict: pins.Verdict
    # The policy's labels for this definition, worked out once per pin state (asked on every call).
    _labels: tuple[str, SortedLabels] | None = None
    _risk: tuple[str, ...] | None = None

    def risk(self) -> tuple[str, ...]:
        """The scanner's labels, for the request's audit record (the report never changes)."""
        if self._risk is None:
            self._risk = tuple(sorted(self.report.labels()))
        return self._risk

    def policy_labels(self) -> list[str]:
        state = self.verdict.state
        if self._labels is None or self._labels[0] != state:
            self._labels = (state, SortedLabels(sorted({*self.risk(), f"pin:{state}"})))
        return self._labels[1]


class IntegrityGuard(Guard):
    name = "integrity"

    def __init__(self, cfg: GatewayConfig, settings: IntegritySettings, scanner: Scanner | None = None) -> None:
        self.cfg = cfg
        self.settings = settings
        self.scanner = scanner or default_scanner()
        self.identities = {name: fp.ServerIdentity.of(scfg) for name, scfg in cfg.servers.items()}
        self.lock = PinFile(settings.lock)
        self.pending = PinFile(settings.pending)
        self.lock.load()  # a broken lock file stops the gateway here, not at the first list
        self.pending.load()
        self.judge = pins.Judge(cfg, settings, self.scanner, self.lock, self.pending, self.identities)
        self.seen: dict[tuple[str, str, str], Seen] = {}
        self.catalogs: dict[str, CatalogIndex] = {}  # kind -> every server's names, for shadowing checks
        self._gateway: GatewayView | None = None
        self._next_check = 0.0

    def bind(self, gateway: GatewayView) -> None:
        self._gateway = gateway

    # ---------------------------------------------------------------- listing
    def on_published(self, server: str, kind: str, items: list[Listed]) -> None:
        if kind not in fp.PINNED_FIELDS or server not in self.identities:
            return
        self._lock_changed()
        catalog = self.catalogs.setdefault(kind, CatalogIndex())
        catalog.update(server, frozenset(listed.name for listed in items))
        text = self._gateway.server_instructions(server) if self._gateway else None
        instructions = fp.instructions_digest(text)
        identity = self.identities[server].digest
        context = ScanContext(server, dict(catalog.names), catalog)
        context_key = catalog_key(catalog.names)
        changed: list[tuple[Listed, dict[str, object], str]] = []
        for listed in items:
            view = fp.pinned_view(kind, listed.item, listed.name)
            print_ = fp.fingerprint(kind, view, identity, instructions)
            known = self.seen.get((kind, server, listed.name))
            if known is not None and known.fingerprint == print_ and known.context == context_key:
                continue  # unchanged since the last list: nothing to scan or judge
            changed.append((listed, view, print_))
        # The whole list in one call (cached there by content and catalog): its new strings are prefiltered
        # in groups, not one definition at a time.
        reports = self.scanner.scan_items(kind, [view for _, view, _ in changed], context)
        batch = pins.Batch()
        for (listed, view, print_), report in zip(changed, reports, strict=True):
            verdict = self.judge.decide(batch, server, kind, listed.name, view, print_, instructions, text, report)
            self.seen[(kind, server, listed.name)] = Seen(view, print_, context_key, text, report, verdict)
        self.judge.commit(batch)

    async def on_list(self, call: Call, kind: str, items: list[Listed]) -> list[Listed] | None:
        if kind not in fp.PINNED_FIELDS:
            return None
        self._lock_changed()
        kept = [listed for listed in items if self._visible(kind, listed.server, listed.name)]
        return kept if len(kept) != len(items) else None

    def _visible(self, kind: str, server: str, name: str) -> bool:
        seen = self.seen.get((kind, server, name))
        return seen is not None and seen.verdict.visible

    # ------------------------------------------------------------------ calls
    async def on_request(self, call: Call) -> JsonObj | None:
        kind = KIND_OF_METHOD.get(call.method)
        if kind is None or call.server is None or call.target is None:
            return None
        self._lock_changed()
        key = (kind, call.server, call.target)
        seen = self.seen.get(key)
        if seen is None and self._gateway is not None:
            # Called by a name the gateway never listed: list it now (as the caller, for a server
            # that only a principal's own credentials reach).
            await self._gateway.relist(kind, call.ctx.principal)
            seen = self.seen.get(key)
        if seen is None:
            # The server does not list it: to the client it does not exist (the same answer as a name no
            # server has), and a definition nobody has seen is never forwarded unchecked.
            audit_refusal(call, "integrity.unlisted")
            noun = "tool" if kind == "tools" else "prompt"
            raise jsonrpc.ProtocolError(jsonrpc.INVALID_PARAMS, f"unknown {noun}: {call.exposed}",
                                        {"rule": "integrity.unlisted"})
        call.notes["pin"] = seen.verdict.state
        call.notes["risk"] = seen.risk()
        if not seen.verdict.visible:
            raise Refusal(seen.verdict.rule, seen.verdict.message)
        return None

    # ----------------------------------------------------------------- policy
    def labels(self, server: str, kind: str, name: str) -> list[str]:
        """Risk labels for the policy (a `PolicyGuard` label provider)."""
        seen = self.seen.get((kind, server, name))
        if seen is None:
            return []
        return seen.policy_labels()

    # --------------------------------------------------------- lock reloading
    def _lock_changed(self) -> None:
        """Re-judge everything when `mcpward tools approve/revoke` changed the lock file."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RECHECK_SECONDS
        if not (self.lock.changed_on_disk() or self.pending.changed_on_disk()):
            return
        try:
            self.lock.load()
            self.pending.load()
        except LockError as exc:
            # Fail closed: an unreadable lock file trusts nothing until it is fixed.
            log.error("integrity: %s; hiding every pinned definition until it is fixed", exc)
            audit.record("integrity.lock-unreadable", problem=str(exc))
            for seen in self.seen.values():
                seen.verdict = pins.Verdict(False, "pending", "integrity.lock-unreadable",
                                            "the lock file cannot be read; nothing is trusted until it is fixed")
            return
        batch = pins.Batch()
        for (kind, server, name), seen in self.seen.items():
            seen.verdict = self.judge.decide(batch, server, kind, name, seen.view, seen.fingerprint,
                                             fp.instructions_digest(seen.instructions), seen.instructions,
                                             seen.report)
        self.judge.commit(batch)


def from_config(cfg: GatewayConfig) -> IntegrityGuard | None:
    """None when pinning is off and the scanner hides nothing; raises ConfigError/LockError otherwise."""
    settings = read_settings(cfg)
    if settings.mode == "off" and settings.hide_at > 3:
        return None
    if settings.mode == "off":
        log.warning("INTEGRITY pinning is off: changed tool definitions reach clients unchecked (%s)", cfg.source)
    return IntegrityGuard(cfg, settings)
