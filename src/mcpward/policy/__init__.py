"""Default-deny authorisation with Cedar: every request and every list item is decided for a principal.

`guard.from_config(cfg)` builds the guard; `guard.engine_for(cfg)` the engine alone (for `mcpward
check` and the `mcpward policy` commands); docs/policy.md describes the model.
"""
