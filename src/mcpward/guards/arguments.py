"""The argument guard: what a tool is asked to do is checked before any upstream sees it.

For `tools/call` (and the string arguments of `prompts/get`, and the `argument.value` and
`context.arguments` of `completion/complete`, kinds by name), in this order:

1. shape and limits in one walk: nesting depth, items per array/object, bytes per string and per
   object key (UTF-8), then the serialised total; every string and key also passes the character
   screen (bidi, invisible, control). A string over `max_string` but within `max_content` is held
   until the kinds are known: only a content-kind parameter (a file or message body) may be that big;
2. the tool's own `inputSchema` (strict, cached, no remote `$ref`); a tool never listed has no
   schema and gets only the generic checks (the guard never goes looking for one);
3. each string by the kind of its parameter (operator override > schema format > name >
   description): URLs for SSRF, paths for traversal/sensitive/roots, commands and code for
   injection, hosts (`host`, format `hostname`/`ipv4`) as the URL authority `//value`; backtick runs
   for every kind (stricter outside text).

The schema's cost is bounded when it is compiled (`args.schema.too-complex`, see schema_check), and
per call as that cost times the number of values. A `resources/read` URI gets the string limit, the
character screen, and the path screen (`file:`) or URL screen (http/https).

Every refusal names a rule (`args.limit.string`, `args.url.non-public`, ...) and the path to the
value, never the value itself. Mode `log` (globally or per check family) audits and allows.
Anything unexpected inside the guard refuses the call (`args.internal`): fail closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson

from mcpward.audit import events as audit
from mcpward.gateway.config import GatewayConfig
from mcpward.guards.arg_types import Finding, Kind, where
from mcpward.guards.arguments_config import ArgumentSettings, parse
from mcpward.guards.base import Call, Guard, Refusal
from mcpward.guards.command_screen import CommandScreen
from mcpward.guards.param_kinds import kind_from_description, kind_from_name
from mcpward.guards.path_screen import PathScreen, url_scheme
from mcpward.guards.path_screen import decode as decode_path
from mcpward.guards.schema_check import CompiledTool, SchemaCache
from mcpward.guards.text_screen import BacktickScreen, clean_fast, screen_characters
from mcpward.guards.url_screen import MAX_HOSTS, Resolver, UrlScreen, static_resolver
from mcpward.protocol import exact
from mcpward.protocol.jsonrpc import JsonObj

log = logging.getLogger("mcpward.guards.arguments")
PathParts = tuple[str | int, ...]
Names = tuple[str, ...]
_NO_SCHEMA = CompiledTool()
# What this guard reads: a call's arguments, a prompt's, a completion's values and a read's URI.
_SCREENED = frozenset({"tools/call", "prompts/get", "completion/complete", "resources/read"})
_LOOSE: frozenset[Kind] = frozenset({"text", "content"})  # prose: a Markdown fence is fine


@dataclass(slots=True)
class _Plan:
    """One tool's per-call facts, fixed by its compiled schema and the settings."""

    compiled: CompiledTool  # the schema this plan was made for (a different one makes a new plan)
    kinds: dict[Names, Kind] | None  # parameter name path -> kind, as met (None: not remembered)
    overrides: dict[str, Kind] | None  # the operator's param_kinds for this tool
    described: dict[str, Kind] | None  # a prompt's kinds from its argument descriptions
    roots: tuple[str, ...]  # the server's declared roots
    allow_private: bool  # the server may be given private addresses


class _Findings:
    """Collects findings for one call: the first blocking one refuses, the rest are audited."""

    __slots__ = ("call", "guard")

    def __init__(self, guard: ArgumentGuard, call: Call) -> None:
        self.guard, self.call = guard, call

    def add(self, finding: Finding, path: PathParts | None, detail_first: bool = False) -> None:
        place = where(path) if path is not None else "arguments"
        message = finding.message if detail_first else f"{place} {finding.message}"
        if self.guard.settings.mode_for(finding.family) == "block":
            raise Refusal(finding.rule, message)
        flags = self.call.notes.setdefault("argument_flags", [])
        flags.append(finding.rule)
        audit.record("argument_flagged", rule=finding.rule, server=self.call.server, target=self.call.exposed,
                     where=place, mode="log")


