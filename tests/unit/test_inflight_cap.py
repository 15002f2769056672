"""The server-wide cap on inference RPCs in flight: beyond it RESOURCE_EXHAUSTED, at once."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np

from headrace.config import ServerSettings
from headrace.server.servicer import InferenceServicer
from headrace.types import InferRequest, InferResult
from headrace.wire import inference as pb


class HeldEngine:
    """An engine whose answers wait for a release: what is in flight stays in flight."""

    def __init__(self, cap: int) -> None:
        self.settings = ServerSettings(max_inflight_rpcs=cap)
        self.release = asyncio.Event()
        self.started = 0

    async def infer_request(self, request: InferRequest) -> InferResult:
        self.started += 1
        await self.release.wait()
        return InferResult(
            request.model, "1", {"y": np.zeros((1, 1), np.float32)}, "", {"y": "FP32"}
        )


class Context:
    """What ModelInfer answers a failure with: a status set on the context (no abort)."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def time_remaining(self) -> float | None:
        return None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str) -> Any:
        raise AssertionError(f"ModelInfer answers by status, not abort: {code} {details}")


def message() -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.ones((1, 1), np.float32).tobytes())
    data: bytes = request.SerializeToString()
    return data


def test_calls_beyond_the_cap_are_refused_and_the_slot_comes_back() -> None:
    async def main() -> None:
        engine = HeldEngine(cap=2)
        servicer = InferenceServicer(engine)  # type: ignore[arg-type]
        held = [asyncio.create_task(servicer.ModelInfer(message(), Context())) for _ in range(2)]
        while engine.started < 2:  # both are in flight
            await asyncio.sleep(0)
        refused = Context()
        assert await servicer.ModelInfer(message(), refused) == b""
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-inflight-rpcs 2" in refused.details
        engine.release.set()
        for task in held:
            assert pb.ModelInferResponse.FromString(await task).model_name == "m"
        # Their slots are free again.
        assert (
            pb.ModelInferResponse.FromString(
                await servicer.ModelInfer(message(), Context())
            ).model_version
            == "1"
        )

    asyncio.run(main())
