"""The one table of v2 datatypes: names, numpy dtypes and the typed-contents field of each.

BF16 has no numpy dtype; it travels as ``uint16`` holding the bfloat16 bit patterns. This module
is part of the base: it imports nothing of headrace but the errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.errors import InvalidArgumentError

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
