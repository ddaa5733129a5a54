"""In-process Python guards from installed packages: entry point group `mcpward.guards`.

A package declares `[project.entry-points."mcpward.guards"] myguard = "pkg.module:factory"`; the
config enables it with `[[interceptors]] kind = "python", name = "myguard", options = {...}`. The
factory gets the options and returns a `Guard`. Installing a package never enables anything:
only the config does.

The plugin's hooks run behind the same scope as exec/http interceptors (methods, tool globs,
phases), under a timeout, and a crash or a wrong return type is a failure that `on_error`
decides (default: refuse). A refusal always names the interceptor in its rule id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from mcpward.guards.base import Call, Guard, Listed, Refusal
from mcpward.guards.interceptors import Answer, HookFailure, Scope, checked_params
from mcpward.protocol.jsonrpc import JsonObj, ProtocolError

log = logging.getLogger("mcpward.interceptors")
GROUP = "mcpward.guards"
HOOKS = ("on_request", "on_result", "on_error", "on_list")
T = TypeVar("T")


class PluginError(Exception):
    """A plugin that cannot be found, loaded or built: a startup error, never a per-call one."""


def find(name: str) -> EntryPoint:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        installed = sorted({ep.name for ep in entry_points(group=GROUP)})
        raise PluginError(f"no installed package provides the guard {name!r} (entry point group {GROUP}); "
                          f"installed: {', '.join(installed) or 'none'}")
    targets = sorted({ep.value for ep in found})
    if len(targets) > 1:
        # Two packages claim the name: picking one would depend on sys.path order.
        raise PluginError(f"the guard {name!r} is provided more than once ({', '.join(targets)}); uninstall one")
    return found[0]


def build(scope: Scope, options: dict[str, Any]) -> Guard:
    entry = find(scope.label)
    try:
        factory = entry.load()
    except Exception as exc:  # an ImportError, or anything the module raises at import
        raise PluginError(f"cannot load {entry.value}: {type(exc).__name__}: {exc}") from None
    if not callable(factory):
        raise PluginError(f"{entry.value} is not callable (expected a factory taking the options)")
    try:
        guard = factory(dict(options))
    except Exception as exc:  # the factory's own check of its options
        raise PluginError(f"{entry.value} refused its options: {type(exc).__name__}: {exc}") from None
    if not isinstance(guard, Guard):
        raise PluginError(f"{entry.value} returned {type(guard).__name__}, not a mcpward.guards.base.Guard")
    return wrap(guard, scope)


def wrap(inner: Guard, scope: Scope) -> Guard:
    """The plugin behind its scope. Only the hooks the plugin has (and the scope wants) exist on
    the wrapper, so the chain still skips the rest at no cost."""
    wanted = {"on_request": scope.before, "on_result": scope.after, "on_error": scope.after, "on_list": True}
    hooks = {hook: getattr(PluginGuard, f"_{hook}") for hook in HOOKS if wanted[hook] and _overrides(inner, hook)}
    cls = type(f"PluginGuard_{scope.label}", (PluginGuard,), hooks)
    guard: Guard = cls(inner, scope)
    return guard


def _overrides(guard: Guard, hook: str) -> bool:
    return getattr(type(guard), hook) is not getattr(Guard, hook)


class PluginGuard(Guard):
    def __init__(self, inner: Guard, scope: Scope) -> None:
        self.inner, self.scope = inner, scope
        self.name = scope.rule

    async def _on_request(self, call: Call) -> JsonObj | None:
        if not self.scope.applies(call):
            return None
        params = await self._run(call, "before", lambda: self.inner.on_request(call), dict)
        if params is None:
            return None
        try:
            return checked_params(call, params)  # a plugin may not retarget a call the policy allowed
        except HookFailure as exc:
            self.scope.fail(call, "before", str(exc))
            return None

    async def _on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        if not self.scope.applies(call):
            return None
        return await self._run(call, "after", lambda: self.inner.on_result(call, result), dict)

    async def _on_error(self, call: Call, error: ProtocolError) -> ProtocolError | None:
        if not self.scope.applies(call):
            return None
        return await self._run(call, "after", lambda: self.inner.on_error(call, error), ProtocolError)

    async def _on_list(self, call: Call, kind: str, items: list[Listed]) -> list[Listed] | None:
        if not self.scope.lists(kind):
            return None
        return await self._run(call, "listing", lambda: self.inner.on_list(call, kind, items), list)

    async def _run(self, call: Call, phase: str, hook: Callable[[], Awaitable[Any]], expected: type[T]) -> T | None:
        try:
            async with asyncio.timeout(self.scope.timeout):
                value = await hook()
        except Refusal as refusal:
            raise self._named(refusal) from None
        except Answer:
            raise  # the plugin answered the call itself
        except TimeoutError:
            self.scope.fail(call, phase, f"gave no answer within {self.scope.timeout:g}s")
            return None
        except Exception as exc:  # a plugin bug must not become a traceback for the client
            log.debug("interceptor %s raised", self.scope.rule, exc_info=True)
            self.scope.fail(call, phase, f"raised {type(exc).__name__}: {exc}")
            return None
        if value is not None and not isinstance(value, expected):
            self.scope.fail(call, phase, f"returned {type(value).__name__}, expected {expected.__name__} or None")
            return None
        return value

    def _named(self, refusal: Refusal) -> Refusal:
        """A plugin's refusal names the interceptor: `interceptor.<name>.<plugin's own rule>`."""
        rule = self.scope.rule
        if refusal.rule == rule or refusal.rule.startswith(rule + "."):
            return refusal
        return Refusal(f"{rule}.{refusal.rule}", refusal.message, as_tool_error=refusal.as_tool_error)


Factory = Callable[[dict[str, Any]], Guard]
__all__ = ["GROUP", "Factory", "PluginError", "PluginGuard", "build", "find", "wrap"]
