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
from itertools import repeat
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


_COMPOUND = re.compile(r"[_\-.0-9]|[a-z][A-Z]")


def _compound(name: str) -> bool:
    """A name with separators, digits or camelCase: it cannot be an ordinary word in a sentence."""
    return bool(_COMPOUND.search(name))


def _load_known() -> frozenset[str]:
    text = (resources.files("mcpward.integrity") / "data" / "known_tools.txt").read_text(encoding="utf-8")
    return frozenset(line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip())


@dataclass(slots=True)
class _Index:
    owner: dict[str, str] = field(default_factory=dict)  # lower-case tool name -> server
    folded: dict[str, tuple[str, str]] = field(default_factory=dict)  # fold(name) -> (name, server)
    look: Lookalikes = field(default_factory=lambda: Lookalikes())  # one-edit pairs among the folded names
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
            lower = name.lower()
            self.owner.setdefault(lower, server)
            f = fold(name)
            if f not in self.folded:
                self.folded[f] = (name, server)
                new_folded.append(f)
            if len(name) < MIN_MENTION or lower in _GENERIC:
                continue
            (self.compound if _compound(name) else self.plain).add(lower)
        self.look.add(new_folded)


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
        self._known_look = Lookalikes()
        self._known_look.add(self._known_folded)
        self._indexes: OrderedDict[tuple[int, int], _Index] = OrderedDict()
        self._lock = threading.Lock()

    # -- context-free: look-alikes of well-known tools

    def known_findings(self, name: str) -> list[Finding]:
        f = fold(name)
        if name in self.known or len(f) < MIN_EDIT:
            return []
        near = self._known_look.neighbours(f)
        if not near:
            return []
        other = near[0]
        real = self._known_folded[other]
        sev, weight = (Severity.MEDIUM, 0.45) if _typo(f, other) else (Severity.LOW, 0.25)
        return [Finding("shadowing.known-tool-lookalike", "shadowing", sev, "name", 0,
                        len(name), escape(f"{name} ~ {real}"), weight=weight)]

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
            for other in index.look.neighbours(f):
                if index.folded[other][1] != server:
                    real, owner = index.folded[other]
                    return [Finding("shadowing.one-edit-name", "shadowing", Severity.HIGH, "name", 0, len(name),
                                    escape(f"{name} ~ {owner}/{real}"), weight=0.7)]
        # Another server's name with an "enhanced"/"best"/"v2" qualifier around it.
        words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
        if len(words) < 2 or not (_QUALIFIERS.match(words[0]) or _QUALIFIERS.match(words[-1])):
            # Every split leaves a qualifier at the start or at the end: without one, nothing to find.
            return []
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
    """Lower-case word-like tokens of the texts (a superset of them), each read as `_mentions` reads it:
    what a mention of another server's name could be. An item none of whose words is a catalog name
    mentions none, so its fields are not read again."""
    return frozenset().union(*map(field_words, texts))


def field_words(text: str) -> frozenset[str]:
    """`words` of one field: ASCII as it is, anything else normalised (as `_mentions` reads it)."""
    return text_words(text if text.isascii() else normalise(text, decode=False).text)


def text_words(text: str) -> frozenset[str]:
    """The words of one text as it is (normalised already, or plain ASCII).

    For ASCII, by string methods rather than the regex: every maximal run of token characters holds one
    `_TOKEN` (the run from its first letter or digit) when it is at most 81 characters long, so the run's
    stripped form is that token; runs too short to be a token are kept too, which only makes the set a
    superset (it is a prefilter: `_mentions` reads the text again with the regex). A longer run, which
    the regex cuts into several tokens, sends the text to the regex."""
    if text.isascii():
        runs = text.encode("ascii").lower().translate(_SEPARATORS).decode("ascii").split()
        if not runs or max(map(len, runs)) <= _TOKEN_MAX:
            return frozenset(map(str.rstrip, map(str.lstrip, runs, repeat("_.-")), repeat(".-")))
    return frozenset(map(str.rstrip, _TOKEN.findall(text.lower()), repeat(".-")))


_TOKEN_MAX = 81  # the longest match of _TOKEN
# Bytes that are not token characters (ASCII letters, digits, "_", ".", "-") become spaces.
_SEPARATORS = bytes(c if c < 128 and (chr(c).isalnum() or chr(c) in "_.-") else 32 for c in range(256))

_NAMED_AFTER = re.compile(r"\s+(?:tool|function|server|mcp)\b", re.I)


def _named(text: str, start: int, end: int) -> bool:
    """A plain word is used as a name: quoted ('fetch', `fetch`, "fetch") or followed by tool/server."""
    quoted = start > 0 and end < len(text) and text[start - 1] in "`'\"" and text[end] == text[start - 1]
    return quoted or bool(_NAMED_AFTER.match(text, end))


MIN_INDEXED = MIN_EDIT - 1  # a name one edit away from a checked name is at least this long
BIG_GROUP = 48  # bucket size above which a bucket is searched through its own deletion index
_Bucket = str  # kind letter, length (as a character), what the names filed there share


