"""Shadowing and impersonation: one server's metadata reaching into another server's tools.

Three signals (threat T12):
- mentions: a description that names another server's tools or the other server itself. Compound
  names (`send_email`, `playwrightNavigate`) match on word boundaries; single plain words (`search`,
  `fetch`) only when quoted or followed by "tool", since they are also ordinary words.
- look-alike names: a name equal to another server's tool once case and separators are folded
  (`Get_Stock_Prices` vs `get_stock_prices`), one edit away from it, or another server's tool name with
  an "improved" qualifier around it (`playwright_navigate_enhanced`, `best_send_email`).
- names one edit away from the well-known servers' tools (integrity/data/known_tools.txt).
The first two need the catalog (`ScanContext`); the third is context-free and cached with the content.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from mcpward.integrity.model import Finding, ScanContext, Severity
from mcpward.integrity.names import fold, one_edit_away
from mcpward.integrity.normalise import escape, normalise
from mcpward.integrity.walk import item_strings

MIN_MENTION = 4  # shorter names ("ls", "get") are words, not references
MIN_EDIT = 6  # folded length below which one edit is too easy to hit by chance
# Qualifiers an impersonating tool puts around the real name.
_QUALIFIERS = re.compile(
    r"^(?:enhanced|advanced|improved|better|best|premium|pro|plus|super|ultra|ultimate|secure|safe|official|new|"
    r"optimi[sz]ed|fast|faster|smart|v\d+|\d+|real|true|fixed|updated|turbo|max)$"
)
# Plain words too common to be a reference even when quoted (tool names that are English verbs/nouns).
_GENERIC = frozenset({
    "search", "fetch", "query", "read", "write", "list", "get", "set", "run", "open", "close", "create", "delete",
    "update", "help", "echo", "ping", "test", "info", "status", "time", "date", "add", "sum", "find", "call",
    "send", "post", "click", "type", "navigate", "screenshot", "login", "logout", "upload", "download", "edit",
    "save", "load", "start", "stop", "next", "back", "home", "config", "settings", "memory", "think", "translate",
    "summarize", "calculate", "execute", "shell", "browser", "file", "files", "email", "notes", "tasks", "events",
})
_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")


def _compound(name: str) -> bool:
    """A name with separators, digits or camelCase: it cannot be an ordinary word in a sentence."""
    return bool(re.search(r"[_\-.0-9]|[a-z][A-Z]", name))


def _load_known() -> frozenset[str]:
    text = (resources.files("mcpward.integrity") / "data" / "known_tools.txt").read_text(encoding="utf-8")
    return frozenset(line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip())


@dataclass(slots=True)
class _Index:
    owner: dict[str, str] = field(default_factory=dict)  # lower-case tool name -> server
    folded: dict[str, tuple[str, str]] = field(default_factory=dict)  # fold(name) -> (name, server)
    near: dict[str, list[str]] = field(default_factory=dict)  # deletion neighbourhood -> folded names
    compound: set[str] = field(default_factory=set)  # lower-case names that count anywhere as a word
    plain: set[str] = field(default_factory=set)  # lower-case names that count only quoted or before "tool"
    servers: dict[str, str] = field(default_factory=dict)  # lower-case server name -> server

    def add(self, server: str, names: Iterable[str]) -> None:
        """Add one server's names (first come keeps a folded name: the order is the catalog's)."""
        if len(server) >= MIN_MENTION and server.lower() not in _GENERIC:
            self.servers[server.lower()] = server
            (self.compound if _compound(server) else self.plain).add(server.lower())
        new_folded = []
        for name in names:
            self.owner.setdefault(name.lower(), server)
            f = fold(name)
            if f not in self.folded:
                self.folded[f] = (name, server)
                new_folded.append(f)
            if len(name) < MIN_MENTION or name.lower() in _GENERIC:
                continue
            (self.compound if _compound(name) else self.plain).add(name.lower())
        for key, found in _neighbourhood(new_folded).items():
            self.near.setdefault(key, []).extend(found)


class CatalogIndex:
    """The catalog index kept up to date by a long-lived caller (the gateway's integrity guard), so a
    server that lists adds its names instead of every scan rebuilding the index of the whole catalog.

    Pass it as `ScanContext.index`, with `others` = `names` (every server, the scanned one included:
    findings never point at the scanned item's own server)."""

    def __init__(self) -> None:
        self.names: dict[str, frozenset[str]] = {}
        self.index = _Index()

    def update(self, server: str, names: frozenset[str]) -> None:
        old = self.names.get(server)
        if old == names:
            return
        self.names[server] = names
        if old is None:
            self.index.add(server, names)
            return
        self.index = _Index()  # a server's list changed: rebuild (rare; adding is the common case)
        for other, known in self.names.items():
            self.index.add(other, known)


class Shadowing:
    def __init__(self) -> None:
        self.known = _load_known()
        self._known_folded = {fold(n): n for n in self.known}
        self._known_near = _neighbourhood(self._known_folded)
        self._indexes: OrderedDict[tuple[int, int], _Index] = OrderedDict()
        self._lock = threading.Lock()

    # -- context-free: look-alikes of well-known tools

    def known_findings(self, name: str) -> list[Finding]:
        f = fold(name)
        if name in self.known or len(f) < MIN_EDIT:
            return []
        for other in _candidates(f, self._known_near):
            if one_edit_away(f, other):
                real = self._known_folded[other]
                sev, weight = (Severity.MEDIUM, 0.45) if _typo(f, other) else (Severity.LOW, 0.25)
                return [Finding("shadowing.known-tool-lookalike", "shadowing", sev, "name", 0,
                                len(name), escape(f"{name} ~ {real}"), weight=weight)]
        return []

    # -- with the catalog

    def _index(self, others: Mapping[str, frozenset[str]], key: tuple[int, int]) -> _Index:
        """The prepared catalog, shared by every scan against an equal catalog (key: catalog_key)."""
        with self._lock:
            hit = self._indexes.get(key)
            if hit is not None:
                self._indexes.move_to_end(key)
                return hit
        index = _Index()
        for server, names in others.items():
            index.add(server, names)
        with self._lock:
            self._indexes[key] = index
            if len(self._indexes) > 8:
                self._indexes.popitem(last=False)
        return index

    def context_findings(self, item: Mapping[str, Any], context: ScanContext, key: tuple[int, int],
                         words: frozenset[str]) -> tuple[Finding, ...]:
        """Look-alike names and mentions; `words` is the item's token set (see `words()`), so an item that
        names nothing of the catalog is decided by set operations without walking it again."""
        if len(context.others) <= (context.server in context.others):
            return ()
        index = context.index.index if isinstance(context.index, CatalogIndex) else self._index(context.others, key)
        out: list[Finding] = []
        name = item.get("name")
        if isinstance(name, str):
            out.extend(self._name_findings(name, index, context.server))
        if words.isdisjoint(index.compound) and words.isdisjoint(index.plain):
            return tuple(out)
        for where, text, is_name in item_strings("tools", item):
            if not is_name and where != "name":
                out.extend(self._mentions(where, text, index, context.server))
        return tuple(out)

    def text_findings(self, where: str, text: str, context: ScanContext, key: tuple[int, int]) -> tuple[Finding, ...]:
        if len(context.others) <= (context.server in context.others):
            return ()
        index = context.index.index if isinstance(context.index, CatalogIndex) else self._index(context.others, key)
        return tuple(self._mentions(where, text, index, context.server))

    def _name_findings(self, name: str, index: _Index, server: str) -> list[Finding]:
        f = fold(name)
        hit = index.folded.get(f)
        if hit is not None and hit[1] != server:
            real, owner = hit
            if real == name:
                # Same name on two servers: namespacing keeps them apart, but a reader may not.
                sev, weight, rule = (Severity.LOW, 0.2, "shadowing.duplicate-name")
            elif name in self.known:
                return []  # see below: the well-known exact name is not the impersonator
            else:
                sev, weight, rule = (Severity.HIGH, 0.7, "shadowing.folded-duplicate-name")
            return [Finding(rule, "shadowing", sev, "name", 0, len(name), escape(f"{name} ~ {owner}/{real}"),
                            weight=weight)]
        if name in self.known:
            # A lookalike pair is symmetric; when one side is a well-known tool's exact name, the other
            # side is the impersonator, whichever server listed first.
            return []
        if len(f) >= MIN_EDIT:
            for other in _candidates(f, index.near):
                if one_edit_away(f, other) and index.folded[other][1] != server:
                    real, owner = index.folded[other]
                    return [Finding("shadowing.one-edit-name", "shadowing", Severity.HIGH, "name", 0, len(name),
                                    escape(f"{name} ~ {owner}/{real}"), weight=0.7)]
        # Another server's name with an "enhanced"/"best"/"v2" qualifier around it.
        words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
        for i in range(len(words)):
            for j in range(i + 1, len(words) + 1):
                if (i, j) == (0, len(words)):
                    continue
                core = "".join(words[i:j])
                rest = words[:i] + words[j:]
                if len(core) >= MIN_EDIT and core in index.folded and all(_QUALIFIERS.match(w) for w in rest):
                    real, owner = index.folded[core]
                    if owner != server:
                        return [Finding("shadowing.qualified-name", "shadowing", Severity.HIGH, "name", 0, len(name),
                                        escape(f"{name} ~ {owner}/{real}"), weight=0.7)]
        return []

    def _mentions(self, where: str, raw: str, index: _Index, server: str) -> list[Finding]:
        """Other servers' tool and server names in the text: each word-like token is looked up (no big
        alternation to compile per catalog; cost is linear in the text whatever the catalog size)."""
        text = raw if raw.isascii() else normalise(raw, decode=False).text
        words = {w.rstrip(".-").lower() for w in _TOKEN.findall(text)}
        if words.isdisjoint(index.compound) and words.isdisjoint(index.plain):
            return []  # the common case, decided by two C-level set operations
        out: list[Finding] = []
        seen: set[str] = set()
        for m in _TOKEN.finditer(text):
            word = m.group().rstrip(".-").lower()
            if word in seen or (word not in index.compound and word not in index.plain):
                continue
            end = m.start() + len(word)
            if word not in index.compound and not _named(text, m.start(), end):
                continue
            owner = index.owner.get(word) or index.servers.get(word)
            if owner is None or owner == server:
                continue
            seen.add(word)
            is_server = word in index.servers and word not in index.owner
            rule = "shadowing.mentions-other-server" if is_server else "shadowing.mentions-other-tool"
            out.append(Finding(rule, "shadowing", Severity.LOW if is_server else Severity.MEDIUM, where, m.start(), end,
                               escape(f"{text[m.start():end]} ({owner})"), weight=0.3 if is_server else 0.55))
        return out


_TOKEN = re.compile(r"[A-Za-z0-9][\w.-]{2,80}")


def words(texts: Iterable[str]) -> frozenset[str]:
    """Lower-case word-like tokens of the texts: what a mention of another server's name could be."""
    joined = "\n".join(texts)
    if not joined.isascii():
        joined = normalise(joined, decode=False).text
    return frozenset(w.rstrip(".-") for w in _TOKEN.findall(joined.lower()))
_NAMED_AFTER = re.compile(r"\s+(?:tool|function|server|mcp)\b", re.I)


def _named(text: str, start: int, end: int) -> bool:
    """A plain word is used as a name: quoted ('fetch', `fetch`, "fetch") or followed by tool/server."""
    quoted = start > 0 and end < len(text) and text[start - 1] in "`'\"" and text[end] == text[start - 1]
    return quoted or bool(_NAMED_AFTER.match(text, end))


def _neighbourhood(names: Iterable[str]) -> dict[str, list[str]]:
    """Every name and every one-character deletion of it -> the names: two strings one edit apart always
    share a key, so the one-edit check looks at a handful of candidates, not the whole catalog."""
    near: dict[str, list[str]] = {}
    for f in names:
        near.setdefault(f, []).append(f)
        for i in range(len(f)):
            near.setdefault(f[:i] + f[i + 1:], []).append(f)
    return near


def _candidates(f: str, near: Mapping[str, list[str]]) -> set[str]:
    out: set[str] = set(near.get(f, ()))
    for i in range(len(f)):
        out.update(near.get(f[:i] + f[i + 1:], ()))
    return out


def _typo(a: str, b: str) -> bool:
    """The one edit is a typing slip (swapped neighbours, a doubled or dropped repeated letter) rather than
    a different word (`search_notes` vs `search_nodes` is a substitution: reported low)."""
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diffs) == 2
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    extra = long[i]
    return (i > 0 and long[i - 1] == extra) or (i + 1 < len(long) and long[i + 1] == extra)
