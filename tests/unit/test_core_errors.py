"""One error path: a core CoreError(code, message) arrives as headrace.errors' typed exception
(translated once, in csrc/bindings/register_errors.cc), and a Python runner's failure reads one
way (headrace.errors.runner_failure), whether it ran batched on a core worker or not."""

from __future__ import annotations

import logging
import select
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace import _core, errors
from headrace.backends.onnx import native_library
from headrace.errors import (
    HeadraceError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    StatusCode,
    UnavailableError,
)


def raised(call: Any, *args: Any) -> HeadraceError:
    with pytest.raises(HeadraceError) as info:
        call(*args)
    return info.value


def test_core_errors_arrive_as_their_typed_class_with_code_and_message(tmp_path: Path) -> None:
    bad_bytes = raised(_core.decode_bytes, b"\x05\x00", 1, "t")
    assert type(bad_bytes) is InvalidArgumentError
    assert bad_bytes.code == StatusCode.INVALID_ARGUMENT
    assert "input 't'" in bad_bytes.message
    assert str(bad_bytes) == bad_bytes.message and bad_bytes.args == (bad_bytes.message,)

    missing = tmp_path / "missing.int8"
    not_found = raised(_core.QuantizedMlp, str(missing))
    assert type(not_found) is NotFoundError and not_found.code == StatusCode.NOT_FOUND
    assert str(missing) in not_found.message

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    no_library = raised(_core.OrtModel, str(tmp_path / "libmissing.so"), str(broken))
    assert type(no_library) is UnavailableError and no_library.code == StatusCode.UNAVAILABLE
    assert "libmissing.so" in no_library.message
    library = native_library()
    assert library is not None
    bad_model = raised(_core.OrtModel, library, str(broken))
    assert type(bad_model) is InternalError and bad_model.code == StatusCode.INTERNAL
    assert "broken.onnx" in bad_model.message

    config = _core.BatcherConfig(max_batch_size=0)
    bad_config = raised(config.validate)
    assert type(bad_config) is InvalidArgumentError
    assert bad_config.message == "batcher config: max_batch_size must be >= 1"


def test_core_error_is_the_typed_base_and_from_core_error_keeps_typed_errors() -> None:
    assert _core.CoreError is HeadraceError
    error = raised(_core.decode_bytes, b"\x01", 1, "t")
    assert errors.from_core_error(error) is error


def test_codes_without_a_class_of_their_own() -> None:
    # The translator builds every core error through error_for_code.
    exists = errors.error_for_code(StatusCode.ALREADY_EXISTS, "taken")
    assert type(exists) is HeadraceError
    assert exists.code == StatusCode.ALREADY_EXISTS and exists.message == "taken"
    precondition = errors.error_for_code(StatusCode.FAILED_PRECONDITION, "no avx512")
    assert type(precondition) is errors.FailedPreconditionError
    assert precondition.code == StatusCode.FAILED_PRECONDITION
    unknown = errors.error_for_code(77, "what")
    assert type(unknown) is InternalError and unknown.message == "what"


def run_one_batch(runner: Any) -> tuple[int, str]:
    """(status code, message) of one request through a real Batcher with this runner."""
    queue = _core.CompletionQueue()
    batcher = _core.Batcher("m", _core.BatcherConfig(max_batch_size=4), runner, queue)
    try:
        ticket = batcher.submit([np.ones((2, 3), np.float32)])
        readable, _, _ = select.select([queue.fd], [], [], 10.0)
        assert readable, "no completion"
        ((done, code, message, outputs),) = queue.drain()
        assert done == ticket and outputs is None
        return code, message
    finally:
        batcher.shutdown(drain=False)


def test_a_python_runner_failure_reads_one_way(caplog: pytest.LogCaptureFixture) -> None:
    poisoned = ValueError("poisoned row")

    def failing(inputs: list[Any]) -> list[Any]:
        raise poisoned

    with caplog.at_level(logging.ERROR, logger="headrace.errors"):
        code, message = run_one_batch(failing)
    direct = errors.runner_failure(ValueError("poisoned row"))
    assert code == StatusCode.INTERNAL == direct.code
    assert message == direct.message == "model runner failed: ValueError: poisoned row"
    # The traceback goes to the log, never into the message a client sees.
    assert "Traceback" not in message
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is poisoned]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[2] is not None


def test_a_typed_error_from_a_python_runner_keeps_its_code_and_message() -> None:
    def refusing(inputs: list[Any]) -> list[Any]:
        raise UnavailableError("feature store down")

    assert run_one_batch(refusing) == (StatusCode.UNAVAILABLE, "feature store down")
    typed = InvalidArgumentError("bad row")
    assert errors.runner_failure(typed) is typed


def test_outputs_that_make_no_tensors_fail_as_the_runner() -> None:
    code, message = run_one_batch(lambda inputs: inputs[0])
    assert code == StatusCode.INTERNAL
    assert message.startswith("model runner failed: ") and "list" in message