def _bucket_keys(f: str) -> tuple[_Bucket, ...]:
    """The buckets a name is filed under (`_FILED` gives its role in each): two names one edit apart
    always share a bucket in which one of them is filed in the role the other looks for (`_WANTED`).

    Equal lengths: a substitution leaves the characters at even positions equal or those at odd positions
    equal (E, O); a swap of two neighbours leaves the multiset of characters equal (M). Lengths n and
    n + 1, m = n // 2: a deletion from the longer name at p >= m keeps the shorter's first m characters,
    one at p < m its last n - m; so a name is filed under its own first half and second half (P, S, as the
    shorter) and under the first m and last n - m characters of the name one shorter (as the longer).
    Seven buckets a name instead of one per character as a deletion neighbourhood needs, and names that
    differ in two places (copies of a tool with a numbered suffix) share none of the equal-length ones.
    Keys are strings (a kind letter, the length as a character, the shared part): not tracked by the
    garbage collector, which a tuple per key kept busy."""
    n = len(f)
    h, m = n // 2, (n - 1) // 2
    size, shorter = chr(n), chr(n - 1) if n else ""
    # M is an order-free sum of character hashes (summed in C, cheaper than sorting): equal multisets
    # always give equal sums, and a rare unequal pair with the same sum only costs one comparison.
    return ("E" + size + f[0::2], "O" + size + f[1::2], "M" + size + str(sum(map(hash, f))),
            "P" + size + f[:h], "S" + size + f[h:], "P" + shorter + f[:m], "S" + shorter + f[m + 1 :])


_FILED = (0, 0, 0, 0, 0, 1, 1)  # role of a name in each of its buckets (1: as the longer of a pair)
_WANTED = (0, 0, 0, 1, 1, 0, 0)  # which role's names a name pairs with in each of its buckets


def _deletions(f: str) -> list[str]:
    """The name and each one-character deletion of it: two names one edit apart share one of these."""
    return [f, *[f[:i] + f[i + 1 :] for i in range(len(f))]]


class Lookalikes:
    """Pairs of names one edit apart (`names.one_edit_away`), kept as names are added.

    Each name is filed under seven buckets (`_bucket_keys`) and compared with the names already there that
    could pair with it, so after `add` every indexed name's neighbours are known and looking them up is
    one dictionary read. A bucket that grows past BIG_GROUP gets a deletion index of its own, so a hostile
    list of look-alike names costs what a deletion neighbourhood costs, never a comparison of every pair."""

    def __init__(self) -> None:
        # Per role, bucket -> its names: a bare string while it holds one (most do; a string costs the
        # garbage collector nothing), a list from the second name on.
        self._buckets: tuple[dict[_Bucket, str | list[str]], dict[_Bucket, str | list[str]]] = ({}, {})
        self._big: dict[tuple[int, _Bucket], dict[str, list[str]]] = {}
        self._indexed: set[str] = set()
        self._mates: dict[str, set[str]] = {}

    def add(self, names: Iterable[str]) -> None:
        for f in names:
            if len(f) < MIN_INDEXED or f in self._indexed:
                continue
            keys = _bucket_keys(f)
            for other in self._candidates(f, keys):
                if one_edit_away(f, other):
                    self._mates.setdefault(f, set()).add(other)
                    self._mates.setdefault(other, set()).add(f)
            self._indexed.add(f)
            for key, role in zip(keys, _FILED, strict=True):
                buckets = self._buckets[role]
                held = buckets.get(key)
                if held is None:
                    buckets[key] = f
                    continue
                if isinstance(held, str):
                    held = buckets[key] = [held]
                held.append(f)
                big = self._big.get((role, key)) if self._big else None
                if big is not None:
                    for d in _deletions(f):
                        big.setdefault(d, []).append(f)
                elif len(held) > BIG_GROUP:
                    big = self._big[(role, key)] = {}
                    for g in held:
                        for d in _deletions(g):
                            big.setdefault(d, []).append(g)

    def _candidates(self, f: str, keys: tuple[_Bucket, ...]) -> list[str]:
        """Indexed names that share a bucket with `f` in the role that pairs with f's (equal-length
        buckets: the same role; P and S: the other one); in a big bucket, those sharing a deletion."""
        out: list[str] = []
        deletions: list[str] | None = None
        for key, wanted in zip(keys, _WANTED, strict=True):
            held = self._buckets[wanted].get(key)
            if held is None:
                continue
            big = self._big.get((wanted, key)) if self._big else None
            if big is None:
                if isinstance(held, str):
                    out.append(held)
                else:
                    out.extend(held)
                continue
            if deletions is None:
                deletions = _deletions(f)
            for d in deletions:
                out.extend(big.get(d, ()))
        return [g for g in set(out) if g != f] if out else out

    def neighbours(self, f: str) -> list[str]:
        """Indexed names one edit away from `f`, sorted (so a report names the same one every time)."""
        if f in self._indexed:
            return sorted(self._mates.get(f, ()))
        return sorted(g for g in self._candidates(f, _bucket_keys(f)) if one_edit_away(f, g))


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
