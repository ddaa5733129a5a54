"""Decisions: principal x action x target x facts -> allow or deny, and which rule said so.

Cedar is default-deny: with no permit matching, the answer is deny, named `policy.default-deny`.
A forbid that matches names itself. A forbid that fails to evaluate could have matched, so its
error denies (fail closed); a permit that fails to evaluate only failed to allow.

Hot path: the policy set and the static entities (actions, servers) are parsed once; a batch of
requests costs one Cedar call; and decisions are cached on everything they depend on (the
principal's entity JSON, a key of what the resource entity holds or its JSON when arguments are
part of it, the action, and exactly the context fields the policies read), so a repeated call
costs a dictionary lookup unless a policy reads the clock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cedarpy
import orjson

from mcpward.gateway.context import Principal, RequestContext
from mcpward.policy.entities import EntityBuilder, Facts, Target, action_entities, context_key, resource_key
from mcpward.policy.loader import PolicyBundle, evaluation_error_policies

log = logging.getLogger("mcpward.policy")
DEFAULT_DENY = "policy.default-deny"
EVALUATION_ERROR = "policy.evaluation-error"
CACHE_ENTRIES = 8192
CACHEABLE_RESOURCE_BYTES = 4096  # resources with big arguments are decided but not remembered
Outcome = Literal["permitted", "forbidden", "no-permit", "error"]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str  # the rule id that determined it (first of `rules`, or a policy.* id)
    rules: tuple[str, ...]  # every determining rule id (the permits that allowed, or the forbids that denied)
    outcome: Outcome
    errors: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        if self.outcome == "permitted":
            return f"permitted by {', '.join(self.rules)}"
        if self.outcome == "forbidden":
            return f"forbidden by {', '.join(self.rules)}"
        if self.outcome == "error" and self.rule == EVALUATION_ERROR:
            return "denied: the policy engine could not evaluate the request"
        if self.outcome == "error":
            return f"denied: forbid {self.rule} could not be evaluated, so it counts as matching"
        return "denied by default: no policy permits it"


class PolicyEngine:
    def __init__(self, bundle: PolicyBundle, builder: EntityBuilder) -> None:
        self.bundle = bundle
        self.builder = builder
        static = [*action_entities(), *(builder.server(name) for name in builder.servers)]
        self._static_ids = {("Server", name) for name in builder.servers}
        self._base = cedarpy.Entities.from_json_str(orjson.dumps(static).decode())
        fields = bundle.context_fields
        # A policy reading the clock to the second makes every decision unique: do not cache then.
        self._cache_on: tuple[str, ...] | None = (
            None if fields is None or "now" in fields else tuple(sorted(fields)))
        self._cache: dict[tuple[Any, ...], Decision] = {}
        self._principals: dict[Principal, bytes] = {}
        # The principal asked for last and its JSON: a session asks with the same object every time,
        # so an identity test spares hashing its claims. Held, so the identity cannot be reused.
        self._last_principal: tuple[Principal, bytes] | None = None

    @property
    def policy_hash(self) -> str:
        return self.bundle.hash

    def decide(self, principal: Principal, action: str, target: Target, facts: Facts) -> Decision:
        # Every forwarded request comes here: a remembered decision is found without the batch
        # machinery of decide_many (the same key it would build; a miss goes there).
        if self._cache_on is not None:
            resource_key, _labels = self._resource_key(target, self.bundle.reads_resource_tags)
            if resource_key is not None:
                hit = self._cache.get((self._principal_json(principal), action, resource_key,
                                       facts.key(self._cache_on)))
                if hit is not None:
                    return hit
        return self.decide_many(principal, [(action, target)], facts)[0]

    def cached_tool_call(self, principal: Principal, exposed: str, server: str, name: str, claimed: Any,
                         with_arguments: bool, ctx: RequestContext) -> Decision | None:
        """The remembered `call_tool` decision for this call, or None (then `decide` it as usual).

        The same key `decide_many` stores under, built from the call's parts without a Target or Facts
        (`with_arguments`: the call has arguments; a policy reading them keys on the entity JSON, so
        there is no tuple key to look up)."""
        fields = self._cache_on
        if fields is None or (with_arguments and self.bundle.reads_resource_tags):
            return None
        builder = self.builder
        labels = builder.labels_of("tools", server, name, builder.tool_override(server, name))
        last = self._last_principal  # (the identity test of _principal_json, without the call)
        p_json = last[1] if last is not None and last[0] is principal else self._principal_json(principal)
        resource = resource_key("Tool", exposed, server, name, False, claimed, labels)
        return self._cache.get((p_json, "call_tool", resource, context_key(ctx, fields) if fields else ()))

    def _resource_key(self, target: Target, with_args: bool) -> tuple[tuple[Any, ...] | None, list[str] | None]:
        """(the resource's part of a cache key, its labels). No key when the call's arguments are part of
        the entity: such a decision is keyed by the entity's JSON instead."""
        if target.type == "Server":
            return ("Server", target.id), None
        if with_args and target.arguments:
            return None, None
        labels = self.builder.labels(target)
        return self.builder.resource_key(target, labels), labels

    def decide_many(self, principal: Principal, requests: Sequence[tuple[str, Target]],
                    facts: Facts) -> list[Decision]:
        """Decide many (action, target) pairs for one principal and one context in one Cedar call."""
        p_json = self._principal_json(principal)
        ctx_key = None if self._cache_on is None else facts.key(self._cache_on)
        results: list[Decision | None] = [None] * len(requests)
        pending: list[tuple[int, tuple[Any, ...] | None, str, Target, bytes]] = []
        with_args = self.bundle.reads_resource_tags
        builder, cache = self.builder, self._cache
        for i, (action, target) in enumerate(requests):
            key: tuple[Any, ...] | None = None
            resource_key, labels = self._resource_key(target, with_args)
            if ctx_key is not None and resource_key is not None:
                # The common case keys on a tuple, so a repeated call builds no entity JSON at all.
                key = (p_json, action, resource_key, ctx_key)
                hit = cache.get(key)
                if hit is not None:
                    results[i] = hit
                    continue
            r_json = orjson.dumps(builder.resource(target, with_args, labels))
            if ctx_key is not None and resource_key is None and len(r_json) <= CACHEABLE_RESOURCE_BYTES:
                key = (p_json, action, r_json, ctx_key)
                hit = cache.get(key)
                if hit is not None:
                    results[i] = hit
                    continue
            pending.append((i, key, action, target, r_json))
        if pending:
            self._evaluate(principal.subject, p_json, orjson.dumps(facts.context()).decode(), pending, results)
        return [r for r in results if r is not None]

    def _evaluate(self, subject: str, p_json: bytes, context: str,
                  pending: list[tuple[int, tuple[Any, ...] | None, str, Target, bytes]],
                  results: list[Decision | None]) -> None:
        # One Cedar entity set per batch; an id listed twice with different contents (two servers
        # listing the same resource URI) goes to a later batch, since Cedar refuses duplicate ids.
        while pending:
            uids: dict[tuple[str, str], bytes] = {}
            batch, later = [], []
            for entry in pending:
                uid = (entry[3].type, entry[3].id)
                if uid in uids and uids[uid] != entry[4]:
                    later.append(entry)
                    continue
                uids[uid] = entry[4]
                batch.append(entry)
            delta = [p_json, *(body for uid, body in uids.items() if uid not in self._static_ids)]
            requests = [{"principal": {"type": "User", "id": subject}, "action": {"type": "Action", "id": action},
                         "resource": {"type": target.type, "id": target.id}, "context": context}
                        for _i, _key, action, target, _body in batch]
            try:
                entities = self._base.with_added_json_str((b"[" + b",".join(delta) + b"]").decode())
                answers: list[Decision] = [self._interpret(a) for a in cedarpy.is_authorized_batch(
                    requests, self.bundle.policy_set, entities)]
            except ValueError as exc:  # Cedar refused the request itself: nothing was decided, so deny
                log.error("policy evaluation failed: %s", exc)
                failed = Decision(False, EVALUATION_ERROR, (EVALUATION_ERROR,), "error", (str(exc),))
                answers = [failed] * len(batch)
            for (i, key, _action, _target, _body), decision in zip(batch, answers, strict=True):
                results[i] = decision
                if key is not None and decision.rule != EVALUATION_ERROR:
                    if len(self._cache) >= CACHE_ENTRIES:
                        self._cache.clear()
                    self._cache[key] = decision
            pending = later

    def _interpret(self, answer: cedarpy.AuthzResult) -> Decision:
        rules = tuple(sorted(answer.diagnostics.reasons))
        errors = tuple(answer.diagnostics.errors)
        if errors:
            failed = evaluation_error_policies(list(errors))
            risky = tuple(sorted(f or EVALUATION_ERROR for f in failed if f in self.bundle.forbids or not f))
            if risky:
                return Decision(False, risky[0], risky, "error", errors)
        if answer.allowed and rules:
            return Decision(True, rules[0], rules, "permitted", errors)
        if rules:
            return Decision(False, rules[0], rules, "forbidden", errors)
        return Decision(False, DEFAULT_DENY, (), "no-permit", errors)

    def _principal_json(self, principal: Principal) -> bytes:
        last = self._last_principal
        if last is not None and last[0] is principal:
            return last[1]
        try:
            cached = self._principals.get(principal)
        except TypeError:  # a claim value that cannot be hashed: build it every time
            return orjson.dumps(self.builder.principal(principal))
        if cached is None:
            if len(self._principals) >= 1024:
                self._principals.clear()
            cached = self._principals[principal] = orjson.dumps(self.builder.principal(principal))
        # Only a hashable principal gets here: it holds no mutable claim value that could change under it.
        self._last_principal = (principal, cached)
        return cached
