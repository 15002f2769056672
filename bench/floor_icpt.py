"""The protocol floor: a KServe v2 gRPC server that does no inference at all.

    python bench/floor_server.py --port 0 --model tabular:32:1 --model wide:512:16

It is a real grpc.aio server on uvloop (the stack headrace itself runs on) that parses each
ModelInfer request and answers with precomputed response bytes of the right shape (zeros). What a
client measures against it is the cost of gRPC + protobuf + the event loop on this machine: no
server built on this stack can beat it, so every other row is read as a ratio to it.

It answers just enough of ``inference.GRPCInferenceService`` for perf_analyzer and tritonclient:
ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata, ModelConfig (max_batch_size 64),
ModelStatistics (request counts only), ModelInfer and ModelStreamInfer. When ready it prints
``floor: serving gRPC on HOST:PORT``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvloop

from headrace.wire import inference as pb

SERVICE = "inference.GRPCInferenceService"
MAX_BATCH_SIZE = 64


@dataclass
class FloorModel:
    """One fake model: FP32 ``x [-1, in_features]`` -> FP32 ``y [-1, out_features]``."""

    name: str
    in_features: int
    out_features: int
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    # Serialized ModelInferResponse per row count, built on first use and then reused verbatim.
    responses: dict[int, bytes] = field(default_factory=dict)

    def response_message(self, rows: int, request_id: str = "") -> Any:
        response = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request_id)
        response.outputs.add(name="y", datatype="FP32", shape=[rows, self.out_features])
        response.raw_output_contents.append(bytes(4 * rows * self.out_features))
        return response

    def response_bytes(self, rows: int) -> bytes:
        cached = self.responses.get(rows)
        if cached is None:
            cached = self.response_message(rows).SerializeToString()
            self.responses[rows] = cached
        return cached

    def count(self, rows: int) -> None:
        self.inference_count += rows
        self.execution_count += 1


def parse_model(spec: str) -> FloorModel:
    name, in_features, out_features = spec.split(":")
    return FloorModel(name, int(in_features), int(out_features))


class FloorService:
    def __init__(self, models: list[FloorModel]) -> None:
        self.models = {m.name: m for m in models}

    @staticmethod
    def _rows(request: Any) -> int:
        return int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 1

    async def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def model_ready(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name in self.models)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="floor", version="0", extensions=["statistics"])

    async def model_metadata(self, request: Any, context: Any) -> Any:
        model = self.models.get(request.name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model '{request.name}'")
        response = pb.ModelMetadataResponse(
            name=model.name, versions=["1"], platform="onnxruntime_onnx"
        )
        response.inputs.add(name="x", datatype="FP32", shape=[-1, model.in_features])
        response.outputs.add(name="y", datatype="FP32", shape=[-1, model.out_features])
        return response

    async def model_config(self, request: Any, context: Any) -> Any:
        model = self.models.get(request.name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model '{request.name}'")
        config = pb.ModelConfig(
            name=model.name,
            platform="onnxruntime_onnx",
            backend="onnxruntime",
            max_batch_size=MAX_BATCH_SIZE,
        )
        config.input.add(name="x", data_type=pb.TYPE_FP32, dims=[model.in_features])
        config.output.add(name="y", data_type=pb.TYPE_FP32, dims=[model.out_features])
        config.version_policy.latest.num_versions = 1
        group = config.instance_group.add(name=f"{model.name}_0", count=1)
        group.kind = pb.ModelInstanceGroup.KIND_CPU
        return pb.ModelConfigResponse(config=config)

    async def model_statistics(self, request: Any, context: Any) -> Any:
        response = pb.ModelStatisticsResponse()
        for model in self.models.values():
            if request.name and request.name != model.name:
                continue
            entry = response.model_stats.add(
                name=model.name,
                version="1",
                last_inference=model.last_inference_ms,
                inference_count=model.inference_count,
                execution_count=model.execution_count,
            )
            entry.inference_stats.success.count = model.execution_count
        return response

    async def model_infer(self, request: Any, context: Any) -> bytes:
        model = self.models.get(request.model_name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model '{request.model_name}'")
        rows = self._rows(request)
        model.count(rows)
        if request.id:
            return bytes(model.response_message(rows, request.id).SerializeToString())
        return model.response_bytes(rows)

    async def model_stream_infer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in requests:
            model = self.models.get(request.model_name)
            if model is None:
                yield pb.ModelStreamInferResponse(error_message=f"no model '{request.model_name}'")
                continue
            rows = self._rows(request)
            model.count(rows)
            # perf_analyzer matches stream answers to requests by id, so the id is echoed.
            yield pb.ModelStreamInferResponse(
                infer_response=model.response_message(rows, request.id)
            )

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(
            behaviour: Callable[..., Any], request_type: Any, response_type: Any
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        def passthrough(response: bytes) -> bytes:
            return response

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": unary(
                    self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse
                ),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": unary(
                    self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelMetadata": unary(
                    self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                "ModelConfig": unary(
                    self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse
                ),
                "ModelStatistics": unary(
                    self.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
                ),
                # The answer is already serialized: the serializer passes the bytes through.
                "ModelInfer": grpc.unary_unary_rpc_method_handler(
                    self.model_infer,
                    request_deserializer=pb.ModelInferRequest.FromString,
                    response_serializer=passthrough,
                ),
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                    self.model_stream_infer,
                    request_deserializer=pb.ModelInferRequest.FromString,
                    response_serializer=pb.ModelStreamInferResponse.SerializeToString,
                ),
            },
        )


async def serve(host: str, port: int, models: list[FloorModel]) -> int:
    service = FloorService(models)
    class Noop(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            return await continuation(details)
    server = grpc.aio.server(interceptors=(Noop(),) if os.environ.get("ICPT") else None,
        options=[
            ("grpc.max_send_message_length", 256 << 20),
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((service.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"floor: serving gRPC on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    print(f"floor: stopped at {time.strftime('%H:%M:%S')}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--model",
        action="append",
        type=parse_model,
        required=True,
        help="NAME:IN_FEATURES:OUT_FEATURES (repeatable)",
    )
    args = parser.parse_args(argv)
    result: int = uvloop.run(serve(args.host, args.port, args.model))
    return result


if __name__ == "__main__":
    sys.exit(main())
