"""Identity on the HTTP front: OAuth 2.1 resource server (JWT via JWKS, RFC 7662 introspection,
RFC 9728 metadata) and static API keys. See docs/auth.md."""

from mcpward.auth.authenticator import Authenticator, AuthFailure, AuthSetupError
from mcpward.auth.settings import ApiKey, AuthSettings, OAuthSettings, load_settings

__all__ = ["ApiKey", "AuthFailure", "AuthSettings", "AuthSetupError", "Authenticator", "OAuthSettings",
           "load_settings"]
