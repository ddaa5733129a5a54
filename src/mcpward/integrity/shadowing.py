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
from mcpward.integrity.names import ASCII_SEPARATORS, MIN_INDEXED, Lookalikes, fold
from mcpward.integrity.normalise import escape, normalise
from mcpward.integrity.walk import extra_strings, item_strings

MIN_MENTION = 4  # shorter names ("ls", "get") are words, not references
MIN_EDIT = 6  # folded length below which one edit is too easy to hit by chance
# Qualifiers an impersonating tool puts around the real name: these words, a number, or v and a number.
_QUALIFIER_WORDS = frozenset({
    "enhanced", "advanced", "improved", "better", "best", "premium", "pro", "plus", "super", "ultra", "ultimate",
    "secure", "safe", "official", "new", "optimised", "optimized", "fast", "faster", "smart", "real", "true",
    "fixed", "updated", "turbo", "max",
})


def _qualifier(word: str) -> bool:
    """A set lookup and digit tests, not a regex per word (this runs for every name of every scan);
    isdecimal() is exactly what \\d matches in a str pattern (category Nd)."""
    return word in _QUALIFIER_WORDS or word.isdecimal() or (word[:1] == "v" and word[1:].isdecimal())


# Plain words too common to be a reference even when quoted (tool names that are English verbs/nouns).
_GENERIC = frozenset({
    "search", "fetch", "query", "read", "write", "list", "get", "set", "run", "open", "close", "create", "delete",
    "update", "help", "echo", "ping", "test", "info", "status", "time", "date", "add", "sum", "find", "call",
    "send", "post", "click", "type", "navigate", "screenshot", "login", "logout", "upload", "download", "edit",
    "save", "load", "start", "stop", "next", "back", "home", "config", "settings", "memory", "think", "translate",
    "summarize", "calculate", "execute", "shell", "browser", "file", "files", "email", "notes", "tasks", "events",
})
_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")


# ASCII separators of _WORD_SPLIT (`[_\-.\s]`, \s holding \t \n \v \f \r and \x1c-\x1f) made spaces.
_SPLIT_TO_SPACE = bytes.maketrans(b"_-.\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", b" " * 12)


def _name_words(name: str) -> list[str]:
    """`_WORD_SPLIT` pieces of a name, lower-cased, empty ones dropped. An ASCII name without capitals has
    no camel-case boundary, so its pieces are what `split()` leaves once the separators are spaces
    (string methods; the regex, with its look-behind tried at every position, cost more than the rest
    of the name checks)."""
    if name.isascii():
        spaced = name.encode("ascii").translate(_SPLIT_TO_SPACE).decode("ascii")
        if spaced.islower() or spaced.lower() == spaced:
            return spaced.split()
    return [w.lower() for w in _WORD_SPLIT.split(name) if w]


_COMPOUND = re.compile(r"[_\-.0-9]|[a-z][A-Z]")


def _compound(name: str) -> bool:
    """A name with separators, digits or camelCase: it cannot be an ordinary word in a sentence.
    (ASCII by a byte table first: this runs for every name of every catalog.)"""
    if name.isascii():
        if name.encode("ascii").translate(None, _NOT_COMPOUND_BYTES):
            return True  # a separator or a digit
        if name.lower() == name or name.upper() == name:
            return False  # no lower-case letter before a capital without both
    return bool(_COMPOUND.search(name))


# Every byte but "_", "-", "." and digits (what `translate` deletes, leaving those that make a compound).
_NOT_COMPOUND_BYTES = bytes(b for b in range(256) if bytes([b]) not in b"_-.0123456789")


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
    mentionable: set[str] = field(default_factory=set)  # compound | plain: one lookup for the prefilter

    def add(self, server: str, names: Iterable[str]) -> None:
        """Add one server's names. A folded name is kept by its least (server, name): which of two
        colliding names counts as the original must not depend on the order servers listed in (the
        gateway's start lists them concurrently) or on a set's iteration order (the hash seed)."""
        if len(server) >= MIN_MENTION and server.lower() not in _GENERIC:
            self.servers[server.lower()] = server
            (self.compound if _compound(server) else self.plain).add(server.lower())
            self.mentionable.add(server.lower())
        new_folded = []
        owner, folded, mentionable = self.owner, self.folded, self.mentionable
        compound, plain = self.compound, self.plain
        for name in sorted(names):
            lower = name.lower()
            if server < owner.setdefault(lower, server):
                owner[lower] = server
            # fold() written out for ASCII names (every name of every catalog passes here): separators
            # removed from the lower-case name, which is the same as lower-casing once they are removed
            f = (lower.encode("ascii").translate(None, ASCII_SEPARATORS).decode("ascii") if name.isascii()
                 else fold(name))
            held = folded.get(f)
            if held is None:
                folded[f] = (name, server)
                new_folded.append(f)
            elif (server, name) < (held[1], held[0]):
                folded[f] = (name, server)
            if len(name) < MIN_MENTION or lower in _GENERIC:
                continue
            (compound if _compound(name) else plain).add(lower)
            mentionable.add(lower)
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

    def merge(self, server: str, names: frozenset[str]) -> None:
        """Add names to what `server` is known to offer, keeping the ones it listed before.

        A server lists one page at a time and nothing says which page is the first, so one page must
        not replace the others: its tools on page 1 would drop out of the checks when page 2 is listed.
        A name a server stops offering stays until the gateway restarts; that only makes the checks
        see more (never fewer) names, and an index that only grows is updated, not rebuilt."""
        old = self.names.get(server, frozenset())
        added = names - old
        if not added and server in self.names:
            return
        self.names[server] = old | added
        self.index.add(server, added)


