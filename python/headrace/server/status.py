"""The one place where domain errors become gRPC statuses: every servicer (inference, admin,
stream answers) goes through ``describe``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from headrace.errors import HeadraceError, StatusCode

log = logging.getLogger(__name__)

_T = TypeVar("_T")


_GRPC_CODES = {candidate.value[0]: candidate for candidate in grpc.StatusCode}


def grpc_code(code: StatusCode) -> grpc.StatusCode:
    return _GRPC_CODES.get(int(code), grpc.StatusCode.INTERNAL)


def describe(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status, message) for any exception; unknown ones are INTERNAL and logged."""
    if isinstance(error, HeadraceError):
        return grpc_code(error.code), error.message
    # Unknown errors may carry paths or internals: the client gets a generic message, the log
    # gets the traceback.
    log.error("unexpected error while serving a request", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error (the server log has the details)"


def unary_errors(
    handler: Callable[..., Awaitable[_T]],
) -> Callable[..., Awaitable[_T]]:
    """Turn exceptions of a unary handler into a gRPC status with a message."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> _T:
        try:
            return await handler(self, request, context)
        except Exception as error:
            code, message = describe(error)
            await context.abort(code, message)
            raise AssertionError("unreachable: context.abort raises") from None

    return wrapper
