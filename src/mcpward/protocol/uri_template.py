"""Which URIs a server's RFC 6570 URI template covers, decided in linear time.

Routing, pinning and policy all ask "is this URI an expansion of that template?". The template comes
from an upstream server and the URI from a client, so neither is trusted: Python's `re` backtracks
for ages on a template with several `{+var}` (one `.*` each) and a long URI. The template is
compiled for RE2 instead (linear time, no backtracking), and the work is bounded: a template with
more than MAX_EXPRESSIONS expressions, or a URI longer than MAX_URI, never matches (real templates
have a handful of expressions; the argument guard refuses URIs over its string limit, 8 KiB by default,
by name once they are routed).

The reading is deliberately loose, good enough to route: an expression whose operator may produce
`/` (`+ # / ? & ;`) matches any run of characters, any other expression matches a run without
`/`, `?` or `#`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped]

log = logging.getLogger("mcpward.uri_template")
SPANNING_OPERATORS = frozenset("+#/?&;")
MAX_EXPRESSIONS = 32
MAX_URI = 65536
_EXPRESSION = re.compile(r"\{([^}]*)\}")


@dataclass(frozen=True, slots=True)
class UriTemplate:
    text: str
    _pattern: Any  # a compiled RE2 pattern, or None: this template never matches

    @classmethod
    def parse(cls, template: str) -> UriTemplate:
        parts: list[str] = []
        pos = expressions = 0
        for match in _EXPRESSION.finditer(template):
            literal = template[pos:match.start()]
            spanning = match.group(1)[:1] in SPANNING_OPERATORS
            wildcard = "(?s:.*)" if spanning else "[^/?#]*"
            if not literal and parts and parts[-1] in ("(?s:.*)", "[^/?#]*"):
                # Adjacent expressions read as one: the widest of them.
                parts[-1] = "(?s:.*)" if spanning or parts[-1] == "(?s:.*)" else "[^/?#]*"
            else:
                parts += [re2.escape(literal), wildcard] if literal else [wildcard]
                expressions += 1
            pos = match.end()
        parts.append(re2.escape(template[pos:]))
        if expressions > MAX_EXPRESSIONS:
            log.warning("URI template with %d expressions (more than %d) ignored: %.80r", expressions,
                        MAX_EXPRESSIONS, template)
            return cls(template, None)
        try:
            return cls(template, re2.compile("".join(parts)))
        except re2.error:
            log.warning("URI template cannot be compiled; ignored: %.80r", template)
            return cls(template, None)

    def matches(self, uri: str) -> bool:
        """Whether `uri` fully matches the template."""
        if self._pattern is None or len(uri) > MAX_URI:
            return False
        return self._pattern.fullmatch(uri) is not None
