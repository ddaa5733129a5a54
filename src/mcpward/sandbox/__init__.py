"""Isolation: each stdio server runs in a sandbox with a declared profile (see docs/sandbox.md)."""
