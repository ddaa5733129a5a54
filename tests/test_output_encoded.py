"""Output-guard leftovers of issue 3: secrets and PII the redactor used to let through.

Tokens glued to a word, quoted passwords with spaces, literal `\\uXXXX` escapes, base64 runs, a key
split across two content blocks, the whole-message cap on server messages, and an SSN between
hyphens. Secret-looking values are assembled at run time.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from mcpward.gateway.config import parse
from mcpward.gateway.context import system_context
from mcpward.guards import encoded, output
from mcpward.guards.base import Call, Refusal
from mcpward.guards.redactor import SECRETS, Profile

AWS = "AKIA" + "QWADE5R4" + "2RDZ4JEM"
GH = "ghp_" + "wWPw5k4aXcaT4fNP" + "0UcnZwJUVFk6LO0pINUx"
GLPAT = "glpat-" + "Zq8Xw3Rt7Yp2Lm9Kd4Vb"
PEM = ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIBOgIBAAJBAJtFfagSXdo0JmX6EdwWGvFMaXeOFY5x\n-----END "
       + "RSA PRIVATE KEY-----\n")
SSN_PII = Profile("test-ssn", frozenset({"pii"}), frozenset({"pii-ssn", "pii-ssn-labelled"}))


def guard(**guards: Any) -> output.OutputGuard:
    made = output.from_config(parse({"servers": {"s": {"command": "x"}}, "guards": guards}))
    assert made is not None
    return made


_DEFAULT = parse({})


def redact(text: str, profile: Profile = SECRETS) -> str:
    out = output.redactor_for(_DEFAULT).redact(text, profile)
    return text if out is None else out


def call() -> Call:
    return Call(ctx=system_context(), method="tools/call", params={}, server="s", target="t", exposed="s__t")


def texts(result: dict[str, Any] | None) -> list[str]:
    assert result is not None
    return [block["text"] for block in result["content"]]


# ------------------------------------------------------------------------------------------ 1: glued tokens


@pytest.mark.parametrize(("text", "secret", "rule"), [
    (f"x_{GH}", GH, "github-token"),
    (f"token{GH} done", GH, "github-token"),
    (f"foo{AWS} bar", AWS, "aws-access-key-id"),
    (f"id:v1{GLPAT} end", GLPAT, "gitlab-token"),
])
def test_a_token_glued_to_a_word_is_redacted(text: str, secret: str, rule: str) -> None:
    out = redact(text)
    assert secret not in out and f"[REDACTED:{rule}]" in out


@pytest.mark.parametrize("text", [
    "disk_test_configuration2024xyz is a name",  # sk_test_ inside a word: prefix too short to trust
    "see SHAKIA1234567890ABCDEFGHIJ1234 for the batch",  # AKIA inside a longer upper-case run
    "x_ghp_short and tokenghp_notlongenough",
])
def test_glued_text_that_is_not_a_token_stays(text: str) -> None:
    assert redact(text) == text


# ------------------------------------------------------------------------------------------ 2: quoted passwords


@pytest.mark.parametrize(("text", "kept"), [
    ('password: "correct horse battery staple" ok', '" ok'),
    ("db_password = 'correct horse battery' # yes", "' # yes"),
    ('PW "Tr0ub4dor and 3 more" end', '" end'),
])
def test_a_quoted_password_is_redacted_to_its_closing_quote(text: str, kept: str) -> None:
    out = redact(text)
    assert "[REDACTED:generic-password]" in out and out.endswith(kept)
    assert not any(word in out for word in ("horse", "battery", "more"))


async def test_a_structured_password_with_spaces_is_redacted_whole() -> None:
    result = {"content": [{"type": "text", "text": "ok"}],
              "structuredContent": {"user": "jane", "password": "correct horse battery staple"}}
    out = await guard().on_result(call(), result)
    assert out is not None and out["structuredContent"]["password"] == "[REDACTED:generic-password]"
    assert out["structuredContent"]["user"] == "jane"


def test_quoted_values_that_are_not_passwords_keep_their_words() -> None:
    placeholder = 'password: "Enter your password here"'
    assert redact(placeholder) == placeholder
    unclosed = 'password "never closed and then a long sentence follows'  # no closing quote: not one value
    assert "closed and then a long sentence follows" in redact(unclosed)


def test_a_quoted_value_is_bounded() -> None:
    far = 'password: "Zq8Xw3 ' + "word " * 40 + '"'  # closing quote past MAX_QUOTED: not one value
    out = redact(far)
    assert "word word" in out


# ------------------------------------------------------------------------------------------ 3: \uXXXX escapes


def escaped(value: str) -> str:
    return "".join(f"\\u{ord(ch):04x}" for ch in value)


@pytest.mark.parametrize("text", [
    '{"token": "' + GH.replace("_", "\\u005f") + '"}',
    "key " + escaped(AWS) + " in a JSON dump",
    "half " + AWS[:4] + escaped(AWS[4:10]) + AWS[10:],
])
async def test_a_secret_written_with_escapes_is_redacted(text: str) -> None:
    out = texts(await guard().on_result(call(), {"content": [{"type": "text", "text": text}]}))[0]
    assert "[REDACTED:" in out
    assert "\\u" not in out.split("[REDACTED:")[1]  # the escaped span went whole
    # Also when the text is one of many strings (the joined path).
    many = {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": text}]}
    assert "[REDACTED:" in texts(await guard().on_result(call(), many))[1]


async def test_escapes_in_clean_text_are_left_alone() -> None:
    text = 'caf\\u00e9 \\u0041BC and "\\u003cb\\u003e" are fine'
    assert await guard().on_result(call(), {"content": [{"type": "text", "text": text}]}) is None


# ------------------------------------------------------------------------------------------ 4: base64


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def scanned(text: str, **guards: Any) -> str:
    """`text` as one text block through the output guard (base64 is decoded by the guard's pass)."""
    out = await guard(**guards).on_result(call(), {"content": [{"type": "text", "text": text}]})
    return text if out is None else texts(out)[0]


@pytest.mark.parametrize("lead", ["", "a", "ab"])  # the secret at each place in a 3-byte group
@pytest.mark.parametrize("inner", [f"aws_access_key_id = {AWS}\n", "db_password: Tr0ub4dor&3xyz\n", PEM,
                                   f"export GITHUB_TOKEN={GH}\n"])
async def test_a_secret_inside_base64_is_redacted_with_the_whole_run(lead: str, inner: str) -> None:
    run = b64(lead + "# settings\n" + inner + "debug = false\n")
    out = await scanned(f'{{"data": "{run}", "kind": "Secret"}}')
    assert out == '{"data": "[REDACTED:base64-secret]", "kind": "Secret"}'


async def test_base64_in_structured_content_and_in_many_blocks_is_redacted() -> None:
    run = b64(f"# settings\naws_access_key_id = {AWS}\n")
    result = {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": f"cfg {run}"}],
              "structuredContent": {"secret.yaml": run}}
    out = await guard().on_result(call(), result)
    assert out is not None and run not in json.dumps(out)
    assert out["structuredContent"]["secret.yaml"] == "[REDACTED:base64-secret]"
    assert out["_meta"]["mcpward/output"]["redacted"]["base64-secret"] == 2


async def test_base64_secret_in_block_mode_refuses() -> None:
    with pytest.raises(Refusal) as caught:
        await scanned(f"cfg {b64('# x' + chr(10) + 'password: Tr0ub4dor&3xyz')}", secrets={"mode": "block"})
    assert caught.value.rule == "secrets.base64-secret"


async def test_base64_without_a_secret_passes() -> None:
    for plain in ("the password policy says twelve characters", "token bucket rate limiter, secret sauce",
                  "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"):
        text = f"blob {b64(plain)} end"
        assert await scanned(text) == text


async def test_base64_of_an_encrypted_private_key_passes_like_the_base64_pem_rule() -> None:
    encrypted = PEM.replace("KEY-----\n", "KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0345\n\n", 1)
    text = f"blob {b64('#' + encrypted)} end"  # '#': not at the start, so only the decoding sees it
    assert await scanned(text) == text
    assert "[REDACTED:base64-secret]" in await scanned(f"blob {b64('#' + PEM)} end")


async def test_a_long_run_is_decoded_once_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = encoded._decode
    monkeypatch.setattr(encoded, "_decode", lambda run: decoded.append(len(run)) or real(run))
    # Many base64 literals in one run with nothing secret in it: one decode, not one per literal.
    clean = b64(" ".join(["password", "token", "secret"] * 300))
    assert await scanned(f"x {clean} y") == f"x {clean} y"
    assert len(decoded) == 1
    # A secret deep in a run far longer than the decoding bound is still found around its literal.
    decoded.clear()
    huge = b64("z" * 150_000 + f" password = Tr0ub4dor&3xyz {'q' * 150_000}")
    out = await scanned(huge, output={"max_result_bytes": 1024 * 1024})
    assert "[REDACTED:base64-secret]" in out and all(n <= 2 * encoded.MAX_BASE64 + 64 for n in decoded)
    # Only the first MAX_SEARCH bytes of a result are searched (bounded cost per result).
    decoded.clear()
    far = "x " * (encoded.MAX_SEARCH // 2) + b64("# x\npassword: Tr0ub4dor&3xyz\n")
    assert await scanned(far, output={"max_result_bytes": 4 * 1024 * 1024}) == far and not decoded


# ------------------------------------------------------------------------------------------ 5: seams between blocks


async def test_a_key_split_across_two_blocks_is_redacted_on_both_sides() -> None:
    result = {"content": [{"type": "text", "text": "key id " + AWS[:8]}, {"type": "text", "text": AWS[8:] + " ok"}]}
    first, second = texts(await guard().on_result(call(), result))
    assert first == "key id [REDACTED:aws-access-key-id]"
    assert second == "[REDACTED:aws-access-key-id] ok"


async def test_blocks_that_only_read_as_a_key_with_a_space_between_pass() -> None:
    spaced = {"content": [{"type": "text", "text": "key id " + AWS[:8] + "\n"}, {"type": "text", "text": AWS[8:]}]}
    assert await guard().on_result(call(), spaced) is None
    words = {"content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]}
    assert await guard().on_result(call(), words) is None


async def test_a_split_key_in_block_mode_refuses() -> None:
    result = {"content": [{"type": "text", "text": GH[:20]}, {"type": "text", "text": GH[20:]}]}
    with pytest.raises(Refusal) as caught:
        await guard(secrets={"mode": "block"}).on_result(call(), result)
    assert caught.value.rule == "secrets.github-token"


# ------------------------------------------------------------------------------------------ 6: whole-message cap


async def test_a_server_message_over_the_whole_cap_is_refused_and_audited(
        recorded: list[tuple[str, dict[str, Any]]]) -> None:
    g = guard(output={"max_result_bytes": 4096, "max_message_bytes": 8192})
    params = {"level": "info", "data": {f"k{i}": "x" * 1000 for i in range(20)}}  # each string fits
    with pytest.raises(Refusal) as caught:
        await g.on_message(system_context(), "s", "notifications/message", params)
    assert caught.value.rule == "output.message-too-large"
    assert "max_message_bytes" in caught.value.message
    records = [fields for event, fields in recorded if event == "output"]
    assert records and records[-1]["rule"] == "output.message-too-large" and records[-1]["outcome"] == "blocked"
    small = {"level": "info", "data": {f"k{i}": "x" * 100 for i in range(20)}}
    assert await g.on_message(system_context(), "s", "notifications/message", small) is None


async def test_the_whole_message_cap_has_a_bounded_default() -> None:
    g = guard()
    assert g.max_message_bytes == output.MESSAGE_FACTOR * output.DEFAULT_MAX_RESULT_BYTES
    params = {"level": "info", "data": ["y" * 200_000 for _ in range(8)]}
    with pytest.raises(Refusal) as caught:
        await g.on_message(system_context(), "s", "notifications/message", params)
    assert caught.value.rule == "output.message-too-large"
    one = {"level": "info", "data": "y" * 400_000}  # one long string: cut to the result cap, fits
    out = await g.on_message(system_context(), "s", "notifications/message", one)
    assert out is not None and out["data"].endswith("characters]")
    assert len(json.dumps(out)) <= g.max_message_bytes


def test_the_whole_message_cap_is_validated() -> None:
    from mcpward.gateway.config import ConfigError

    with pytest.raises(ConfigError, match="max_message_bytes"):
        guard(output={"max_message_bytes": 10})


# ------------------------------------------------------------------------------------------ 7: SSN between hyphens


@pytest.mark.parametrize(("text", "found"), [
    ("id-234-56-7891-x", True),
    ("user-234-56-7891", True),
    ("ref 234-56-7891-b2", True),
    ("1-234-56-7891", False),  # part of a longer digit run (a phone number)
    ("234-56-7891-12", False),
    ("id-666-56-7891-x", False),  # invalid area
    ("id-234-00-7891-x", False),  # invalid group
    ("id-234-56-0000-x", False),  # invalid serial
])
def test_an_ssn_between_hyphens(text: str, found: bool) -> None:
    out = redact(text, SSN_PII)
    assert ("[REDACTED:pii-ssn]" in out) is found
