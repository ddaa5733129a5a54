"""The policy guard: every forwarded request and every list item is decided for its principal.

A list shows an item only when its server may be listed (`list_*` on the Server) and the item's
own action (`call_tool`, `get_prompt`, `read_resource`) would be allowed, with no arguments and
`context.listing` true; so a client never sees what it may not use, and the core marks such a
filtered list `cacheScope: private`. So is every list under a policy whose answers depend on who
asks (it names or reads the principal, or reads the client or transport from the context), even
when nothing was hidden from this requester.

Some requests need more than their own action: completing a prompt's or template's argument also
needs `get_prompt` / `read_resource` on that item (a hidden item gives no completions), and a URI
the server does not list as a resource, which the gateway routes through one of that server's URI
templates, is also decided as `read_resource` on each template it expands to (their policy and
their risk labels): in reads, subscriptions and completions.

A server's requests to the client (`sampling/createMessage`, `elicitation/create`, `roots/list`:
threat T32) are decided as `sample`, `elicit`, `list_roots` on the Server that asks, for the
principal whose client would be asked; a denied one is refused to the server with the rule (the
client never sees it) and audited. A modern server's input requests that go back to a modern
client inside an InputRequiredResult are decided on that result instead (a denial refuses the
call). Notifications from servers are not the policy's business.
"""

from __future__ import annotations

import logging

from mcpward.audit import events as audit
from mcpward.gateway.config import GatewayConfig
from mcpward.gateway.context import RequestContext
from mcpward.guards.base import Call, Guard, Listed, Refusal
from mcpward.policy.engine import Decision, PolicyEngine
from mcpward.policy.entities import (
    CLIENT_ACTIONS,
    ITEM_ACTIONS,
    LIST_ACTIONS,
    METHOD_ACTIONS,
    EntityBuilder,
    Facts,
    LabelProvider,
    Target,
)
from mcpward.policy.loader import load_bundle, sources_for
from mcpward.policy.settings import Mode, PolicySettings, read_settings
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.protocol.uri_template import UriTemplate

log = logging.getLogger("mcpward.policy")


