"""The KServe v2 / Triton ``inference.GRPCInferenceService`` servicer over an Engine.

Each handler converts wire -> domain, calls the engine, converts back. Errors become gRPC
statuses in one place (``status.py``); on the stream they go into ``error_message`` instead and
the stream stays open.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

import headrace
from headrace.config import ServerSettings
from headrace.engine import Engine
from headrace.errors import (
    HeadraceError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnimplementedError,
)
from headrace.server import convert
from headrace.server.status import describe, unary_errors
from headrace.wire import inference as pb

log = logging.getLogger(__name__)

_STREAM_RESPONSE_FIELD = bytes([(2 << 3) | 2])  # field 2, wire type 2 (length-delimited)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _stream_error(message: bytes, text: str) -> bytes:
    """The in-band error answer, echoing what can be read of the failed request."""
    try:
        request = pb.ModelInferRequest.FromString(message)
        echo = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
    except Exception:  # undecodable: nothing to echo
        echo = pb.ModelInferResponse()
    response: bytes = pb.ModelStreamInferResponse(
        error_message=text, infer_response=echo
    ).SerializeToString()
    return response


if TYPE_CHECKING:  # ServicerContext is generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext

SERVER_NAME = "headrace"
# Only what is really implemented: clients probe this list.
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "schedule_policy")

# Requests a stream may have in flight before the reader waits for answers: bounds the memory one
# stream can pin while still letting a client pipeline.
STREAM_MAX_IN_FLIGHT = 256
# Callers with more time than this left skip the check on arrival: it exists to turn away, for
# the least it can cost, requests an overloaded model could no longer answer in time, and a
# queue holding more than a second of work is refused by the batcher itself at submit (the same
# prediction, on the parsed request). Clients' everyday deadlines (tritonclient, perf_analyzer:
# none or tens of seconds) then pay nothing for it.
INTAKE_CHECK_HORIZON_S = 1.0


# Memory an RPC in flight may pin on average (request, response, batch share): sizes the default
# cap on concurrent RPCs so that a flood is refused (RESOURCE_EXHAUSTED) before memory runs out.
INFLIGHT_RPC_BUDGET_BYTES = 1 << 20
# A quarter of the machine's memory for RPCs in flight; the rest is for models.
INFLIGHT_MEMORY_SHARE = 0.25
MAX_DEFAULT_INFLIGHT_RPCS = 16_384


def max_inflight_rpcs(settings: ServerSettings) -> int:
    """The cap on concurrent RPCs: the setting, or what a share of physical memory holds."""
    if settings.max_inflight_rpcs > 0:
        return settings.max_inflight_rpcs
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 4 << 30
    return max(
        64,
        min(
            MAX_DEFAULT_INFLIGHT_RPCS,
            int(memory * INFLIGHT_MEMORY_SHARE) // INFLIGHT_RPC_BUDGET_BYTES,
        ),
    )


class InferenceServicer:
    """One method per RPC of ``inference.GRPCInferenceService`` (registered by ``app.py``);
    ModelInfer and ModelStreamInfer take and return bytes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._max_elements = engine.settings.max_request_elements
        self.ready = True
        # Inference RPCs in flight (a stream counts once). Counted here rather than with
        # grpc.aio's maximum_concurrent_rpcs, which measured ~25 % of c=32 throughput.
        self._in_flight = 0
        self._max_in_flight = max_inflight_rpcs(engine.settings)
        # Inference requests admitted per model name and not yet answered (event loop only):
        # the intake's view of the work ahead of a new request, which the batcher's queue
        # alone understates when requests pile up before it (being parsed, routed) or run.
        self._in_flight_by_model: dict[str, int] = {}

    def _refuse_over_cap(self) -> None:
        if self._in_flight >= self._max_in_flight:
            raise ResourceExhaustedError(
                f"{self._in_flight} inference RPCs in flight, the server's cap "
                f"(--max-inflight-rpcs {self._max_in_flight}); retry later"
            )

    # -- health and metadata -----------------------------------------------------------------

    @unary_errors
    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    @unary_errors
    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.ready)

    @unary_errors
    async def ModelReady(self, request: Any, context: Context) -> Any:
        ready = self.ready and self._engine.is_model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    @unary_errors
    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=headrace.__version__, extensions=list(EXTENSIONS)
        )

    @unary_errors
    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        return convert.encode_metadata(self._engine.metadata(request.name, request.version))

    @unary_errors
    async def ModelConfig(self, request: Any, context: Context) -> Any:
        # An endpoint answers its first variant's config, under the endpoint's name.
        config = convert.encode_model_config(
            self._engine.model_config(request.name, request.version)
        )
        config.name = request.name
        return pb.ModelConfigResponse(config=config)

    @unary_errors
    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        return convert.encode_statistics(self._engine.statistics(request.name, request.version))

    # -- inference ---------------------------------------------------------------------------

    def _admit(self, message: bytes, timeout_s: float | None) -> str:
        """The model a request names, counted in flight until ``_done``; before that, raise
        when the caller's remaining time cannot cover even the cheapest answer of that model
        behind the requests already in flight to it (Engine.check_deadline). Decided before the
        request is parsed: under overload, work that would be answered too late is turned away
        for the least it can cost."""
        target = convert.request_target(message)
        model = target[0] if target is not None else ""
        if timeout_s is not None and timeout_s < INTAKE_CHECK_HORIZON_S and target is not None:
            in_flight = self._in_flight_by_model.get(model, 0)
            self._engine.check_deadline(model, target[1], timeout_s, in_flight)
        self._in_flight_by_model[model] = self._in_flight_by_model.get(model, 0) + 1
        return model

    def _done(self, model: str) -> None:
        left = self._in_flight_by_model[model] - 1
        if left:
            self._in_flight_by_model[model] = left
        else:
            del self._in_flight_by_model[model]  # names do not accumulate

    async def _infer_raw(self, message: bytes, timeout_s: float | None) -> bytes:
        """bytes -> domain request -> engine -> bytes. The core parses the request (tensors
        become numpy views of it) and writes the response; typed contents take protobuf."""
        request = convert.parse_request(message, self._max_elements)
        if request is None:
            decoded = convert.decode_infer_request(
                pb.ModelInferRequest.FromString(message), self._max_elements
            )
            request = convert.to_request(decoded)
        request.timeout_s = timeout_s
        result = await self._engine.infer_request(request)
        return convert.serialize_response(result)

    async def ModelInfer(self, message: bytes, context: Context) -> bytes:
        # The client's gRPC deadline bounds the time in the queue: a request that can no longer
        # be answered in time is refused on arrival, or leaves the queue without running.
        timeout_s = context.time_remaining()
        # Failures are answered by status alone: the code and details are set and an empty
        # message returned (the client sees only the status). abort() would raise through gRPC's
        # handler machinery -- a cost on the overload path, where most requests are refused --
        # with this call's frames in the exception's traceback, keeping the request's bytes
        # alive until the cycle collector runs.
        try:
            self._refuse_over_cap()
            model = self._admit(message, timeout_s)
        except HeadraceError as error:
            code, text = describe(error)
        else:
            self._in_flight += 1
            try:
                return await self._infer_raw(message, timeout_s)
            except Exception as error:
                code, text = describe(error)
            finally:
                self._in_flight -= 1
                self._done(model)
        context.set_code(code)
        context.set_details(text)
        return b""

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> None:
        # Requests on one stream run concurrently (a stream is a pipeline, not a lock-step
        # conversation); answers go back as they finish, each carrying its request id. Messages
        # stay bytes both ways (registered without protobuf (de)serializers): the core parses
        # and writes them, as for ModelInfer. An answer holds its request's slot until it is
        # written, so a reader that stops reading stops the stream after STREAM_MAX_IN_FLIGHT
        # answers (memory stays bounded), and is cancelled after stream_stall_timeout_s.
        try:
            self._refuse_over_cap()
        except ResourceExhaustedError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, error.message)
        self._in_flight += 1
        try:
            await self._stream(request_iterator, context)
        finally:
            self._in_flight -= 1

    async def _stream(self, request_iterator: AsyncIterator[bytes], context: Context) -> None:
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        stall_timeout_s = self._engine.settings.stream_stall_timeout_s

        async def answer(message: bytes) -> None:
            try:
                timeout_s = context.time_remaining()
                model = self._admit(message, timeout_s)
                try:
                    inner = await self._infer_raw(message, timeout_s)
                finally:
                    self._done(model)
                # ModelStreamInferResponse{infer_response = 2}: a length-delimited field
                # wrapping the response bytes we already have.
                response = _STREAM_RESPONSE_FIELD + _varint(len(inner)) + inner
            except Exception as error:
                _, text = describe(error)
                response = _stream_error(message, text)
            await answers.put(response)

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(answer(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                await answers.put(None)

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        writer = asyncio.current_task()
        assert writer is not None
        # A watchdog, not a timer per answer: each write marks when it began (a float store)
        # and one callback every quarter of the timeout cancels the write that has been
        # pending for the whole timeout (so a stalled reader is cancelled after 1-1.25x it).
        # Arming and disarming asyncio.timeout around every write cost ~2 us an answer. The
        # abort below does not reach the client while that write is still pending in gRPC's
        # core (a known gap: the stream stays open, its memory bounded by the slots).
        write_started_s = -1.0  # loop time the pending write began; -1: none pending
        stalled = False
        check_every_s = stall_timeout_s / 4
        watchdog: asyncio.TimerHandle

        def watch() -> None:
            nonlocal stalled, watchdog
            if write_started_s >= 0 and loop.time() - write_started_s >= stall_timeout_s:
                stalled = True
                writer.cancel()
            else:
                watchdog = loop.call_later(check_every_s, watch)

        watchdog = loop.call_later(check_every_s, watch)
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                write_started_s = loop.time()
                try:
                    await context.write(item)
                finally:
                    write_started_s = -1.0
                    slots.release()
        except asyncio.CancelledError:
            if not stalled:
                raise
            writer.uncancel()
            log.warning("stream reader took no answer for %g s: cancelled", stall_timeout_s)
            await context.abort(
                grpc.StatusCode.CANCELLED,
                f"the stream's reader took no answer for {stall_timeout_s:g} s",
            )
        finally:
            watchdog.cancel()
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # -- repository --------------------------------------------------------------------------

    @unary_errors
    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        response = pb.RepositoryIndexResponse()
        for entry in self._engine.repository_index(ready_only=request.ready):
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    @unary_errors
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        if request.parameters:
            raise UnimplementedError(
                "loading a model from request parameters (config / file:) is not supported; "
                "put the model in the repository and load it by name"
            )
        if not request.model_name:
            raise InvalidArgumentError("RepositoryModelLoad needs a model_name")
        # Loading reads files and builds sessions: never on the event loop.
        await asyncio.to_thread(self._engine.load_model, request.model_name)
        return pb.RepositoryModelLoadResponse()

    @unary_errors
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        if not request.model_name:
            raise InvalidArgumentError("RepositoryModelUnload needs a model_name")
        await asyncio.to_thread(self._engine.unload_model, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- Triton extensions headrace does not offer (not listed in ServerMetadata) ------------

    async def _unsupported(self, feature: str, context: Context) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"headrace does not support the {feature} extension"
        )

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return await self._unsupported("system_shared_memory", context)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return await self._unsupported("system_shared_memory", context)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return await self._unsupported("system_shared_memory", context)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return await self._unsupported("cuda_shared_memory", context)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return await self._unsupported("cuda_shared_memory", context)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return await self._unsupported("cuda_shared_memory", context)

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        return await self._unsupported("trace", context)

    async def LogSettings(self, request: Any, context: Any) -> Any:
        return await self._unsupported("logging", context)
