"""`[[interceptors]]`: operator hooks around calls, as `exec` programs, `http` endpoints or Python plugins.

Modelled on Docker's MCP Gateway `--interceptor when:type:arg` (see docs/interceptors.md): a
`before` hook sees the request and may let it through, rewrite its params, answer it itself
(the upstream is never called) or refuse it; an `after` hook sees the result and may replace
it or refuse it. Unlike Docker, every hook has a timeout, answers are validated strictly, and
any failure refuses the call unless the operator set `on_error = "allow"` for that hook.

The chain places interceptors after the policy and output guards and before the argument
guard, so params an interceptor rewrites are still screened, and what an interceptor returns
is still redacted before the client sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import re
import shutil
import signal
import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpcore
import httpx
import orjson

from mcpward.audit.events import record
from mcpward.gateway.config import (
    ConfigError,
    GatewayConfig,
    Resolver,
    TableReader,
    check_url,
    is_address_literal,
    is_loopback_host,
    resolution_problem,
    system_resolver,
)
from mcpward.guards.base import Answer, Call, Guard, Refusal
from mcpward.guards.interceptor_credentials import CredentialFailure, Credentials, read_credentials
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.transport.stdio_link import minimal_env, plain_child_setup
from mcpward.transport.vetted_dial import PinningUnavailable, check_pinning, pinned_transport

log = logging.getLogger("mcpward.interceptors")

MAX_ANSWER = 4 * 1024 * 1024  # stdout / response body; more is a failure, not a truncation
MAX_STDERR = 16 * 1024  # kept for the log; the rest is drained and dropped
MAX_REASON = 500
KILL_GRACE = 2.0  # after SIGKILL to the group, how long to wait for the pipes to close
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CALL_METHODS = ("tools/call", "prompts/get", "resources/read", "completion/complete")
LIST_METHODS = {"tools": "tools/list", "prompts": "prompts/list", "resources": "resources/list",
                "resourceTemplates": "resources/templates/list"}
# The params key that chose the target: the policy decided on it, so no hook may change it.
ROUTING_KEY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri", "completion/complete": "ref"}
# What a result must carry to be a result of that method (a hook's replacement is checked).
RESULT_KEY = {"tools/call": "content", "prompts/get": "messages", "resources/read": "contents",
              "completion/complete": "completion"}
COMMON_KEYS = {"kind", "name", "when", "timeout", "on_error", "methods", "tools"}
KIND_KEYS = {"exec": COMMON_KEYS | {"command", "format", "env"},
             "http": COMMON_KEYS | {"url", "format", "allow_http", "allow_private", "headers"},
             "python": COMMON_KEYS | {"options"}}
Phase = Literal["before", "after"]


class HookFailure(Exception):
    """An interceptor gave no usable answer; its `on_error` policy decides what happens."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Which calls one interceptor sees, and what its failures do. Shared by every kind."""

    label: str  # the config name, or the index in [[interceptors]]
    before: bool
    after: bool
    timeout: float
    fail_open: bool
    methods: frozenset[str] | None  # None: every method
    tools: re.Pattern[str] | None  # None: every tool / prompt / URI

    @property
    def rule(self) -> str:
        return f"interceptor.{self.label}"

    def applies(self, call: Call) -> bool:
        if self.methods is not None and call.method not in self.methods:
            return False
        return self.tools is None or self.tools.match(call.exposed or "") is not None

    def lists(self, kind: str) -> bool:
        return self.methods is None or LIST_METHODS.get(kind, "") in self.methods

    def fail(self, call: Call, phase: str, problem: str) -> None:
        """Log the precise problem; refuse with a generic message unless this hook fails open."""
        log.error("interceptor %s failed %s %s %s/%s: %s", self.rule, phase, call.method, call.server,
                  call.target, problem)
        if not self.fail_open:
            raise Refusal(self.rule, f"the interceptor failed ({phase} the call); the gateway log has the details")
        record("interceptor.failed_open", rule=self.rule, phase=phase, method=call.method, server=call.server,
               tool=call.exposed)


# ------------------------------------------------------------------------------------ runners
class Runner(Protocol):
    async def run(self, payload: bytes) -> bytes:
        """Send the payload, return the raw answer (empty = no answer); raise HookFailure."""


