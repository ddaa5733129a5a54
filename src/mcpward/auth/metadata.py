"""RFC 9728 Protected Resource Metadata: where clients learn which authorization server to ask.

The document is served at the path-inserted well-known URI (RFC 9728 s3.1: for
`https://gw.example/mcp` that is `/.well-known/oauth-protected-resource/mcp`) and, for clients
that probe the root, at `/.well-known/oauth-protected-resource` too.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from mcpward.auth.settings import AuthSettings

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_paths(resource: str) -> tuple[str, ...]:
    path = urllib.parse.urlsplit(resource).path.rstrip("/")
    return (WELL_KNOWN, WELL_KNOWN + path) if path else (WELL_KNOWN,)


def metadata_url(resource: str) -> str:
    """The `resource_metadata` URL a 401 points clients to."""
    parts = urllib.parse.urlsplit(resource)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + parts.path.rstrip("/"), "", ""))


def metadata_document(settings: AuthSettings) -> dict[str, Any]:
    doc: dict[str, Any] = {"resource": settings.resource, "bearer_methods_supported": ["header"]}
    oauth = settings.oauth
    if oauth is not None:
        doc["authorization_servers"] = [oauth.issuer]
        scopes = list(oauth.scopes_supported)
        for scope in (*oauth.required_scopes, *(s for group in oauth.method_scopes.values() for s in group)):
            if scope not in scopes:
                scopes.append(scope)  # a scope we demand is one clients must be able to discover
        if scopes:
            doc["scopes_supported"] = scopes
    if settings.resource_name:
        doc["resource_name"] = settings.resource_name
    return doc
