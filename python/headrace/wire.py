"""The protocol's messages and services, from headrace's own descriptor pool.

The build writes one FileDescriptorSet of every ``.proto`` under ``protos/`` (``protocol.binpb``
beside this module); this module loads it into a private ``DescriptorPool`` and makes message
classes from it. Nothing is registered in protobuf's default pool, so ``tritonclient.grpc`` (whose
generated code registers ``inference.*`` there) imports alongside headrace in either order, and no
generated code pins a protobuf version: any protobuf runtime that reads descriptors works.

Each ``ProtoFile`` offers what a generated ``_pb2`` module would: message classes and top-level
enum values as attributes (``wire.inference.ModelInferRequest``, ``wire.inference.TYPE_FP32``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

DESCRIPTOR_SET = "protocol.binpb"


def _load() -> tuple[descriptor_pool.DescriptorPool, dict[str, descriptor_pb2.FileDescriptorProto]]:
    try:
        data = resources.files("headrace").joinpath(DESCRIPTOR_SET).read_bytes()
    except FileNotFoundError:  # pragma: no cover - only without a build
        raise ImportError(
            f"headrace/{DESCRIPTOR_SET} is missing: was the package built? "
            "Install it with `pip install .` (the build writes the protocol's descriptors)."
        ) from None
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool, {file.name: file for file in files.file}


POOL, FILE_PROTOS = _load()


class ProtoFile:
    """The messages and enums of one .proto file of the pool, by name."""

    def __init__(self, file_name: str) -> None:
        descriptor: FileDescriptor = POOL.FindFileByName(file_name)
        self.DESCRIPTOR = descriptor
        for name, message in descriptor.message_types_by_name.items():
            setattr(self, name, message_factory.GetMessageClass(message))
        for enum in descriptor.enum_types_by_name.values():
            for value in enum.values:
                setattr(self, value.name, value.number)

    def __getattr__(self, name: str) -> Any:  # for mypy: attributes are made at run time
        raise AttributeError(f"{self.DESCRIPTOR.name} has no message or enum value {name!r}")

    def service(self, name: str) -> ServiceDescriptor:
        return self.DESCRIPTOR.services_by_name[name]


inference = ProtoFile("inference/grpc_service.proto")
admin = ProtoFile("headrace/v1/admin.proto")
health = ProtoFile("grpc/health/v1/health.proto")
reflection_v1alpha = ProtoFile("grpc/reflection/v1alpha/reflection.proto")
reflection_v1 = ProtoFile("grpc/reflection/v1/reflection.proto")
feast_value = ProtoFile("feast/types/Value.proto")  # the variants of Feast's Value we decode

INFERENCE_SERVICE = inference.service("GRPCInferenceService")
ADMIN_SERVICE = admin.service("AdminService")
FEEDBACK_SERVICE = admin.service("FeedbackService")
HEALTH_SERVICE = health.service("Health")


def message_class(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)


def method_path(service: ServiceDescriptor, method: str) -> str:
    return f"/{service.full_name}/{method}"


class Stub:
    """A client stub for one service of the pool: one callable per method, as generated stubs
    offer (``Stub(channel, wire.INFERENCE_SERVICE).ModelInfer(request)``); works on plain and
    asyncio channels."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel, service: ServiceDescriptor):
        for method in service.methods:
            kind = (
                ("stream" if method.client_streaming else "unary")
                + "_"
                + ("stream" if method.server_streaming else "unary")
            )
            factory = getattr(channel, kind)
            setattr(
                self,
                method.name,
                factory(
                    method_path(service, method.name),
                    request_serializer=message_class(method.input_type).SerializeToString,
                    response_deserializer=message_class(method.output_type).FromString,
                ),
            )

    def __getattr__(self, name: str) -> Any:  # for mypy: methods are made at run time
        raise AttributeError(f"the service has no method {name!r}")