class ExecRunner:
    """One process per call: JSON on stdin, JSON on stdout, no shell, a minimal environment."""

    def __init__(self, argv: list[str], cwd: Path, label: str, timeout: float,
                 env: Credentials | None = None) -> None:
        self.argv, self.cwd, self.timeout = argv, cwd, timeout
        self.rule = f"interceptor.{label}"
        self.env = minimal_env({"MCPWARD_INTERCEPTOR": label})
        self.credentials = env

    async def run(self, payload: bytes) -> bytes:
        # The configured `env` (secret values included) goes in the environment, never in argv: only
        # the process's own user and root can read /proc/<pid>/environ.
        env = self.env
        if self.credentials is not None:
            try:
                async with asyncio.timeout(self.timeout):  # a secret store that hangs counts against the hook
                    env = {**self.env, **await _resolved(self.credentials)}
            except TimeoutError:
                raise HookFailure(f"its env was not resolved within {self.timeout:g}s") from None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, cwd=self.cwd,
                start_new_session=True,  # its own process group, so a timeout ends its children too
                preexec_fn=plain_child_setup)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise HookFailure(f"cannot start {self.argv[0]}: {reason}") from None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.create_task(_feed(proc.stdin, payload))
        errors = asyncio.create_task(_drain(proc.stderr, MAX_STDERR))
        done = False
        try:
            async with asyncio.timeout(self.timeout):
                out = await _read_capped(proc.stdout, MAX_ANSWER)
                if out is None:
                    raise HookFailure(f"wrote more than {MAX_ANSWER} bytes to stdout")
                code = await proc.wait()
                stderr = await errors
                done = True
        except TimeoutError:
            raise HookFailure(f"gave no answer within {self.timeout:g}s; its process group was killed") from None
        finally:
            if not done:
                # Also when the hook itself has exited: a child it left behind may hold our pipes.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                # asyncio's wait() also waits for the pipes to close: bounded, in case something that
                # left the process group (setsid) still holds them.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), KILL_GRACE)
            for task in (feeder, errors):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if stderr:
            log.info("%s stderr: %s", self.rule, stderr.decode("utf-8", "replace").strip())
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise HookFailure(how)
        return out


async def _resolved(credentials: Credentials) -> dict[str, str]:
    try:
        return await credentials.values()
    except CredentialFailure as exc:
        raise HookFailure(str(exc)) from None


