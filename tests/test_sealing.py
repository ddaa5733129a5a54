"""Sealed tokens and modern HTTP header values."""

from __future__ import annotations

import time

import pytest

from mcpward.protocol import headers
from mcpward.protocol.sealing import Sealer, SealError, digest


def test_seal_round_trip_and_tamper() -> None:
    sealer = Sealer()
    token = sealer.seal({"call": "c1", "sub": "alice"}, ttl=60)
    assert sealer.unseal(token)["call"] == "c1"
    body, mac = token.rsplit(".", 1)
    # The first MAC character changed (always a real change: the last one holds unused bits, and
    # overwriting the tail with fixed text left the token intact about once in a thousand runs).
    tampered = ("B" if mac[0] == "A" else "A") + mac[1:]
    for forged in (body + "." + tampered, token.replace("mcpward1.", "mcpward1.e"), "mcpward1.x.y", 5, None):
        with pytest.raises(SealError):
            sealer.unseal(forged)
    with pytest.raises(SealError):
        Sealer().unseal(token)  # another gateway's key


def test_seal_expiry() -> None:
    sealer = Sealer()
    token = sealer.seal({"x": 1}, ttl=0.01)
    time.sleep(0.05)
    with pytest.raises(SealError, match="expired"):
        sealer.unseal(token)


def test_digest_ignores_key_order() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


@pytest.mark.parametrize(("value", "encoded"), [
    ("us-west1", "us-west1"),
    ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
    (" padded ", "=?base64?IHBhZGRlZCA=?="),
    ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
    ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
    (True, "true"),
    (42, "42"),
])
def test_header_value_encoding(value: object, encoded: str) -> None:
    assert headers.encode_value(value) == encoded
    assert headers.decode_value(encoded) == (value if isinstance(value, str) else encoded)


def test_x_mcp_header_validation() -> None:
    ok = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"},
                                           "nested": {"type": "object", "properties": {
                                               "n": {"type": "integer", "x-mcp-header": "N"}}}}}
    assert headers.header_params(ok) == {"region": ("region",), "n": ("nested", "n")}
    assert headers.upstream_param_headers(ok, {"region": "eu", "nested": {"n": 3}}) == {
        "Mcp-Param-region": "eu", "Mcp-Param-n": "3"}
    duplicate = {"properties": {"a": {"type": "string", "x-mcp-header": "X"},
                                "b": {"type": "string", "x-mcp-header": "x"}}}
    assert headers.header_params(duplicate) is None
    number = {"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}
    assert headers.header_params(number) is None
    bad_token = {"properties": {"a": {"type": "string", "x-mcp-header": "a b"}}}
    assert headers.header_params(bad_token) is None
