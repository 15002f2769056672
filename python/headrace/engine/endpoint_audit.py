"""Endpoint changes in the audit trail: the same ``--audit-log`` file model transitions go to,
as records of ``kind`` "endpoint" (see ``registry/audit.py``).

An operator's change (AdminService create, update, delete, switch, rollback) is written and
fsynced before it takes effect, on the admin call's worker thread: :meth:`EndpointAuditTrail.write`
raises UnavailableError when the file cannot be written, and the change is not made. What the
router decides by itself (a canary's rollback by a failed gate, its promotion at 100 %) has
already taken effect, on the event-loop thread, which must not wait for an fsync: those records
go to one writer thread, in order (:meth:`EndpointAuditTrail.on_event`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from headrace.errors import HeadraceError, UnavailableError
from headrace.registry.audit import AuditLog, EndpointAction, EndpointAuditRecord
from headrace.routing import RoutingEvent
from headrace.routing.events import CANARY_ACTOR
from headrace.thread_policy import start_helper_thread

log = logging.getLogger(__name__)

# Routing events that change an endpoint and go to the trail, as the action written; a canary's
# steps between 0 and 100 % are counted in Prometheus and kept in the report, not audited.
_OPERATOR_ACTIONS = {
    "created": EndpointAction.CREATED,
    "updated": EndpointAction.UPDATED,
    "deleted": EndpointAction.DELETED,
    "switch": EndpointAction.SWITCH,
    "rollback": EndpointAction.ROLLBACK,
}
_AUTOMATIC_ACTIONS = {
    "rollback": EndpointAction.CANARY_ROLLBACK,
    "promotion": EndpointAction.CANARY_PROMOTION,
}


def _plain(value: Any) -> Any:
    """JSON-ready data: mappings and sequences as dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def audit_record(event: RoutingEvent, action: EndpointAction) -> EndpointAuditRecord:
    reason = event.fields.get("reason")
    return EndpointAuditRecord(
        endpoint=event.endpoint,
        action=action,
        actor=event.actor,
        before=_plain(dict(event.before)),
        after=_plain(dict(event.after)),
        variant=event.variant,
        reason=str(reason) if reason else event.detail,
        time_unix_s=event.time_s,
    )


class EndpointAuditTrail:
    """Writes endpoint records to ``audit`` (None: the server keeps no trail; nothing is done)."""

    def __init__(self, audit: AuditLog | None) -> None:
        self.audit = audit
        self._writer: ThreadPoolExecutor | None = None
        if audit is not None:
            self._writer = ThreadPoolExecutor(
                1, thread_name_prefix="headrace-endpoint-audit", initializer=start_helper_thread
            )

    def write(self, event: RoutingEvent) -> None:
        """An operator's change, before it takes effect (the router's ``audit`` hook)."""
        action = _OPERATOR_ACTIONS.get(event.kind)
        if self.audit is None or action is None:
            return
        try:
            self.audit.append(audit_record(event, action))
        except (OSError, HeadraceError) as error:
            raise UnavailableError(
                f"endpoint '{event.endpoint}' not changed: the audit trail cannot be written: "
                f"{error}"
            ) from None

    def on_event(self, event: RoutingEvent) -> None:
        """Every routing event (the router's ``on_event`` hook): a canary's own rollback or
        promotion is queued for the writer thread."""
        writer = self._writer
        if writer is None or event.actor != CANARY_ACTOR:
            return
        action = _AUTOMATIC_ACTIONS.get(event.kind)
        if action is not None:
            writer.submit(self._append_later, audit_record(event, action))

    def _append_later(self, record: EndpointAuditRecord) -> None:
        assert self.audit is not None
        try:
            self.audit.append(record)
        except (OSError, HeadraceError) as error:  # closed, or the disk refused: say it
            log.error(
                "endpoint %s: %s not in the audit trail: %s", record.endpoint, record.action, error
            )

    def close(self) -> None:
        """Write what is queued (the audit file itself is closed by its owner)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)
