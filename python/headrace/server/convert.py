"""Wire <-> domain conversion for the v2 protocol; no policy lives here.

The hot path: ``parse_request`` hands the request bytes to the core, which checks every length
and shape and returns tensors as numpy views of those bytes (no protobuf objects; BYTES inputs
stay in wire form, ``BytesTensor``, until the engine has checked them against the model), and
``serialize_response`` has the core write the response bytes. Requests with typed contents (the
repeated fields of ``InferTensorContents``) take the protobuf path (``decode_infer_request``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.datatypes import ALL_TYPED_FIELDS, DATATYPE_TO_NUMPY, TYPED_FIELD, numpy_dtype
from headrace.errors import InvalidArgumentError
from headrace.native import core as _core
from headrace.types import (
    InferRequest,
    InferResult,
    InputTensor,
    ModelMetadata,
    VersionStatistics,
)
from headrace.wire import inference as pb


def parse_request(message: bytes, max_elements: int) -> InferRequest | None:
    """A ModelInferRequest's bytes as a domain request, or None when it carries typed contents
    (then decode it with ``decode_infer_request``). BYTES inputs are ``BytesTensor``: nothing is
    made per element (nor their length prefixes walked) before the model is known to take them,
    so a request for a missing model costs no more than its bytes."""
    # expand_bytes=False, passed by position: pybind11's keyword matching cost ~300 ns a call.
    parsed = _core.parse_infer_request(message, max_elements, False)
    name, version, request_id, parameters, tensors, output_names, typed = parsed
    if typed:
        return None
    # One loop rather than two comprehensions (each a function call on Python 3.11). Arrays
    # are None only for typed contents, handled above.
    inputs: dict[str, InputTensor] = {}
    declared: dict[str, str] = {}
    for tensor_name, datatype, array in tensors:
        if array is not None:
            inputs[tensor_name] = array
        declared[tensor_name] = datatype
    return InferRequest(
        model=name,
        inputs=inputs,
        version=version or None,
        outputs=output_names or None,
        request_id=request_id,
        declared_datatypes=declared,
        priority=int_parameter(parameters, "priority") if parameters else 0,
        timeout_us=int_parameter(parameters, "timeout") if parameters else 0,
        parameters=parameters or {},
    )


def request_target(message: bytes) -> tuple[str, str] | None:
    """(model_name, model_version) of a ModelInferRequest's bytes, read without parsing the rest
    (None when its top level is malformed: ``parse_request`` then says why)."""
    return _core.peek_infer_target(message)


def serialize_response(result: InferResult) -> bytes:
    """A result as ModelInferResponse bytes (raw output contents and the result's string
    parameters, such as ``headrace_variant``), written by the core."""
    datatypes = result.datatypes
    response: bytes = _core.serialize_infer_response(
        result.model_name,
        result.model_version,
        result.id,
        [(out, datatypes[out], array) for out, array in result.outputs.items()],
        list(result.parameters.items()) if result.parameters else None,
    )
    return response


def decode_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes, max_elements: int
) -> npt.NDArray[Any]:
    """A raw input as a numpy array viewing ``raw`` (BYTES elements are split into objects)."""
    count = _core.validate_raw_tensor(datatype, shape, len(raw), max_elements, name)
    if datatype == "BYTES":
        return _core.decode_bytes(raw, count, name).reshape(tuple(shape))
    return np.frombuffer(raw, dtype=DATATYPE_TO_NUMPY[datatype]).reshape(tuple(shape))


def decode_typed(
    name: str, datatype: str, shape: Sequence[int], contents: Any, max_elements: int
) -> npt.NDArray[Any]:
    """A typed input (``InferTensorContents``) as a numpy array, checked for count and range."""
    dtype = numpy_dtype(datatype, name)
    count = _core.checked_element_count(shape, max_elements, name)
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
        encoded: bytes = _core.encode_bytes(array, name)
        return encoded
    return np.ascontiguousarray(array).tobytes()


@dataclass(frozen=True)
class DecodedRequest:
    model_name: str
    model_version: str
    request_id: str
    inputs: dict[str, npt.NDArray[Any]]
    declared_datatypes: dict[str, str]
    outputs: list[str]
    parameters: dict[str, Any]
    priority: int = 0
    timeout_us: int = 0


def _parameter_value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice is not None else None


def decode_infer_request(request: Any, max_elements: int) -> DecodedRequest:
    """Check the request's structure and turn its tensors into numpy arrays (raw: views)."""
    raw_contents = request.raw_input_contents
    if raw_contents:
        if len(raw_contents) != len(request.inputs):
            raise InvalidArgumentError(
                f"request has {len(request.inputs)} inputs but {len(raw_contents)} "
                "raw_input_contents entries; there must be exactly one per input"
            )
        for tensor in request.inputs:
            if tensor.HasField("contents"):
                raise InvalidArgumentError(
                    f"input '{tensor.name}': typed contents and raw_input_contents are mixed "
                    "in one request"
                )
    inputs: dict[str, npt.NDArray[Any]] = {}
    declared: dict[str, str] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidArgumentError(f"input '{name}' appears more than once")
        shape = list(tensor.shape)
        if raw_contents:
            inputs[name] = decode_raw(
                name, tensor.datatype, shape, raw_contents[index], max_elements
            )
        elif tensor.HasField("contents"):
            inputs[name] = decode_typed(name, tensor.datatype, shape, tensor.contents, max_elements)
        else:
            raise InvalidArgumentError(f"input '{name}' has no contents (typed or raw)")
        declared[name] = tensor.datatype
    parameters = {k: _parameter_value(v) for k, v in request.parameters.items()}
    return DecodedRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        request_id=request.id,
        inputs=inputs,
        declared_datatypes=declared,
        outputs=[output.name for output in request.outputs],
        parameters=parameters,
        priority=int_parameter(parameters, "priority"),
        timeout_us=int_parameter(parameters, "timeout"),
    )


