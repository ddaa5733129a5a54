"""`vault:PATH#KEY`: one key of a HashiCorp Vault (or OpenBao) KV v2 secret, read with hvac.

The HTTP session ignores the environment (no HTTP(S)_PROXY, no .netrc) and follows no redirect:
the token travels in the X-Vault-Token header, which requests would carry to wherever a redirect
or a proxy variable pointed.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from mcpward.secrets.refs import SecretRef
from mcpward.secrets.settings import VaultSettings

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


class VaultReadError(Exception):
    """Why a Vault read failed, safe to show: Vault's own error text holds no secret values."""


class VaultReader:
    def __init__(self, settings: VaultSettings, token: Callable[[], str]) -> None:
        self.settings, self.token = settings, token
        self._session: Any = None
        self._lock = threading.Lock()

    def read(self, ref: SecretRef) -> str:
        s = self.settings
        if s.address is None:
            raise VaultReadError("no Vault is configured: add [secrets.vault] with address = \"https://...\"")
        hvac, requests = _module("hvac"), _module("requests")
        token = self.token()
        with self._lock:
            if self._session is None:
                session = requests.Session()
                session.trust_env = False
                self._session = session
        client = hvac.Client(url=s.address, token=token, timeout=s.timeout, allow_redirects=False,
                             session=self._session, namespace=s.namespace,
                             verify=str(s.ca_cert) if s.ca_cert else True)
        try:
            answer = client.secrets.kv.v2.read_secret_version(path=ref.target, mount_point=s.mount,
                                                              raise_on_deleted_version=True)
        except hvac.exceptions.VaultError as exc:
            raise VaultReadError(_vault_error(exc, ref, s)) from None
        except requests.exceptions.Timeout:
            raise VaultReadError(f"Vault at {s.address} did not answer within {s.timeout:g} s") from None
        except requests.exceptions.SSLError:
            raise VaultReadError(f"TLS to {s.address} failed (certificate not trusted? see secrets.vault.ca_cert)") \
                from None
        except requests.exceptions.InvalidJSONError:
            raise VaultReadError(f"Vault at {s.address} answered with something that is not JSON") from None
        except requests.exceptions.RequestException as exc:
            raise VaultReadError(f"cannot reach Vault at {s.address} ({type(exc).__name__})") from None
        except Exception as exc:  # hvac on an answer it did not expect: still a reason, never a traceback
            raise VaultReadError(f"unexpected failure reading from Vault at {s.address} ({type(exc).__name__})") \
                from None
        return _pick(answer, ref, s)


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise VaultReadError(f"the {name} package is not installed (pip install hvac)") from None


def _vault_error(exc: Any, ref: SecretRef, s: VaultSettings) -> str:
    status = {"InvalidPath": 404, "Forbidden": 403, "Unauthorized": 401, "VaultDown": 503,
              "InvalidRequest": 400, "RateLimitExceeded": 429, "InternalServerError": 500}.get(type(exc).__name__)
    where = f"{s.mount}/{ref.target}"
    if status == 404:
        return f"no secret at {where} in Vault (or its latest version is deleted; KV v2 mount {s.mount!r})"
    if status == 403:
        return f"Vault refused access to {where}: permission denied (check the token's policy, or the token expired)"
    if status == 401:
        return "Vault says the token is missing or invalid"
    if status == 503:
        return f"Vault at {s.address} is sealed or unavailable"
    errors = getattr(exc, "errors", None)
    detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
    detail = _UNPRINTABLE.sub(" ", detail)[:200] or type(exc).__name__
    return f"Vault error reading {where}: {detail}"


def _pick(answer: Any, ref: SecretRef, s: VaultSettings) -> str:
    where = f"{s.mount}/{ref.target}"
    if not isinstance(answer, dict):
        status = getattr(answer, "status_code", "?")
        if isinstance(status, int) and 300 <= status < 400:
            raise VaultReadError(f"Vault answered with a redirect ({status}); redirects are not followed (the token "
                           "would go along): point secrets.vault.address at the node that serves requests")
        raise VaultReadError(f"Vault answered {status} with no JSON for {where}")
    data = answer.get("data")
    values = data.get("data") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise VaultReadError(f"the answer for {where} is not a KV v2 secret (is mount {s.mount!r} KV version 1?)")
    assert ref.key is not None  # parse_ref guarantees a key for vault:
    if ref.key not in values:
        raise VaultReadError(f"the secret at {where} has no key {ref.key!r}")
    value = values[ref.key]
    if not isinstance(value, str):
        raise VaultReadError(f"the value of {ref.key!r} at {where} is a {_json_kind(value)}, not a string")
    return value


def _json_kind(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", dict: "JSON object", list: "JSON array"}.get(
        type(value), "null" if value is None else type(value).__name__)
