"""What kind of value a parameter holds: url, path, command, code, content or text.

The kind decides which screen runs on a string (a URL is resolved, a path is checked for
traversal, a command is parsed like a shell would). Sources, strongest first:

1. the operator: `[servers.<s>.tools.<t>] params = { name = "url" }`;
2. the schema's `format` (`uri`, `iri`, `uri-reference`, `iri-reference`, `url` -> url; `hostname`,
   `idn-hostname`, `ipv4`, `ipv6` -> host), and `contentMediaType`/`contentEncoding` (-> content: the
   value is a document or file body);
3. the parameter's name, by its last word (`file_url` is a URL, `url_file` a path; the head
   noun of an English compound comes last): `repo_path`, `filePath`, `sourceUrls`, `cmd`;
4. the schema's `description`, by the first strong phrase in it ("The URL of the file" -> url).

A host (`host`, `hostname`, `server_ip`, format `hostname`/`ipv4`, "Host or IP address to connect
to") is a network target without a scheme: it gets the URL screen as the authority `//value`, so a
metadata address in any spelling, a local name or a name resolving inward is refused. `host` is not an
operator-settable kind (an operator names such a parameter `url`).

Content (a file or message body: `content`, `body`, `file_content`, `markdown`, ...) is screened like
text but gets the larger `max_content` string limit: writing a 20 KB file is ordinary work, a 20 KB
URL or command is not. Everything else is text, which still gets the generic checks (limits,
Unicode, backticks).
Names are split on `_`, `-`, `.`, spaces and camelCase.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from mcpward.guards.arg_types import Kind

_SPLIT = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# Whole names (separators removed, lower case) that are compounds of one kind.
_WHOLE: dict[str, Kind] = {
    "url": "url", "uri": "url", "iri": "url", "href": "url", "urls": "url", "uris": "url",
    "filepath": "path", "filename": "path", "filenames": "path", "pathname": "path", "dirname": "path",
    "workdir": "path", "cwd": "path", "dir": "path", "commandline": "command", "cmdline": "command",
    "cmd": "command", "shellcommand": "command", "sourcecode": "code", "sql": "code", "sqlquery": "code",
    "ip": "host", "ips": "host", "ipaddress": "host", "ipaddresses": "host", "ipaddr": "host", "ipv4": "host",
    "ipv6": "host", "ipv4address": "host", "ipv6address": "host", "hostaddress": "host",
}
# Last words of a name.
_LAST: dict[str, Kind] = {
    "url": "url", "urls": "url", "uri": "url", "uris": "url", "iri": "url", "href": "url", "link": "url",
    "links": "url", "endpoint": "url", "webhook": "url", "website": "url",
    "path": "path", "paths": "path", "file": "path", "files": "path", "filename": "path", "filepath": "path",
    "dir": "path", "dirs": "path", "directory": "path", "directories": "path", "folder": "path",
    "folders": "path", "cwd": "path",
    "command": "command", "commands": "command", "cmd": "command", "cmdline": "command", "shell": "command",
    "code": "code", "script": "code", "snippet": "code", "expression": "code", "expr": "code", "sql": "code",
    "eval": "code", "program": "code",
    # Bodies of files, documents and messages. Not `text` or `data`: they name every kind of string, and
    # the larger limit must stay with values that are plainly a document.
    "content": "content", "contents": "content", "body": "content",
    "markdown": "content", "html": "content", "patch": "content", "diff": "content",
    # Not `address` (a street or e-mail address far more often) nor `server` (usually a name).
    "host": "host", "hosts": "host", "hostname": "host", "hostnames": "host", "ip": "host", "ips": "host",
}
# `country_code` or `status_code` name an identifier, not source code.
_CODE_QUALIFIERS = frozenset({
    "country", "postal", "zip", "post", "language", "lang", "locale", "currency", "station", "status", "error",
    "exit", "response", "http", "color", "colour", "region", "area", "iso", "promo", "coupon", "discount",
    "verification", "auth", "access", "invite", "referral", "tracking", "product", "airport", "city", "state",
    "sort", "swift", "bank", "unit", "activation", "confirmation", "qr", "bar", "time", "zone", "otp", "item",
    "sku", "short", "ticker", "symbol", "market", "exchange", "stock", "airline", "flight", "phone", "dial",
    "voucher", "reset", "pin", "security", "one", "device", "user", "client", "grant",
})
_FORMATS: dict[str, Kind] = {
    "uri": "url", "iri": "url", "uri-reference": "url", "iri-reference": "url", "url": "url",
    "hostname": "host", "idn-hostname": "host", "ipv4": "host", "ipv6": "host",
}
# Strong phrases only: "Text to write to the file" must not make `content` a path.
_DESCRIPTION = re.compile(
    r"(?P<url>\b(?:urls?|uris?|web ?page address|web address|http\(s\)? address|endpoint)\b)"
    r"|(?P<path>\b(?:file ?paths?|paths? (?:to|of)|(?:absolute|relative|local) paths?|directory|folder|file ?names?)\b"
    r"|^\s*(?:the |a )?paths?\b)"
    r"|(?P<host>\b(?:host ?names?|hosts? (?:name |or ip|to connect)|ip (?:address|addr)(?:es)?"
    r"|ip or host(?:name)?)\b)"
    r"|(?P<command>\b(?:shell commands?|command lines?|commands? to (?:run|execute)|bash|powershell)\b)"
    r"|(?P<code>\b(?:source code|(?:python|javascript|js|ruby|php|sql) (?:code|script|query|statement)s?"
    r"|code to (?:run|execute|evaluate)|scripts? to (?:run|execute)|expression to evaluate|sql)\b)",
    re.IGNORECASE,
)
# Content phrases count only when no url/path/command/code phrase is present anywhere: a body
# "to write to the file at the given URL" must stay a URL.
_CONTENT_DESCRIPTION = re.compile(
    r"\b(?:(?:file |document |page )?contents? (?:to (?:write|save|append|upload)|of the (?:file|document|page))"
    r"|(?:text|markdown|html) to (?:write|save|append|insert)|body of the)\b",
    re.IGNORECASE,
)


def words(name: str) -> list[str]:
    return [w.lower() for w in _SPLIT.findall(name)]


def kind_from_name(name: str) -> Kind | None:
    whole = re.sub(r"[^a-z0-9]", "", name.lower())
    if whole in _WHOLE:
        return _WHOLE[whole]
    parts = words(name)
    if not parts:
        return None
    if "sql" in parts:
        return "code"
    kind = _LAST.get(parts[-1])
    if kind == "code" and parts[-1] == "code" and len(parts) > 1 and parts[-2] in _CODE_QUALIFIERS:
        return None
    return kind


def kind_from_description(description: str) -> Kind | None:
    match = _DESCRIPTION.search(description[:500])
    if match is None or match.lastgroup is None:
        return "content" if _CONTENT_DESCRIPTION.search(description[:500]) else None
    kind: Kind = match.lastgroup  # type: ignore[assignment]
    return kind


def kind_from_schema(prop: dict[str, Any], name: str) -> Kind | None:
    """Format first, then the name, then the description of one property schema."""
    fmt = prop.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    if "contentMediaType" in prop or "contentEncoding" in prop:  # the schema says: an encoded document
        return "content"
    by_name = kind_from_name(name)
    if by_name is not None:
        return by_name
    items = prop.get("items")
    if isinstance(items, dict) and isinstance(items.get("format"), str) and items["format"] in _FORMATS:
        return _FORMATS[items["format"]]
    description = prop.get("description")
    if isinstance(description, str):
        return kind_from_description(description)
    return None


def schema_kinds(schema: Any, limit: int = 2000) -> dict[tuple[str, ...], Kind]:
    """Kinds of the named properties of a tool's inputSchema, keyed by their property-name path
    (array levels are skipped: `files[].path` is `("files", "path")`). Computed once per schema."""
    out: dict[tuple[str, ...], Kind] = {}
    for key, prop in _properties(schema, (), 0, [limit]):
        kind = kind_from_schema(prop, key[-1])
        if kind is not None:
            out.setdefault(key, kind)
    return out


def _properties(schema: Any, prefix: tuple[str, ...], depth: int,
                budget: list[int]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    # Bounded walk: depth and node budget, so a hostile schema cannot make this expensive.
    # `$ref`s are not followed (local definitions are rare in tool schemas; names still classify).
    if not isinstance(schema, dict) or depth > 12 or budget[0] <= 0:
        return
    budget[0] -= 1
    props = schema.get("properties")
    if isinstance(props, dict):
        for name, prop in props.items():
            if isinstance(prop, dict):
                yield (*prefix, name), prop
                yield from _properties(prop, (*prefix, name), depth + 1, budget)
    for key in ("items", "additionalItems", "contains"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            yield from _properties(sub, prefix, depth + 1, budget)
    for key in ("prefixItems", "allOf", "anyOf", "oneOf"):
        subs = schema.get(key)
        if isinstance(subs, list):
            for sub in subs:
                yield from _properties(sub, prefix, depth + 1, budget)
