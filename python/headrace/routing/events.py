"""What the router decided or was told, as one record for logs, metrics and the audit trail."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The actor of what the router decides by itself (a canary's gates); an operator's change names
# the caller (the admin RPC's identity), or OPERATOR when called in-process.
CANARY_ACTOR = "canary"
OPERATOR = "admin"


@dataclass(frozen=True)
class RoutingEvent:
    """Something the router decided or was told: for logs, metrics and the audit trail.

    ``before`` and ``after`` hold what changed (the config keys of an update, the active colour,
    the candidate's percent); ``actor`` who changed it.
    """

    time_s: float  # wall clock
    endpoint: str
    kind: str  # rollback | promotion | step | switch | created | updated | deleted
    detail: str
    variant: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    actor: str = CANARY_ACTOR
    before: Mapping[str, Any] = field(default_factory=dict)
    after: Mapping[str, Any] = field(default_factory=dict)