class PolicyGuard(Guard):
    name = "policy"

    def __init__(self, engine: PolicyEngine, mode: Mode = "enforce") -> None:
        self.engine = engine
        self.mode = mode
        # server -> its URI templates as last listed (the catalog routes URIs through the same ones).
        self.templates: dict[str, list[UriTemplate]] = {}
        self._unmatched: set[tuple[str, str]] = set()  # (server, override name) already reported
        # server -> (kind, name) -> (item action, target) of everything it listed (instructions' visibility)
        self.offered: dict[str, dict[tuple[str, str], tuple[str, Target]]] = {}

    def add_label_provider(self, provider: LabelProvider) -> None:
        """Risk labels from elsewhere (the integrity scanner): `provider(server, kind, name) -> labels`."""
        self.engine.builder.label_providers.append(provider)

    def replace(self, engine: PolicyEngine, mode: Mode) -> None:
        """Decide with `engine` from the next request on (a reload). The risk-label providers move
        over: the integrity scanner's labels keep feeding the new policy."""
        engine.builder.label_providers[:] = self.engine.builder.label_providers
        self.engine, self.mode = engine, mode

    def on_published(self, server: str, kind: str, items: list[Listed]) -> None:
        item_action = ITEM_ACTIONS.get(kind)
        if item_action is not None:  # what the server offers, for server_visible
            offered = self.offered.setdefault(server, {})
            for listed in items:
                offered[(kind, listed.name)] = (item_action, listed_target(kind, listed))
        if kind == "resourceTemplates":
            # Merged across pages and listings, never forgotten: a template decision can only refuse more,
            # so a template the server dropped errs toward a stricter answer, never a looser one.
            known = self.templates.setdefault(server, [])
            texts = {template.text for template in known}
            known.extend(UriTemplate.parse(listed.name) for listed in items if listed.name not in texts)
        elif kind == "tools":
            self._note_unmatched_overrides(server, items)

    def _note_unmatched_overrides(self, server: str, items: list[Listed]) -> None:
        """An override filed under a name the server does not list never applies: say so, once."""
        scfg = self.engine.builder.servers.get(server)
        if scfg is None or not scfg.tools:
            return
        listed = {item.name for item in items}
        for name in scfg.tools:
            if name not in listed and (server, name) not in self._unmatched:
                self._unmatched.add((server, name))
                log.warning("server %s lists no tool %r: its [servers.%s.tools.%s] override applies to nothing",
                            server, name, server, name)
                audit.record("policy.override-unmatched", server=server, tool=name)

    def server_visible(self, ctx: RequestContext, server: str) -> bool:
        """Whether `ctx`'s principal would be shown anything of `server` in a list: some `list_<kind>`
        on it is permitted and, once the server has listed something, some item of it passes its own
        action too. Otherwise its instructions are not shown: they describe tools the principal may
        not see. Dry-run shows everything, as it hides nothing."""
        if self.mode == "dry-run":
            return True
        facts = Facts.of(ctx, listing=True)
        target = Target("Server", server, server, server)
        lists = self.engine.decide_many(ctx.principal, [(action, target) for action in LIST_ACTIONS.values()], facts)
        if not any(decision.allowed for decision in lists):
            return False
        offered = list(self.offered.get(server, {}).values())
        return not offered or any(d.allowed for d in self.engine.decide_many(ctx.principal, offered, facts))

    def templates_of(self, server: str, uri: str) -> list[str]:
        """The URI templates of `server` that `uri` is an expansion of."""
        return [template.text for template in self.templates.get(server, ()) if template.matches(uri)]

    def related(self, action: str, target: Target, listed: bool = False) -> list[tuple[str, Target]]:
        """What else must be allowed for `action` on `target` to be (see the module's docstring).
        `listed`: the server lists this very URI as a resource, so it is not read through a template."""
        item = completed_item(action, target)
        out: list[tuple[str, Target]] = [] if item is None else [item]
        if target.type == "Resource" and not target.template and not listed:
            out.extend(("read_resource", Target("Resource", t, target.server, t, template=True))
                       for t in self.templates_of(target.server, target.name))
        return out

    async def on_request(self, call: Call) -> JsonObj | None:
        principal = call.ctx.principal
        if call.method == "tools/call" and call.server is not None and call.target is not None:
            # Most requests: a tool call whose permit is remembered, found without building the
            # target and the facts. Anything else (a miss, a deny) takes the full path below.
            arguments = call.params.get("arguments")
            definition = call.definition
            hit = self.engine.cached_tool_call(
                principal, call.exposed or call.target, call.server, call.target,
                definition.get("annotations") if definition is not None else None,
                isinstance(arguments, dict) and len(arguments) > 0, call.ctx)
            if hit is not None and hit.allowed:
                call.notes["policy"] = {"rule": hit.rule, "allowed": True, "hash": self.engine.bundle.hash}
                return None
        action = METHOD_ACTIONS.get(call.method)
        target = call_target(call)
        if action is None or target is None:
            # Nothing the policy can name: fail closed rather than forward it undecided.
            raise Refusal("policy.undecidable", f"{call.method} cannot be decided by the policy")
        facts = Facts.of(call.ctx)
        decision = self.engine.decide(principal, action, target, facts)
        needed = ""
        if decision.allowed and call.method != "tools/call":  # a tool call needs nothing else: keep it lean
            related = self.related(action, target, listed=call.definition is not None)
            verdicts = self.engine.decide_many(principal, related, facts) if related else []
            for (other_action, other), verdict in zip(related, verdicts, strict=True):
                if not verdict.allowed:
                    decision, needed = verdict, f" needs {other_action} on {other.id}, which"
                    break
        call.notes["policy"] = {"rule": decision.rule, "allowed": decision.allowed, "hash": self.engine.policy_hash}
        if decision.allowed:
            return None
        message = f"{action} on {target.id}{needed} is not permitted for {principal.subject}"
        if self.mode == "dry-run":
            audit.record("policy.would-deny", rule=decision.rule, action=action, target=target.id,
                         server=target.server, principal=principal.key, subject=principal.subject,
                         policy_hash=self.engine.policy_hash)
            return None
        raise Refusal(decision.rule, message)

    async def on_message(self, ctx: RequestContext, server: str, method: str, params: JsonObj) -> JsonObj | None:
        action = CLIENT_ACTIONS.get(method)
        if action is None:
            return None  # a notification (log line, progress): nothing of the client's is reached
        denied = self._client_denial(ctx, server, action)
        if denied is not None:
            # Audited here: the gateway answers the server with the refusal and records nothing itself.
            audit.record("refusal", rule=denied.rule, action=action, method=method, server=server, target=server,
                         principal=ctx.principal.key, subject=ctx.principal.subject, transport=ctx.transport,
                         policy_hash=self.engine.policy_hash)
            raise Refusal(denied.rule, f"{action} from server {server} is not permitted for {ctx.principal.subject}")
        return None

    async def on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        """A modern server's InputRequiredResult for a modern client goes back as a result, not through
        `on_message`: each of its requests is decided here, and a denied one refuses the whole result
        (the server is stateless, nothing waits for an answer; the core audits the refusal)."""
        requests = result.get("inputRequests") if result.get("resultType") == "input_required" else None
        if not isinstance(requests, dict) or call.server is None:
            return None
        for request in requests.values():
            method = request.get("method") if isinstance(request, dict) else None
            action = CLIENT_ACTIONS.get(method) if isinstance(method, str) else None
            denied = None if action is None else self._client_denial(call.ctx, call.server, action)
            if denied is not None:
                raise Refusal(denied.rule, f"{action} from server {call.server} is not permitted "
                                           f"for {call.ctx.principal.subject}")
        return None

    def _client_denial(self, ctx: RequestContext, server: str, action: str) -> Decision | None:
        """The deny decision when `server` may not ask `ctx`'s client for `action` (None: it may, or
        dry-run, which records what it would have refused)."""
        decision = self.engine.decide(ctx.principal, action, Target("Server", server, server, server), Facts.of(ctx))
        if decision.allowed:
            return None
        if self.mode == "dry-run":
            audit.record("policy.would-deny", rule=decision.rule, action=action, target=server, server=server,
                         principal=ctx.principal.key, subject=ctx.principal.subject,
                         policy_hash=self.engine.policy_hash)
            return None
        return decision

    async def on_list(self, call: Call, kind: str, items: list[Listed]) -> list[Listed] | None:
        if not items:
            return None
        item_action, list_action = ITEM_ACTIONS.get(kind), LIST_ACTIONS.get(kind)
        if item_action is None or list_action is None:
            return []  # an unknown kind of list: show nothing rather than everything
        servers = sorted({listed.server for listed in items})
        requests = [(list_action, Target("Server", s, s, s)) for s in servers]
        requests += [(item_action, listed_target(kind, listed)) for listed in items]
        decisions = self.engine.decide_many(call.ctx.principal, requests, Facts.of(call.ctx, listing=True))
        server_ok = dict(zip(servers, decisions[:len(servers)], strict=True))
        hidden_by: dict[str, int] = {}
        shown = []
        for listed, decision in zip(items, decisions[len(servers):], strict=True):
            server_decision = server_ok[listed.server]
            verdict: Decision = decision if server_decision.allowed else server_decision
            if verdict.allowed:
                shown.append(listed)
            else:
                hidden_by[verdict.rule] = hidden_by.get(verdict.rule, 0) + 1
        if not hidden_by:
            # Nothing hidden from this requester, but another may see less: the list is still theirs
            # alone (a returned list makes it `cacheScope: private`), so a shared cache cannot hand
            # it to someone the policy would show less.
            return shown if self.engine.bundle.per_requester and self.mode == "enforce" else None
        if self.mode == "dry-run":
            audit.record("policy.would-hide", kind=kind, count=len(items) - len(shown), rules=hidden_by,
                         principal=call.ctx.principal.key, subject=call.ctx.principal.subject,
                         policy_hash=self.engine.policy_hash)
            return None
        return shown


