"""Static API keys (hashed in the config, compared in constant time) and `mcpward auth key new`."""

from __future__ import annotations

import hmac
import subprocess
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from mcpward.auth import Authenticator, AuthFailure, load_settings
from mcpward.auth.api_keys import KEY_PREFIX, ApiKeyStore, key_digest, new_key
from mcpward.auth.settings import ApiKey
from mcpward.cli.auth import auth_app
from mcpward.gateway.config import parse
from tests.conftest import PYTHON


def authenticator(api_keys: dict[str, Any], **auth: Any) -> Authenticator:
    settings = load_settings(parse({"auth": {"api_keys": api_keys, **auth}}, "gw.toml"))
    assert settings is not None
    return Authenticator(settings)


async def test_key_authenticates_as_its_name_with_its_groups() -> None:
    key = new_key()
    auth = authenticator({"ci-bot": {"sha256": key_digest(key), "groups": ["ci", "deploy"]}})
    principal = await auth.authenticate(f"Bearer {key}", "tools/call")
    assert (principal.kind, principal.subject, principal.groups) == ("api-key", "ci-bot", ("ci", "deploy"))
    assert principal.key == "api-key:ci-bot"
    await auth.close()


async def test_wrong_key_is_refused_without_echo() -> None:
    key, other = new_key(), new_key()
    auth = authenticator({"ci-bot": {"sha256": key_digest(key)}})
    for attempt in (other, key[:-1], key + "A", KEY_PREFIX + "x"):
        with pytest.raises(AuthFailure) as info:
            await auth.authenticate(f"Bearer {attempt}")
        failure = info.value
        assert (failure.status, failure.error, failure.reason) == (401, "invalid_token", "auth.unknown_api_key")
        assert failure.credential == "api-key" and attempt not in failure.www_authenticate()
        assert attempt not in str(failure)
    await auth.close()


def test_hit_and_miss_take_the_same_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real: Callable[[str, str], bool] = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = new_key()
    store = ApiKeyStore([ApiKey(name="ci", sha256=key_digest(key))])
    assert store.lookup(key) is not None
    assert store.lookup(new_key()) is None
    # One constant-time comparison of two 64-hex digests each time, whether the key exists or not.
    assert calls == [(64, 64), (64, 64)]


async def test_api_key_scopes_meet_required_scopes() -> None:
    with_scope, without = new_key(), new_key()
    auth = authenticator({"a": {"sha256": key_digest(with_scope), "scopes": ["mcp:tools"]},
                          "b": {"sha256": key_digest(without)}},
                         oauth={"issuer": "https://idp.example.com", "required_scopes": ["mcp:tools"]})
    assert (await auth.authenticate(f"Bearer {with_scope}")).subject == "a"
    with pytest.raises(AuthFailure) as info:
        await auth.authenticate(f"Bearer {without}")
    assert (info.value.status, info.value.error) == (403, "insufficient_scope")
    await auth.close()


async def test_api_keys_only_gateway_refuses_jwts_and_serves_metadata() -> None:
    auth = authenticator({"a": {"sha256": key_digest(new_key())}})
    with pytest.raises(AuthFailure) as info:
        await auth.authenticate("Bearer eyJhbGciOiJSUzI1NiJ9.e30.AAAA")
    assert info.value.reason == "auth.no_oauth"
    assert auth.metadata() == {"resource": "http://127.0.0.1:8811/mcp", "bearer_methods_supported": ["header"]}
    await auth.close()


def test_new_keys_are_random_and_well_formed() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith(KEY_PREFIX) and len(k) == len(KEY_PREFIX) + 43 for k in keys)


def test_cli_prints_key_once_and_a_snippet_with_only_its_hash() -> None:
    result = CliRunner().invoke(auth_app, ["key", "new", "ci-bot", "--group", "ci", "-g", 'we"ird'])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith(KEY_PREFIX) and result.stdout.count(key) == 1 and key not in result.stderr
    snippet = result.stderr.split("\n", 1)[1]
    table = tomllib.loads(snippet)
    assert table["auth"]["api_keys"]["ci-bot"] == {"sha256": key_digest(key), "groups": ["ci", 'we"ird']}


async def test_cli_snippet_round_trips_into_a_working_config() -> None:
    # A real process: stdout is the key alone, so `KEY=$(mcpward auth key new ...)` works.
    proc = subprocess.run([PYTHON, "-c", "from mcpward.cli.auth import auth_app; auth_app(prog_name='mcpward auth')",
                           "key", "new", "deploy"], capture_output=True, text=True, timeout=60, check=True)
    key = proc.stdout.strip()
    data = tomllib.loads(proc.stderr.split("\n", 1)[1])
    settings = load_settings(parse(data, "gw.toml"))
    assert settings is not None
    auth = Authenticator(settings)
    assert (await auth.authenticate(f"Bearer {key}")).subject == "deploy"
    await auth.close()


def test_cli_refuses_bad_names() -> None:
    result = CliRunner().invoke(auth_app, ["key", "new", "no spaces"])
    assert result.exit_code == 2 and "key name" in result.stderr
