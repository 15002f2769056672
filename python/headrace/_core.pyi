# Hand-written stubs for the private native module headrace._core (csrc/bindings/).
# Each area keeps its section; keep them in the order of csrc/bindings/module.cc.
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

class CoreError(RuntimeError):
    """args == (code, message); code is a gRPC canonical status code."""

# --- tensors (csrc/tensors) ---
def validate_raw_tensor(
    datatype: str, shape: Sequence[int], raw_byte_size: int, max_elements: int, name: str
) -> int: ...
def checked_element_count(shape: Sequence[int], max_elements: int, name: str) -> int: ...
def decode_bytes(blob: bytes | memoryview, count: int, name: str) -> npt.NDArray[np.object_]: ...
def encode_bytes(elements: npt.NDArray[np.object_], name: str) -> bytes: ...