def call_target(call: Call) -> Target | None:
    """The Cedar resource of a forwarded request; None when the request names nothing decidable."""
    if call.server is None or call.target is None:
        return None
    exposed = call.exposed or call.target
    params = call.params
    arguments = params.get("arguments")
    args = arguments if isinstance(arguments, dict) else None
    if call.method == "tools/call":
        claimed = call.definition.get("annotations") if call.definition is not None else None
        return Target("Tool", exposed, call.server, call.target, claimed=claimed, arguments=args)
    if call.method == "prompts/get":
        return Target("Prompt", exposed, call.server, call.target, arguments=args)
    if call.method in ("resources/read", "resources/subscribe"):
        return Target("Resource", exposed, call.server, call.target)
    if call.method == "completion/complete":
        ref = params.get("ref")
        argument = params.get("argument")
        completed = ({str(argument.get("name")): argument.get("value")} if isinstance(argument, dict) else None)
        if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
            return Target("Prompt", exposed, call.server, call.target, arguments=completed)
        if isinstance(ref, dict) and ref.get("type") == "ref/resource":
            return Target("Resource", exposed, call.server, call.target, arguments=completed,
                          template="{" in call.target)
    return None


def completed_item(action: str, target: Target) -> tuple[str, Target] | None:
    """For `complete`: the item's own action on it, without arguments, which must be allowed too."""
    if action != "complete":
        return None
    item_action = "get_prompt" if target.type == "Prompt" else "read_resource"
    return item_action, Target(target.type, target.id, target.server, target.name, template=target.template,
                               labels=target.labels)


