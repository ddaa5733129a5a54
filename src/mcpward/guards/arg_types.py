"""Shared vocabulary of the argument guard's screens: parameter kinds and findings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# `content` is text that is a document or file body (`content`, `body`, `text`, ...): screened like
# text, but measured against its own, larger string limit (`max_content`). `host` is a network target
# without a scheme (a host name or an IP address): URL-screened as `//value`.
Kind = Literal["url", "host", "path", "command", "code", "content", "text"]
KINDS: tuple[Kind, ...] = ("url", "host", "path", "command", "code", "content", "text")


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason to refuse. `rule` is the id the client and the audit see; `message` never
    quotes a whole argument value (at most a host name or a short, named construct)."""

    rule: str
    message: str

    @property
    def family(self) -> str:
        """`args.url.scheme` -> `url`: the key of `[guards.arguments] modes`."""
        parts = self.rule.split(".")
        return parts[1] if len(parts) > 1 else parts[0]


def where(path: Iterable[str | int]) -> str:
    """`("files", 0, "path")` -> `arguments.files[0].path`: how refusals name a value."""
    out = "arguments"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
