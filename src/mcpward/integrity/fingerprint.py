"""Fingerprints: sha256 over canonical JSON of everything a model or a policy reads.

A tool's fingerprint covers its own definition (the fields below, schemas whole, so nested
descriptions, defaults and enums count), the server's instructions (the model reads them
next to every tool) and the server's identity (what is launched, from which directory, or which
URL is called, and which environment names it is given, secrets delivered as env vars included).
Key order and JSON whitespace never change a fingerprint; any change to a string a model reads does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mcpward.gateway.config import ServerConfig
from mcpward.integrity.walk import UNPINNED
from mcpward.protocol import exact

# The spec's fields per list kind. A listed item's other keys ("x-model-note", a vendor field) reach the
# client too, and a model may read them: they are pinned as well (`pinned_view`), except UNPINNED.
PINNED_FIELDS: dict[str, tuple[str, ...]] = {
    "tools": ("name", "title", "description", "inputSchema", "outputSchema", "annotations"),
    "prompts": ("name", "title", "description", "arguments"),
    "resourceTemplates": ("uriTemplate", "name", "title", "description", "mimeType", "annotations"),
}
PINNED_KINDS = tuple(PINNED_FIELDS)
# Presentation and protocol metadata, never read as instructions: left out of every fingerprint.


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no insignificant whitespace, UTF-8."""
    return exact.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical(value)).hexdigest()


def pinned_view(kind: str, item: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The part of a listed item that is pinned, under the upstream's own `name` (the gateway's
    namespacing must not change a pin): every key a client receives but UNPINNED. An item with only the
    spec's fields has the view (and the fingerprint) it had when only PINNED_FIELDS were pinned; one with
    a key outside the spec gets a view with that key, so a change of it alone is a change of definition."""
    if kind not in PINNED_FIELDS:
        raise KeyError(kind)  # as the field table did: only listed kinds are pinned
    view = {key: value for key, value in item.items() if key not in UNPINNED}
    view["uriTemplate" if kind == "resourceTemplates" else "name"] = name
    return view


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Who a server is, as far as the gateway can tell before it says anything."""

    launch: dict[str, Any]  # command, args and env names, or URL and header names
    digest: str

    @classmethod
    def of(cls, cfg: ServerConfig) -> ServerIdentity:
        launch: dict[str, Any]
        if cfg.command is not None:
            # Env names include secrets handed over as env vars ([servers.X.secrets] with as = "env"):
            # the server reads them as it reads `env`. `cwd` is there only when set, so the identity
            # (and every pin's fingerprint) of a server without one is what it was before cwd counted.
            launch = {"command": cfg.command, "args": list(cfg.args), "env": sorted({*cfg.env, *_env_secrets(cfg)})}
            if cfg.cwd is not None:
                launch["cwd"] = cfg.cwd
        else:
            launch = {"url": cfg.url, "headers": sorted(name.lower() for name in cfg.headers)}
        return cls(launch, digest(launch))


def _env_secrets(cfg: ServerConfig) -> list[str]:
    """Names of the secrets a server gets as environment variables (the values never count: they rotate)."""
    return [name for name, spec in cfg.secrets.items() if isinstance(spec, Mapping) and spec.get("as") == "env"]


def instructions_digest(text: str | None) -> str:
    return digest(text or "")


def fingerprint(kind: str, view: Mapping[str, Any], identity: str, instructions: str) -> str:
    """One definition's fingerprint, bound to its server's identity and instructions digests."""
    return digest({"kind": kind, "definition": view, "server": identity, "instructions": instructions})
