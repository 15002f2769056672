"""Exceptions with status codes, shared by the engine, the server and the clients.

Every error that crosses a boundary carries a gRPC canonical status code in ``.code``. The core
raises ``headrace._core.CoreError(code, message)``; :func:`from_core_error` turns it into one of
these types, and one function in ``headrace.server`` maps ``.code`` to the gRPC status.
"""

from __future__ import annotations

import enum


class StatusCode(enum.IntEnum):
    """gRPC canonical status codes (the same numbers as grpc.StatusCode's values)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


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
    """Translate ``headrace._core.CoreError(code, message)`` into a typed exception."""
    args = error.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return error_for_code(args[0], args[1])
    return InternalError(str(error))