class ArgumentGuard(Guard):
    name = "arguments"

    def __init__(self, settings: ArgumentSettings | None = None, resolver: Resolver | None = None) -> None:
        self.settings = s = settings or ArgumentSettings()
        if resolver is None and s.resolver_map is not None:
            resolver = static_resolver(s.resolver_map)
        self.urls = UrlScreen(resolver, schemes=s.url_schemes, allow_private=s.allow_private_urls,
                              resolve_timeout=s.resolve_timeout, cache_seconds=s.dns_cache_seconds)
        self.paths = PathScreen(s.sensitive_patterns)
        self.commands = CommandScreen(self.paths, shell_chaining=s.shell_chaining, urls=self.urls)
        self.backticks = BacktickScreen(max_run=s.max_backtick_run)
        self.schemas = SchemaCache(max_schema_bytes=s.max_schema_bytes, additional_properties=s.additional_properties,
                                   max_depth=s.max_depth)
        self._name_kinds: dict[str, Kind | None] = {}
        self._plans: dict[tuple[str, str, str], _Plan] = {}  # (method, server, tool) -> its plan

    async def on_request(self, call: Call) -> JsonObj | None:
        method = call.method
        if method not in _SCREENED:
            return None
        try:
            if method == "completion/complete":
                await self._completion(call)
            elif method == "resources/read":
                await self._resource_uri(call)
            else:
                await self._check(call, call.params.get("arguments"))
        except Refusal:
            raise
        except Exception:
            log.exception("argument guard failed on %s %s", call.method, call.exposed)
            raise Refusal("args.internal", "the argument guard could not check this call; refused") from None
        return None

    async def _completion(self, call: Call) -> None:
        """`completion/complete`: the value being typed and the arguments already chosen reach the
        upstream's completion handler as surely as a call's arguments reach the tool: the same screens
        (limits, characters, each value by the kind of its name; no schema: completion has none)."""
        argument = call.params.get("argument")
        if (not isinstance(argument, dict) or not isinstance(argument.get("name"), str)
                or not isinstance(argument.get("value"), str)):
            _Findings(self, call).add(Finding("args.schema.mismatch",
                                              "completion argument must be an object with a string name and value"),
                                      None, detail_first=True)
            return
        await self._check(call, {argument["name"]: argument["value"]})
        context = call.params.get("context")
        if context is not None:
            chosen = context.get("arguments") if isinstance(context, dict) else context
            if chosen is not None:
                await self._check(call, chosen)

    async def _resource_uri(self, call: Call) -> None:
        """`resources/read`: the URI gets the string limit and the character screen, and by its scheme
        the path screen (`file:`: traversal, sensitive paths, roots) or the URL screen (http/https: the
        upstream fetches it). Other schemes (`db://`, `postgres://`, `github://`) name the server's own
        resources: their meaning is the server's, so only limits and characters apply."""
        uri = call.params.get("uri")
        if not isinstance(uri, str):
            return  # the gateway refuses a read without a string uri before routing
        found = _Findings(self, call)
        s = self.settings
        size = len(uri.encode("utf-8", "surrogatepass"))
        finding: Finding | None = None
        if size > s.max_string:
            finding = Finding("args.limit.string", f"is {size} bytes; the limit is {s.max_string} (max_string)")
        else:
            finding = screen_characters(uri)
        if finding is None:
            scheme = url_scheme(uri)
            if scheme == "file":
                finding = self.paths.check(uri, s.roots_for(call.server))
            elif scheme in ("http", "https"):
                finding = await self.urls.check(uri, s.allow_private_for(call.server))
        if finding is not None:
            found.add(Finding(finding.rule, f"uri {finding.message}"), None, detail_first=True)

    async def _check(self, call: Call, arguments: Any) -> None:
        found = _Findings(self, call)
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            found.add(Finding("args.schema.mismatch", "must be an object"), ())
            return
        oversized: list[tuple[PathParts, Names, int]] = []
        flat = self._flat(arguments)
        strings, backticks = flat if flat is not None else self._walk(arguments, found, oversized)
        size = self._total(arguments, found)
        compiled = _NO_SCHEMA
        definition = call.definition
        schema = definition.get("inputSchema") if definition and call.method == "tools/call" else None
        if schema is not None:
            compiled = self.schemas.get(call.server or "", call.target or "", schema)
        if oversized:  # only content may exceed max_string (up to max_content): judged by kind now
            self._oversized(call, compiled, oversized, found)
        if schema is not None:
            finding = self.schemas.call_cost(compiled, arguments, size) or self.schemas.validate(compiled, arguments)
            if finding is not None:
                found.add(finding, None, detail_first=True)
        if not strings:
            return
        # Each string by the kind of its parameter (inline: one coroutine less on every call).
        plan = self._plan(call, compiled)
        known = plan.kinds
        for path, names, value in strings:
            if not value:
                continue
            kind = known.get(names) if known is not None else None
            if kind is None:
                kind = self._kind(names, compiled, plan.overrides, plan.described)
                if known is not None:
                    if len(known) > 1024:
                        known.clear()
                    known[names] = kind
            finding = self.backticks.screen(value, strict=kind not in _LOOSE) if backticks else None
            if finding is not None or kind in _LOOSE:
                pass
            elif kind == "path":
                scheme = url_scheme(value) if ":" in value else None  # no scheme without a colon
                if scheme in ("http", "https"):  # some file tools read URLs too: then it is a URL
                    finding = await self.urls.check(value, plan.allow_private)
                else:
                    if "%" in value and url_scheme(decoded := decode_path(value)) in ("http", "https"):
                        # `http%3a//169.254.169.254/`: a tool that decodes its path fetches this URL
                        finding = await self.urls.check(decoded, plan.allow_private)
                    finding = finding or self._path(value, scheme, plan.roots)
            elif kind == "url":
                finding = await self.urls.check(value, plan.allow_private)
            elif kind == "host":
                finding = await self._hosts(value, plan.allow_private)
            elif kind == "command":
                finding = self.commands.check_command(value)
            elif kind == "code":
                finding = self.commands.check_code(value)
            if finding is not None:
                found.add(finding, path)

    def _plan(self, call: Call, compiled: CompiledTool) -> _Plan:
        """What every call of this tool needs that only its definition and the settings decide: worked
        out at its first call and again whenever its schema is compiled anew (a changed definition,
        after a list_changed or a re-pin, is a different compiled schema, so its old plan is dropped).
        Prompts are planned per call: their kinds come from the definition passed with the call."""
        tool = (call.server or "", call.target or "")
        s = self.settings
        if call.method == "prompts/get":
            return _Plan(compiled, None, s.param_kinds.get(tool) if s.param_kinds else None,
                         _prompt_kinds(call.definition), s.roots_for(call.server), s.allow_private_for(call.server))
        key = (call.method, *tool)
        plan = self._plans.get(key)
        if plan is None or plan.compiled is not compiled:
            if len(self._plans) > 256:
                self._plans.clear()
            plan = self._plans[key] = _Plan(compiled, {}, s.param_kinds.get(tool) if s.param_kinds else None, None,
                                            s.roots_for(call.server), s.allow_private_for(call.server))
        return plan

    # ------------------------------------------------------------ limits + characters
    def _flat(self, arguments: dict[str, Any]) -> tuple[list[tuple[PathParts, Names, str]], bool] | None:
        """The common call, `{"name": "value", "n": 3}`: no nesting, every key and string well within
        `max_string`, no character to look at twice. Returns what `_walk` returns for it (it would
        find nothing), or None for anything else, which then takes the full walk from the start."""
        s = self.settings
        if len(arguments) > s.max_items or s.max_depth < 1:
            return None
        limit = s.max_string
        strings: list[tuple[PathParts, Names, str]] = []
        texts: list[str] = []
        for key, item in arguments.items():
            if type(key) is not str or len(key) * 4 > limit:
                return None
            texts.append(key)
            if isinstance(item, str):
                if len(item) * 4 > limit:
                    return None
                texts.append(item)
                child = (key,)
                strings.append((child, child, item))
            elif isinstance(item, (dict, list)):
                return None
        # A space between the parts: the test is per character, and a printable joiner lets a short
        # call take `clean_fast`'s one-loop path (a newline would send it to the byte table).
        joined = " ".join(texts)
        if not clean_fast(joined):  # "look closer": the full walk screens each string
            return None
        return strings, "`" in joined

    def _walk(self, arguments: dict[str, Any], found: _Findings,
              oversized: list[tuple[PathParts, Names, int]]) -> tuple[list[tuple[PathParts, Names, str]], bool]:
        """One pass (iterative: no recursion limit to hit): depth, items, string and key sizes, then
        characters. Returns the string values with their paths, and whether any has a backtick.
        Strings over `max_string` but within the content limit go to `oversized` (judged by kind later).

        This runs on every call, so the per-item work is inline (no helper call per value), and a
        value's name path is the same tuple as its path while no array lies on the way (no copy)."""
        s = self.settings
        max_depth, max_items, limit = s.max_depth, s.max_items, s.max_string
        strings: list[tuple[PathParts, Names, str]] = []
        keys: list[tuple[PathParts, str]] = []
        stack: list[tuple[Any, PathParts, Names, int]] = [(arguments, (), (), 1)]
        while stack:
            value, path, names, depth = stack.pop()
            is_dict = isinstance(value, dict)
            if depth > max_depth:
                # Raises in block mode. In log mode the walk goes on: what lies deeper must still meet
                # the checks that do block (a `limit = "log"` must not switch off URL screening below).
                found.add(Finding("args.limit.depth",
                                  f"is nested {depth} levels deep; the limit is {max_depth} (max_depth)"), path)
            if len(value) > max_items:
                what = "members" if is_dict else "items"
                found.add(Finding("args.limit.items",
                                  f"has {len(value)} {what}; the limit is {max_items} (max_items)"), path)
            if is_dict:
                same = names is path  # no array index on the way: the name path is the path
                for key, item in value.items():
                    key = str(key)
                    keys.append((path, key))
                    if len(key) * 4 > limit:
                        self._size(key, path, found, key=True)
                    text = isinstance(item, str)
                    if text or isinstance(item, (dict, list)):
                        child = (*path, key)
                        # With no index on the way the path is all names: the same tuple serves as both.
                        named: Names = child if same else (*names, key)  # type: ignore[assignment]
                        if not text:
                            stack.append((item, child, named, depth + 1))
                        else:
                            if len(item) * 4 > limit:
                                self._string(item, child, named, found, oversized)
                            strings.append((child, named, item))
            else:
                for index, item in enumerate(value):
                    if isinstance(item, str):
                        child = (*path, index)
                        if len(item) * 4 > limit:
                            self._string(item, child, names, found, oversized)
                        strings.append((child, names, item))
                    elif isinstance(item, (dict, list)):
                        stack.append((item, (*path, index), names, depth + 1))
        return strings, self._characters(keys, strings, found)

    def _string(self, item: str, path: PathParts, names: Names, found: _Findings,
                oversized: list[tuple[PathParts, Names, int]]) -> None:
        """A string that may be over `max_string` (only then can its UTF-8 size exceed the limit)."""
        size = self._size(item, path, found, key=False)
        if size > self.settings.max_string:
            oversized.append((path, names, size))

    def _size(self, value: str, path: PathParts, found: _Findings, key: bool) -> int:
        """The UTF-8 size; refuses here what is over every limit that could apply (keys: max_string;
        values: the content limit too). A value between the two is returned for the kind check."""
        s = self.settings
        size = len(value.encode("utf-8", "surrogatepass"))
        if key and size > s.max_string:
            found.add(Finding("args.limit.string",
                              f"has a key of {size} bytes; the limit is {s.max_string} (max_string)"), path)
        elif not key and size > s.content_limit:
            found.add(Finding("args.limit.string",
                              f"is {size} bytes; the limit is {s.max_string} (max_string), "
                              f"{s.content_limit} for content parameters (max_content)"), path)
            return 0  # already reported (log mode goes on): not judged again by kind
        return size

    @staticmethod
    def _characters(keys: list[tuple[PathParts, str]], strings: list[tuple[PathParts, Names, str]],
                    found: _Findings) -> bool:
        """Character checks; returns whether any string has a backtick (else that screen is skipped)."""
        # One scan over everything; only when it finds something are the strings looked at one by one.
        # Joining with newlines is safe: a newline is allowed, and it only makes joiner checks stricter.
        joined = "\n".join([k for _, k in keys] + [v for _, _, v in strings])
        backticks = "`" in joined
        if screen_characters(joined) is None:
            return backticks
        for path, key in keys:
            finding = screen_characters(key)
            if finding is not None:
                found.add(Finding(finding.rule, "has a key that " + finding.message), path)
        for path, _, value in strings:
            finding = screen_characters(value)
            if finding is not None:
                found.add(finding, path)
        return backticks

    def _total(self, arguments: dict[str, Any], found: _Findings) -> int:
        """The serialised size (also bounds how many values the schema check may meet)."""
        try:
            size = len(exact.dumps(arguments))
        except (TypeError, orjson.JSONEncodeError):
            # Not encodable as JSON the way it will be sent (e.g. integers beyond 64 bits).
            found.add(Finding("args.schema.mismatch", "cannot be serialised as JSON"), None, detail_first=False)
            return 1 << 40  # (log mode) no size known: the schema check counts the values instead
        if size > self.settings.max_total:
            found.add(Finding("args.limit.total",
                              f"arguments are {size} bytes serialised; the limit is {self.settings.max_total} "
                              "(max_total)"), None, detail_first=True)
        return size

    # ------------------------------------------------------------ kinds
    def _kind(self, names: Names, compiled: CompiledTool, overrides: dict[str, Kind] | None,
              described: dict[str, Kind] | None) -> Kind:
        if not names:
            return "text"
        if overrides:
            chosen = overrides.get(".".join(names)) or overrides.get(names[-1])
            if chosen is not None:
                return chosen
        kind = compiled.kinds.get(names)
        if kind is not None:
            return kind
        if described and names[-1] in described:
            return described[names[-1]]
        name = names[-1]
        if name not in self._name_kinds:
            if len(self._name_kinds) > 10_000:
                self._name_kinds.clear()
            self._name_kinds[name] = kind_from_name(name)
        return self._name_kinds[name] or "text"

    def _oversized(self, call: Call, compiled: CompiledTool, oversized: list[tuple[PathParts, Names, int]],
                   found: _Findings) -> None:
        tool = (call.server or "", call.target or "")
        overrides = self.settings.param_kinds.get(tool) if self.settings.param_kinds else None
        described = _prompt_kinds(call.definition) if call.method == "prompts/get" else None
        for path, names, size in oversized:
            if self._kind(names, compiled, overrides, described) != "content":
                found.add(Finding("args.limit.string",
                                  f"is {size} bytes; the limit is {self.settings.max_string} (max_string)"), path)

    async def _hosts(self, value: str, allow_private: bool) -> Finding | None:
        """A host-kind value: one host or a list of them (`a.example.com,b.example.com`), each screened."""
        parts = host_parts(value)
        if len(parts) > MAX_HOSTS:
            return Finding("args.url.malformed", f"lists more than {MAX_HOSTS} hosts")
        # Concurrently: each may need a DNS lookup, and the first finding (in the value's order) is reported.
        found = await asyncio.gather(*(self.urls.check(_as_authority(part), allow_private) for part in parts))
        return next((finding for finding in found if finding is not None), None)

    def _path(self, value: str, scheme: str | None, roots: tuple[str, ...]) -> Finding | None:
        """A path-kind value that is not an http(s) URL (the caller sends those to the URL screen)."""
        if scheme is not None and scheme != "file":
            return Finding("args.url.scheme", f"is a {scheme}:// URL or stream wrapper, not a path")
        return self.paths.check(value, roots)


