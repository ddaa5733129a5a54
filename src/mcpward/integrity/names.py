"""Name similarity shared by the shadowing check and `mcpward scan`'s typosquat check."""

from __future__ import annotations

import re
from operator import ne

_SEPARATORS = re.compile(r"[\s_\-.]+")


# What `_SEPARATORS` matches in ASCII (`\s` there: space, \t \n \v \f \r and \x1c-\x1f), deleted by
# a byte table: folding runs for every name of every catalog, and a regex substitution is the slow way.
_ASCII_SEPARATORS = b" \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f_-."


def fold(name: str) -> str:
    """Case and separators do not make two names different to a reader (`read_file` vs `readFile`)."""
    if name.isascii():
        return name.encode("ascii").translate(None, _ASCII_SEPARATORS).decode("ascii").lower()
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
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1:]


def one_edit_away(a: str, b: str) -> bool:
    """Different names that are one edit apart: the typosquat signal (equal names are not)."""
    return a != b and within_one_edit(a, b)
