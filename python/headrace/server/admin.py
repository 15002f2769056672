"""The ``headrace.v1.AdminService`` servicer: headrace's own operations over an Engine (drift
reports here; the endpoint RPCs in ``admin_endpoints.py``)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from headrace.engine import Engine
from headrace.monitoring.drift import DriftReport
from headrace.monitoring.drift.quality import QualityWindow, judge
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


def _window_decision(served: ServedDrift, window: QualityWindow) -> str:
    if not window.closed:
        return "open"
    if window.count < served.settings.min_labels:
        return "too_few"
    return judge(served.settings, window)


def drift_report_message(
    served: ServedDrift, report: DriftReport, quality: Sequence[QualityWindow] = ()
) -> Any:
    """A DriftReport, and the label quality of the variants running the version, as the wire's
    GetDriftReportResponse."""
    settings = served.settings
    newest: dict[tuple[str, str], str] = {}
    windows = []
    for window in quality:
        decision = _window_decision(served, window)
        if decision in ("ok", "alert"):
            newest[(window.endpoint, window.variant)] = decision
        windows.append(
            pb.QualityWindow(
                endpoint=window.endpoint,
                variant=window.variant,
                kind=window.kind,
                metric=window.metric,
                value=window.value,
                count=window.count,
                window_start_s=window.window_start_s,
                window_s=window.window_s,
                closed=window.closed,
                decision=decision,
            )
        )
    return pb.GetDriftReportResponse(
        quality=windows,
        min_accuracy=_number(settings.min_accuracy),
        max_mae=_number(settings.max_mae),
        min_labels=settings.min_labels,
        quality_decision="alert" if "alert" in newest.values() else "ok",
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
        quality = await asyncio.to_thread(
            self._engine.variant_quality, served.model, served.version
        )
        return drift_report_message(served, report, quality)