_HOST_SEPARATORS = re.compile(r"[,\s]+")
_PREFIX_LENGTH = re.compile(r"/[0-9]{1,3}$")


def host_parts(value: str) -> list[str]:
    """The hosts a host parameter names: a list split on commas and whitespace, each without a wildcard
    label (`*.example.com` is screened as `example.com`) or a network prefix length (`10.0.0.0/8`, the
    network's own address is screened), and never empty. URLs in the list stay URLs."""
    parts = []
    for part in _HOST_SEPARATORS.split(value):
        if "://" not in part:
            part = _PREFIX_LENGTH.sub("", part.removeprefix("*."))
        if part:
            parts.append(part)
    return parts


def _as_authority(value: str) -> str:
    """A host parameter's value (`169.254.169.254`, `db.example.com:5432`, `::1`) as the authority
    `//value`, which the URL screen checks strictly (every IP spelling, local names, DNS). A value that
    is a URL after all is screened as that URL."""
    value = value.strip()
    if "://" in value or value.startswith(("//", "\\")):
        return value
    if value.count(":") > 1 and not value.startswith("["):  # a bare IPv6 address
        value = f"[{value}]"
    return "//" + value


def _prompt_kinds(definition: JsonObj | None) -> dict[str, Kind] | None:
    """Prompt arguments have a name and a description but no schema."""
    listed = (definition or {}).get("arguments")
    if not isinstance(listed, list):
        return None
    out: dict[str, Kind] = {}
    for arg in listed:
        if isinstance(arg, dict) and isinstance(arg.get("name"), str):
            description = arg.get("description")
            kind = kind_from_name(arg["name"]) or (
                kind_from_description(description) if isinstance(description, str) else None)
            if kind is not None:
                out[arg["name"]] = kind
    return out


def from_config(cfg: GatewayConfig, resolver: Resolver | None = None) -> ArgumentGuard | None:
    """The guard as `[guards.arguments]` configures it (on by default), or None when disabled."""
    settings = parse(cfg)
    return None if settings is None else ArgumentGuard(settings, resolver)
