"""The encrypted store file: an authenticated header, then AES-256-GCM over the secrets as JSON.

Layout (three lines, so a person can see what the file is without being able to read it):

    mcpward-secrets/1
    {"check": "...", "kdf": {...}}        <- the header, authenticated as GCM associated data
    base64(nonce || ciphertext || tag)

The master key comes from the header's `kdf`: Argon2id or scrypt over a passphrase with the
header's random salt, or a random key kept in the OS keyring (`key_id` names it). Two subkeys
are derived from it with HKDF: one encrypts, the other gives `check`, which tells a wrong key
("wrong passphrase") apart from a modified file ("authentication failed"); it is no better an
oracle for guessing than the GCM tag already is. A fresh random nonce is used for every write.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"mcpward-secrets/1\n"
KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16
MAX_FILE = 16 * 1024 * 1024
# RFC 9106's second recommended Argon2id setting (64 MiB, 3 passes, 4 lanes): about 0.2 s here.
ARGON2 = {"memory_cost": 64 * 1024, "iterations": 3, "lanes": 4}
# OWASP's scrypt floor (N=2^17, r=8, p=1: 128 MiB), used when cryptography lacks Argon2id.
SCRYPT = {"n": 2**17, "r": 8, "p": 1}
# What a header may ask for. Bounded both ways: a planted header must neither make us allocate
# gigabytes before the tag is checked nor talk us into a trivially guessable key. The memory a KDF
# needs (Argon2id: memory_cost KiB; scrypt: 128 * r * n bytes) is capped at MAX_KDF_MEMORY, four
# times what the settings above use; each parameter's range alone would allow up to 4 GiB.
MAX_KDF_MEMORY = 256 * 1024 * 1024
ARGON2_BOUNDS = {"memory_cost": (19 * 1024, MAX_KDF_MEMORY // 1024), "iterations": (1, 16), "lanes": (1, 16)}
SCRYPT_BOUNDS = {"n": (2**14, 2**20), "r": (1, 32), "p": (1, 16)}


class EnvelopeError(Exception):
    """The file is not a store file, or cannot be opened; never carries content."""


class WrongKeyError(EnvelopeError):
    """The key (passphrase or keyring key) is not the one the file was written with."""


def has_argon2() -> bool:
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    except ImportError:
        return False
    try:
        Argon2id(salt=b"\0" * SALT_BYTES, length=KEY_BYTES, iterations=1, lanes=1, memory_cost=8)
    except Exception:  # UnsupportedAlgorithm: the OpenSSL under cryptography lacks it
        return False
    return True


def new_passphrase_kdf() -> dict[str, Any]:
    salt = _b64(os.urandom(SALT_BYTES))
    if has_argon2():
        return {"name": "argon2id", "salt": salt, **ARGON2}
    return {"name": "scrypt", "salt": salt, **SCRYPT}


def new_keyring_kdf() -> dict[str, Any]:
    return {"name": "keyring", "key_id": os.urandom(16).hex()}


def derive(kdf: dict[str, Any], secret: bytes) -> bytes:
    """The master key: `secret` is the passphrase (UTF-8) or, for `keyring`, the stored random key."""
    name = kdf["name"]
    if name == "keyring":
        if len(secret) != KEY_BYTES:
            raise WrongKeyError(f"the keyring key is {len(secret)} bytes, expected {KEY_BYTES}")
        return secret
    salt = _unb64(kdf["salt"], "kdf.salt")
    if name == "argon2id":
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        return Argon2id(salt=salt, length=KEY_BYTES, iterations=kdf["iterations"], lanes=kdf["lanes"],
                        memory_cost=kdf["memory_cost"]).derive(secret)
    return Scrypt(salt=salt, length=KEY_BYTES, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(secret)


def read_header(data: bytes) -> dict[str, Any]:
    """The validated header of a store file (no key needed), or EnvelopeError saying what is wrong."""
    header, _, _ = _split(data)
    return header


def seal(master: bytes, kdf: dict[str, Any], contents: dict[str, Any]) -> bytes:
    enc_key, check = _subkeys(master)
    header_line = orjson.dumps({"check": _b64(check), "kdf": kdf}, option=orjson.OPT_SORT_KEYS) + b"\n"
    nonce = os.urandom(NONCE_BYTES)
    body = AESGCM(enc_key).encrypt(nonce, orjson.dumps(contents), MAGIC + header_line)
    return MAGIC + header_line + base64.b64encode(nonce + body) + b"\n"


def unseal(master: bytes, data: bytes) -> dict[str, Any]:
    header, aad, body = _split(data)
    enc_key, check = _subkeys(master)
    if not hmac.compare_digest(check, _unb64(header["check"], "check")):
        raise WrongKeyError("wrong key")
    try:
        plain = AESGCM(enc_key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], aad)
    except InvalidTag:
        raise EnvelopeError("authentication failed: the file was modified or damaged after it was written") from None
    try:
        contents = orjson.loads(plain)
    except orjson.JSONDecodeError:
        raise EnvelopeError("the decrypted contents are not JSON (written by an incompatible version?)") from None
    if not isinstance(contents, dict):
        raise EnvelopeError("the decrypted contents are not a JSON object")
    return contents


def _subkeys(master: bytes) -> tuple[bytes, bytes]:
    def hkdf(info: bytes, length: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)

    return hkdf(b"mcpward-secrets/1 encryption", KEY_BYTES), hkdf(b"mcpward-secrets/1 key check", 16)


def _split(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    if len(data) > MAX_FILE:
        raise EnvelopeError(f"larger than {MAX_FILE // (1024 * 1024)} MiB, so not a store file")
    if not data.startswith(MAGIC):
        raise EnvelopeError("not an mcpward secrets file (the first line is not 'mcpward-secrets/1')")
    lines = data[len(MAGIC):].split(b"\n")
    if len(lines) != 3 or lines[2]:
        raise EnvelopeError("damaged: expected a header line and a data line after the first line")
    try:
        header = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        raise EnvelopeError("damaged: the header is not JSON") from None
    _check_header(header)
    body = _unb64(lines[1].decode("ascii", "replace"), "data")
    if len(body) < NONCE_BYTES + 16:
        raise EnvelopeError("damaged: the data line is too short")
    return header, MAGIC + lines[0] + b"\n", body


def _check_header(header: Any) -> None:
    if not isinstance(header, dict) or set(header) != {"check", "kdf"}:
        raise EnvelopeError("damaged: the header must have exactly 'check' and 'kdf'")
    if not isinstance(header["check"], str):
        raise EnvelopeError("damaged: header check must be a string")
    kdf = header["kdf"]
    if not isinstance(kdf, dict) or not isinstance(kdf.get("name"), str):
        raise EnvelopeError("damaged: header kdf has no name")
    name = kdf["name"]
    if name == "keyring":
        key_id = kdf.get("key_id")
        if set(kdf) != {"name", "key_id"} or not isinstance(key_id, str) or len(key_id) != 32 \
                or any(c not in "0123456789abcdef" for c in key_id):
            raise EnvelopeError("damaged: header kdf 'keyring' needs a 32-hex-digit key_id")
        return
    bounds = {"argon2id": ARGON2_BOUNDS, "scrypt": SCRYPT_BOUNDS}.get(name)
    if bounds is None:
        raise EnvelopeError(f"unsupported kdf {name[:20]!r} (expected argon2id, scrypt or keyring)")
    if set(kdf) != {"name", "salt", *bounds}:
        raise EnvelopeError(f"damaged: header kdf {name} must have exactly name, salt, {', '.join(bounds)}")
    for param, (low, high) in bounds.items():
        value = kdf[param]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise EnvelopeError(f"header kdf {name}.{param} must be an integer in {low}..{high}")
    if name == "scrypt" and kdf["n"] & (kdf["n"] - 1):
        raise EnvelopeError("header kdf scrypt.n must be a power of two")
    if name == "scrypt" and 128 * kdf["r"] * kdf["n"] > MAX_KDF_MEMORY:
        raise EnvelopeError(f"header kdf scrypt needs 128 x r x n = {128 * kdf['r'] * kdf['n'] // 2**20} MiB, "
                            f"more than the {MAX_KDF_MEMORY // 2**20} MiB allowed")
    if name == "argon2id" and kdf["memory_cost"] < 8 * kdf["lanes"]:
        raise EnvelopeError("header kdf argon2id.memory_cost must be at least 8 x lanes")
    if name == "argon2id" and not has_argon2():
        raise EnvelopeError("written with Argon2id, which the installed cryptography package lacks")
    if len(_unb64(kdf["salt"], "kdf.salt")) < SALT_BYTES:
        raise EnvelopeError(f"header kdf salt must be at least {SALT_BYTES} bytes")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise EnvelopeError(f"damaged: {what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"damaged: {what} is not valid base64") from None
