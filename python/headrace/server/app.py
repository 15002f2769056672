"""Server start-up and shutdown: grpc.aio on uvloop, TCP / TLS / Unix socket, health, reflection,
Prometheus metrics, and a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from headrace._proto.headrace.v1 import admin_pb2_grpc
from headrace._proto.inference import grpc_service_pb2 as pb
from headrace.config import ServerSettings
from headrace.engine import Engine
from headrace.server.admin import ADMIN_SERVICE, AdminServicer
from headrace.server.servicer import InferenceServicer

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def inference_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The v2 service's handlers. ModelInfer and ModelStreamInfer take and return bytes (the
    core parses and writes those messages); every other RPC uses the generated messages."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
        elif method.name == "ModelStreamInfer":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(servicer.ModelStreamInfer)
        else:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method.name),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


class Server:
    """A running gRPC server (plus metrics endpoint) over an engine."""

    def __init__(self, engine: Engine, settings: ServerSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings if settings is not None else engine.settings
        self.grpc_port = 0
        self.metrics_port = -1
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._servicer = InferenceServicer(engine)
        self._admin = AdminServicer(engine)
        self._metrics_server: Any = None

    async def start(self) -> None:
        s = self.settings
        server = grpc.aio.server(options=channel_options(s.max_message_bytes))
        server.add_generic_rpc_handlers((inference_handlers(self._servicer),))
        admin_pb2_grpc.add_AdminServiceServicer_to_server(self._admin, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                INFERENCE_SERVICE,
                ADMIN_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{s.host}:{s.grpc_port}"
        if s.tls_cert is not None and s.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())]
            )
            self.grpc_port = server.add_secure_port(address, credentials)
        else:
            self.grpc_port = server.add_insecure_port(address)
        if s.grpc_uds is not None:
            Path(s.grpc_uds).unlink(missing_ok=True)
            server.add_insecure_port(f"unix:{s.grpc_uds}")
        await server.start()
        self._server = server
        for service in ("", INFERENCE_SERVICE, ADMIN_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port >= 0:
            self._metrics_server, self.metrics_port = self.engine.metrics.serve(
                s.host, s.metrics_port
            )

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace period), drain."""
        if self._server is None:
            return
        self._servicer.ready = False
        await self._health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self._server.stop(grace)
        self._server = None
        await asyncio.to_thread(self.engine.close)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self.settings.grpc_uds is not None:
            Path(self.settings.grpc_uds).unlink(missing_ok=True)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def _serve(settings: ServerSettings) -> int:
    engine = Engine(settings)
    await asyncio.to_thread(engine.load_repository)
    server = Server(engine, settings)
    await server.start()
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    uds = f" and unix:{settings.grpc_uds}" if settings.grpc_uds else ""
    metrics = (
        f"; metrics on http://{settings.host}:{server.metrics_port}/metrics"
        if server.metrics_port >= 0
        else ""
    )
    # Tests and scripts read the bound port from this line (port 0 picks a free one).
    print(
        f"headrace: serving gRPC on {settings.host}:{server.grpc_port}{uds}{metrics}",
        flush=True,
    )
    await stop_requested.wait()
    log.info("shutting down: finishing in-flight requests")
    await server.stop()
    print("headrace: stopped", flush=True)
    return 0


def serve(settings: ServerSettings) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import uvloop

    exit_code: int = uvloop.run(_serve(settings))
    return exit_code
