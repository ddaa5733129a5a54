"""The tool-poisoning scanner: every piece of metadata a model reads, normalised, matched, scored.

`Scanner.scan_item(kind, item, context)` walks a listed tool, prompt or resource template (names,
titles, descriptions, every parameter name, description, default, enum and example, nested schemas),
normalises each string (`normalise.py`), matches the rule set (`rules.py`, data files by category) on
the text and on decoded payloads, adds the shadowing checks (`shadowing.py`), and combines the findings
into a score and a severity. HIGH means "hide": the default policy hides or holds such a tool.

The part that does not depend on the rest of the catalog is cached by a content key, so re-scanning an
unchanged definition costs one canonical serialisation and a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from mcpward.integrity import normalise as norm
from mcpward.integrity import rules as rules_mod
from mcpward.integrity import shadowing
from mcpward.integrity.field_rules import (
    LONG_TEXT,
    Descs,
    FieldRules,
    bound,
    chunk_values,
    descriptions,
    join_text,
    joined_order,
    rule_text,
)
from mcpward.integrity.model import EMPTY, Finding, Report, ScanContext, Severity
from mcpward.integrity.walk import MAX_DEPTH as MAX_NESTING
from mcpward.integrity.walk import SCHEMAS, argument_strings, extra_strings, item_strings, schema_strings, top_strings
from mcpward.protocol import exact

__all__ = ["Finding", "Report", "ScanContext", "Scanner", "Severity", "default_scanner", "item_strings"]

MAX_STRINGS = 2000  # strings read from one item: the rest is not read, and that is a HIGH finding
CACHE_SIZE = 50_000  # content results kept (one per distinct definition)
PART_BYTES = 32 << 20  # schema JSON kept as keys of the schema cache
STRING_CACHE = 200_000  # strings remembered as clean, and words of strings (each; cleared when full)
HIGH_SCORE = 0.8  # combined evidence that hides a tool on its own (three medium rules, or two strong ones)
MEDIUM_SCORE = 0.5


def combine(findings: tuple[Finding, ...]) -> Report:
    """Score = 1 - prod(1 - weight) over distinct rules, where a rule that matched in two different
    places counts twice (never more: repetition is not independent evidence).
    Severity = the highest finding, raised to HIGH when two categories reach MEDIUM or the evidence adds
    up (score >= HIGH_SCORE), and to MEDIUM when the score reaches MEDIUM_SCORE."""
    if not findings:
        return EMPTY
    best: dict[str, float] = {}
    count: dict[str, int] = {}
    spots: set[tuple[str, str, int]] = set()
    for f in findings:
        best[f.rule] = max(best.get(f.rule, 0.0), f.weight)
        if (f.rule, f.field, f.start) not in spots:
            spots.add((f.rule, f.field, f.start))
            count[f.rule] = count.get(f.rule, 0) + 1
    miss = 1.0
    for rule, w in best.items():
        miss *= (1.0 - w) ** min(count[rule], 2)
    score = 1.0 - miss
    severity = max(f.severity for f in findings)
    medium_categories = {f.category for f in findings if f.severity >= Severity.MEDIUM}
    if len(medium_categories) >= 2 or score >= HIGH_SCORE:
        severity = Severity.HIGH
    elif score >= MEDIUM_SCORE:
        severity = max(severity, Severity.MEDIUM)
    ordered = tuple(sorted(findings, key=lambda f: (-f.severity, f.field, f.start, f.rule)))
    return Report(ordered, score, Severity(severity))


# ---------------------------------------------------------------------------------------- the scanner

_Words = tuple[tuple[str, ...], ...]  # an item's word tokens, in parts (their union is what counts)
_Content = tuple[tuple[Finding, ...], _Words]  # context-free findings, the item's words
_Join = tuple[list[tuple[str, str]], str]  # an item's descriptions in join order, and the joined pass's text
# One schema: its findings, its words, its number of strings, its descriptions.
_Part = tuple[tuple[Finding, ...], tuple[str, ...], int, Descs]
_Strings = list[tuple[str, str, bool]]
_Schema = tuple[str, bytes, "_Part | _Strings"]  # schema key, part key, its cached part or strings
# What `_prepare` read of an item for `_finish`: its own strings, prompt arguments and schemas; None: walk whole.
_Todo = tuple[_Strings, _Strings, list[_Schema]] | None
_SORTED = orjson.OPT_SORT_KEYS


class _Batch:
    """The strings of one list's new items that are still to check (`Scanner.scan_items`), each normalised
    once: the grouped prefilter tests them, and the per-item scan reuses the normalised forms."""

    __slots__ = ("descs", "joins", "names", "normal", "seen", "texts", "walked")

    def __init__(self) -> None:
        self.normal: dict[str, norm.Normalised | None] = {}  # raw -> `normalise.unless_plain(raw)`
        self.seen: dict[str, str] = {}  # non-ASCII raw -> its normalised text (what `_scan_strings` fills)
        self.texts: dict[str, str] = {}  # raw -> normalised: strings the text rules' Sets will test
        self.names: dict[str, str] = {}  # the same for names (tested by the name rules too)
        self.walked: dict[bytes, _Strings] = {}  # part key -> strings, for a schema not yet cached
        self.descs: dict[bytes, Descs] = {}  # part key -> descriptions, for the same schemas
        self.joins: dict[bytes, _Join] = {}  # item key -> its joined pass's descriptions and text

    def add(self, strings: _Strings, clean: dict[bool, set[str]]) -> None:
        """Normalise the strings not known clean; those normalisation finds nothing in (no mark, no payload,
        not too long) are queued for the grouped Set test, the others are left to the per-item scan."""
        normal, texts = self.normal, self.texts
        for _, raw, is_name in strings:
            if not raw or raw in clean[is_name]:
                continue
            if raw in normal:
                n = normal[raw]
            else:
                n = normal[raw] = norm.unless_plain(raw)
                if n is not None and not raw.isascii():
                    self.seen[raw] = n.text
            if n is None:
                if len(raw) > LONG_TEXT:
                    continue
                text = raw
            else:
                text, odd = rule_text(n)
                if odd or len(n.text) > LONG_TEXT:
                    continue
            texts[raw] = text
            if is_name:
                self.names[raw] = text


def _digest(data: bytes) -> bytes:
    """A content key: SHA-256 cut to 128 bits (collisions out of reach, so a crafted definition cannot
    borrow another's cached verdict); OpenSSL's SHA-256 beats blake2b here, where the CPU has SHA
    instructions."""
    return hashlib.sha256(data).digest()[:16]


def catalog_key(others: Mapping[str, frozenset[str]]) -> tuple[int, int]:
    """An equal catalog gives an equal key, whatever object carries it, in O(servers): the name sets are
    frozensets, which cache their hash. A hash, not the catalog itself, so a cache lookup never compares
    two catalogs name by name; string hashing is randomised per process, so a collision cannot be aimed."""
    try:
        return len(others), hash(frozenset(others.items()))
    except TypeError:  # plain sets as values
        return len(others), hash(frozenset((k, frozenset(v)) for k, v in others.items()))


def context_key(context: ScanContext) -> tuple[int, int]:
    """`catalog_key` of the context's catalog, computed once per context (a context is a snapshot)."""
    key: tuple[int, int] | None = context.key
    if key is None:
        key = catalog_key(context.others)
        object.__setattr__(context, "key", key)  # a cache on a frozen value, not a change of it
    return key


class Scanner:
    def __init__(self, rules_dir: Path | None = None) -> None:
        self.rules = rules_mod.load(rules_dir)
        self._fields = FieldRules(self.rules)
        self._shadow = shadowing.Shadowing()
        self._cache: OrderedDict[bytes, _Content] = OrderedDict()
        self._parts: dict[bytes, _Part] = {}  # one schema's part of the content, by its canonical JSON
        self._parts_bytes = 0  # size of those keys: schemas can be large, so the bound is on bytes too
        self._reports: OrderedDict[tuple[bytes, str, tuple[int, int]], Report] = OrderedDict()
        self._lock = threading.Lock()
        # Per string, across items (descriptions and schemas repeat across servers and versions): strings
        # whose scan found nothing, per scope (False: text rules; True: a name, text and name rules), and
        # the words of each string.
        self._clean: dict[bool, set[str]] = {False: set(), True: set()}
        self._words: dict[str, tuple[str, ...]] = {}

    # -- public

    def scan_item(self, kind: str, item: Mapping[str, Any], context: ScanContext | None = None) -> Report:
        """Scan one listed definition; kind is "tools" | "prompts" | "resourceTemplates"."""
        key, (content, tokens) = self._content(kind, item)
        if context is None:
            return combine(content)
        catalog = context.key
        if catalog is None:
            catalog = context_key(context)
        return self._verdict(key, content, tokens, item, context, catalog)

    def scan_items(self, kind: str, items: Sequence[Mapping[str, Any]],
                   context: ScanContext | None = None) -> list[Report]:
        """`scan_item` of each item of one list, in order, with the same reports: the way to scan what a
        server lists. The items' new strings are ruled out by the RE2 Sets in groups (`RuleSet.clear`)
        rather than item by item, which saves most of the prefilter's per-call cost on a cold list."""
        if not items:  # an unchanged list refreshed: nothing new to scan
            return []
        batch = _Batch()
        pending = [self._prepare(kind, item, batch) for item in items]
        self._prefilter(batch)
        catalog = context_key(context) if context is not None else None
        done: dict[bytes, _Content] = {}  # a definition listed twice is scanned once
        reports = []
        for item, (key, cached, todo) in zip(items, pending, strict=True):
            if cached is None:
                cached = done.get(key)
                if cached is None:
                    cached = done[key] = self._finish(kind, item, key, todo, batch)
            content, tokens = cached
            reports.append(self._verdict(key, content, tokens, item, context, catalog)
                           if context is not None and catalog is not None else combine(content))
        return reports

    def scan_instructions(self, text: str, context: ScanContext | None = None) -> Report:
        """Scan a server's `instructions` (the initialize result's text for the model)."""
        _, (content, _) = self._content("instructions", {"instructions": text})
        extra = (self._shadow.text_findings("instructions", text, context, context_key(context))
                 if context is not None else ())
        return combine(content + extra)

    def _verdict(self, key: bytes, content: tuple[Finding, ...], tokens: _Words, item: Mapping[str, Any],
                 context: ScanContext, catalog: tuple[int, int]) -> Report:
        """The verdict for this definition in this catalog: a warm re-check of an unchanged list is a lookup."""
        full = (key, context.server, catalog)
        with self._lock:
            hit = self._reports.get(full)
            if hit is not None:
                return hit
        report = combine(content + self._shadow.context_findings(item, context, catalog, tokens))
        with self._lock:
            self._reports[full] = report
            if len(self._reports) > CACHE_SIZE:
                self._reports.popitem(last=False)
        return report

    # -- content part (cached)

    def _content(self, kind: str, item: Mapping[str, Any]) -> tuple[bytes, _Content]:
        key, cached, todo = self._prepare(kind, item, None)
        return key, cached if cached is not None else self._finish(kind, item, key, todo, None)

    def _prepare(self, kind: str, item: Mapping[str, Any],
                 batch: _Batch | None) -> tuple[bytes, _Content | None, _Todo]:
        """The first half of an item's scan: its content key and its cached content, else (None and) what
        the scan reads; with a batch, the strings still to check go into it for the grouped prefilter."""
        # One serialisation and one digest of the whole item: what a warm re-check costs. (Keying the item
        # by its schemas' parts instead saved ~2% of a cold scan and cost a third more on a warm one.)
        try:
            blob = exact.dumps(item, option=_SORTED)
        except TypeError:
            blob = repr(item).encode()
        key = _digest(kind.encode() + b"\0" + blob)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return key, hit, None
        if kind == "instructions":
            return key, None, None
        schemas = self._schemas_of(item, batch)
        if schemas is None:
            return key, None, None
        top = top_strings(item)
        deep: list[str] = []
        top.extend(extra_strings(item, deep))
        if deep:
            return key, None, None  # walked whole, which reports the bound
        args = argument_strings(item) if "arguments" in item else []
        if batch is not None:
            batch.add(top, self._clean)
            batch.add(args, self._clean)
            self._queue_join(key, top, args, schemas, batch)
        return key, None, (top, args, schemas)

    def _queue_join(self, key: bytes, top: _Strings, args: _Strings, schemas: list[_Schema], batch: _Batch) -> None:
        """Queue the text of the item's joined pass for the grouped prefilter, and keep what `_fresh` and
        `_schema_part` would compute again (the descriptions, the text)."""
        seen = batch.seen
        descs = list(descriptions(top, seen))
        for _, pkey, got in schemas:
            if isinstance(got, list):
                found = batch.descs.get(pkey)
                if found is None:
                    found = batch.descs[pkey] = descriptions(got, seen)
                descs.extend(found)
            else:
                descs.extend(got[3])
        if args:
            descs.extend(descriptions(args, seen))
        if len(descs) > 1:
            descs = joined_order(descs)
            text = join_text([t for _, t in descs])
            batch.joins[key] = (descs, text)
            if text and len(text) <= LONG_TEXT and text not in self._clean[False]:
                batch.texts[text] = text

    def _finish(self, kind: str, item: Mapping[str, Any], key: bytes, todo: _Todo, batch: _Batch | None) -> _Content:
        """The second half: the content from what `_prepare` read, cached by the item's key."""
        if todo is None:
            result = self._walked(kind, item)
        else:
            top, args, schemas = todo
            parts: dict[str, _Part] = {}
            for name, pkey, got in schemas:
                parts[name] = self._schema_part(pkey, got, batch) if isinstance(got, list) else got
            result = self._fresh(kind, item, parts, top, args, batch,
                                 batch.joins.get(key) if batch is not None else None)
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return result

    def _schemas_of(self, item: Mapping[str, Any], batch: _Batch | None) -> list[_Schema] | None:
        """Each schema of the item with its part key and its cached part, else its strings (a batch walks a
        schema once); None when a schema cannot be serialised, holds MAX_STRINGS strings or more, or nests
        deeper than the walk reads: the item is then walked whole (`_walked`), which reports the bound."""
        out: list[_Schema] = []
        for name in SCHEMAS:
            schema = item.get(name)
            if schema is not None:
                try:
                    # The part key is the schema key and the schema's canonical JSON (schemas repeat across
                    # tools, servers and versions; an exact key, no digest to compute).
                    pkey = name.encode() + b"\0" + exact.dumps(schema, option=_SORTED)
                except TypeError:
                    return None
                with self._lock:
                    hit = self._parts.get(pkey)
                if hit is not None:  # never a schema of MAX_STRINGS strings: those are not kept
                    out.append((name, pkey, hit))
                    continue
                strings = batch.walked.get(pkey) if batch is not None else None
                if strings is None:
                    deep: list[str] = []
                    strings = schema_strings(name, schema, deep)
                    if len(strings) >= MAX_STRINGS or deep:
                        return None
                    if batch is not None:
                        batch.walked[pkey] = strings
                        batch.add(strings, self._clean)
                out.append((name, pkey, strings))
        return out

    def _prefilter(self, batch: _Batch) -> None:
        """Remember as clean every string of the batch that no rule can match, found by testing the RE2 Sets
        on groups of strings. A string is clean for text fields when no text rule matches it, and for names
        when no text or name rule does (the same test `_scan_strings` makes on one item's strings)."""
        if not batch.texts:
            return
        clean = self._clean
        if len(clean[False]) + len(clean[True]) + 2 * len(batch.texts) > STRING_CACHE:
            clean[False].clear()  # a bound, not an LRU, as in `_remember_clean`
            clean[True].clear()
        texts = self.rules.clear("text", list(batch.texts.values()))
        raws = list(batch.texts)
        add = clean[False].add
        for i in texts:
            add(raws[i])
        if batch.names:
            text_clean = clean[False]
            names = [raw for raw in batch.names if raw in text_clean]
            add = clean[True].add
            for i in self.rules.clear("name", [batch.names[raw] for raw in names]):
                add(names[i])

    def _fresh(self, kind: str, item: Mapping[str, Any], parts: dict[str, _Part], top: _Strings, args: _Strings,
               batch: _Batch | None, join: _Join | None = None) -> _Content:
        """The content part of an item not seen before, from its schemas' parts and its own strings; an item
        with too many strings in all is walked whole (`_walked`). `join`: its joined pass's input, when a
        batch has made it already."""
        count = len(top) + len(args)
        for part in parts.values():
            count += part[2]
        if count >= MAX_STRINGS:
            return self._walked(kind, item)
        # Findings in walk order (the item's fields, each schema, the arguments), as `_walked` gives them.
        seen: dict[str, str] = {} if batch is None else batch.seen
        found = self._scan_strings(top, seen, batch)
        words = []
        for _, text, is_name in top:  # loops, not comprehensions, on the per-item path: in Python 3.11 each
            if not is_name:  # comprehension is a function made and called per use
                words.append(self._text_words(text, seen))
        for part in parts.values():
            found.extend(part[0])
            words.append(part[1])
        if args:
            found.extend(self._scan_strings(args, seen, batch))
            words.extend(self._text_words(text, seen) for _, text, is_name in args if not is_name)
        chunks = chunk_values(top + args if args else top)
        if chunks:
            found.extend(self._fields.split_payloads(chunks))
        if join is None:
            descs = list(descriptions(top, seen))
            for part in parts.values():
                descs.extend(part[3])
            if args:
                descs.extend(descriptions(args, seen))
            if len(descs) > 1:
                descs = joined_order(descs)
                join = (descs, join_text([t for _, t in descs]))
        if join is not None:
            found.extend(self._joined(join, found))
        name = item.get("name")
        if isinstance(name, str):
            found.extend(self._shadow.known_findings(name))
        return tuple(found), tuple(filter(None, words))

    def _joined(self, join: _Join, found: list[Finding]) -> list[Finding]:
        """The joined pass over an item's descriptions (`FieldRules.joined`), skipped when the join's text is
        known clean (the batch's grouped prefilter clears most of them); a clean join is remembered."""
        descs, text = join
        if not text or text in self._clean[False]:
            return []
        hits = self._fields.joined(descs, {f.rule for f in found})
        if not hits:
            self._remember_clean([("", text, False)])
        return hits

    def _schema_part(self, pkey: bytes, strings: _Strings, batch: _Batch | None) -> _Part:
        """One schema's part from its strings (fewer than MAX_STRINGS), kept by its part key."""
        with self._lock:
            hit = self._parts.get(pkey)  # again: an earlier item of the same list may have had this schema
        if hit is not None:
            return hit
        seen: dict[str, str] = {} if batch is None else batch.seen
        findings = self._scan_strings(strings, seen, batch)
        chunks = chunk_values(strings)
        if chunks:
            findings.extend(self._fields.split_payloads(chunks))
        words = self._item_words([text for _, text, is_name in strings if not is_name], seen)
        descs = batch.descs.get(pkey) if batch is not None else None
        part = (tuple(findings), words, len(strings), descs if descs is not None else descriptions(strings, seen))
        with self._lock:
            self._parts_bytes += len(pkey)
            if len(self._parts) >= CACHE_SIZE or self._parts_bytes > PART_BYTES:
                self._parts.clear()  # a bound, not an LRU: a miss costs one walk and scan of a schema
                self._parts_bytes = len(pkey)
            self._parts[pkey] = part
        return part

    def _walked(self, kind: str, item: Mapping[str, Any]) -> _Content:
        """The content part read field by field from the whole walk (instructions, items whose schemas
        cannot be serialised, and items with MAX_STRINGS strings or more)."""
        deep: list[str] = []  # where the walk's depth bound left content unread
        unread: str | None = None  # the first field past MAX_STRINGS
        if kind == "instructions":
            strings: _Strings = [("instructions", str(item.get("instructions", "")), False)]
        else:
            strings = []
            for n, entry in enumerate(chain(item_strings(kind, item, deep), extra_strings(item, deep))):
                if n >= MAX_STRINGS:
                    unread = entry[0]
                    break
                strings.append(entry)
        seen: dict[str, str] = {}  # non-ASCII text -> its normalised form, shared with the words below
        found = self._scan_strings(strings, seen, None)
        if unread is not None:
            found.append(bound("excessive-length.schema-size", unread, 0, 0,
                                f"more than {MAX_STRINGS} strings: the rest is not read"))
        if deep:
            found.append(bound("excessive-nesting.schema-depth", deep[0], 0, 0,
                                f"nested deeper than {MAX_NESTING} levels: the rest is not read"))
        chunks = chunk_values(strings)
        if chunks:
            found.extend(self._fields.split_payloads(chunks))
        descs = joined_order(list(descriptions(strings, seen)))
        if len(descs) > 1:
            found.extend(self._joined((descs, join_text([t for _, t in descs])), found))
        name = item.get("name")
        if kind != "instructions" and isinstance(name, str):
            found.extend(self._shadow.known_findings(name))
        return tuple(found), (self._item_words([text for _, text, is_name in strings if not is_name], seen),)

    def _text_words(self, text: str, seen: dict[str, str]) -> tuple[str, ...]:
        """`shadowing.field_words` of one text, cached (descriptions and schemas repeat)."""
        cache = self._words
        got = cache.get(text)
        if got is None:
            normal = seen.get(text)
            if normal is None and text.isascii():
                normal = text  # `field_words` reads ASCII as it is
            got = shadowing.field_words(text) if normal is None else shadowing.text_words(normal)
            if len(cache) >= STRING_CACHE:
                cache.clear()  # a bound, not an LRU: refilling costs one tokenising per text
            cache[text] = got
        return got

    def _item_words(self, texts: list[str], seen: dict[str, str]) -> tuple[str, ...]:
        """`shadowing.words` of the item's texts (repeats included), cached per text."""
        parts = [self._text_words(text, seen) for text in texts]
        return parts[0] if len(parts) == 1 else tuple(chain.from_iterable(parts))

    def _scan_strings(self, strings: _Strings, seen: dict[str, str], batch: _Batch | None) -> list[Finding]:
        """Findings in every string of one item, field by field, exactly as `scan_text` on each would give,
        with the work that finds nothing done once per item rather than once per field:
        - a string already found clean (in any item) is skipped: a field's findings depend on its text
          and scope alone;
        - plain ASCII with nothing to strip or decode (`normalise.plain`, a byte-table test) is already
          normal; only the other fields are normalised;
        - one RE2 Set pass over the joined normalised texts (and one over the names) says whether any rule
          can match any field (see `RuleSet.maybe`); only then are fields matched one by one.
        Most real definitions end after those passes with no finding. `seen` gets the normalised form of
        each non-ASCII text normalised here (the item's words need it too). In a batch (`scan_items`) the
        grouped prefilter has already remembered most clean strings, and normalised the rest."""
        clean = self._clean
        todo = []
        for entry in strings:
            if entry[1] and entry[1] not in clean[entry[2]]:
                todo.append(entry)
        if not todo:
            return []
        texts: list[str] = []  # each field as the rules read it
        names: list[str] = []
        normed: dict[int, norm.Normalised] | None = None  # fields that were not plain, by position in todo
        odd = False  # something normalising found (a mark or a payload), or a field too long
        ready = batch.normal if batch is not None else None
        for i, (_, text, is_name) in enumerate(todo):
            normal = ready[text] if ready is not None and text in ready else norm.unless_plain(text)
            if normal is not None:
                if normed is None:
                    normed = {}
                normed[i] = normal
                if not text.isascii():
                    seen[text] = normal.text
                odd = odd or len(normal.text) > LONG_TEXT
                text, found_odd = rule_text(normal)
                odd = odd or found_odd
            else:
                odd = odd or len(text) > LONG_TEXT
            texts.append(text)
            if is_name:
                names.append(text)
        text_hit = self.rules.maybe("text", texts)
        name_hit = bool(names) and self.rules.maybe("name", names)
        if not (text_hit or name_hit or odd):
            self._remember_clean(todo)
            return []
        found: list[Finding] = []
        quiet: list[tuple[str, str, bool]] = []
        fields = self._fields
        for i, entry in enumerate(todo):
            where, raw, is_name = entry
            n = normed.get(i) if normed is not None else None
            field = fields.field(where, n if n is not None else norm.Normalised(raw), is_name and name_hit, text_hit)
            if field:
                found.extend(field)
            else:
                quiet.append(entry)
        self._remember_clean(quiet)
        return found

    def _remember_clean(self, entries: list[tuple[str, str, bool]]) -> None:
        clean = self._clean
        if len(clean[False]) + len(clean[True]) + len(entries) > STRING_CACHE:
            clean[False].clear()  # a bound, not an LRU: refilling costs one scan per string
            clean[True].clear()
        for _, text, is_name in entries:
            clean[is_name].add(text)

    def scan_text(self, where: str, raw: str, *, name: bool = False) -> list[Finding]:
        """Findings in one field: normalisation marks, rules on the text, rules on decoded payloads."""
        if not raw:
            return []
        return self._fields.field(where, norm.normalise(raw), name, True)


@lru_cache(maxsize=1)
def default_scanner() -> Scanner:
    """The process-wide scanner on the packaged rules (compiled once)."""
    return Scanner()
