"""Namespacing and collisions: deterministic, stable when servers come and go, names stay valid."""

from __future__ import annotations

import re

from mcpward.gateway.catalog import Catalog
from mcpward.gateway.config import ServerConfig


def servers(*specs: tuple[str, str, int]) -> dict[str, ServerConfig]:
    return {name: ServerConfig(name=name, prefix=prefix, command="x", priority=prio) for name, prefix, prio in specs}


def names(items: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return [i["name"] for i in items]


def test_prefixed_names_and_routing() -> None:
    cat = Catalog(servers(("git", "git", 0), ("fs", "fs", 0)), "__")
    assert names(cat.publish("tools", "git", [{"name": "status"}])) == ["git__status"]
    assert names(cat.publish("tools", "fs", [{"name": "status"}])) == ["fs__status"]
    entry = cat.resolve("tools", "fs__status")
    assert entry is not None and (entry.server, entry.name) == ("fs", "status")
    # Not listed yet, but the prefix still routes it.
    entry = cat.resolve("tools", "git__log")
    assert entry is not None and (entry.server, entry.name) == ("git", "log")
    assert cat.resolve("tools", "nobody__x") is None


def test_unprefixed_collision_is_deterministic_and_stable() -> None:
    for order in (["b", "a"], ["a", "b"]):
        cat = Catalog(servers(("a", "", 0), ("b", "", 0), ("c", "", 0)), "__")
        for server in order:
            cat.publish("tools", server, [{"name": "search"}])
        entry = cat.resolve("tools", "search")
        assert entry is not None and entry.server == "a"  # lower name wins whatever the order
    # Adding an unrelated server changes nothing; priority beats the name.
    cat = Catalog(servers(("a", "", 0), ("b", "", 5), ("z", "", 0)), "__")
    for server in ("a", "b", "z"):
        cat.publish("tools", server, [{"name": "search"}])
    entry = cat.resolve("tools", "search")
    assert entry is not None and entry.server == "b"


def test_names_stay_valid_and_distinct() -> None:
    cat = Catalog(servers(("s", "s", 0)), "__")
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    out = names(cat.publish("tools", "s", [{"name": "has space/and:colon"}, {"name": long_a}, {"name": long_b}]))
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", n) for n in out)
    assert len(set(out)) == 3
    for exposed, original in zip(out, ["has space/and:colon", long_a, long_b], strict=True):
        entry = cat.resolve("tools", exposed)
        assert entry is not None and entry.name == original


def test_removed_tools_are_forgotten_after_a_complete_listing() -> None:
    cat = Catalog(servers(("s", "", 0)), "__")
    cat.publish("tools", "s", [{"name": "old"}, {"name": "kept"}])
    cat.publish("tools", "s", [{"name": "kept"}])
    assert cat.resolve("tools", "old") is not None  # a page is not the whole list
    cat.settle("tools", "s", {"kept"})
    assert cat.resolve("tools", "old") is None and cat.resolve("tools", "kept") is not None


def test_every_page_of_an_unprefixed_server_routes() -> None:
    # Each page used to replace the last: tools on page 1 of an unprefixed server became unknown.
    cat = Catalog(servers(("s", "", 0)), "__")
    cat.publish("tools", "s", [{"name": "page1_tool"}])
    cat.publish("tools", "s", [{"name": "page2_tool"}])
    cat.settle("tools", "s", {"page1_tool", "page2_tool"})
    assert cat.resolve("tools", "page1_tool") is not None and cat.resolve("tools", "page2_tool") is not None
    cat.publish_templates("s", [{"uriTemplate": "a://{x}"}])
    cat.publish_templates("s", [{"uriTemplate": "b://{x}"}])
    assert cat.resolve_uri("a://1") == "s" and cat.resolve_uri("b://1") == "s"
    cat.settle_templates("s", {"b://{x}"})
    assert cat.resolve_uri("a://1") is None and cat.resolve_uri("b://1") == "s"


def test_a_hostile_template_cannot_stall_routing() -> None:
    # Python's `re` with one `.*` per expression backtracks for hours on these pairs (the test's timeout
    # would end it); RE2 does not, and the work is bounded (expressions per template, URI length).
    cat = Catalog(servers(("s", "", 0), ("t", "", 0), ("u", "", 0)), "__")
    cat.publish_templates("s", [{"uriTemplate": "x://" + "{+a}x" * 30 + "y"}])
    assert cat.resolve_uri("x://" + "x" * 3000) is None
    assert cat.resolve_uri("x://" + "x" * 30 + "y") == "s"
    cat.publish_templates("t", [{"uriTemplate": "{a}" * 2000}])  # adjacent expressions read as one
    assert cat.resolve_uri("q" * 100_000) is None  # longer than any URI a template may match
    assert cat.resolve_uri("q" * 100) == "t"
    cat.publish_templates("u", [{"uriTemplate": "z://" + "{a}/" * 40}])  # more expressions than allowed
    assert cat.resolve_uri("z://" + "a/" * 40) is None


def test_resource_and_template_routing() -> None:
    cat = Catalog(servers(("a", "a", 0), ("b", "b", 0)), "__")
    cat.publish_resources("a", [{"uri": "file:///x"}])
    cat.publish_templates("b", [{"uriTemplate": "test://template/{id}/data"}])
    assert cat.resolve_uri("file:///x") == "a"
    assert cat.resolve_uri("test://template/42/data") == "b"
    assert cat.resolve_uri("test://template/4/2/data") is None
    cat.publish_templates("b", [{"uriTemplate": "file:///{+path}"}])
    assert cat.resolve_uri("file:///a/b/c") == "b"
