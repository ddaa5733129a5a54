"""Names across servers: namespacing, collisions, and the reverse maps for routing.

Tools and prompts are exposed as `<prefix><sep><name>`. A server may be exposed
without a prefix; when two servers then offer the same name, the winner is the one
with the higher `priority`, then the lower server name. That rule depends only on
the pair, so adding or removing an unrelated server never changes a resolution.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field

from mcpward.gateway.config import ServerConfig
from mcpward.protocol.jsonrpc import JsonObj
from mcpward.protocol.uri_template import UriTemplate

log = logging.getLogger("mcpward.catalog")
VALID_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(slots=True)
class Entry:
    server: str
    name: str  # the upstream's own name (or URI for resources)


@dataclass(slots=True)
class NameMap:
    """Exposed name -> Entry for one kind (tools or prompts)."""

    by_exposed: dict[str, Entry] = field(default_factory=dict)
    by_server: dict[str, dict[str, str]] = field(default_factory=dict)  # server -> upstream -> exposed


class Catalog:
    def __init__(self, servers: dict[str, ServerConfig], separator: str) -> None:
        self.servers = servers
        self.separator = separator
        self.maps: dict[str, NameMap] = {"tools": NameMap(), "prompts": NameMap()}
        self.resources: dict[str, str] = {}  # exact URI -> server (the best-ranked one listing it)
        self._listed: dict[str, set[str]] = {}  # server -> the URIs it listed
        self.templates: dict[str, dict[str, UriTemplate]] = {}  # server -> template text -> its matcher

    def exposed_name(self, server: str, name: str) -> str:
        prefix = self.servers[server].prefix
        full = f"{prefix}{self.separator}{name}" if prefix else name
        if VALID_NAME.match(full):
            return full
        # Keep names inside the spec's character set and length; a short hash keeps
        # two long or exotic names from folding into one.
        safe = INVALID_CHARS.sub("_", full)
        tag = hashlib.sha256(full.encode()).hexdigest()[:8]
        return f"{safe[:119]}_{tag}"

    def _rank(self, server: str) -> tuple[int, str]:
        return (-self.servers[server].priority, server)

    def ranked(self, servers: list[str]) -> list[str]:
        """`servers` in collision order, winners first: listing them in this order means a name's
        winner is published before any loser, so a loser's item is never shown (not even on the
        first listing, and not on an earlier page) while calls go to the winner."""
        return sorted(servers, key=self._rank)

    def publish(self, kind: str, server: str, items: list[JsonObj]) -> list[JsonObj]:
        """Record one server's items and return them renamed; losers of collisions are dropped."""
        names = self.maps[kind]
        mine: dict[str, str] = {}
        out: list[JsonObj] = []
        for item in items:
            name = item.get("name")
            if not isinstance(name, str):
                log.warning("server %s listed a %s without a name; hidden", server, kind[:-1])
                continue
            exposed = self.exposed_name(server, name)
            holder = names.by_exposed.get(exposed)
            if holder is not None and holder.server != server and self._rank(holder.server) < self._rank(server):
                log.warning("%s %r from %s collides with %s; %s wins", kind[:-1], exposed, server,
                            holder.server, holder.server)
                continue
            names.by_exposed[exposed] = Entry(server, name)
            mine[name] = exposed
            out.append(item if exposed == name else {**item, "name": exposed})
        # Added to what earlier pages published: a page is not the whole list. Names the server no
        # longer offers are forgotten by `settle`, once a complete listing shows what it offers.
        names.by_server.setdefault(server, {}).update(mine)
        return out

    def settle(self, kind: str, server: str, upstream_names: set[str]) -> None:
        """After a complete listing of `server`: `upstream_names` is all it offers now."""
        names = self.maps[kind]
        held = names.by_server.get(server, {})
        for name in set(held) - upstream_names:
            exposed = held.pop(name)
            entry = names.by_exposed.get(exposed)
            if entry is not None and entry.server == server:
                del names.by_exposed[exposed]

    def resolve(self, kind: str, exposed: str) -> Entry | None:
        entry = self.maps[kind].by_exposed.get(exposed)
        if entry is not None:
            return entry
        # Not listed yet: a prefixed name still routes by its prefix.
        for server, cfg in sorted(self.servers.items(), key=lambda kv: self._rank(kv[0])):
            head = f"{cfg.prefix}{self.separator}"
            if cfg.prefix and exposed.startswith(head) and len(exposed) > len(head):
                return Entry(server, exposed[len(head):])
        return None

    def unprefixed_servers(self) -> list[str]:
        return sorted((s for s, c in self.servers.items() if not c.prefix), key=self._rank)

    # ---------------------------------------------------------------- resources
    def publish_resources(self, server: str, items: list[JsonObj]) -> None:
        """One page of a server's resources: its URIs route to it unless a better-ranked server lists them."""
        listed = self._listed.setdefault(server, set())
        for item in items:
            uri = item.get("uri")
            if isinstance(uri, str):
                listed.add(uri)
                holder = self.resources.get(uri)
                if holder is None or holder == server or self._rank(server) < self._rank(holder):
                    self.resources[uri] = server

    def settle_resources(self, server: str, uris: set[str]) -> None:
        """After a complete listing of `server`: `uris` is all it lists now. A URI it dropped routes to the
        best-ranked other server that still lists it, or nowhere (until a listing shows it again)."""
        gone = self._listed.get(server, set()) - uris
        self._listed[server] = set(uris)
        for uri in gone:
            if self.resources.get(uri) != server:
                continue
            holders = [s for s, listed in self._listed.items() if uri in listed]
            if holders:
                self.resources[uri] = min(holders, key=self._rank)
            else:
                del self.resources[uri]

    def publish_templates(self, server: str, items: list[JsonObj]) -> None:
        """One page of a server's URI templates, added to what earlier pages published."""
        known = self.templates.setdefault(server, {})
        for item in items:
            template = item.get("uriTemplate")
            if isinstance(template, str) and template not in known:
                known[template] = UriTemplate.parse(template)

    def settle_templates(self, server: str, templates: set[str]) -> None:
        """After a complete listing of `server`'s templates: `templates` is all it offers now."""
        known = self.templates.get(server, {})
        for gone in set(known) - templates:
            del known[gone]

    def resolve_uri(self, uri: str) -> str | None:
        server = self.resources.get(uri)
        if server is not None:
            return server
        # Linear-time matching: templates come from upstreams and URIs from clients (no regex backtracking).
        matches = [s for s, known in self.templates.items() if any(t.matches(uri) for t in known.values())]
        return min(matches, key=self._rank) if matches else None
