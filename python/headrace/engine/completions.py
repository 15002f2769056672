"""Routing finished requests from the native batcher back to their callers.

The core pushes every finished request of every batcher onto one ``CompletionQueue`` and signals
its eventfd at most once until the next drain (so once per batch, not per request). An asyncio
event loop watches the fd with ``add_reader`` and completes every future of the batch in one
callback: no thread hop per request. Blocking callers (``Engine.infer`` from a plain thread)
wait on a ``concurrent.futures.Future``; when no running loop watches the fd, one of them drains
it for everybody.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import select
import threading
from typing import Any

import numpy.typing as npt

from headrace.errors import InternalError, error_for_code
from headrace.native import core as _core

Outputs = list[npt.NDArray[Any]]
_Waiter = asyncio.Future[Outputs] | concurrent.futures.Future[Outputs]

# How long a blocking caller that drains for everybody sleeps in select() before re-checking
# whether an event loop has taken over the fd.
_SYNC_POLL_S = 0.05


class CompletionRouter:
    """Owns the completion queue shared by an engine's batchers; thread-safe."""

    def __init__(self) -> None:
        self.queue = _core.CompletionQueue()
        self._fd = self.queue.fd
        self._lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        # Completions that arrived before their caller registered (a fast batch can finish
        # between submit() returning and the registration), and tickets nobody waits for.
        self._early: dict[int, tuple[int, str, Outputs | None]] = {}
        self._abandoned: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_lock = threading.Lock()

    # -- registration ------------------------------------------------------------------------

    def _register(self, ticket: int, waiter: _Waiter) -> None:
        with self._lock:
            early = self._early.pop(ticket, None)
            if early is None:
                self._waiters[ticket] = waiter
                return
        self._resolve(waiter, *early, _running_loop())

    def abandon(self, ticket: int) -> None:
        """The caller gave up (cancelled); its completion, if any comes, is dropped."""
        with self._lock:
            if self._waiters.pop(ticket, None) is not None:
                self._abandoned.add(ticket)  # its completion is still to come
            else:
                self._early.pop(ticket, None)

    # -- asyncio -----------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let ``loop`` (the caller's running loop) drain the queue from now on."""
        if self._loop is loop:
            return
        previous = self._loop
        if previous is not None and not previous.is_closed() and previous.is_running():
            return  # another live loop already drains; this loop's futures are woken from it
        loop.add_reader(self._fd, self._drain)
        self._loop = loop

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            loop.remove_reader(self._fd)
            self._loop = None

    def future_for(self, ticket: int) -> asyncio.Future[Outputs]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.attach(loop)
        future: asyncio.Future[Outputs] = loop.create_future()
        self._register(ticket, future)
        return future

    # -- blocking callers --------------------------------------------------------------------

    def wait(self, ticket: int) -> Outputs:
        waiter: concurrent.futures.Future[Outputs] = concurrent.futures.Future()
        self._register(ticket, waiter)
        while not waiter.done():
            loop = self._loop
            if loop is not None and not loop.is_closed() and loop.is_running():
                try:
                    return waiter.result(timeout=_SYNC_POLL_S)
                except concurrent.futures.TimeoutError:
                    continue
            if self._drain_lock.acquire(timeout=_SYNC_POLL_S):
                try:
                    if not waiter.done():
                        readable, _, _ = select.select([self._fd], [], [], _SYNC_POLL_S)
                        if readable:
                            self._drain()
                finally:
                    self._drain_lock.release()
        return waiter.result()

    def take_now(self, ticket: int) -> Outputs:
        """The outputs of a request whose completion is already queued (its batch ran in the
        calling thread): drains now and takes it without a waiter. Raises its error."""
        finished = self.queue.drain()
        if len(finished) == 1 and finished[0][0] == ticket:
            # Only its own completion was queued (the usual case for a batch run here): taken
            # without going through the waiters and early completions, or their lock.
            _, code, message, outputs = finished[0]
        else:
            self._dispatch(finished)
            with self._lock:
                early = self._early.pop(ticket, None)
            if early is None:
                raise InternalError(f"no completion for request {ticket} after it ran")
            code, message, outputs = early
        if code != 0 or outputs is None:
            raise error_for_code(code, message)
        return outputs

    # -- dispatch ----------------------------------------------------------------------------

    def _drain(self) -> None:
        self._dispatch(self.queue.drain())

    def _dispatch(self, finished: list[tuple[int, int, str, Outputs | None]]) -> None:
        """Hand each finished request to its waiter; keep those nobody waits for yet."""
        resolved: list[tuple[_Waiter, int, str, Outputs | None]] = []
        with self._lock:
            for ticket, code, message, outputs in finished:
                waiter = self._waiters.pop(ticket, None)
                if waiter is not None:
                    resolved.append((waiter, code, message, outputs))
                elif ticket in self._abandoned:
                    self._abandoned.discard(ticket)
                else:
                    self._early[ticket] = (code, message, outputs)
        if not resolved:
            return
        # Asked once per drain rather than once per request: the server's drains run on the
        # loop whose futures they resolve.
        running = _running_loop()
        for waiter, code, message, outputs in resolved:
            self._resolve(waiter, code, message, outputs, running)

    @staticmethod
    def _resolve(
        waiter: _Waiter,
        code: int,
        message: str,
        outputs: Outputs | None,
        running: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Complete ``waiter``; ``running``: the calling thread's running loop (or None), whose
        futures are completed at once, others' through their own loop."""
        if isinstance(waiter, concurrent.futures.Future):
            if code == 0 and outputs is not None:
                waiter.set_result(outputs)
            else:
                waiter.set_exception(error_for_code(code, message))
            return
        loop = waiter.get_loop()
        if running is loop:
            _set_async(waiter, code, message, outputs)
        else:
            loop.call_soon_threadsafe(_set_async, waiter, code, message, outputs)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _set_async(
    future: asyncio.Future[Outputs], code: int, message: str, outputs: Outputs | None
) -> None:
    if future.done():  # cancelled meanwhile
        return
    if code == 0 and outputs is not None:
        future.set_result(outputs)
    else:
        future.set_exception(error_for_code(code, message))
