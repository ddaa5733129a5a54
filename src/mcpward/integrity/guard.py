"""The integrity guard: a tool, prompt or resource template is shown only while it is trusted.

Every time a server lists definitions (`on_published`), each one is fingerprinted, scanned
and judged against the lock file (see `pins.judge`). Lists then show only visible items, and a
call to a hidden one is refused with the reason's rule id, so a rug-pulled tool disappears on
its own while the server's other tools keep working. Approvals made with `mcpward tools approve`
while the gateway runs take effect within a second: the lock file is re-read when it changes.

A resource template guards what it expands to: a `resources/read` (or subscribe, or a completion) of a
URI that only a hidden template offers is refused like a call to a hidden tool. A server's
`instructions` pass the same test before the gateway's `initialize` answer carries them
(`instructions_shown`).
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
from mcpward.integrity.lock import InstructionsPin, LockError, PinFile
from mcpward.integrity.scanner import Report, ScanContext, Scanner, catalog_key, default_scanner
from mcpward.integrity.settings import IntegritySettings, read_settings
from mcpward.integrity.shadowing import CatalogIndex
from mcpward.policy.entities import SortedLabels
from mcpward.protocol import jsonrpc
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.protocol.uri_template import UriTemplate

log = logging.getLogger("mcpward.integrity")
KIND_OF_METHOD = {"tools/call": "tools", "prompts/get": "prompts"}
# Methods that act on a URI: a resource template offers it when no listed resource is that URI.
URI_METHODS = frozenset({"resources/read", "resources/subscribe"})
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
        self.templates: dict[str, dict[str, UriTemplate]] = {}  # server -> listed URI template -> its matcher
        self._gateway: GatewayView | None = None
        self._next_check = 0.0
        self._lock_broken = False  # the lock file broke while running: nothing is trusted until it is fixed
        self._instruction_reports: dict[tuple[str, str, tuple[int, int]], Report] = {}
        self._instructions_held: set[tuple[str, str, str]] = set()  # audited once per (server, digest, rule)

    def bind(self, gateway: GatewayView) -> None:
        self._gateway = gateway

    # ---------------------------------------------------------------- listing
    def on_published(self, server: str, kind: str, items: list[Listed]) -> None:
        if kind not in fp.PINNED_FIELDS or server not in self.identities:
            return
        self._lock_changed()
        catalog = self.catalogs.setdefault(kind, CatalogIndex())
        # Merged, not replaced: a list comes one page at a time, and a server's tools on its earlier pages
        # must still count when another server's tool mentions or imitates them.
        catalog.merge(server, frozenset(listed.name for listed in items))
        if kind == "resourceTemplates":
            patterns = self.templates.setdefault(server, {})
            for listed in items:
                if listed.name not in patterns:
                    patterns[listed.name] = UriTemplate.parse(listed.name)
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
        if text:
            # Judged here too, not only at `initialize`: a held text then waits in the pending file for
            # `tools diff`/`approve` after `tools list --refresh`, before any client connects.
            self.instructions_shown(server, text)

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
        if call.server is None or call.target is None:
            return None
        kind = KIND_OF_METHOD.get(call.method)
        ref = call.params.get("ref") if call.method == "completion/complete" else None
        if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
            kind = "prompts"  # completing a prompt's argument uses the prompt
        elif call.method in URI_METHODS or (isinstance(ref, dict) and ref.get("type") == "ref/resource"):
            self._check_uri(call, call.server, call.target)
            return None
        if kind is None:
            return None
        if time.monotonic() >= self._next_check:  # (what _lock_changed tests first: a call saved per request)
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
        self._admit(call, seen)
        return None

    def _admit(self, call: Call, seen: Seen) -> None:
        verdict, notes = seen.verdict, call.notes
        notes["pin"] = verdict.state
        notes["risk"] = seen.risk()
        if not verdict.visible:
            raise Refusal(verdict.rule, verdict.message)

    def _check_uri(self, call: Call, server: str, uri: str) -> None:
        """A URI a listed resource names is that resource's (resources are not pinned); any other URI the
        gateway routed came from resource templates, and every template that offers it must be shown."""
        if call.method in URI_METHODS and call.definition is not None:
            return
        self._lock_changed()
        exact = self.seen.get(("resourceTemplates", server, uri))  # a completion names the template itself
        if exact is not None:
            self._admit(call, exact)
            return
        patterns = self.templates.get(server, {})
        matching = sorted(t for t, pattern in patterns.items() if pattern.matches(uri))
        found = [seen for t in matching if (seen := self.seen.get(("resourceTemplates", server, t)))]
        if not found:
            if call.method not in URI_METHODS:
                return  # a completion routed by a listed resource's own URI (no template offers it)
            # Neither a listed resource nor any listed template's: nothing was checked, so nothing is forwarded.
            audit_refusal(call, "integrity.unlisted")
            raise jsonrpc.ProtocolError(jsonrpc.INVALID_PARAMS, f"Resource not found: {uri}",
                                        {"uri": uri, "rule": "integrity.unlisted"})
        # Fail closed: when two templates offer the URI and one is hidden, the URI is the hidden one's too.
        hidden = [seen for seen in found if not seen.verdict.visible]
        self._admit(call, (hidden or found)[0])

    # ----------------------------------------------------------- instructions
    def instructions_shown(self, server: str, text: str) -> bool:
        """Whether `server`'s instructions may reach the client in the gateway's `initialize` answer.

        The model reads them next to every tool, so they pass the tests a tool passes: the scanner's hide
        level, and with pinning on, the lock file. A held block is left out, written to the pending file
        (so `mcpward tools diff` shows it and `mcpward tools approve SERVER --instructions` can release it)
        and audited once per text as `integrity.held` with `kind=instructions`."""
        self._lock_changed()
        digest = fp.instructions_digest(text)
        report = self._scan_instructions(server, text, digest)
        rule = self._instructions_rule(server, digest, report)
        if rule is None:
            self._tofu_pin_instructions(server, digest, text, report)
            return True
        if (server, digest, rule) not in self._instructions_held:
            self._instructions_held.add((server, digest, rule))
            risk = report.severity.name.lower()
            if self.settings.pinning and rule != pins.UNREADABLE:
                hold = InstructionsPin(risk=risk, reason=rule.removeprefix("integrity."),
                                       findings=report.to_json()["findings"][:20])
                self.judge.write(self.pending, lambda held: held.put_instructions(server, digest, hold, text,
                                                                                 only=False))
            audit.record("integrity.held", server=server, kind="instructions", name=server,
                         reason=rule.removeprefix("integrity."), rule=rule, fingerprint=digest,
                         risk=risk, rules=[f.rule for f in report.findings][:10])
            log.warning("integrity: instructions of server %s held (%s); left out of the initialize answer",
                        server, rule)
        return False

    def _instructions_rule(self, server: str, digest: str, report: Report) -> str | None:
        """None when the text may be shown, else the rule that holds it.

        A text at the scanner's hide level is shown only once a person approved that very text on its own
        (`tools approve SERVER --instructions`): approving a tool never releases it, since the instructions
        are a separate message the reviewer of a tool might not read."""
        # A write may be what found the file broken (the pin file then keeps the `problem`).
        if self._lock_broken or getattr(self.lock, "problem", None) or getattr(self.pending, "problem", None):
            return "integrity.lock-unreadable"
        pinned = self.lock.pins.servers.get(server)
        own = pinned.instructions_pins.get(digest) if pinned is not None else None
        if own is not None and own.by != "tofu":
            return None  # a person approved this very text on its own
        if int(report.severity) >= self.settings.hide_at:
            return "integrity.high-risk"
        if not self.settings.pinning:
            return None
        approved = [entry for kind in pinned.entries.values() for entry in kind.values()
                    if entry.status == "approved"] if pinned is not None else []
        if own is not None or any(entry.instructions == digest and entry.by != "tofu" for entry in approved):
            return None  # trusted on first use, or a person approved definitions that carry this very text
        if not approved and (pinned is None or not pinned.instructions_pins):
            # First sight: trusted on first use in tofu (and pinned then), held for a person in strict.
            return "integrity.unpinned" if self.settings.mode == "strict" else None
        if approved and all(entry.instructions == digest for entry in approved):
            return None
        return "integrity.changed"  # pinned under other instructions

    def _tofu_pin_instructions(self, server: str, digest: str, text: str, report: Report) -> None:
        """In tofu, the first text a server shows is pinned on its own, so a server with no pinned definition
        (resources only, or none listed yet) cannot change its instructions unnoticed later."""
        if self.settings.mode != "tofu":
            return
        pinned = self.lock.pins.servers.get(server)
        if pinned is not None and pinned.instructions_pins:
            return
        first = InstructionsPin(by="tofu", risk=report.severity.name.lower())
        if self.judge.write(self.lock, lambda lock: lock.put_instructions(server, digest, first, text, only=True)):
            audit.record("integrity.pinned", server=server, kind="instructions", name=server, by="tofu",
                         fingerprint=digest, risk=first.risk)

    def _scan_instructions(self, server: str, text: str, digest: str) -> Report:
        """The scan of a server's instructions against the tool catalog (for mentions of other servers' tools),
        remembered per text and catalog: `initialize` is answered once per client session."""
        catalog = self.catalogs.get("tools")
        context = ScanContext(server, dict(catalog.names), catalog) if catalog is not None else None
        key = (server, digest, catalog_key(context.others) if context is not None else (0, 0))
        report = self._instruction_reports.get(key)
        if report is None:
            report = self.scanner.scan_instructions(text, context)
            if len(self._instruction_reports) >= 256:
                self._instruction_reports.clear()  # a bound, not an LRU: a scan is cheap to redo
            self._instruction_reports[key] = report
        return report

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
            self._lock_broken = True
            log.error("integrity: %s; hiding every pinned definition until it is fixed", exc)
            audit.record("integrity.lock-unreadable", problem=str(exc))
            for seen in self.seen.values():
                seen.verdict = pins.Verdict(False, "pending", "integrity.lock-unreadable",
                                            "the lock file cannot be read; nothing is trusted until it is fixed")
            return
        self._lock_broken = False
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
