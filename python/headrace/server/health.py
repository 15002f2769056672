"""grpc.health.v1 and server reflection (v1 and v1alpha), served from headrace's own descriptor
pool (``headrace.wire``): orchestrators probe health, grpcurl and evans list and describe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from headrace import wire

SERVING = wire.health.HealthCheckResponse.SERVING
NOT_SERVING = wire.health.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = wire.health.HealthCheckResponse.SERVICE_UNKNOWN

# grpc.StatusCode.NOT_FOUND's number, for reflection's in-band error answers.
_NOT_FOUND = 5


class HealthServicer:
    """Check, List and Watch over a map service name -> status ("" is the whole server)."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._changed = asyncio.Condition()

    async def set(self, service: str, status: int) -> None:
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        async with self._changed:
            for service in self._status:
                self._status[service] = NOT_SERVING
            self._changed.notify_all()

    async def Check(self, request: Any, context: Any) -> Any:
        status = self._status.get(request.service)
        if status is None:
            import grpc

            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return wire.health.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: Any) -> Any:
        response = wire.health.HealthListResponse()
        for service, status in self._status.items():
            response.statuses[service].status = status
        return response

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        last: int | None = None
        while True:
            async with self._changed:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                if status == last:
                    await self._changed.wait()
                    continue
            last = status
            yield wire.health.HealthCheckResponse(status=status)


class ReflectionServicer:
    """ServerReflectionInfo for one reflection package (its messages differ only in package)."""

    def __init__(self, proto: wire.ProtoFile, services: list[ServiceDescriptor]) -> None:
        self._proto = proto
        self._service_names = [s.full_name for s in services]

    def _file_answer(self, file_name: str) -> Any:
        """The file and everything it imports, as serialized FileDescriptorProtos."""
        seen: list[str] = []
        pending = [file_name]
        while pending:
            name = pending.pop()
            if name in seen or name not in wire.FILE_PROTOS:
                continue
            seen.append(name)
            pending.extend(wire.FILE_PROTOS[name].dependency)
        return self._proto.FileDescriptorResponse(
            file_descriptor_proto=[wire.FILE_PROTOS[n].SerializeToString() for n in seen]
        )

    def _answer(self, request: Any) -> Any:
        response = self._proto.ServerReflectionResponse(
            valid_host=request.host, original_request=request
        )
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                response.list_services_response.service.extend(
                    self._proto.ServiceResponse(name=name) for name in self._service_names
                )
            elif kind == "file_by_filename":
                if request.file_by_filename not in wire.FILE_PROTOS:
                    raise KeyError(request.file_by_filename)
                response.file_descriptor_response.CopyFrom(
                    self._file_answer(request.file_by_filename)
                )
            elif kind == "file_containing_symbol":
                file = wire.POOL.FindFileContainingSymbol(request.file_containing_symbol)
                response.file_descriptor_response.CopyFrom(self._file_answer(file.name))
            else:
                raise KeyError(kind)
        except KeyError as missing:
            response.error_response.error_code = _NOT_FOUND
            response.error_response.error_message = f"not found: {missing}"
        return response

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            yield self._answer(request)