def to_request(decoded: DecodedRequest, timeout_s: float | None = None) -> InferRequest:
    """A protobuf-decoded request in domain terms."""
    return InferRequest(
        model=decoded.model_name,
        inputs=decoded.inputs,
        version=decoded.model_version or None,
        outputs=decoded.outputs or None,
        request_id=decoded.request_id,
        declared_datatypes=decoded.declared_datatypes,
        priority=decoded.priority,
        timeout_us=decoded.timeout_us,
        timeout_s=timeout_s,
        parameters=decoded.parameters,
    )


def int_parameter(parameters: dict[str, Any], name: str) -> int:
    """Triton's reserved scheduling parameters: int64, non-negative (priority 0 = default)."""
    value = parameters.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(
            f"request parameter '{name}' must be a non-negative integer, got {value!r}"
        )
    return value


def encode_infer_response(result: InferResult) -> Any:
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    for key, value in result.parameters.items():
        response.parameters[key].string_param = value
    for name, array in result.outputs.items():
        datatype = result.datatypes[name]
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(encode_raw(name, datatype, array))
    return response


def encode_metadata(metadata: ModelMetadata) -> Any:
    response = pb.ModelMetadataResponse(
        name=metadata.name, versions=list(metadata.versions), platform=metadata.platform
    )
    for spec in metadata.inputs:
        response.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    for spec in metadata.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    return response


_CONFIG_DATATYPE = {
    "BOOL": pb.TYPE_BOOL,
    "UINT8": pb.TYPE_UINT8,
    "UINT16": pb.TYPE_UINT16,
    "UINT32": pb.TYPE_UINT32,
    "UINT64": pb.TYPE_UINT64,
    "INT8": pb.TYPE_INT8,
    "INT16": pb.TYPE_INT16,
    "INT32": pb.TYPE_INT32,
    "INT64": pb.TYPE_INT64,
    "FP16": pb.TYPE_FP16,
    "FP32": pb.TYPE_FP32,
    "FP64": pb.TYPE_FP64,
    "BYTES": pb.TYPE_STRING,
    "BF16": pb.TYPE_BF16,
}


def encode_model_config(version: Any) -> Any:
    """Triton's ModelConfig for a served version (dims exclude the batch dim when batching)."""
    config = pb.ModelConfig(
        name=version.name,
        platform=version.backend.platform,
        backend="onnxruntime" if version.backend.platform == "onnxruntime_onnx" else "headrace",
        max_batch_size=version.max_batch_size,
    )
    policy = version.config.version_policy
    if policy.kind == "all":
        config.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        config.version_policy.specific.versions.extend(policy.versions)
    else:
        config.version_policy.latest.num_versions = policy.num_versions
    skip = 1 if version.max_batch_size > 0 else 0
    for spec in version.inputs:
        config.input.add(
            name=spec.name, data_type=_CONFIG_DATATYPE[spec.datatype], dims=list(spec.shape[skip:])
        )
    for spec in version.outputs:
        dims = list(spec.shape[skip:]) if len(spec.shape) >= skip else []
        config.output.add(name=spec.name, data_type=_CONFIG_DATATYPE[spec.datatype], dims=dims)
    group = config.instance_group.add()
    group.name = f"{version.name}_0"
    group.count = max(1, version.config.instances)
    group.kind = pb.ModelInstanceGroup.KIND_CPU
    if version.max_batch_size > 0:
        batching = version.config.batching
        dynamic = config.dynamic_batching
        dynamic.preferred_batch_size.extend(batching.preferred_batch_sizes)
        if isinstance(batching.max_queue_delay_us, int):
            dynamic.max_queue_delay_microseconds = batching.max_queue_delay_us
        dynamic.priority_levels = batching.priority_levels
        dynamic.default_priority_level = batching.default_priority_level
        dynamic.default_queue_policy.default_timeout_microseconds = batching.default_timeout_us
        dynamic.default_queue_policy.max_queue_size = batching.max_queue_size
        dynamic.default_queue_policy.allow_timeout_override = True
    return config


def _duration(target: Any, count: int, ns: int) -> None:
    target.count = count
    target.ns = ns


def encode_statistics(stats: list[VersionStatistics]) -> Any:
    response = pb.ModelStatisticsResponse()
    for s in stats:
        entry = response.model_stats.add(
            name=s.name,
            version=s.version,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
        )
        infer = entry.inference_stats
        _duration(infer.success, s.success_count, s.success_ns)
        _duration(infer.fail, s.fail_count, s.fail_ns)
        _duration(infer.queue, s.queue_count, s.queue_ns)
        _duration(infer.compute_infer, s.compute_count, s.compute_ns)
        _duration(infer.compute_input, s.compute_count, 0)
        _duration(infer.compute_output, s.compute_count, 0)
        for size in sorted(s.batches):
            batch = s.batches[size]
            item = entry.batch_stats.add(batch_size=size)
            _duration(item.compute_infer, batch.count, batch.compute_ns)
            _duration(item.compute_input, batch.count, 0)
            _duration(item.compute_output, batch.count, 0)
    return response
