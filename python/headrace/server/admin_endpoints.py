"""AdminService's endpoint RPCs: create, update, delete, list, switch, rollback, experiment
report, over an Engine.

The endpoint messages carry endpoints.toml's keys, so configs convert with ``json_format`` alone.
Operations that change endpoints write the routing state folder and the audit trail (with the
caller's identity, as model transitions name it: ``admin_models.ModelAdmin.actor``): they run off
the event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from headrace.engine import Engine
from headrace.errors import HeadraceError, InvalidArgumentError
from headrace.routing import RoutingEvent
from headrace.routing.report import strategy_state
from headrace.routing.runtime import EndpointRuntime
from headrace.server.status import unary_errors
from headrace.wire import admin as pb

if TYPE_CHECKING:  # ServicerContext is generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


def json_safe(value: Any) -> Any:
    """Plain data that json_format parses: NaN and infinities as the strings proto3 JSON uses."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def endpoint_message(runtime: EndpointRuntime) -> Any:
    """An endpoint's config as the wire's Endpoint message (defaults filled in)."""
    return json_format.ParseDict(json_safe(runtime.config.to_toml_dict()), pb.Endpoint())


def endpoint_data(message: Any) -> dict[str, Any]:
    """An Endpoint message as the plain data of an endpoints.toml table."""
    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


def event_message(event: RoutingEvent) -> Any:
    return pb.RoutingEvent(
        time_s=event.time_s,
        endpoint=event.endpoint,
        kind=event.kind,
        detail=event.detail,
        variant=event.variant,
    )


def state_message(runtime: EndpointRuntime) -> Any:
    # The report's state has a few keys the wire leaves out (baseline, candidate, ...).
    return json_format.ParseDict(
        json_safe(strategy_state(runtime)), pb.StrategyState(), ignore_unknown_fields=True
    )


class EndpointAdmin:
    """The endpoint RPCs of ``headrace.v1.AdminService`` (mixed into AdminServicer)."""

    _engine: Engine
    actor: Callable[[Context], str]  # who calls, for the audit trail (ModelAdmin's)

    @unary_errors
    async def CreateEndpoint(self, request: Any, context: Context) -> Any:
        data = endpoint_data(request.endpoint)
        runtime = await asyncio.to_thread(
            self._engine.endpoints.create, data, actor=self.actor(context)
        )
        return pb.CreateEndpointResponse(endpoint=endpoint_message(runtime))

    @unary_errors
    async def UpdateEndpoint(self, request: Any, context: Context) -> Any:
        data = endpoint_data(request.endpoint)
        runtime = await asyncio.to_thread(
            self._engine.endpoints.update, data, actor=self.actor(context)
        )
        return pb.UpdateEndpointResponse(endpoint=endpoint_message(runtime))

    @unary_errors
    async def DeleteEndpoint(self, request: Any, context: Context) -> Any:
        if not request.name:
            raise InvalidArgumentError("DeleteEndpoint needs a name")
        await asyncio.to_thread(
            self._engine.endpoints.delete, request.name, actor=self.actor(context)
        )
        return pb.DeleteEndpointResponse()

    @unary_errors
    async def ListEndpoints(self, request: Any, context: Context) -> Any:
        endpoints = self._engine.endpoints
        response = pb.ListEndpointsResponse()
        for name in endpoints.names(include_models=request.include_models):
            try:
                runtime = endpoints.get(name)
            except HeadraceError:
                continue  # deleted while listing
            response.endpoints.add(
                endpoint=endpoint_message(runtime),
                implicit=runtime.implicit,
                state=state_message(runtime),
            )
        return response

    @unary_errors
    async def Switch(self, request: Any, context: Context) -> Any:
        endpoints = self._engine.endpoints
        event = await asyncio.to_thread(
            endpoints.switch,
            request.endpoint,
            request.variant or None,
            actor=self.actor(context),
        )
        runtime = endpoints.get(request.endpoint)
        return pb.SwitchResponse(
            active=runtime.routes[runtime.active].variant, event=event_message(event)
        )

    @unary_errors
    async def Rollback(self, request: Any, context: Context) -> Any:
        event = await asyncio.to_thread(
            self._engine.endpoints.rollback, request.endpoint, actor=self.actor(context)
        )
        return pb.RollbackResponse(event=event_message(event))

    @unary_errors
    async def GetExperimentReport(self, request: Any, context: Context) -> Any:
        # Quantiles and tests over a few histograms: cheap, but off the loop all the same.
        report = await asyncio.to_thread(self._engine.endpoints.report, request.endpoint)
        data = report.to_dict()
        data["events"] = [
            {k: v for k, v in event.items() if k != "fields"} for event in data["events"]
        ]
        return json_format.ParseDict(
            json_safe(data), pb.GetExperimentReportResponse(), ignore_unknown_fields=True
        )
