# Stubs for headrace._core.testing (csrc/bindings/register_testing.cc): bindings that exist only
# for tests. headrace's own code never imports this module.
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace._core import BatcherConfig

class PolicyHarness:
    """The pure batching policy and its cost model over a hand-built queue and a fake clock."""

    def __init__(self, config: BatcherConfig) -> None: ...
    def add(
        self,
        ticket: int,
        rows: int,
        *,
        priority: int = 0,
        enqueue_ns: int,
        deadline_ns: int = 0,
        shape_key: int = 0,
    ) -> None: ...
    def remove(self, tickets: Sequence[int]) -> None: ...
    def set_instances(self, free: int, busy: int) -> None: ...
    def observe_batch(self, rows: int, compute_ns: int, input_bytes: int | None = None) -> None:
        """A batch ran; input_bytes defaults to one byte per row."""
    def admit(
        self,
        rows: int,
        *,
        priority: int = 0,
        deadline_ns: int,
        now_ns: int,
        input_bytes: int = 0,
    ) -> dict[str, Any]:
        """What submit decides for such a request behind the queued ones: {"verdict":
        "admit"|"expired"|"late", "wait_ns", "run_ns", "left_ns"}."""
    def observe_arrival(self, arrival_ns: int) -> None: ...
    def set_saturated(self, saturated: bool) -> None: ...
    def observe_load(self, busy_fraction: float) -> bool:
        """A busy fraction through the config's saturation hysteresis; returns saturated."""
    def observe_companion_wait(self, requests: int) -> None: ...
    def decide(self, now_ns: int, flush: bool = False) -> dict[str, Any]:
        """{"action": "run"|"wait"|"idle", "run": [tickets], "expired": [tickets],
        "doomed": [tickets], "shed": [tickets], "companion_wait": bool,
        "wait_until_ns": int | None}"""
    def cost(self) -> dict[str, float]:
        """a_ns_per_row, b_ns, a_ns_per_byte, b_bytes_ns, arrival_interval_ns, wait_yield,
        probe_due, busy_fraction, saturated, samples."""
    @property
    def queued(self) -> list[int]: ...

def infer_request_parse_steps(
    message: bytes, max_elements: int, validate_bytes: bool = False
) -> tuple[int, int, str]:
    """Parse as parse_infer_request does: (units of work taken -- fields read, set lookups, BYTES
    elements walked --, status code (0 = parsed), message), also for refused messages."""

def quant_gemm_quads_emulated(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8]
) -> npt.NDArray[np.int32]: ...
def kolmogorov_survival(lam: float) -> float: ...
def gamma_q(a: float, x: float) -> float: ...
def chi_square_survival(statistic: float, dof: float) -> float: ...
def probe_without_gil(idle_priority: bool) -> tuple[int, bool, int]: ...

# csrc/cuda (register_cuda_testing.cc): the tensor-core weight packings and CPU emulations of the
# kernels, on any machine.
def cuda_pack_mlp_weights(w: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]: ...
def cuda_pack_gemm_weights(w: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]: ...
def cuda_emulate_mma(
    a: npt.NDArray[np.uint32], b: npt.NDArray[np.uint32], c: npt.NDArray[np.int32]
) -> npt.NDArray[np.int32]: ...
def cuda_emulate_mlp_layer(
    a: npt.NDArray[np.int8], w: npt.NDArray[np.int8], cluster_size: int
) -> npt.NDArray[np.int32]: ...
def cuda_emulate_tiled_gemm(
    a: npt.NDArray[np.int8], w: npt.NDArray[np.int8]
) -> npt.NDArray[np.int32]: ...