class Shadowing:
    def __init__(self) -> None:
        self.known = _load_known()
        self._known_folded = {fold(n): n for n in self.known}
        self._known_look = Lookalikes()
        self._known_look.add(self._known_folded)
        self._known_affixes = affix_keys(f for f in self._known_folded if len(f) >= MIN_INDEXED)
        self._indexes: OrderedDict[tuple[int, int], _Index] = OrderedDict()
        self._lock = threading.Lock()

    # -- context-free: look-alikes of well-known tools

    def known_findings(self, name: str) -> list[Finding]:
        f = fold(name)
        if name in self.known or len(f) < MIN_EDIT or not may_pair(f, self._known_affixes):
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

    def _catalog(self, context: ScanContext, key: tuple[int, int]) -> _Index:
        """The index the context's checks read: the caller's CatalogIndex, else the one prepared for this
        catalog (remembered on the context, which is a snapshot, so a list of items looks it up once)."""
        if isinstance(context.index, CatalogIndex):
            return context.index.index
        prepared = context.prepared
        if prepared is not None and prepared[0] is self:
            index: _Index = prepared[1]
            return index
        index = self._index(context.others, key)
        object.__setattr__(context, "prepared", (self, index))  # a cache on a frozen value, as `key` is
        return index

    def context_findings(self, item: Mapping[str, Any], context: ScanContext, key: tuple[int, int],
                         words: tuple[tuple[str, ...], ...]) -> tuple[Finding, ...]:
        """Look-alike names and mentions; `words` is the item's token set in parts (see `words()`; parts
        are not merged, schemas repeat), so an item that names nothing of the catalog is decided by set
        operations without walking it again."""
        if len(context.others) <= (context.server in context.others):
            return ()
        index = self._catalog(context, key)
        out: list[Finding] = []
        name = item.get("name")
        if isinstance(name, str):
            out.extend(self._name_findings(name, index, context.server, context.others))
        mentionable = index.mentionable
        if all(map(mentionable.isdisjoint, words)):
            return tuple(out)
        for where, text, is_name in (*item_strings("tools", item), *extra_strings(item, None)):
            if not is_name and where != "name":
                out.extend(self._mentions(where, text, index, context.server))
        return tuple(out)

    def text_findings(self, where: str, text: str, context: ScanContext, key: tuple[int, int]) -> tuple[Finding, ...]:
        if len(context.others) <= (context.server in context.others):
            return ()
        return tuple(self._mentions(where, text, self._catalog(context, key), context.server))

    def _name_findings(self, name: str, index: _Index, server: str,
                       others: Mapping[str, frozenset[str]]) -> list[Finding]:
        f = fold(name)
        hit = index.folded.get(f)
        if hit is not None and hit[1] != server:
            real, owner = hit
            if real != name:
                # The folded name is kept by one spelling; another server may offer this exact one too.
                exact = min((s for s, names in others.items() if s != server and name in names), default=None)
                if exact is not None:
                    real, owner = name, exact
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
        words = _name_words(name)
        if len(words) < 2:
            return []
        # Every split leaves a qualifier at the start or at the end: without one, nothing to find.
        # (`_qualifier` of both ends written out: this runs for every scanned name.)
        first, last = words[0], words[-1]
        if not (first in _QUALIFIER_WORDS or last in _QUALIFIER_WORDS or first.isdecimal() or last.isdecimal()
                or (first[:1] == "v" and first[1:].isdecimal()) or (last[:1] == "v" and last[1:].isdecimal())):
            return []
        for i in range(len(words)):
            for j in range(i + 1, len(words) + 1):
                if (i, j) == (0, len(words)):
                    continue
                core = "".join(words[i:j])
                rest = words[:i] + words[j:]
                if len(core) >= MIN_EDIT and core in index.folded and all(map(_qualifier, rest)):
                    real, owner = index.folded[core]
                    if owner != server:
                        return [Finding("shadowing.qualified-name", "shadowing", Severity.HIGH, "name", 0, len(name),
                                        escape(f"{name} ~ {owner}/{real}"), weight=0.7)]
        return []

    def _mentions(self, where: str, raw: str, index: _Index, server: str) -> list[Finding]:
        """Other servers' tool and server names in the text: each word-like token is looked up (no big
        alternation to compile per catalog; cost is linear in the text whatever the catalog size)."""
        text = raw if raw.isascii() else normalise(raw, decode=False).text
        words = set(_tails(tuple(w.rstrip(".-").lower() for w in _TOKEN.findall(text))))
        if words.isdisjoint(index.mentionable):
            return []  # the common case, decided by two C-level set operations
        out: list[Finding] = []
        seen: set[str] = set()
        for m in _TOKEN.finditer(text):
            whole = m.group().rstrip(".-").lower()
            start, word = m.start(), whole
            if word not in index.compound and word not in index.plain:
                # The name a model sees may be qualified: `mail__send_email` (the gateway's separator),
                # `mail.send_email`. The part after a separator counts when it is another server's tool.
                qualified = _qualified(whole, index)
                if qualified is None:
                    continue
                start, word = start + qualified, whole[qualified:]
            elif word not in index.compound and not _named(text, start, start + len(word)):
                continue
            if word in seen:
                continue
            end = start + len(word)
            owner = index.owner.get(word) or index.servers.get(word)
            if owner is None or owner == server:
                continue
            seen.add(word)
            is_server = word in index.servers and word not in index.owner
            rule = "shadowing.mentions-other-server" if is_server else "shadowing.mentions-other-tool"
            out.append(Finding(rule, "shadowing", Severity.LOW if is_server else Severity.MEDIUM, where, start, end,
                               escape(f"{text[m.start():end]} ({owner})"), weight=0.3 if is_server else 0.55))
        return out


