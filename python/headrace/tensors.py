"""Datatypes and the wire <-> numpy codecs of the v2 protocol.

Raw contents are the fast path: a raw input becomes a numpy view of the request's bytes (no copy),
after the core has checked its datatype, shape and byte size. Typed contents (the repeated fields
of ``InferTensorContents``) are the compatible, slower path. BF16 has no numpy dtype; it travels
as ``uint16`` holding the bfloat16 bit patterns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace import _core
from headrace.errors import InvalidArgumentError, from_core_error

DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_DATATYPE: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in DATATYPE_TO_NUMPY.items() if name != "BF16"
}

# Which repeated field of InferTensorContents carries each datatype (FP16/BF16: raw only).
TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

ALL_TYPED_FIELDS = tuple(sorted(set(TYPED_FIELD.values())))


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The v2 datatype name for a numpy array's dtype (str and bytes arrays are BYTES)."""
    if array.dtype.kind in ("U", "S"):
        return "BYTES"
    try:
        return _NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise InvalidArgumentError(f"numpy dtype {array.dtype} has no v2 datatype") from None


def numpy_dtype(datatype: str, tensor_name: str) -> np.dtype[Any]:
    """The numpy dtype for a v2 datatype name; INVALID_ARGUMENT naming the tensor if unknown."""
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidArgumentError(
            f"input '{tensor_name}': unknown datatype '{datatype}'"
        ) from None


def decode_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes, max_elements: int
) -> npt.NDArray[Any]:
    """A raw input as a numpy array viewing ``raw`` (BYTES elements are split into objects)."""
    try:
        count = _core.validate_raw_tensor(datatype, shape, len(raw), max_elements, name)
        if datatype == "BYTES":
            return _core.decode_bytes(raw, count, name).reshape(tuple(shape))
    except _core.CoreError as error:
        raise from_core_error(error) from None
    return np.frombuffer(raw, dtype=DATATYPE_TO_NUMPY[datatype]).reshape(tuple(shape))


def decode_typed(
    name: str, datatype: str, shape: Sequence[int], contents: Any, max_elements: int
) -> npt.NDArray[Any]:
    """A typed input (``InferTensorContents``) as a numpy array, checked for count and range."""
    dtype = numpy_dtype(datatype, name)
    try:
        count = _core.checked_element_count(shape, max_elements, name)
    except _core.CoreError as error:
        raise from_core_error(error) from None
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise InvalidArgumentError(
            f"input '{name}': datatype {datatype} must be sent in raw_input_contents"
        )
    for other in ALL_TYPED_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidArgumentError(
                f"input '{name}': datatype {datatype} is carried in {field}, not {other}"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgumentError(
            f"input '{name}': {field} has {len(values)} elements but shape "
            f"{list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(tuple(shape))
    wide = np.asarray(values)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidArgumentError(
                f"input '{name}': a value in {field} is out of range for {datatype}"
            )
    return wide.astype(dtype, copy=False).reshape(tuple(shape))


def encode_raw(name: str, datatype: str, array: npt.NDArray[Any]) -> bytes:
    """An output array as raw little-endian bytes (BYTES as 4-byte length + payload)."""
    if datatype == "BYTES":
        if array.dtype.kind in ("U", "S"):
            array = array.astype(object)
        try:
            return _core.encode_bytes(array, name)
        except _core.CoreError as error:
            raise from_core_error(error) from None
    return np.ascontiguousarray(array).tobytes()


def decode_raw_output(datatype: str, shape: Sequence[int], raw: bytes) -> npt.NDArray[Any]:
    """Client side: a raw output back to numpy (copies nothing for fixed-size types)."""
    if datatype == "BYTES":
        count = int(np.prod(shape)) if len(shape) else 1
        return _core.decode_bytes(raw, count, "output").reshape(tuple(shape))
    dtype = DATATYPE_TO_NUMPY[datatype]
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))
