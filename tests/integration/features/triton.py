"""tritonclient (Triton's own gRPC client, unchanged) against headrace: numpy inputs in, the
answer's ``y`` and ``headrace_variant`` out."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

# Each call gets this long before a test calls it a hang (a guard, not a latency check).
CLIENT_TIMEOUT_S = 30.0


def tensors(inputs: Mapping[str, npt.NDArray[Any]]) -> list[Any]:
    out = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def infer(
    client: Any, model: str, inputs: Mapping[str, npt.NDArray[Any]], request_id: str = ""
) -> tuple[npt.NDArray[np.float32], str]:
    """``y`` and the variant that answered."""
    result = client.infer(
        model, tensors(inputs), request_id=request_id, client_timeout=CLIENT_TIMEOUT_S
    )
    variant = result.get_response().parameters["headrace_variant"].string_param
    y: npt.NDArray[np.float32] = result.as_numpy("y")
    return y, variant


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll state until ``condition`` holds (the bound only stops a broken test hanging)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
