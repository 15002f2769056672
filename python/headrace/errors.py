"""Exceptions with status codes, shared by the engine, the server and the clients.

Every error that crosses a boundary carries a gRPC canonical status code in ``.code``. The core
raises these types itself: ``csrc/bindings/register_errors.cc`` translates a C++
``CoreError(code, message)`` once, through :func:`error_for_code`, so a core call raises e.g.
:class:`InvalidArgumentError` with ``.code`` and ``.message`` set (``headrace._core.CoreError`` is
an alias of :class:`HeadraceError`). One function in ``headrace.server`` maps ``.code`` to the gRPC
status. This module imports nothing from headrace: the native module imports it at load.
"""

from __future__ import annotations

import enum
import logging

log = logging.getLogger(__name__)


class StatusCode(enum.IntEnum):
    """gRPC canonical status codes (the same numbers as grpc.StatusCode's values)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class HeadraceError(Exception):
    """Base of every headrace error; ``code`` says which gRPC status it maps to."""

    code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(HeadraceError):
    code = StatusCode.INVALID_ARGUMENT


class NotFoundError(HeadraceError):
    code = StatusCode.NOT_FOUND


class UnavailableError(HeadraceError):
    code = StatusCode.UNAVAILABLE


class DeadlineExceededError(HeadraceError):
    code = StatusCode.DEADLINE_EXCEEDED


class CancelledError(HeadraceError):
    code = StatusCode.CANCELLED


class UnimplementedError(HeadraceError):
    code = StatusCode.UNIMPLEMENTED


class InternalError(HeadraceError):
    code = StatusCode.INTERNAL


class ResourceExhaustedError(HeadraceError):
    code = StatusCode.RESOURCE_EXHAUSTED


class PermissionDeniedError(HeadraceError):
    code = StatusCode.PERMISSION_DENIED


class UnauthenticatedError(HeadraceError):
    code = StatusCode.UNAUTHENTICATED


class FailedPreconditionError(HeadraceError):
    """The call is valid but the server's state does not allow it (nothing to roll back to)."""

    code = StatusCode.FAILED_PRECONDITION


class ConfigError(InvalidArgumentError):
    """A model.toml or server setting is wrong; the message names the key and the file."""


_BY_CODE: dict[StatusCode, type[HeadraceError]] = {
    StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    StatusCode.NOT_FOUND: NotFoundError,
    StatusCode.UNAVAILABLE: UnavailableError,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    StatusCode.CANCELLED: CancelledError,
    StatusCode.UNIMPLEMENTED: UnimplementedError,
    StatusCode.INTERNAL: InternalError,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


def error_for_code(code: int, message: str) -> HeadraceError:
    """The typed exception for a numeric status code (unknown codes become INTERNAL)."""
    try:
        status = StatusCode(code)
    except ValueError:
        return InternalError(message)
    error_type = _BY_CODE.get(status)
    if error_type is None:
        error = HeadraceError(message)
        error.code = status
        return error
    return error_type(message)


def from_core_error(error: BaseException) -> HeadraceError:
    """A typed exception for an error from the core. The core already raises typed errors, which
    come back unchanged; a bare ``(code, message)`` exception is still translated."""
    if isinstance(error, HeadraceError):
        return error
    args = error.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return error_for_code(args[0], args[1])
    return InternalError(str(error))


def runner_failure(error: BaseException) -> HeadraceError:
    """How a model runner's failure reads, wherever the runner ran (a batch on a core worker
    thread, or one request on an instance thread): a :class:`HeadraceError` keeps its code and
    message; any other exception becomes ``InternalError("model runner failed: <Type>:
    <message>")``, and its traceback is logged here (the caller sees no traceback)."""
    if isinstance(error, HeadraceError):
        return error
    log.error("model runner failed", exc_info=(type(error), error, error.__traceback__))
    return InternalError(f"model runner failed: {type(error).__name__}: {error}")