async def _feed(stream: asyncio.StreamWriter, payload: bytes) -> None:
    try:
        stream.write(payload)
        await stream.drain()
        stream.close()
    except (ConnectionError, RuntimeError):
        pass  # a hook that answers without reading its input is fine


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes | None:
    """Everything up to EOF, or None once more than `cap` bytes came."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(stream: asyncio.StreamReader, keep: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept)


class SharedClient:
    """The httpx clients of a chain's http interceptors, made on first use (inside the loop): one per
    address rule (allow_private or not) and resolver, so production has at most two.

    Each dials only addresses it resolved and vetted at connect time (transport/vetted_dial.py): the
    check in `HttpRunner._vet` is the early, clear error, not the only guard against DNS rebinding.
    `network` is for tests: the backend that really dials (e.g. one that records instead).
    """

    def __init__(self, network: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._clients: dict[tuple[bool, Resolver], httpx.AsyncClient] = {}
        self._network = network

    def get(self, allow_private: bool = False, resolver: Resolver = system_resolver) -> httpx.AsyncClient:
        client = self._clients.get((allow_private, resolver))
        if client is None:
            # A hook at a loopback URL is allowed without opting in (check_url's loopback_ok): such a host
            # may reach loopback addresses, and nothing else that is not public.
            transport = pinned_transport(allow_private=allow_private, resolver=resolver, loopback_ok=True,
                                         inner=self._network)
            # No proxies from the environment (hook traffic must go where the config says) and no redirects.
            client = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
            self._clients[(allow_private, resolver)] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


class HttpRunner:
    """POST the payload as JSON; a 2xx answer's body is the hook's answer."""

    def __init__(self, url: str, timeout: float, client: SharedClient, vet_names: bool,
                 resolver: Resolver = system_resolver, headers: Credentials | None = None) -> None:
        self.url, self.timeout, self.client, self.resolver = url, timeout, client, resolver
        self.credentials = headers
        self.allow_private = not vet_names
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        # Literal addresses were checked at load; a name is checked on every call before connecting
        # (early and clearly), and again by the client's transport at connect time.
        self.vet = vet_names and not is_address_literal(self.host) and not is_loopback_host(self.host)

    async def run(self, payload: bytes) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                if self.vet:
                    await self._vet()
                return await self._post(payload)
        except TimeoutError:
            raise HookFailure(f"gave no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise HookFailure(f"POST {self.url} failed: {type(exc).__name__}: {exc}") from None

    async def _vet(self) -> None:
        problem = await resolution_problem(self.host, self.port, self.resolver)
        if problem is not None:
            raise HookFailure(problem)

    async def _post(self, payload: bytes) -> bytes:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.credentials is not None:
            headers.update(await _resolved(self.credentials))
        client = self.client.get(self.allow_private, self.resolver)
        async with client.stream("POST", self.url, content=payload, headers=headers,
                                 timeout=self.timeout) as response:
            if response.is_redirect:
                raise HookFailure(f"answered HTTP {response.status_code} (a redirect; redirects are not followed)")
            if not response.is_success:
                raise HookFailure(f"answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_ANSWER:
                    raise HookFailure(f"answered more than {MAX_ANSWER} bytes")
            return bytes(body)


# ------------------------------------------------------------------------------- the guard
class ExternalInterceptor(Guard):
    """An exec or http hook. Subclasses pick the phases, so the chain skips the hooks not wanted."""

    name = "interceptor"

    def __init__(self, scope: Scope, runner: Runner, docker_format: bool) -> None:
        self.scope, self.runner, self.docker = scope, runner, docker_format
        self.name = scope.rule

    async def _before(self, call: Call) -> JsonObj | None:
        if not self.scope.applies(call):
            return None
        payload = {"method": call.method, "params": call.params} if self.docker else _payload(call, "before")
        try:
            answer = await self._ask(payload)
            if answer is None:
                return None
            if self.docker:  # Docker: any answer is a CallToolResult that replaces the call
                raise Answer(self._audit(call, "before", "answer", _checked_result(call.method, answer)))
            return self._interpret_before(call, answer)
        except HookFailure as exc:
            self.scope.fail(call, "before", str(exc))
            return None

    async def _after(self, call: Call, result: JsonObj) -> JsonObj | None:
        if not self.scope.applies(call):
            return None
        payload = result if self.docker else {**_payload(call, "after"), "result": result}
        try:
            answer = await self._ask(payload)
            if answer is None:
                return None
            if self.docker:
                return self._audit(call, "after", "result", _checked_result(call.method, answer))
            verb, value = _one_of(answer, ("result", "deny"))
            if verb == "deny":
                raise Refusal(self.scope.rule, _reason(value))
            if verb == "result":
                return self._audit(call, "after", "result", _checked_result(call.method, value))
            return None
        except HookFailure as exc:
            self.scope.fail(call, "after", str(exc))
            return None

    def _interpret_before(self, call: Call, answer: JsonObj) -> JsonObj | None:
        verb, value = _one_of(answer, ("params", "result", "deny"))
        if verb == "deny":
            raise Refusal(self.scope.rule, _reason(value))
        if verb == "result":
            raise Answer(self._audit(call, "before", "answer", _checked_result(call.method, value)))
        if verb == "params":
            return self._audit(call, "before", "params", checked_params(call, value))
        return None

    async def _ask(self, payload: JsonObj) -> JsonObj | None:
        try:
            body = orjson.dumps(payload, default=str)
        except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
            raise HookFailure(f"cannot encode the payload: {exc}") from None
        raw = await self.runner.run(body)
        if not raw.strip():
            return None  # no answer: carry on, as in Docker's gateway
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HookFailure(f"answered invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HookFailure(f"answered a JSON {type(value).__name__}, expected an object")
        return value

    def _audit(self, call: Call, phase: str, action: str, value: JsonObj) -> JsonObj:
        record("interceptor", rule=self.scope.rule, phase=phase, action=action, method=call.method,
               server=call.server, tool=call.exposed)
        return value


class BeforeInterceptor(ExternalInterceptor):
    async def on_request(self, call: Call) -> JsonObj | None:
        return await self._before(call)


class AfterInterceptor(ExternalInterceptor):
    async def on_result(self, call: Call, result: JsonObj) -> JsonObj | None:
        return await self._after(call, result)


class AroundInterceptor(BeforeInterceptor, AfterInterceptor):
    pass


def _payload(call: Call, phase: Phase) -> JsonObj:
    ctx = call.ctx
    info = ctx.client_info or {}
    principal = ctx.principal
    return {
        "phase": phase, "method": call.method, "server": call.server, "tool": call.exposed,
        "target": call.target, "params": call.params,
        "principal": {"subject": principal.subject, "kind": principal.kind, "groups": list(principal.groups),
                      "claims": dict(principal.claims)},
        "client": {"name": info.get("name"), "version": info.get("version"), "transport": ctx.transport,
                   "protocolVersion": ctx.protocol_version},
    }


def _one_of(answer: JsonObj, verbs: tuple[str, ...]) -> tuple[str | None, Any]:
    """The single verb of an answer; an unknown key fails, so a misspelt `deny` never lets a call pass."""
    unknown = sorted(set(answer) - set(verbs))
    if unknown:
        raise HookFailure(f"answered unknown key(s) {', '.join(unknown)}; expected one of {', '.join(verbs)}")
    if len(answer) > 1:
        raise HookFailure(f"answered {' and '.join(sorted(answer))}; give at most one of them")
    if not answer:
        return None, None
    ((verb, value),) = answer.items()
    return verb, value


def _reason(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HookFailure("answered deny without a reason string")
    # The reason reaches the client: one line, printable, bounded.
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in value)
    return " ".join(text.split())[:MAX_REASON]


def checked_params(call: Call, value: Any) -> JsonObj:
    if not isinstance(value, dict):
        raise HookFailure("answered params that are not an object")
    key = ROUTING_KEY.get(call.method)
    if key is None:  # e.g. resources/subscribe, seen by a hook with methods = ["*"]: nothing to replace
        raise HookFailure(f"answered params for {call.method}, whose params an interceptor may not replace")
    if key not in value:
        return {**value, key: call.params.get(key)} if key in call.params else value
    if value[key] != call.params.get(key):
        raise HookFailure(f"tried to change params.{key}, the call's target (the policy decided on it)")
    return value


def _checked_result(method: str, value: Any) -> JsonObj:
    key = RESULT_KEY.get(method)
    if key is None:  # a method whose result a hook cannot stand in for (resources/subscribe...)
        raise HookFailure(f"answered a result for {method}, which an interceptor may not answer itself")
    if not isinstance(value, dict) or key not in value:
        raise HookFailure(f"answered a result that is not a {method} result (an object with {key!r})")
    if method == "tools/call" and not (isinstance(value["content"], list)
                                       and all(isinstance(b, dict) for b in value["content"])):
        raise HookFailure("answered a tools/call result whose content is not an array of blocks")
    return value


# ------------------------------------------------------------------------------- configuration
def from_config(cfg: GatewayConfig) -> list[Guard]:
    """One guard per `[[interceptors]]` table, in config order; ConfigError on any bad key."""
    from mcpward.gateway.assembly import secret_resolver  # imported here: the assembly builds this chain
    from mcpward.guards import plugins  # imported here: plugins reuses Scope from this module

    guards: list[Guard] = []
    labels: set[str] = set()
    client = SharedClient()
    resolve = secret_resolver(cfg)  # resolves nothing until a hook with a reference first runs
    for i, table in enumerate(cfg.interceptors):
        r = TableReader(cfg.source, f"interceptors[{i}]", table)
        kind = r.get("kind", str, None)
        if kind not in KIND_KEYS:
            raise r.fail("kind", f"must be 'exec', 'http' or 'python', got {kind!r}")
        for key in table:
            if key not in KIND_KEYS[kind] and any(key in keys for keys in KIND_KEYS.values()):
                raise r.fail(key, f"does not apply to kind = {kind!r}")
        scope = _scope(r, i, kind)
        if scope.label in labels:
            raise r.fail("name", f"another interceptor is already named {scope.label!r} (rule ids must be unique)")
        labels.add(scope.label)
        if kind == "python":
            options = r.get("options", dict, {})
            r.reject_unknown()
            try:
                guards.append(plugins.build(scope, options))
            except plugins.PluginError as exc:
                raise r.fail("name", str(exc)) from None
            continue
        docker = _format(r, scope)
        runner: Runner
        if kind == "exec":
            env = read_credentials(r, "env", resolve)
            runner = ExecRunner(_command(r, cfg.base_dir), cfg.base_dir, scope.label, scope.timeout, env)
        else:
            url, allow_private = _url(r)
            try:
                check_pinning()
            except PinningUnavailable as exc:
                raise r.fail("url", str(exc)) from None
            runner = HttpRunner(url, scope.timeout, client, vet_names=not allow_private,
                                headers=read_credentials(r, "headers", resolve))
        r.reject_unknown()
        cls = {(True, False): BeforeInterceptor, (False, True): AfterInterceptor}.get((scope.before, scope.after),
                                                                                     AroundInterceptor)
        guards.append(cls(scope, runner, docker))
    return guards


def _scope(r: TableReader, index: int, kind: str) -> Scope:
    name = r.get("name", str, None)
    if kind == "python" and name is None:
        raise r.fail("name", "a python interceptor needs the name of its entry point (group mcpward.guards)")
    if name is not None and not NAME.match(name):
        raise r.fail("name", "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    when = r.get("when", str, "both" if kind == "python" else None)
    if when is None:
        raise r.fail("when", "is required: 'before', 'after' or 'both'")
    if when not in ("before", "after", "both"):
        raise r.fail("when", f"must be 'before', 'after' or 'both', got {when!r}")
    on_error = r.get("on_error", str, "deny")
    if on_error not in ("deny", "allow"):
        raise r.fail("on_error", f"must be 'deny' (fail closed) or 'allow' (fail open), got {on_error!r}")
    allowed = (*CALL_METHODS, *LIST_METHODS.values()) if kind == "python" else CALL_METHODS
    methods = r.strings("methods") if "methods" in r.table else ["tools/call"]
    if not methods:
        raise r.fail("methods", "must not be empty (use [\"*\"] for every method)")
    for j, method in enumerate(methods):
        if method != "*" and method not in allowed:
            raise r.fail(f"methods[{j}]", f"unknown method {method!r}; expected '*' or one of {', '.join(allowed)}")
    globs = r.strings("tools")
    return Scope(
        label=name if name is not None else str(index),
        before=when in ("before", "both"), after=when in ("after", "both"),
        timeout=r.number("timeout", 5.0, 0.05, 600), fail_open=on_error == "allow",
        methods=None if "*" in methods else frozenset(methods),
        tools=re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None,
    )


def _format(r: TableReader, scope: Scope) -> bool:
    fmt: str = r.get("format", str, "mcpward")
    if fmt not in ("mcpward", "docker"):
        raise r.fail("format", f"must be 'mcpward' or 'docker', got {fmt!r}")
    if fmt == "docker" and scope.methods != frozenset({"tools/call"}):
        raise r.fail("format", "format = 'docker' only applies to tools/call (Docker's interceptors see nothing else)")
    return fmt == "docker"


def _command(r: TableReader, base_dir: Path) -> list[str]:
    argv = r.strings("command")
    if not argv or not argv[0]:
        raise r.fail("command", "needs the program and its arguments, e.g. [\"/usr/bin/python3\", \"hook.py\"]")
    program = argv[0]
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else base_dir / program
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise r.fail("command[0]", f"{path} is not an executable file")
        return [str(path), *argv[1:]]
    found = shutil.which(program)
    if found is None:
        raise r.fail("command[0]", f"{program!r} is not on PATH")
    return [found, *argv[1:]]


def _url(r: TableReader) -> tuple[str, bool]:
    url = r.get("url", str, None)
    if url is None:
        raise r.fail("url", "an http interceptor needs a url")
    allow_private = r.get("allow_private", bool, False)
    check_url(r, url, allow_http=r.get("allow_http", bool, False), allow_private=allow_private, loopback_ok=True)
    return url, allow_private


__all__ = ["Answer", "ConfigError", "HookFailure", "Scope", "SharedClient", "from_config"]
