"""Online features on the engine's request path: each version's feature joiner, and the event
loop it runs on.

A version whose ``model.toml`` has a ``[features]`` table gets a :class:`VersionFeatures` when it
starts (:func:`build_version_features`): the joiner (``headrace.features``) over the backend's
inputs, and what clients send instead (:attr:`VersionFeatures.client_inputs`: the entity and
request inputs, ``into`` hidden), which the version's metadata, config and validation show. Per
request the version calls :meth:`VersionFeatures.assemble` on the event loop before the batcher
(or :meth:`VersionFeatures.assemble_blocking` for a blocking ``Engine.infer``), runs the model on
the assembled inputs, then :meth:`VersionFeatures.log_served`.

Loops. A remote store's connections and the coalescer's waiting lookups belong to one event loop,
the joiner's *home*, which must outlive them (a connection left on a closed loop leaks): the
server's loop (``EngineFeatures.serve_on``, called when the server starts) while it runs, else the
engine's own loop thread (:class:`EngineFeatures`, started on first use, stopped when the engine
closes). Requests on the server's loop read the store in place; any other caller, blocking or on
a loop of its own (``asyncio.run``), hands its lookup to the home loop
(``run_coroutine_threadsafe``). The embedded store keeps no loop state: it is read in place, and a
blocking caller drives its lookup to the end without a loop (an in-memory lookup never
suspends).

Warm-up feeds the model's own inputs (``into`` included): zeros, or ``warmup.npz`` holding the
model's inputs. The store is not asked, so a version loads and warms while its store is down; its
requests then follow ``on_store_error``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy.typing as npt

from headrace.config import FeaturesConfig
from headrace.errors import ConfigError, InvalidArgumentError, UnavailableError
from headrace.types import InputTensor, TensorSpec, as_array

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from headrace.features import FeatureJoiner, FeatureMetrics, ServedLog

log = logging.getLogger(__name__)

Arrays = dict[str, npt.NDArray[Any]]
T = TypeVar("T")

# Beyond the joiner's own bound (timeout_ms), how long a lookup handed to another thread's loop
# may take before the caller gives up: only a stalled home loop gets there, and the caller then
# answers UNAVAILABLE instead of hanging.
HOP_GRACE_S = 5.0
# How long closing a version waits for its store's connections to close on the home loop.
CLOSE_TIMEOUT_S = 5.0


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _finish_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (an in-memory store's lookup)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("an in-memory feature lookup suspended; it must not")


class EngineFeatures:
    """What an engine's feature joiners share: the Prometheus families (registered when the first
    features model loads), the served log (``ServerSettings.served_log``), and a loop thread for
    blocking callers of remote stores. Thread-safe; :meth:`close` after every version closed."""

    def __init__(
        self, served_log_dir: Path | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self._registry = registry
        self.served_log: ServedLog | None = None
        if served_log_dir is not None:
            from headrace.features import ServedLog

            self.served_log = ServedLog(served_log_dir, registry=registry)
        self._metrics: FeatureMetrics | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._serving: asyncio.AbstractEventLoop | None = None

    def serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remote stores are read on ``loop`` (the server's) from now on, while it runs. Call
        before requests come; the engine must close while the loop still runs (Server.stop)."""
        self._serving = loop

    def home_loop(self) -> asyncio.AbstractEventLoop:
        """Where remote stores are read: the server's loop while it runs, else our own."""
        serving = self._serving
        if serving is not None and serving.is_running():
            return serving
        return self.own_loop()

    @property
    def metrics(self) -> FeatureMetrics | None:
        if self._registry is None:
            return None
        with self._lock:
            if self._metrics is None:
                from headrace.features import FeatureMetrics

                self._metrics = FeatureMetrics(self._registry)
            return self._metrics

    def own_loop(self) -> asyncio.AbstractEventLoop:
        """The engine's feature loop on a thread of its own (started on first use)."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="headrace-features", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def close(self) -> None:
        """Write what the served log holds and stop the loop thread (blocking)."""
        if self.served_log is not None:
            self.served_log.close()
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()


def expanded(inputs: Mapping[str, InputTensor]) -> Arrays:
    """The joiner reads entity keys element by element: BYTES still in wire form (the server's
    parser hands them out unexpanded) become arrays here, after the engine has checked them."""
    return {name: as_array(tensor) for name, tensor in inputs.items()}


class VersionFeatures:
    """One version's joiner and its home loop (module docstring)."""

    def __init__(self, joiner: FeatureJoiner, shared: EngineFeatures, batched: bool) -> None:
        self.joiner = joiner
        self.into = joiner.config.into
        self.client_inputs: tuple[TensorSpec, ...] = joiner.client_inputs()
        # The joiner checks these itself ([-1] and [-1, 1], INT64 or BYTES keys, any number).
        self.owned = frozenset(s.name for s in self.client_inputs if joiner.owns_input(s.name))
        self._remote = joiner.store.remote
        self._shared = shared
        self._batched = batched
        self._hop_timeout_s = joiner.config.timeout_ms / 1e3 + HOP_GRACE_S
        # Every loop the joiner's store was read on (its connections close there).
        self._homes: set[asyncio.AbstractEventLoop] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def _home(self) -> asyncio.AbstractEventLoop:
        home = self._shared.home_loop()
        self._homes.add(home)
        return home

    def _hop(self, home: asyncio.AbstractEventLoop, inputs: Mapping[str, Any]) -> Future[Arrays]:
        return asyncio.run_coroutine_threadsafe(self.joiner.assemble(inputs), home)

    def _stalled(self) -> UnavailableError:
        return UnavailableError(
            f"features of model '{self.joiner.model}': the loop that reads the store did not "
            f"answer within {self._hop_timeout_s:g} s"
        )

    # -- per request -----------------------------------------------------------------------

    async def assemble(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """The model's inputs for a client's ``inputs`` (on the caller's event loop)."""
        if not self._remote:
            return self._checked(await self.joiner.assemble(inputs))
        running = asyncio.get_running_loop()
        home = self._home()
        if home is running:
            return self._checked(await self.joiner.assemble(inputs))
        future = self._hop(home, inputs)
        try:
            async with asyncio.timeout(self._hop_timeout_s):
                assembled = await asyncio.wrap_future(future)
        except TimeoutError:
            future.cancel()
            raise self._stalled() from None
        return self._checked(assembled)

    def assemble_blocking(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """:meth:`assemble` for a blocking caller (any thread but the home loop's)."""
        if not self._remote:
            return self._checked(_finish_now(self.joiner.assemble(inputs)))
        running = _running_loop()
        home = self._home()
        if home is running:
            raise RuntimeError(
                f"model '{self.joiner.model}': a blocking infer on the event loop that reads its "
                "feature store would wait for itself; use infer_async there"
            )
        future = self._hop(home, inputs)
        try:
            return self._checked(future.result(self._hop_timeout_s))
        except FutureTimeout:
            future.cancel()
            raise self._stalled() from None

    def _checked(self, assembled: Arrays) -> Arrays:
        if self._batched:
            rows = assembled[self.into].shape[0]
            for name, array in assembled.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InvalidArgumentError(
                        f"input '{name}': shape {list(array.shape)}, but the entity inputs "
                        f"have {rows} rows"
                    )
        return assembled

    def log_served(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        assembled: Mapping[str, npt.NDArray[Any]],
        outputs: Mapping[str, npt.NDArray[Any]],
        request_id: str,
        endpoint: str | None,
        variant: str | None,
    ) -> None:
        """Queue the served rows for the served log (never blocks; a no-op without one)."""
        self.joiner.log_served(
            inputs, assembled, outputs, request_id=request_id, endpoint=endpoint, variant=variant
        )

    # -- retiring --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store's connections on the loops they were opened on (blocking, from any
        thread but those loops')."""
        running = _running_loop()
        for home in list(self._homes):
            if home.is_closed() or not home.is_running():
                continue  # a stopped loop cannot close them; they go with it
            if home is running:
                task = home.create_task(self.joiner.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                continue
            future = asyncio.run_coroutine_threadsafe(self.joiner.close(), home)
            try:
                future.result(CLOSE_TIMEOUT_S)
            except Exception as error:  # retiring goes on; the connections go with the process
                log.warning("model %s: feature store not closed: %r", self.joiner.model, error)


def build_version_features(
    model: str,
    version: str,
    config: FeaturesConfig,
    source: Path | None,
    model_dir: Path,
    model_inputs: Sequence[TensorSpec],
    shared: EngineFeatures,
    batched: bool,
) -> VersionFeatures:
    """The joiner of one version: snapshots relative to ``model_dir`` (the folder of
    model.toml); a ConfigError names ``source`` (model.toml)."""
    from headrace.features import FeatureJoiner

    try:
        joiner = FeatureJoiner(
            config,
            model_dir,
            model_inputs,
            model=model,
            version=version,
            metrics=shared.metrics,
            served_log=shared.served_log,
        )
    except ConfigError as error:
        where = source if source is not None else model_dir / "model.toml"
        raise ConfigError(f"{where}: {error.message}") from None
    return VersionFeatures(joiner, shared, batched)
