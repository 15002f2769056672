"""The model-version RPCs of ``headrace.v1.AdminService``: ListModelVersions, RollbackModel,
PinModel, UnpinModel, GetAuditLog. Mixed into ``admin.AdminServicer``.

Access is ``auth.py``'s (the whole AdminService is control RPCs). The audit trail names who asked:
``token:<admin token file name>`` for a caller with the admin token, ``cert:<subject>`` for a
client certificate, else ``peer:<address>`` (the protected default on loopback).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import math
from typing import TYPE_CHECKING, Any

import grpc

from headrace.engine import Engine
from headrace.errors import InvalidArgumentError, NotFoundError
from headrace.registry.audit import AuditRecord, EndpointAuditRecord
from headrace.registry.manager import Transition
from headrace.registry.views import ModelView
from headrace.server.auth import read_token
from headrace.server.status import unary_errors
from headrace.wire import admin as pb

if TYPE_CHECKING:  # ServicerContext is generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


def _number(value: float | None) -> float:
    return math.nan if value is None else value


def _text(version: int | None) -> str:
    return "" if version is None else str(version)


def _required(value: str, what: str) -> str:
    if not value:
        raise InvalidArgumentError(f"the request needs a {what}")
    return value


def model_versions_message(view: ModelView) -> Any:
    return pb.ModelVersions(
        model=view.name,
        source=view.source,
        reference=view.reference,
        origin=view.origin,
        serving=_text(view.serving),
        desired=_text(view.desired),
        override=view.override,
        override_version=_text(view.override_version),
        override_actor=view.override_actor,
        aliases={alias: str(version) for alias, version in view.aliases.items()},
        note=view.note,
        versions=[
            pb.ModelVersionState(
                version=str(v.version),
                state=v.state,
                aliases=list(v.aliases),
                reason=v.reason,
                origin=v.origin,
                loaded_at_s=_number(v.loaded_unix_s),
                download_ms=_number(v.download_ms),
                load_ms=_number(v.load_ms),
                warm_ms=_number(v.warm_ms),
            )
            for v in view.versions
        ],
    )


def audit_entry_message(record: AuditRecord) -> Any:
    return pb.AuditEntry(
        time_s=record.time_unix_s,
        time=record.time.isoformat().replace("+00:00", "Z"),
        model=record.model,
        from_version=_text(record.from_version),
        to_version=_text(record.to_version),
        cause=str(record.cause),
        actor=record.actor,
        outcome=str(record.outcome),
        reason=record.reason,
        source=record.source,
        download_ms=_number(record.download_ms),
        load_ms=_number(record.load_ms),
        warm_ms=_number(record.warm_ms),
        drain_ms=_number(record.drain_ms),
        kind=record.kind,
    )


def endpoint_entry_message(record: EndpointAuditRecord) -> Any:
    return pb.AuditEntry(
        time_s=record.time_unix_s,
        time=record.time.isoformat().replace("+00:00", "Z"),
        actor=record.actor,
        reason=record.reason,
        download_ms=math.nan,
        load_ms=math.nan,
        warm_ms=math.nan,
        drain_ms=math.nan,
        kind=record.kind,
        endpoint=record.endpoint,
        action=str(record.action),
        variant=record.variant,
        change_from=json.dumps(record.before, sort_keys=True, default=str),
        change_to=json.dumps(record.after, sort_keys=True, default=str),
    )


def _switch(change: Transition) -> Any:
    return pb.ModelSwitch(
        model=change.model,
        from_version=_text(change.from_version),
        to_version=_text(change.to_version),
    )


def _bearer(context: Context) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip().encode()
    return None


class ModelAdmin:
    """The model-version RPCs over ``self._engine``."""

    _engine: Engine

    @functools.cached_property
    def _admin_token(self) -> tuple[bytes, str] | None:
        path = self._engine.settings.admin_token_file
        return (read_token(path, "admin token file"), path.name) if path is not None else None

    def actor(self, context: Context) -> str:
        """Who is calling, for the audit trail."""
        auth = context.auth_context()
        for key in ("x509_subject", "x509_common_name"):
            values = list(auth.get(key) or ())
            if values:
                return f"cert:{values[0].decode(errors='replace')}"
        presented = _bearer(context)
        admin = self._admin_token
        if presented is not None and admin is not None and hmac.compare_digest(presented, admin[0]):
            return f"token:{admin[1]}"
        return f"peer:{context.peer()}"

    @unary_errors
    async def ListModelVersions(self, request: Any, context: Context) -> Any:
        views = self._engine.registry.describe(request.model)
        if request.model and not views:
            raise NotFoundError(f"unknown model '{request.model}'")
        return pb.ListModelVersionsResponse(models=[model_versions_message(v) for v in views])

    @unary_errors
    async def RollbackModel(self, request: Any, context: Context) -> Any:
        model = _required(request.model, "model")
        change = await asyncio.to_thread(self._engine.models.rollback, model, self.actor(context))
        return pb.RollbackModelResponse(change=_switch(change))

    @unary_errors
    async def PinModel(self, request: Any, context: Context) -> Any:
        model = _required(request.model, "model")
        version = _required(request.version, "version (a number or an alias)")
        change = await asyncio.to_thread(
            self._engine.models.pin, model, version, self.actor(context)
        )
        return pb.PinModelResponse(change=_switch(change))

    @unary_errors
    async def UnpinModel(self, request: Any, context: Context) -> Any:
        model = _required(request.model, "model")
        change = await asyncio.to_thread(self._engine.models.unpin, model, self.actor(context))
        return pb.UnpinModelResponse(change=_switch(change))

    @unary_errors
    async def GetAuditLog(self, request: Any, context: Context) -> Any:
        if request.since_s < 0 or request.until_s < 0:
            raise InvalidArgumentError("since_s and until_s are seconds since the epoch (>= 0)")
        transitions = self._engine.models.transitions
        if request.endpoints or request.endpoint:
            changes = await asyncio.to_thread(
                transitions.read_endpoints,
                request.endpoint or None,
                request.since_s or None,
                request.until_s or None,
                request.limit or None,
            )
            return pb.GetAuditLogResponse(entries=[endpoint_entry_message(r) for r in changes])
        records = await asyncio.to_thread(
            transitions.read,
            request.model or None,
            request.since_s or None,
            request.until_s or None,
            request.limit or None,
        )
        return pb.GetAuditLogResponse(entries=[audit_entry_message(r) for r in records])
