"""The ``headrace.v1.AdminService`` servicer: headrace's own operations over an Engine (drift
reports here; the endpoint RPCs in ``admin_endpoints.py``)."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import grpc

from headrace.engine import Engine
from headrace.monitoring.drift import DriftReport
from headrace.monitoring.drift.served import ServedDrift
from headrace.server.admin_endpoints import EndpointAdmin
from headrace.server.admin_models import ModelAdmin
from headrace.server.status import unary_errors
from headrace.wire import admin as pb

if TYPE_CHECKING:  # ServicerContext is generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


def _number(value: float | None) -> float:
    return math.nan if value is None else value


def drift_report_message(served: ServedDrift, report: DriftReport) -> Any:
    """A DriftReport as the wire's GetDriftReportResponse."""
    return pb.GetDriftReportResponse(
        model=served.model,
        version=served.version,
        windows=report.windows,
        rows=report.rows,
        reference_rows=report.reference_rows,
        enough_rows=report.enough_rows,
        psi_warn=served.config.psi_warn,
        psi_alert=served.config.psi_alert,
        p_value=report.p_value,
        correction=report.correction,
        decision=report.decision(),
        features=[
            pb.FeatureDrift(
                name=f.name,
                kind=f.kind,
                rows=f.rows,
                missing=f.missing,
                psi=_number(f.psi),
                test=f.test,
                statistic=_number(f.ks if f.test == "ks" else f.chi2),
                statistic_upper=_number(f.ks_upper if f.test == "ks" else f.chi2),
                p_value=_number(f.test_p),
                significant=f.significant,
                decision=f.decision,
            )
            for f in report.features
        ],
    )


class AdminServicer(EndpointAdmin, ModelAdmin):
    """headrace.v1.AdminService (endpoints in ``admin_endpoints.py``, model versions in
    ``admin_models.py``); methods not defined answer UNIMPLEMENTED (app.py)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @unary_errors
    async def GetDriftReport(self, request: Any, context: Context) -> Any:
        served = self._engine.drift(request.model, request.version or None)
        # Merging windows and the statistics take the accumulator's lock: off the event loop.
        report = await asyncio.to_thread(served.report, int(request.windows))
        return drift_report_message(served, report)
