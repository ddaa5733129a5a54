"""Loading the poisoning rules (data files under integrity/data/poisoning/*.toml) into one matcher.

A rule file names its category and lists rules:

    category = "concealment"
    [[rule]]
    id = "do-not-tell-user"          # the finding's rule is "poisoning.<category>.<id>"
    severity = "high"                # low | medium | high
    weight = 0.9                     # 0..1, its share of the combined score
    scope = "text"                   # text (every field, default) | name (item and parameter names)
    why = "asks the model to keep something from the user"
    pattern = '''(?i)\\bdo not tell the user\\b'''

Patterns are RE2 (linear time, no look-around, no back-references) and must be bounded: a gap is written
`.{0,80}`, never `.*` or `.+`, so a rule cannot match across a whole description. All rules of a scope are
compiled into one RE2 Set: a field is read once whatever the number of rules; the individual regex of a
rule runs only on fields the Set says it matches (rare on benign text).

A scope's rules are split into Sets of at most SET_RULES rules each: RE2 builds its matcher state as it reads
text it has not seen, and the states of one Set over all rules combine the partial matches of every rule,
so two Sets of half the rules build fewer states between them (callgrind: about a fifth fewer instructions
on the benign corpus) for one more pass over the text.

The Sets are compiled in multi-line mode, so `^` and `$` also match at line ends. That makes them a superset
filter (a Set hit that the rule's own regex does not confirm yields no finding) which stays sound when the
strings of a whole item are joined with newlines and matched in one pass (`maybe`): a rule that matches a
field alone also matches the joined text. Rules anchored with `\\A`/`\\z` (or that turn multi-line off) would
break that; a scope holding one is matched field by field instead.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import re2  # type: ignore[import-untyped]

SEVERITIES = {"none": 0, "low": 1, "medium": 2, "high": 3}
SCOPES = ("text", "name")
# `.*`, `.+`, `\S+`, `[^x]*`...: an unbounded repeat of a broad class lets a rule span a whole field.
# Checked on a skeleton of the pattern: broad atoms (., \S, \W, \D, negated classes) become "N",
# other escapes and classes "C", so a "." or "+" inside a class is not mistaken for a gap.
_BROAD_ESCAPE = re.compile(r"\\[SWD]")
_ESCAPE = re.compile(r"\\.")
_CLASS = re.compile(r"\[(\^?)(?:\\.|[^\]\\])+\]")
_UNBOUNDED = re.compile(r"[.N](?:[*+]|\{\d+,\})")
# Text-absolute anchors and a flag group that turns multi-line off: a joined match could miss such a rule.
_NOT_JOINABLE = re.compile(r"\\[Az]|\(\?[a-zA-Z]*-[a-zA-Z]*m")


def unbounded(pattern: str) -> bool:
    """True when the pattern repeats a broad atom without an upper bound."""
    classes = _CLASS.sub(lambda m: "N" if m.group(1) else "C", pattern.replace("\\[", "C").replace("\\]", "C"))
    skeleton = _ESCAPE.sub("C", _BROAD_ESCAPE.sub("N", classes))
    return bool(_UNBOUNDED.search(skeleton))


class RuleError(ValueError):
    """A rule file that cannot be used (named file and rule in the message)."""


@dataclass(frozen=True, slots=True)
class Rule:
    id: str  # full id: poisoning.<category>.<id>
    category: str
    severity: int  # a Severity value (kept as int here so this module does not import the scanner)
    weight: float
    scope: str
    why: str
    pattern: str


SET_RULES = 32  # rules per RE2 Set (see above)
GROUP = 32  # strings per joined pass of `RuleSet.clear` (measured: see docs/benchmarks.md, issue 4)


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    # scope -> its Sets, each with the rule indexes in its order. A Set is the compiled set under the re2
    # module's Python wrapper when the wrapper exposes it, else the wrapper's Set (both match UTF-8 bytes):
    # the prefilter runs for every new item, and the wrapper adds two Python calls.
    sets: dict[str, tuple[tuple[Any, tuple[int, ...]], ...]]
    regexes: tuple[Any, ...]  # per rule, its own compiled regex (for spans)
    joinable: dict[str, bool]  # scope -> a joined pass over many strings finds every rule a single one would

    def any_match(self, scope: str, text: str) -> bool:
        """Whether some rule of the scope may match `text` (a superset: `match` confirms)."""
        if not text:
            return False
        data = text.encode("utf-8")
        return any(matcher.Match(data) for matcher, _ in self.sets.get(scope, ()))

    def maybe(self, scope: str, texts: list[str]) -> bool:
        """Whether some rule of the scope may match one of `texts`; False means none does. One pass of each
        Set over the texts joined by blank lines when the scope allows it, else passes per text."""
        parts = self.sets.get(scope)
        if not parts:
            return False
        if self.joinable[scope]:
            joined = texts[0] if len(texts) == 1 else "\n\n".join(texts)
            if not joined:
                return False
            data = joined.encode("utf-8")
            for matcher, _ in parts:  # noqa: SIM110 - a loop, not any() over a generator: this runs per item
                if matcher.Match(data):
                    return True
            return False
        return any(self.any_match(scope, t) for t in texts)

    def clear(self, scope: str, texts: list[str]) -> list[int]:
        """The positions of `texts` that no rule of the scope matches (group testing for many items' strings).

        The texts are joined in groups of GROUP, as `maybe` joins one item's; a group no Set matches clears
        all its texts, a group some Set matches is halved and each half tested again, down to single texts.
        Exactly as sound as `maybe`: a text is cleared only by a pass over a join that holds it. A scope whose
        rules cannot be joined clears nothing (its strings are tested one by one, as before)."""
        parts = self.sets.get(scope)
        if not parts:
            return list(range(len(texts)))
        if not self.joinable[scope]:
            return []
        out: list[int] = []
        todo = [(lo, min(lo + GROUP, len(texts))) for lo in range(0, len(texts), GROUP)]
        todo.reverse()  # a stack: the first group is tested first
        while todo:
            lo, hi = todo.pop()
            if not self.maybe(scope, texts[lo:hi]):
                out.extend(range(lo, hi))
            elif hi - lo > 1:
                mid = (lo + hi) // 2
                todo.append((mid, hi))
                todo.append((lo, mid))
        return out

    def match(self, scope: str, text: str) -> list[tuple[Rule, int, int]]:
        """Every (rule, start, end) of the scope's rules in `text`, first match per rule and up to
        three matches in all per rule (evidence, not a count)."""
        parts = self.sets.get(scope)
        if not parts or not text:
            return []
        data = text.encode("utf-8")
        found: list[int] = []
        for matcher, order in parts:
            found.extend(order[i] for i in matcher.Match(data) or ())
        out: list[tuple[Rule, int, int]] = []
        for n in sorted(found):
            rule = self.rules[n]
            for k, m in enumerate(self.regexes[n].finditer(text)):
                if k == 3:
                    break
                out.append((rule, m.start(), m.end()))
        return out


def _options() -> Any:
    options = re2.Options()
    options.max_mem = 64 << 20
    options.never_capture = False
    options.log_errors = False
    return options


def _parse(path: Path, text: str) -> list[Rule]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{path}: {exc}") from None
    category = data.get("category")
    if not isinstance(category, str) or not category:
        raise RuleError(f"{path}: needs a top-level category")
    out: list[Rule] = []
    for n, raw in enumerate(data.get("rule", [])):
        where = f"{path} rule #{n + 1}"
        if not isinstance(raw, dict):
            raise RuleError(f"{where}: not a table")
        rid, pattern = raw.get("id"), raw.get("pattern")
        if not isinstance(rid, str) or not isinstance(pattern, str):
            raise RuleError(f"{where}: id and pattern are required strings")
        severity = SEVERITIES.get(str(raw.get("severity", "medium")))
        if severity is None:
            raise RuleError(f"{where} ({rid}): severity must be one of {', '.join(SEVERITIES)}")
        weight = raw.get("weight", 0.5)
        if not isinstance(weight, int | float) or not 0 <= weight <= 1:
            raise RuleError(f"{where} ({rid}): weight must be a number in 0..1")
        scope = raw.get("scope", "text")
        if scope not in SCOPES:
            raise RuleError(f"{where} ({rid}): scope must be one of {', '.join(SCOPES)}")
        if unbounded(pattern):
            raise RuleError(f"{where} ({rid}): unbounded gap; write .{{0,80}} instead of .* or .+")
        try:
            re2.compile(pattern, _options())
        except re2.error as exc:
            raise RuleError(f"{where} ({rid}): not a valid RE2 pattern: {exc}") from None
        cat = str(raw.get("category", category))
        why = str(raw.get("why", ""))
        out.append(Rule(f"poisoning.{cat}.{rid}", cat, severity, float(weight), scope, why, pattern))
    return out


def _sources(rules_dir: Path | None) -> list[tuple[Path, str]]:
    if rules_dir is not None:
        return [(p, p.read_text(encoding="utf-8")) for p in sorted(rules_dir.glob("*.toml"))]
    base = resources.files("mcpward.integrity") / "data" / "poisoning"
    files = sorted((f for f in base.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return [(Path(f.name), f.read_text(encoding="utf-8")) for f in files]


def load(rules_dir: Path | None = None) -> RuleSet:
    """Read and compile every *.toml rule file of `rules_dir` (default: the packaged rules)."""
    rules: list[Rule] = []
    for path, text in _sources(rules_dir):
        rules.extend(_parse(path, text))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RuleError(f"duplicate rule id {rule.id}")
        seen.add(rule.id)
    sets: dict[str, tuple[tuple[Any, tuple[int, ...]], ...]] = {}
    joinable: dict[str, bool] = {}
    for scope in SCOPES:
        members = [i for i, r in enumerate(rules) if r.scope == scope]
        joinable[scope] = not any(_NOT_JOINABLE.search(rules[i].pattern) for i in members)
        count = -(-len(members) // SET_RULES)  # parts of at most SET_RULES rules, as even as can be
        parts = []
        for k in range(count):
            order = tuple(members[k * len(members) // count : (k + 1) * len(members) // count])
            matcher = re2.Set.SearchSet(_options())
            for i in order:
                matcher.Add("(?m)" + rules[i].pattern)
            matcher.Compile()
            parts.append((getattr(matcher, "_set", matcher), order))
        sets[scope] = tuple(parts)
    regexes = tuple(re2.compile(r.pattern, _options()) for r in rules)
    return RuleSet(tuple(rules), sets, regexes, joinable)