_SEPARATOR_RUN = re.compile(r"[_.-]+")


def _qualified(word: str, index: _Index) -> int | None:
    """Where a tool name starts inside a qualified token, or None: after a run of separators (any
    gateway separator is 1-4 of `_.-` here; the default is `__`), a compound tool name of the catalog
    counts as it would alone, and a plain one ("search") only behind a server's name (`web.search`)."""
    for sep in _SEPARATOR_RUN.finditer(word):
        tail = word[sep.end():]
        if len(sep.group()) > 4 or not tail:
            continue
        if tail in index.compound or (tail in index.plain and word[:sep.start()] in index.servers):
            return sep.end()
    return None


def _tails(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """Every part after a separator run of every token (`mail__send_email` -> `send_email`, `email`):
    the prefilter's words must hold what `_qualified` may look up."""
    extra = [token[sep.end():] for token in tokens if "_" in token or "." in token or "-" in token
             for sep in _SEPARATOR_RUN.finditer(token)]
    return tokens + tuple(extra) if extra else tokens


_TOKEN = re.compile(r"[A-Za-z0-9][\w.-]{2,80}")
# What follows each separator run inside a token, to the token's end: `_tails` of a text of tokens and spaces.
_TAIL = re.compile(r"[_.-]+(?=(\S*))")


def words(texts: Iterable[str]) -> frozenset[str]:
    """Lower-case word-like tokens of the texts (a superset of them), each read as `_mentions` reads it:
    what a mention of another server's name could be. An item none of whose words is a catalog name
    mentions none, so its fields are not read again."""
    return frozenset().union(*map(field_words, texts))


def field_words(text: str) -> tuple[str, ...]:
    """`words` of one field: ASCII as it is, anything else normalised (as `_mentions` reads it)."""
    return text_words(text if text.isascii() else normalise(text, decode=False).text)


def text_words(text: str) -> tuple[str, ...]:
    """The words of one text as it is (normalised already, or plain ASCII), repeats included: a tuple is
    cheaper to build than a set, and the prefilter only asks whether a catalog name is among them.

    For ASCII, by string methods rather than the regex: every maximal run of token characters holds one
    `_TOKEN` (the run from its first letter or digit) when it is at most 81 characters long, so the run's
    stripped form is that token; runs too short to be a token are kept too, which only makes the set a
    superset (it is a prefilter: `_mentions` reads the text again with the regex). A longer run, which
    the regex cuts into several tokens, sends the text to the regex."""
    if text.isascii():
        raw = text.encode("ascii")
        # A run longer than a token: found as a substring of the run marks (not by measuring every run).
        if len(raw) <= _TOKEN_MAX or raw.translate(_RUN_MARKS).find(_LONG_TOKEN_RUN) < 0:
            # Each run stripped as the token is (no "_", "." or "-" in front, no "." or "-" behind) by
            # replacing those next to a space until none is left: a few passes over the bytes instead of
            # two method calls per word. A full stop ends most sentences, so it goes first, and the loop
            # runs only when something else is left (most texts: five searches, not ten replaces).
            spaced = (b" " + raw.lower().translate(_SEPARATORS) + b" ").replace(b". ", b" ")
            size = -1
            while size != len(spaced) and (spaced.find(b". ") >= 0 or spaced.find(b"- ") >= 0 or spaced.find(b" _") >= 0
                                           or spaced.find(b" .") >= 0 or spaced.find(b" -") >= 0):
                size = len(spaced)
                spaced = (spaced.replace(b". ", b" ").replace(b"- ", b" ").replace(b" _", b" ").replace(b" .", b" ")
                          .replace(b" -", b" "))
            # The tails `_tails` adds, by one regex over the whole text rather than a loop over its tokens
            # (the text holds token characters and spaces only here, so a token is a run of non-spaces).
            joined = spaced.decode("ascii")
            tokens = tuple(joined.split())
            if "_" in joined or "." in joined or "-" in joined:
                extra = _TAIL.findall(joined)
                if extra:
                    return tokens + tuple(extra)
            return tokens
    return _tails(tuple(map(str.rstrip, _TOKEN.findall(text.lower()), repeat(".-"))))


_TOKEN_MAX = 81  # the longest match of _TOKEN
# Bytes that are not token characters (ASCII letters, digits, "_", ".", "-") become spaces.
_SEPARATORS = bytes(c if c < 128 and (chr(c).isalnum() or chr(c) in "_.-") else 32 for c in range(256))
# Token characters marked "a", the rest " ": a run longer than _TOKEN_MAX is then a substring.
_RUN_MARKS = bytes(97 if c < 128 and (chr(c).isalnum() or chr(c) in "_.-") else 32 for c in range(256))
_LONG_TOKEN_RUN = b"a" * (_TOKEN_MAX + 1)

_NAMED_AFTER = re.compile(r"\s+(?:tool|function|server|mcp)\b", re.I)


def _named(text: str, start: int, end: int) -> bool:
    """A plain word is used as a name: quoted ('fetch', `fetch`, "fetch") or followed by tool/server."""
    quoted = start > 0 and end < len(text) and text[start - 1] in "`'\"" and text[end] == text[start - 1]
    return quoted or bool(_NAMED_AFTER.match(text, end))


def affix_keys(names: Iterable[str]) -> frozenset[str]:
    """Keys that a name of at least MIN_EDIT characters one edit away from one of `names` (each at least
    MIN_INDEXED long) shares with it; see `may_pair`."""
    keys: set[str] = set()
    for g in names:
        n = len(g)
        for size in (n - 1, n, n + 1):
            if size >= MIN_EDIT:
                k = (size - 1) // 2
                keys.update(("p" + chr(size) + g[:k], "s" + chr(size) + g[-k:]))
    return frozenset(keys)


def may_pair(f: str, keys: frozenset[str]) -> bool:
    """False when no name of `affix_keys` is one edit away from `f` (len(f) >= MIN_EDIT); True says maybe.

    Two names one edit apart, of lengths L (f's) and L or L +- 1, share their first k = (L - 1) // 2
    characters or their last k: an edit that leaves the first k alone keeps them; a substitution or swap
    that touches them (positions <= k) leaves the last k, which start at L - k >= k + 1; an insertion or
    deletion at position p < k leaves the shorter's tail from p on, at least L - 1 - p >= k characters.
    Two set lookups instead of seven bucket keys for a name that pairs with nothing."""
    size = len(f)
    k = (size - 1) // 2
    tags = _AFFIX_TAGS.get(size)
    if tags is None:
        tags = _AFFIX_TAGS[size] = ("p" + chr(size), "s" + chr(size))
    return tags[0] + f[:k] in keys or tags[1] + f[-k:] in keys


_AFFIX_TAGS: dict[int, tuple[str, str]] = {}  # length -> the two key prefixes of `may_pair` (made once)


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
