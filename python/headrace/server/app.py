"""Server start-up and shutdown: grpc.aio on uvloop, TCP / TLS / Unix socket, health, reflection,
Prometheus metrics, and a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from headrace import wire
from headrace.config import ServerSettings
from headrace.engine import Engine
from headrace.errors import HeadraceError
from headrace.server.admin import AdminServicer
from headrace.server.auth import AccessPolicy, guarded
from headrace.server.feedback import FeedbackServicer
from headrace.server.health import SERVING, HealthServicer, ReflectionServicer
from headrace.server.servicer import InferenceServicer
from headrace.thread_policy import prefer_event_loop, set_helper_policy, start_helper_thread

log = logging.getLogger(__name__)

INFERENCE_SERVICE = wire.INFERENCE_SERVICE.full_name
ADMIN_SERVICE = wire.ADMIN_SERVICE.full_name
REFLECTION_SERVICES = (
    wire.reflection_v1.service("ServerReflection"),
    wire.reflection_v1alpha.service("ServerReflection"),
)


def _unimplemented(name: str, streaming: bool) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented")

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented")
        yield  # pragma: no cover - abort raises

    return stream if streaming else unary


def service_handlers(
    service: ServiceDescriptor,
    servicer: object,
    policy: AccessPolicy,
    raw: frozenset[str] = frozenset(),
) -> grpc.GenericRpcHandler[Any, Any]:
    """One handler per method of ``service``, bound to the servicer's method of the same name
    behind the access policy's check for that method (auth.guarded). Methods named in ``raw``
    take and return bytes (the core parses and writes them)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            behaviour = _unimplemented(
                f"{service.full_name}/{method.name}", method.server_streaming
            )
        codec: dict[str, Any] = {}
        if method.name not in raw:
            codec = {
                "request_deserializer": wire.message_class(method.input_type).FromString,
                "response_serializer": wire.message_class(method.output_type).SerializeToString,
            }
        kind = (
            ("stream" if method.client_streaming else "unary")
            + "_"
            + ("stream" if method.server_streaming else "unary")
        )
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        path = f"/{service.full_name}/{method.name}"
        handlers[method.name] = factory(guarded(policy, path, behaviour), **codec)
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
        self._health = HealthServicer()
        self._servicer = InferenceServicer(engine)
        self._admin = AdminServicer(engine)
        self._feedback = FeedbackServicer(engine)
        self._metrics_server: Any = None

    async def start(self) -> None:
        s = self.settings
        policy = AccessPolicy.from_settings(s)
        if not policy.control_enabled:
            log.warning("control RPCs are %s", policy.why_control_off)
        server = grpc.aio.server(options=channel_options(s.max_message_bytes))
        services = [
            wire.INFERENCE_SERVICE,
            wire.ADMIN_SERVICE,
            wire.FEEDBACK_SERVICE,
            wire.HEALTH_SERVICE,
            *REFLECTION_SERVICES,
        ]
        reflection = ReflectionServicer(wire.reflection_v1, services)
        reflection_alpha = ReflectionServicer(wire.reflection_v1alpha, services)
        server.add_generic_rpc_handlers(
            (
                service_handlers(
                    wire.INFERENCE_SERVICE,
                    self._servicer,
                    policy,
                    raw=frozenset({"ModelInfer", "ModelStreamInfer"}),
                ),
                service_handlers(wire.ADMIN_SERVICE, self._admin, policy),
                service_handlers(wire.FEEDBACK_SERVICE, self._feedback, policy),
                service_handlers(wire.HEALTH_SERVICE, self._health, policy),
                service_handlers(REFLECTION_SERVICES[0], reflection, policy),
                service_handlers(REFLECTION_SERVICES[1], reflection_alpha, policy),
            )
        )
        address = f"{s.host}:{s.grpc_port}"
        if s.tls_cert is not None and s.tls_key is not None:
            # With a client CA every caller needs a certificate it signed (mutual TLS; gRPC
            # offers no optional client certificates); auth.py decides what it may call.
            credentials = grpc.ssl_server_credentials(
                [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())],
                root_certificates=(
                    Path(s.tls_client_ca).read_bytes() if s.tls_client_ca is not None else None
                ),
                require_client_auth=s.tls_client_ca is not None,
            )
            self.grpc_port = server.add_secure_port(address, credentials)
        else:
            self.grpc_port = server.add_insecure_port(address)
        if s.grpc_uds is not None:
            Path(s.grpc_uds).unlink(missing_ok=True)
            server.add_insecure_port(f"unix:{s.grpc_uds}")
        # Shadow workers and the periodic routing state write run on this loop, and feature
        # stores are read on it.
        await self.engine.routing.start()
        self.engine.features.serve_on(asyncio.get_running_loop())
        # MLflow models load (or are reported) before the port opens.
        await self.engine.registry.start()
        await server.start()
        self._server = server
        for service in ("", INFERENCE_SERVICE, ADMIN_SERVICE, wire.FEEDBACK_SERVICE.full_name):
            await self._health.set(service, SERVING)
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
        await self.engine.routing.stop()
        await self.engine.registry.stop()
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
    loop = asyncio.get_running_loop()
    # Executor threads (model loads) and the batcher threads they start are helpers too.
    set_helper_policy(settings.helper_thread_policy)
    loop.set_default_executor(
        ThreadPoolExecutor(thread_name_prefix="headrace-io", initializer=start_helper_thread)
    )
    engine = Engine(settings)
    try:
        await asyncio.to_thread(engine.load_repository)
    except HeadraceError as error:  # endpoints that do not fit the models, a bad file
        await asyncio.to_thread(engine.close)
        print(f"headrace serve: {error.message}", file=sys.stderr, flush=True)
        return 2
    server = Server(engine, settings)
    try:
        await server.start()
    except HeadraceError as error:  # the registry settings do not fit (a model in two sources)
        await server.engine.registry.stop()
        await asyncio.to_thread(engine.close)
        print(f"headrace serve: {error.message}", file=sys.stderr, flush=True)
        return 2
    # Every thread the server started is running now: all but this one yield to the loop.
    prefer_event_loop(settings.helper_thread_policy)
    stop_requested = asyncio.Event()

    def on_signal() -> None:
        if stop_requested.is_set():
            # A second SIGTERM/SIGINT: the operator does not want to wait for the drain.
            print("headrace: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(1)
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
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
