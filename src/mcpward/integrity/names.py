"""Name similarity shared by the shadowing check and `mcpward scan`'s typosquat check."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[\s_\-.]+")


def fold(name: str) -> str:
    """Case and separators do not make two names different to a reader (`read_file` vs `readFile`)."""
    return _SEPARATORS.sub("", name).lower()


def within_one_edit(a: str, b: str) -> bool:
    """True when `a` and `b` differ by at most one insertion, deletion, substitution or swap of
    two adjacent characters (the edits a typosquatter makes). Equal strings count."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diffs = [i for i in range(la) if a[i] != b[i]]
        if len(diffs) == 1:
            return True
        return (len(diffs) == 2 and diffs[1] == diffs[0] + 1
                and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    short, long = (a, b) if la < lb else (b, a)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1:]


def one_edit_away(a: str, b: str) -> bool:
    """Different names that are one edit apart: the typosquat signal (equal names are not)."""
    return a != b and within_one_edit(a, b)
