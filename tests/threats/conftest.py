"""Threat tests reuse the suite's fixtures (gateways as processes, free ports)."""

from tests.conftest import serve_gateway, write_config  # noqa: F401 - pytest fixtures