def listed_target(kind: str, listed: Listed) -> Target:
    item = listed.item
    if kind == "tools":
        exposed = item.get("name")
        return Target("Tool", exposed if isinstance(exposed, str) else listed.name, listed.server, listed.name,
                      claimed=item.get("annotations"))
    if kind == "prompts":
        exposed = item.get("name")
        return Target("Prompt", exposed if isinstance(exposed, str) else listed.name, listed.server, listed.name)
    return Target("Resource", listed.name, listed.server, listed.name, template=kind == "resourceTemplates")


def engine_for(cfg: GatewayConfig, settings: PolicySettings | None = None, os_groups: bool = True) -> PolicyEngine:
    """Load, validate and index the configured policies (ConfigError on any problem).

    `os_groups`: add a local user's OS groups to its Group parents (off for explain/test, which
    take groups as given so their answers do not depend on the machine).
    """
    settings = settings or read_settings(cfg)
    return PolicyEngine(load_bundle(sources_for(settings), cfg.servers),
                        EntityBuilder(cfg.servers, include_os_groups=os_groups))


def warn_if_open(settings: PolicySettings, source: str) -> None:
    """Loud warnings for a policy that lets everything through or enforces nothing (at start and on reload)."""
    if settings.base == "permit-all":
        log.warning("POLICY permit-all: every client may call every tool, destructive ones included "
                    "([policy] base = \"permit-all\" in %s)", source)
    if settings.mode == "dry-run":
        log.warning("POLICY dry-run: denials are logged as policy.would-deny and NOT enforced (%s)", source)


def from_config(cfg: GatewayConfig) -> PolicyGuard:
    """Never None: with no [policy] table the `standard` policy applies, and default-deny always does."""
    settings = read_settings(cfg)
    engine = engine_for(cfg, settings)
    warn_if_open(settings, cfg.source)
    log.info("policy %s: base %s, %d rules, %s", engine.policy_hash[:19], settings.base,
             len(engine.bundle.rules), settings.mode)
    return PolicyGuard(engine, settings.mode)
