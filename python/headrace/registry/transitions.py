"""Where a model transition is told: the audit trail (fsynced before the switch takes effect),
the Prometheus transitions counter and the log, from one call."""

from __future__ import annotations

import logging
from pathlib import Path

from headrace.errors import FailedPreconditionError
from headrace.monitoring.lifecycle_metrics import LifecycleMetrics
from headrace.registry.audit import AuditLog, AuditOutcome, AuditRecord, EndpointAuditRecord

log = logging.getLogger("headrace.registry.transitions")

# Audit records answered by one GetAuditLog call when the caller sets no limit.
DEFAULT_READ_LIMIT = 1000


def _version(value: int | None) -> str:
    return "none" if value is None else str(value)


class TransitionLog:
    """Records transitions; thread-safe (the audit file serialises its appends)."""

    def __init__(self, audit_path: Path | None, metrics: LifecycleMetrics) -> None:
        self.audit = AuditLog(audit_path) if audit_path is not None else None
        self.metrics = metrics

    def record(self, record: AuditRecord) -> AuditRecord:
        """Append (and fsync) the record, count it and log it. An audit file that cannot be
        written raises (OSError): a transition nobody could audit does not happen."""
        if self.audit is not None:
            self.audit.append(record)
        self.metrics.transition(record.model, record.cause, record.outcome)
        timings = " ".join(
            f"{key}={value:.1f}"
            for key, value in (
                ("download_ms", record.download_ms),
                ("load_ms", record.load_ms),
                ("warm_ms", record.warm_ms),
                ("drain_ms", record.drain_ms),
            )
            if value is not None
        )
        level = (
            logging.WARNING
            if record.outcome in (AuditOutcome.FAILED, AuditOutcome.IGNORED)
            else logging.INFO
        )
        log.log(
            level,
            "model %s: %s -> %s %s (cause %s, actor %s)%s%s",
            record.model,
            _version(record.from_version),
            _version(record.to_version),
            record.outcome,
            record.cause,
            record.actor,
            f": {record.reason}" if record.reason else "",
            f" [{timings}]" if timings else "",
        )
        return record

    def read(
        self,
        model: str | None = None,
        since_unix_s: float | None = None,
        until_unix_s: float | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        if self.audit is None:
            raise FailedPreconditionError(
                "this server keeps no audit trail: start it with --audit-log PATH"
            )
        return self.audit.read(
            model, since_unix_s, until_unix_s, limit if limit else DEFAULT_READ_LIMIT
        )

    def read_endpoints(
        self,
        endpoint: str | None = None,
        since_unix_s: float | None = None,
        until_unix_s: float | None = None,
        limit: int | None = None,
    ) -> list[EndpointAuditRecord]:
        """Endpoint changes (written by the engine's routing into the same trail)."""
        if self.audit is None:
            raise FailedPreconditionError(
                "this server keeps no audit trail: start it with --audit-log PATH"
            )
        return self.audit.read_endpoints(
            endpoint, since_unix_s, until_unix_s, limit if limit else DEFAULT_READ_LIMIT
        )

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
