"""The ``headrace.v1.FeedbackService`` servicer: rewards and labels for answered requests, by
the request id their answer carried. Any client may call it (it is not an admin operation).

Feedback updates routing state that the request path shares: it runs on the event loop, under
the engine's routing lock, and costs a dictionary lookup and a few counters per item.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt

from headrace import _core, wire
from headrace.engine import Engine
from headrace.errors import HeadraceError, InvalidArgumentError
from headrace.server.convert import decode_raw
from headrace.server.status import unary_errors
from headrace.wire import admin as pb

if TYPE_CHECKING:  # ServicerContext is generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext

FEEDBACK_SERVICE = wire.FEEDBACK_SERVICE.full_name
# Items one FeedbackBatch may carry: bounds the work and the answer of one call.
MAX_FEEDBACK_BATCH = 10_000


def decode_label(label: Any, max_elements: int) -> npt.NDArray[Any] | None:
    """A LabelTensor as a numpy array (raw little-endian bytes or one typed field)."""
    shape = list(label.shape)
    typed = [
        (field, values)
        for field, values in (
            ("int64_contents", label.int64_contents),
            ("fp64_contents", label.fp64_contents),
        )
        if len(values)
    ]
    if label.raw_contents:
        if typed:
            raise InvalidArgumentError("label: raw_contents and typed contents are mixed")
        if not label.datatype:
            raise InvalidArgumentError("label: raw_contents need a datatype")
        return decode_raw("label", label.datatype, shape, label.raw_contents, max_elements)
    if len(typed) != 1:
        raise InvalidArgumentError(
            "label: needs raw_contents or exactly one of int64_contents, fp64_contents"
        )
    field, values = typed[0]
    expected = "INT64" if field == "int64_contents" else "FP64"
    if label.datatype and label.datatype != expected:
        raise InvalidArgumentError(f"label: datatype {label.datatype} is not carried in {field}")
    count = _core.checked_element_count(shape, max_elements, "label")
    if len(values) != count:
        raise InvalidArgumentError(
            f"label: {field} has {len(values)} elements but shape {shape} needs {count}"
        )
    dtype = np.int64 if field == "int64_contents" else np.float64
    return np.asarray(values, dtype=dtype).reshape(shape)


class FeedbackServicer:
    """``headrace.v1.FeedbackService``: rewards and labels by request id; any client may call."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._max_elements = engine.settings.max_request_elements

    def _one(self, item: Any) -> Any:
        if not item.request_id:
            raise InvalidArgumentError("feedback needs the request_id its answer carried")
        label = decode_label(item.label, self._max_elements) if item.HasField("label") else None
        receipt = self._engine.feedback(
            item.request_id,
            reward=item.reward if item.HasField("reward") else None,
            label=label,
            endpoint=item.endpoint or None,
        )
        return pb.FeedbackResponse(endpoint=receipt.endpoint, variant=receipt.variant)

    @unary_errors
    async def Feedback(self, request: Any, context: Context) -> Any:
        return self._one(request)

    @unary_errors
    async def FeedbackBatch(self, request: Any, context: Context) -> Any:
        if len(request.items) > MAX_FEEDBACK_BATCH:
            raise InvalidArgumentError(
                f"a feedback batch holds at most {MAX_FEEDBACK_BATCH} items, got "
                f"{len(request.items)}"
            )
        response = pb.FeedbackBatchResponse()
        for item in request.items:
            try:
                response.results.add(response=self._one(item))
            except HeadraceError as error:
                response.results.add(code=int(error.code), message=error.message)
        return response
