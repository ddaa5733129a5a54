"""Which URIs a server's RFC 6570 URI template covers, decided in linear time.

Routing, pinning and policy all ask "is this URI an expansion of that template?". The template comes
from an upstream server and the URI from a client, so neither is trusted: a regex with several `.*`
(one per `{+var}`) can backtrack for ages on a hostile pair. This matcher walks the URI once per
template piece instead.

The reading is deliberately loose, good enough to route: an expression whose operator may produce
`/` (`+ # / ? & ;`) matches any run of characters, any other expression matches a run without
`/`, `?` or `#`.
"""

from __future__ import annotations

from dataclasses import dataclass

SPANNING_OPERATORS = frozenset("+#/?&;")


@dataclass(frozen=True, slots=True)
class UriTemplate:
    text: str
    # ("", literal text) | ("*", "") an expression that may span `/` | ("-", "") one that stays in a segment
    pieces: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, template: str) -> UriTemplate:
        out: list[tuple[str, str]] = []
        pos = 0
        while (start := template.find("{", pos)) >= 0 and (end := template.find("}", start)) >= 0:
            out.append(("", template[pos:start]))
            out.append(("*" if template[start + 1:start + 2] in SPANNING_OPERATORS else "-", ""))
            pos = end + 1
        out.append(("", template[pos:]))
        return cls(template, tuple(piece for piece in out if piece != ("", "")))

    def matches(self, uri: str) -> bool:
        """Whether `uri` fully matches the template, in time linear in len(uri) per piece."""
        pieces = self.pieces
        if pieces and pieces[0][0] == "" and not uri.startswith(pieces[0][1]):
            return False  # the usual answer, without the walk: most templates differ in their first literal
        if pieces and pieces[-1][0] == "" and not uri.endswith(pieces[-1][1]):
            return False
        n = len(uri)
        reach = [False] * (n + 1)  # reach[p]: the pieces so far can match uri[:p]
        reach[0] = True
        for kind, text in pieces:
            nxt = [False] * (n + 1)
            if kind == "":
                for p in range(n + 1 - len(text)):
                    if reach[p] and uri.startswith(text, p):
                        nxt[p + len(text)] = True
            elif kind == "*":
                if True in reach:
                    for q in range(reach.index(True), n + 1):
                        nxt[q] = True
            else:
                open_run = False  # some reached position with no /, ? or # between it and here
                for q in range(n + 1):
                    open_run = reach[q] or (open_run and uri[q - 1] not in "/?#")
                    nxt[q] = open_run
            reach = nxt
        return reach[n]
