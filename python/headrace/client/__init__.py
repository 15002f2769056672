"""gRPC clients for any KServe v2 server: :class:`Client` (blocking) and :class:`AsyncClient`,
with the same methods. A light import: no server, no engine, no native core.

Numpy in, numpy out; tensors travel as raw bytes (the fast path). Addresses are ``host:port`` or
``unix:/path/to.sock``; pass ``tls=TlsConfig(...)`` (or ``root_certificates`` bytes) for TLS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from headrace import wire
from headrace.client.codec import decode_raw_output, decode_typed_output, encode_raw
from headrace.datatypes import datatype_of
from headrace.errors import error_for_code
from headrace.types import DEFAULT_MAX_MESSAGE_BYTES, InferResult

__all__ = ["AsyncClient", "Client", "TlsConfig"]

pb = wire.inference
adm = wire.admin
_SERVING_STATUS = {
    value.number: value.name
    for value in wire.health.HealthCheckResponse.DESCRIPTOR.enum_types_by_name[
        "ServingStatus"
    ].values
}


@dataclass(frozen=True)
class TlsConfig:
    """PEM bytes for a TLS channel; omit the client pair for server-only TLS."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name_override: str | None = None


def _options(max_message_bytes: int, tls: TlsConfig | None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if tls is not None and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    return options


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """``authorization: Bearer`` from ``token``, else the HEADRACE_TOKEN environment variable."""
    if token is None:
        token = os.environ.get("HEADRACE_TOKEN") or None
    return (("authorization", f"Bearer {token}"),) if token else None


def read_token_file(path: str | os.PathLike[str]) -> str:
    """A token kept in a file (as ``--token-file`` takes it), without surrounding whitespace."""
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


def _credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


def _parameter(value: bool | int | float | str) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


def build_infer_request(
    model: str,
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    version: str = "",
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    parameters: Mapping[str, bool | int | float | str] | None = None,
    datatypes: Mapping[str, str] | None = None,
) -> Any:
    """A ModelInferRequest with raw contents; ``datatypes`` overrides (e.g. BF16 as uint16)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = (datatypes or {}).get(name) or datatype_of(array)
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(encode_raw(name, datatype, array))
    for name in outputs or ():
        request.outputs.add(name=name)
    for key, param in (parameters or {}).items():
        request.parameters[key].CopyFrom(_parameter(param))
    return request


def decode_infer_response(response: Any) -> InferResult:
    outputs: dict[str, npt.NDArray[Any]] = {}
    datatypes: dict[str, str] = {}
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        datatypes[tensor.name] = tensor.datatype
        if index < len(raw):
            outputs[tensor.name] = decode_raw_output(tensor.datatype, shape, raw[index])
        else:
            outputs[tensor.name] = decode_typed_output(tensor.datatype, tensor.contents, shape)
    # Response parameters, e.g. headrace_variant: the variant of an endpoint that answered.
    parameters: dict[str, Any] = {}
    for key, parameter in response.parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            parameters[key] = getattr(parameter, choice)
    return InferResult(
        response.model_name, response.model_version, outputs, response.id, datatypes, parameters
    )


def _translate(error: grpc.RpcError) -> Exception:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code is None:
        return error
    translated = error_for_code(code.value[0], details or "")
    translated.__cause__ = error
    return translated


class Client:
    """A blocking client. Errors are raised as :mod:`headrace.errors` types with ``.code``."""

    def __init__(
        self,
        address: str,
        *,
        tls: TlsConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
    ) -> None:
        self._metadata = _auth_metadata(token)
        options = _options(max_message_bytes, tls)
        if tls is not None:
            self._channel = grpc.secure_channel(address, _credentials(tls), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = wire.Stub(self._channel, wire.INFERENCE_SERVICE)
        self._health = wire.Stub(self._channel, wire.HEALTH_SERVICE)
        self._admin = wire.Stub(self._channel, wire.ADMIN_SERVICE)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _translate(error) from None

    def is_server_live(self) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest()).live)

    def is_server_ready(self) -> bool:
        return bool(self._call("ServerReady", pb.ServerReadyRequest()).ready)

    def is_model_ready(self, model: str, version: str = "") -> bool:
        return bool(
            self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version)).ready
        )

    def server_metadata(self) -> Any:
        return self._call("ServerMetadata", pb.ServerMetadataRequest())

    def model_metadata(self, model: str, version: str = "") -> Any:
        return self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))

    def model_config(self, model: str, version: str = "") -> Any:
        return self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version)).config

    def model_statistics(self, model: str = "", version: str = "") -> Any:
        return self._call("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version))

    def repository_index(self, ready_only: bool = False) -> Any:
        return self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready_only)).models

    def load_model(self, model: str) -> None:
        self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model))

    def unload_model(self, model: str) -> None:
        self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model))

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        try:
            response = self._health.Check(wire.health.HealthCheckRequest(service=service))
        except grpc.RpcError as error:
            raise _translate(error) from None
        return str(_SERVING_STATUS.get(response.status, response.status))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        parameters: Mapping[str, bool | int | float | str] | None = None,
        datatypes: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> InferResult:
        request = build_infer_request(
            model,
            inputs,
            version=version,
            outputs=outputs,
            request_id=request_id,
            parameters=parameters,
            datatypes=datatypes,
        )
        return decode_infer_response(self._call("ModelInfer", request, timeout_s))

    # -- headrace.v1.AdminService (control RPCs: they need the admin token) -----------------

    def admin(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        """Call an AdminService method with its request message (``headrace.wire.admin``)."""
        try:
            return getattr(self._admin, method)(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _translate(error) from None

    def list_model_versions(self, model: str = "") -> Any:
        """Each model's versions: which serves, which are loaded or on standby, which failed."""
        return self.admin("ListModelVersions", adm.ListModelVersionsRequest(model=model)).models

    def rollback_model(self, model: str) -> Any:
        return self.admin("RollbackModel", adm.RollbackModelRequest(model=model)).change

    def pin_model(self, model: str, version: str) -> Any:
        request = adm.PinModelRequest(model=model, version=version)
        return self.admin("PinModel", request).change

    def unpin_model(self, model: str) -> Any:
        return self.admin("UnpinModel", adm.UnpinModelRequest(model=model)).change

    def audit_log(
        self, model: str = "", *, since_s: float = 0, until_s: float = 0, limit: int = 0
    ) -> Any:
        request = adm.GetAuditLogRequest(model=model, since_s=since_s, until_s=until_s, limit=limit)
        return self.admin("GetAuditLog", request).entries


class AsyncClient:
    """An asyncio client with the same methods as :class:`Client`, awaitable."""

    def __init__(
        self,
        address: str,
        *,
        tls: TlsConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
    ) -> None:
        self._metadata = _auth_metadata(token)
        options = _options(max_message_bytes, tls)
        if tls is not None:
            self._channel = grpc.aio.secure_channel(address, _credentials(tls), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = wire.Stub(self._channel, wire.INFERENCE_SERVICE)
        self._health = wire.Stub(self._channel, wire.HEALTH_SERVICE)
        self._admin = wire.Stub(self._channel, wire.ADMIN_SERVICE)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def _call(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return await getattr(self._stub, method)(
                request, timeout=timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _translate(error) from None

    async def is_server_live(self) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest())).live)

    async def is_server_ready(self) -> bool:
        return bool((await self._call("ServerReady", pb.ServerReadyRequest())).ready)

    async def is_model_ready(self, model: str, version: str = "") -> bool:
        response = await self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version))
        return bool(response.ready)

    async def server_metadata(self) -> Any:
        return await self._call("ServerMetadata", pb.ServerMetadataRequest())

    async def model_metadata(self, model: str, version: str = "") -> Any:
        return await self._call(
            "ModelMetadata", pb.ModelMetadataRequest(name=model, version=version)
        )

    async def model_config(self, model: str, version: str = "") -> Any:
        response = await self._call(
            "ModelConfig", pb.ModelConfigRequest(name=model, version=version)
        )
        return response.config

    async def model_statistics(self, model: str = "", version: str = "") -> Any:
        return await self._call(
            "ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version)
        )

    async def repository_index(self, ready_only: bool = False) -> Any:
        response = await self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready_only))
        return response.models

    async def load_model(self, model: str) -> None:
        await self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model))

    async def unload_model(self, model: str) -> None:
        await self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model))

    async def health(self, service: str = "") -> str:
        try:
            response = await self._health.Check(wire.health.HealthCheckRequest(service=service))
        except grpc.RpcError as error:
            raise _translate(error) from None
        return str(_SERVING_STATUS.get(response.status, response.status))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        parameters: Mapping[str, bool | int | float | str] | None = None,
        datatypes: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> InferResult:
        request = build_infer_request(
            model,
            inputs,
            version=version,
            outputs=outputs,
            request_id=request_id,
            parameters=parameters,
            datatypes=datatypes,
        )
        return decode_infer_response(await self._call("ModelInfer", request, timeout_s))

    # -- headrace.v1.AdminService (control RPCs: they need the admin token) -----------------

    async def admin(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return await getattr(self._admin, method)(
                request, timeout=timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _translate(error) from None

    async def list_model_versions(self, model: str = "") -> Any:
        request = adm.ListModelVersionsRequest(model=model)
        return (await self.admin("ListModelVersions", request)).models

    async def rollback_model(self, model: str) -> Any:
        request = adm.RollbackModelRequest(model=model)
        return (await self.admin("RollbackModel", request)).change

    async def pin_model(self, model: str, version: str) -> Any:
        request = adm.PinModelRequest(model=model, version=version)
        return (await self.admin("PinModel", request)).change

    async def unpin_model(self, model: str) -> Any:
        return (await self.admin("UnpinModel", adm.UnpinModelRequest(model=model))).change

    async def audit_log(
        self, model: str = "", *, since_s: float = 0, until_s: float = 0, limit: int = 0
    ) -> Any:
        request = adm.GetAuditLogRequest(model=model, since_s=since_s, until_s=until_s, limit=limit)
        return (await self.admin("GetAuditLog", request)).entries
