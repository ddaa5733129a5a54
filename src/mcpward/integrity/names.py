"""Name similarity shared by the shadowing check and `mcpward scan`'s typosquat check."""

from __future__ import annotations

import re
from collections.abc import Iterable
from operator import ne

_SEPARATORS = re.compile(r"[\s_\-.]+")


# What `_SEPARATORS` matches in ASCII (`\s` there: space, \t \n \v \f \r and \x1c-\x1f), deleted by
# a byte table: folding runs for every name of every catalog, and a regex substitution is the slow way.
ASCII_SEPARATORS = b" \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f_-."


def fold(name: str) -> str:
    """Case and separators do not make two names different to a reader (`read_file` vs `readFile`)."""
    if name.isascii():
        return name.encode("ascii").translate(None, ASCII_SEPARATORS).decode("ascii").lower()
    return _SEPARATORS.sub("", name).lower()


def within_one_edit(a: str, b: str) -> bool:
    """True when `a` and `b` differ by at most one insertion, deletion, substitution or swap of
    two adjacent characters (the edits a typosquatter makes). Equal strings count."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    # Cheap necessary conditions first (most pairs compared share half their letters and fail here): an
    # edit before the last character keeps the last characters equal; one at the end keeps all before it.
    # Likewise at the start. Only pairs that pass both are compared position by position.
    if la == lb:
        if not ((a[-1] == b[-1] or a[:-2] == b[:-2]) and (a[0] == b[0] or a[2:] == b[2:])):
            return False
    else:
        long_, short_ = (a, b) if la > lb else (b, a)
        if not short_:
            return True
        if not ((long_[-1] == short_[-1] or long_[:-1] == short_) and (long_[0] == short_[0] or long_[1:] == short_)):
            return False
    if la == lb:
        # Differing positions found at C speed (map, count, index), not in a Python loop.
        diff = list(map(ne, a, b))
        count = diff.count(True)
        if count != 2:
            return count == 1
        i = diff.index(True)
        return bool(diff[i + 1]) and a[i] == b[i + 1] and a[i + 1] == b[i]
    short, long = (a, b) if la < lb else (b, a)
    # The first difference (map over the shorter length, in C), then the rest must line up after it.
    diff = list(map(ne, short, long))
    i = diff.index(True) if True in diff else len(short)
    return short[i:] == long[i + 1:]


def one_edit_away(a: str, b: str) -> bool:
    """Different names that are one edit apart: the typosquat signal (equal names are not)."""
    return a != b and within_one_edit(a, b)


MIN_INDEXED = 5  # shadowing.MIN_EDIT - 1: a name one edit away from a checked name is at least this long
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
    prefixes = _PREFIXES.get(n)
    if prefixes is None:
        size, shorter = chr(n), chr(n - 1) if n else ""
        prefixes = _PREFIXES[n] = ("E" + size, "O" + size, "M" + size, "P" + size, "S" + size, "P" + shorter,
                                   "S" + shorter)
    e, o, mm, p, s, p1, s1 = prefixes
    # M is an order-free pair of sums of fixed weights per UTF-8 byte, all in C (byte tables, then sum() over
    # small integers): equal character multisets have equal byte multisets, so equal sums; a rare unequal
    # pair with the same sums only costs one comparison. Two tables, not one: over a narrow alphabet (names
    # with hex suffixes) the sums of one table crowd a few buckets. (Character hashes, used before,
    # overflowed into big integers and cost more than the rest of the keys.)
    raw = f.encode("utf-8", "surrogatepass")
    weights = sum(raw.translate(_BYTE_WEIGHTS)) << 20 | sum(raw.translate(_BYTE_WEIGHTS_2))
    return (e + f[0::2], o + f[1::2], mm + str(weights), p + f[:h], s + f[h:], p1 + f[:m], s1 + f[m + 1 :])


_PREFIXES: dict[int, tuple[str, str, str, str, str, str, str]] = {}  # name length -> its bucket key prefixes



# A fixed permutation of the byte values (multiplying by an odd number modulo 256): weights spread over
# 0..255, where letters alone would crowd a few sums.
_BYTE_WEIGHTS = bytes((i * 167 + 91) % 256 for i in range(256))
_BYTE_WEIGHTS_2 = bytes((i * 101 + 29) % 256 for i in range(256))
_NONE4 = [None, None, None, None]
_FILED = (0, 0, 0, 0, 0, 1, 1)  # role of a name in each of its buckets (1: as the longer of a pair)
_WANTED = (0, 0, 0, 1, 1, 0, 0)  # which role's names a name pairs with in each of its buckets


def _file(buckets: dict[_Bucket, str | list[str]], key: _Bucket, held: str | list[str], f: str) -> list[str]:
    """File f in a bucket that already holds `held` (a name, or a list of names from the second on)."""
    if isinstance(held, str):
        names = buckets[key] = [held, f]
        return names
    held.append(f)
    return held


def _deletions(f: str) -> list[str]:
    """The name and each one-character deletion of it: two names one edit apart share one of these."""
    return [f, *[f[:i] + f[i + 1 :] for i in range(len(f))]]


class Lookalikes:
    """Pairs of names one edit apart (`names.one_edit_away`), kept as names are added.

    Each name is filed under seven buckets (`_bucket_keys`) and compared with the names already there that
    could pair with it, so after `add` every indexed name's neighbours are known and looking them up is
    one dictionary read. A bucket read while it holds more than BIG_GROUP names is searched through a
    deletion index of its own (built when first needed, extended with the names filed since), so a hostile
    list of look-alike names costs what a deletion neighbourhood costs, never a comparison of every pair;
    a crowded bucket that nothing reads (names of a length no other name pairs with) costs nothing more."""

    def __init__(self) -> None:
        # Per role, bucket -> its names: a bare string while it holds one (most do; a string costs the
        # garbage collector nothing), a list from the second name on.
        self._buckets: tuple[dict[_Bucket, str | list[str]], dict[_Bucket, str | list[str]]] = ({}, {})
        # id of a crowded bucket's list -> (the list, its deletion index, how many of its names are in it);
        # a bucket's list is never replaced or dropped (and is held here too), so its id stays its own
        self._big: dict[int, tuple[list[str], dict[str, list[str]], list[int]]] = {}
        self._indexed: set[str] = set()
        self._mates: dict[str, set[str]] = {}

    def add(self, names: Iterable[str]) -> None:
        b0, b1 = self._buckets
        indexed = self._indexed
        for f in names:
            if len(f) < MIN_INDEXED or f in indexed:
                continue
            # One dictionary operation per bucket both files f and returns what was there: f itself in the
            # common case of a bucket new to this name, written out per bucket (no loop, no tuples built).
            # Buckets whose role pairs with the other one (`_WANTED`) are read first.
            e, o, mm, p, s, p1, s1 = _bucket_keys(f)
            found = [b1.get(p), b1.get(s), b0.get(p1), b0.get(s1)]
            held = b0.setdefault(e, f)  # equal-length buckets pair within their own role
            if held is not f:
                found.append(_file(b0, e, held, f))
            held = b0.setdefault(o, f)
            if held is not f:
                found.append(_file(b0, o, held, f))
            held = b0.setdefault(mm, f)
            if held is not f:
                found.append(_file(b0, mm, held, f))
            held = b0.setdefault(p, f)  # `_FILED` written out
            if held is not f:
                _file(b0, p, held, f)
            held = b0.setdefault(s, f)
            if held is not f:
                _file(b0, s, held, f)
            held = b1.setdefault(p1, f)
            if held is not f:
                _file(b1, p1, held, f)
            held = b1.setdefault(s1, f)
            if held is not f:
                _file(b1, s1, held, f)
            if found != _NONE4:
                self._pair(f, self._from(f, found))
            indexed.add(f)

    def _from(self, f: str, found: list[str | list[str] | None]) -> set[str]:
        """The names in the bucket contents `found` (names, lists of names, or None) that may pair with f:
        all of a small bucket, those sharing a deletion with f in a crowded one."""
        candidates: set[str] = set()
        deletions: list[str] | None = None
        for held in found:
            if held is None:
                continue
            if isinstance(held, str):
                candidates.add(held)
            elif len(held) <= BIG_GROUP:
                candidates.update(held)
            else:
                if deletions is None:
                    deletions = _deletions(f)
                index = self._deletion_index(held)
                for d in deletions:
                    got = index.get(d)
                    if got is not None:
                        candidates.update(got)
        candidates.discard(f)
        return candidates

    def _deletion_index(self, held: list[str]) -> dict[str, list[str]]:
        """The deletion index of a crowded bucket, brought up to date with the names filed since."""
        entry = self._big.get(id(held))
        if entry is None:
            entry = self._big[id(held)] = (held, {}, [0])
        index, done = entry[1], entry[2]
        for g in held[done[0]:]:
            for d in _deletions(g):
                index.setdefault(d, []).append(g)
        done[0] = len(held)
        return index

    def _pair(self, f: str, candidates: set[str]) -> None:
        for other in candidates:
            if one_edit_away(f, other):
                self._mates.setdefault(f, set()).add(other)
                self._mates.setdefault(other, set()).add(f)

    def _candidates(self, f: str, keys: tuple[_Bucket, ...]) -> set[str]:
        """Indexed names that share a bucket with `f` in the role that pairs with f's (equal-length
        buckets: the same role; P and S: the other one); in a crowded bucket, those sharing a deletion."""
        return self._from(f, [self._buckets[_WANTED[i]].get(key) for i, key in enumerate(keys)])

    def neighbours(self, f: str) -> list[str]:
        """Indexed names one edit away from `f`, sorted (so a report names the same one every time)."""
        if f in self._indexed:
            return sorted(self._mates.get(f, ()))
        return sorted(g for g in self._candidates(f, _bucket_keys(f)) if one_edit_away(f, g))
