"""Characters and backticks: the checks every string and key gets, whatever its kind."""

from __future__ import annotations

import pytest

from mcpward.guards.text_screen import BacktickScreen, screen_characters
from tests.test_arguments_guard import guard, rule_of

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f",
        "\u061c"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u2061", "\u2064", "\u180e", "\U000e0041", "\U000e0001"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\ud800"]


@pytest.mark.parametrize("ch", BIDI)
def test_direction_controls_refused(ch: str) -> None:
    found = screen_characters(f"access = 'user{ch}' // admin")
    assert found is not None and found.rule == "args.unicode.bidi" and f"U+{ord(ch):04X}" in found.message


@pytest.mark.parametrize("ch", INVISIBLE)
def test_invisible_characters_refused(ch: str) -> None:
    found = screen_characters(f"ignore{ch}previous")
    assert found is not None and found.rule == "args.unicode.invisible"


@pytest.mark.parametrize("ch", CONTROL)
def test_control_characters_refused(ch: str) -> None:
    found = screen_characters(f"line{ch}more")
    assert found is not None and found.rule == "args.unicode.control"


@pytest.mark.parametrize("text", [
    "tab\there\nnew line\r\n", "plain ASCII", "Ünïcödé façade", "日本語のテキスト", "emoji 👍🏽 ok",
    "family 👨\u200d👩\u200d👧 emoji sequence", "Hindi क्\u200dष joiner",
    "Persian \u0646\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 with ZWNJ",
    "heart ❤\ufe0f", "",
])
def test_ordinary_text_allowed(text: str) -> None:
    assert screen_characters(text) is None


def test_joiners_at_the_edges_or_between_ascii_are_refused() -> None:
    for text in ("\u200dstart", "end\u200d", "a\u200cb", "👍\u200da"):
        found = screen_characters(text)
        assert found is not None and found.rule == "args.unicode.invisible", repr(text)


def test_backticks() -> None:
    screen = BacktickScreen()
    markdown = "Example:\n\n```python\nprint(1)\n```\n\nUse `x` and `y`."
    assert screen.screen(markdown, strict=False) is None  # a Markdown fence in text is fine
    assert screen.screen("````` break out", strict=False) is not None
    assert screen.screen("`a`b`c`d`e`f`g`h`i`j`k`l`m`n`o`p`q`r`", strict=False) is not None  # backtick-heavy
    assert screen.screen(markdown, strict=True) is not None  # no fence in a URL, path, command or code value
    assert screen.screen("a `single` tick", strict=True) is None
    assert BacktickScreen(max_run=5).screen("````` five", strict=False) is None


async def test_guard_checks_values_and_keys_everywhere() -> None:
    g = guard()
    assert await rule_of(g, {"a": {"b": ["ok", "x\u202ey"]}}) == "args.unicode.bidi"
    found_key = await rule_of(g, {"na\u200bme": "v"})
    assert found_key == "args.unicode.invisible"
    assert await rule_of(g, {"text": "ANSI \x1b[31mred"}) == "args.unicode.control"
    assert await rule_of(g, {"text": "```` fence breakout"}) == "args.backticks"
    assert await rule_of(g, {"path": "```x```"}) == "args.backticks"
    assert await rule_of(g, {"content": "# Title\n\n```sh\nls\n```\n"}) is None
