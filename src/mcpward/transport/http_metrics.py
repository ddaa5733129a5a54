"""Who may read the Prometheus metrics on the HTTP front.

Metrics name every tool and count its calls and refusals, including tools the policy hides from
the caller, so with [auth] on, authenticating is not enough: the principal must be listed in
`[telemetry] metrics_principals` (empty: nobody). Without [auth] the front serves the local user
only (loopback), and metrics stay open to it as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpward.gateway.context import Principal
from mcpward.protocol import jsonrpc
from mcpward.transport.http_checks import HttpRejection

if TYPE_CHECKING:
    from mcpward.transport.http_front import RefusalAudit

METRICS_RULE = "telemetry.metrics-principals"


def check_metrics_reader(principal: Principal, allowed: frozenset[str], auth_on: bool, refusals: RefusalAudit,
                         remote: str | None) -> None:
    """Return when `principal` may read the metrics; otherwise audit (bounded) and raise a 403."""
    if not auth_on or principal.key in allowed:
        return
    refusals.refused(METRICS_RULE, 403, remote, principal=principal.key, http_method="GET")
    message = f"refused by {METRICS_RULE}: this principal may not read the metrics"
    raise HttpRejection(403, jsonrpc.error(None, jsonrpc.REFUSED, message, {"rule": METRICS_RULE}))
