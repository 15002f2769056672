"""ONNX Runtime backend: CPU provider by default, CUDA when onnxruntime-gpu and a GPU exist.

One session per model. On the CPU, a model runs through ONNX Runtime's C API from the core
(``_core.OrtModel``, no GIL), which also answers its metadata; onnxruntime's Python session is
built only where that path does not apply: string tensors, the CUDA provider, or
``native=False`` (``HEADRACE_NATIVE_ONNXRUNTIME=0``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from headrace.backends.base import TensorSpec
from headrace.errors import HeadraceError, InternalError, InvalidArgumentError
from headrace.native import core as _core

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"

_ONNX_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
_BFLOAT16_ONNX_ELEMENT_TYPE = 16  # onnx.TensorProto.BFLOAT16


def _shape(dims: Sequence[Any]) -> tuple[int, ...]:
    # ONNX reports symbolic or unknown dims as strings or None: both are dynamic (-1) on the wire.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)


def _spec(node: Any, path: Path) -> TensorSpec:
    datatype = _ONNX_TO_DATATYPE.get(node.type)
    if datatype is None:
        raise InvalidArgumentError(f"{path}: tensor '{node.name}' has unsupported type {node.type}")
    return TensorSpec(node.name, datatype, _shape(node.shape))


def choose_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu), then CPU."""
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*providers, "CPUExecutionProvider"]


def native_library() -> str | None:
    """The ONNX Runtime shared library inside the onnxruntime package, if it ships one (the
    wheels for Linux do, beside the Python module): the core drives it through the C API."""
    folder = Path(ort.__file__).parent / "capi"
    found = sorted(folder.glob("libonnxruntime.so*")) + sorted(folder.glob("libonnxruntime*.dylib"))
    return str(found[0]) if found else None


@functools.cache
def native_library_version(library: str) -> str:
    """The release of the ONNX Runtime library at ``library``, loaded by the core (once per
    process; it requests the C API version its slot table was written against and refuses a
    library without it). Logged on first use."""
    version = _core.ort_library_version(library)
    log.info(
        "ONNX Runtime %s loaded from %s (C API version %d)",
        version,
        library,
        _core.ORT_API_VERSION,
    )
    return version


def _load_native(
    library: str, path: Path, intra_op_threads: int, inter_op_threads: int
) -> _core.OrtModel | None:
    """The model as a native session, or None when it must run through the Python API."""
    try:
        native_library_version(library)
        return _core.OrtModel(library, str(path), intra_op_threads, inter_op_threads)
    except InvalidArgumentError as error:
        # Tensors the native runner does not take (strings, non-tensor values).
        log.debug("%s: runs through onnxruntime's Python API: %s", path, error)
    except HeadraceError as error:
        log.warning("%s: native ONNX Runtime unavailable, using Python: %s", path, error)
    return None


def _python_session(
    path: Path, providers: list[str], intra_op_threads: int, inter_op_threads: int
) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    # Errors reach the caller as exceptions; ONNX Runtime's own stderr logging would only
    # duplicate them.
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class OnnxBackend:
    """One ONNX Runtime session. ``run`` is thread-safe (ONNX Runtime sessions are).

    With ``native`` (the default) and a model the core can run (CPU provider, no string tensors),
    the session is created through ONNX Runtime's C API in the core, and the model's metadata
    comes from it: ``batch_runner`` then runs the batcher's batches on its worker threads without
    the GIL, and ``run`` goes through it too. Otherwise the session is onnxruntime's Python one
    (and the only one: no native session is kept for such a model).
    """

    platform = PLATFORM

    def __init__(
        self,
        path: Path,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        native: bool = True,
    ) -> None:
        self.path = path
        providers = choose_providers()
        library = native_library()
        self._native: _core.OrtModel | None = None
        self._session: Any = None
        if native and library is not None and providers == ["CPUExecutionProvider"]:
            self._native = _load_native(library, path, intra_op_threads, inter_op_threads)
        if self._native is not None:
            self.inputs = tuple(TensorSpec(n, d, tuple(s)) for n, d, s in self._native.inputs)
            self.outputs = tuple(TensorSpec(n, d, tuple(s)) for n, d, s in self._native.outputs)
        else:
            self._session = _python_session(path, providers, intra_op_threads, inter_op_threads)
            self.inputs = tuple(_spec(node, path) for node in self._session.get_inputs())
            self.outputs = tuple(_spec(node, path) for node in self._session.get_outputs())
        self._bf16_inputs = {s.name for s in self.inputs if s.datatype == "BF16"}
        self._bf16_outputs = {s.name for s in self.outputs if s.datatype == "BF16"}

    def batch_runner(
        self, input_names: Sequence[str], output_names: Sequence[str]
    ) -> _core.NativeRunner | None:
        """A native batcher runner (inputs and outputs in the engine's order), or None when this
        model runs through the Python API."""
        if self._native is None:
            return None
        return self._native.runner(list(input_names), list(output_names))

    @property
    def run_idle(self) -> Callable[..., list[npt.NDArray[Any]]] | None:
        """``run`` with the model's compute at idle CPU priority, the thread lowered by the core
        only while it holds no GIL (thread_policy.run_at_idle_priority); None for a model on
        onnxruntime's Python API, whose own run cannot be lowered from inside."""
        return self._run_idle if self._native is not None else None

    def _run_idle(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]:
        assert self._native is not None
        feed = {name: np.asarray(array) for name, array in inputs.items()}
        return self._native.run(feed, list(output_names), idle_priority=True)

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]:
        if self._native is not None:
            return self._native.run(
                {name: np.asarray(array) for name, array in inputs.items()}, list(output_names)
            )
        try:
            if self._bf16_inputs or self._bf16_outputs:
                return self._run_ort_values(inputs, output_names)
            return list(self._session.run(list(output_names), dict(inputs)))
        except (
            ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.RuntimeException,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
        ) as error:
            raise InternalError(f"model runtime error: {error}") from None

    def _run_ort_values(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]:
        # numpy has no bfloat16: such tensors travel as uint16 bit patterns and enter and leave
        # ONNX Runtime as OrtValues of the right element type.
        feed = {}
        for name, array in inputs.items():
            if name in self._bf16_inputs:
                feed[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(array), onnx_element_type=_BFLOAT16_ONNX_ELEMENT_TYPE
                )
            else:
                feed[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        results = self._session.run_with_ort_values(list(output_names), feed)
        arrays: list[npt.NDArray[Any]] = []
        for name, value in zip(output_names, results, strict=True):
            if name in self._bf16_outputs:
                shape = tuple(value.shape())
                count = int(np.prod(shape)) if shape else 1
                pointer = ctypes.cast(value.data_ptr(), ctypes.POINTER(ctypes.c_uint16))
                view = np.ctypeslib.as_array(pointer, shape=(count,)) if count else None
                data = view.copy() if view is not None else np.empty(0, np.uint16)
                arrays.append(data.reshape(shape))
            else:
                arrays.append(value.numpy())
        return arrays

    def close(self) -> None:
        # Dropping the session frees it; later runs fail loudly instead of using freed state.
        del self._session
        del self._native
