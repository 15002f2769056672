"""What feedback needs to remember: which variant served a request id, bounded by count and age;
and model quality per variant and window, from labels (delayed ground truth).

A request id is remembered when its answer leaves; an id that is unknown, already evicted or
older than the TTL answers NOT_FOUND and never adds state. Memory is bounded by ``max_entries``
entries, each holding references to the answered outputs (not copies) when they are small enough
to score a label against.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from headrace.errors import HeadraceError, InvalidArgumentError, NotFoundError, StatusCode
from headrace.routing.config import QualityConfig

_Owner = TypeVar("_Owner")

# An answer with more output elements than this is remembered without its outputs (a label for it
# is refused): keeping megabytes of outputs for every remembered id would dwarf the store's bound.
MAX_REMEMBERED_ELEMENTS = 65_536


class FeedbackAlreadyGivenError(HeadraceError):
    """A reward (or label) for this request id was already received."""

    code = StatusCode.ALREADY_EXISTS


@dataclass(slots=True)
class Served(Generic[_Owner]):
    """One answered request, as feedback finds it by its id."""

    owner: _Owner  # the endpoint's runtime state
    endpoint: str
    variant_index: int
    time_ns: int
    outputs: Mapping[str, Any] | None
    rewarded: bool = False
    labelled: bool = False


def _small_outputs(outputs: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not outputs:
        return None
    size = 0
    for value in outputs.values():
        size += int(getattr(value, "size", 1))
    return outputs if size <= MAX_REMEMBERED_ELEMENTS else None


class FeedbackStore(Generic[_Owner]):
    """request id -> :class:`Served`, oldest first; at most ``max_entries``, none older than TTL.

    Written on the event-loop thread (remember, on each answer) and by feedback calls on the same
    thread; not thread-safe by itself.
    """

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 3600.0) -> None:
        if max_entries < 1 or not ttl_s > 0:
            raise InvalidArgumentError("feedback memory needs max_entries >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_ns = int(ttl_s * 1e9)
        self._entries: OrderedDict[str, Served[_Owner]] = OrderedDict()
        self.evicted = 0  # entries dropped for room (not for age): a sign max_entries is small

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self,
        request_id: str,
        owner: _Owner,
        endpoint: str,
        variant_index: int,
        now_ns: int,
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        entries = self._entries
        if request_id in entries:  # a client reused an id: the newest answer is the one it means
            del entries[request_id]
        entries[request_id] = Served(
            owner, endpoint, variant_index, now_ns, _small_outputs(outputs)
        )
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1
        # Expired entries leave from the old end, a few per call, so the cost stays O(1).
        for _ in range(2):
            oldest = next(iter(entries.values()))
            if now_ns - oldest.time_ns <= self.ttl_ns:
                break
            entries.popitem(last=False)

    def lookup(self, request_id: str, now_ns: int) -> Served[_Owner]:
        served = self._entries.get(request_id)
        if served is None:
            raise NotFoundError(
                f"no answered request with id '{request_id}' is remembered (unknown, or evicted: "
                f"at most {self.max_entries} ids are kept)"
            )
        if now_ns - served.time_ns > self.ttl_ns:
            del self._entries[request_id]
            raise NotFoundError(
                f"request '{request_id}' was answered more than {self.ttl_ns / 1e9:g} s ago; "
                "its feedback window has expired"
            )
        return served

    def forget_owner(self, owner: _Owner) -> None:
        """Drop every entry of a deleted endpoint."""
        for request_id in [k for k, v in self._entries.items() if v.owner is owner]:
            del self._entries[request_id]


class RequestIds:
    """Ids for requests sent without one: a random per-process prefix and a counter.

    Unique across restarts and replicas with overwhelming probability (64 random bits), and
    cheaper than a uuid4 per request.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


def check_reward(reward: float) -> float:
    value = float(reward)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"reward must be a finite number, got {reward!r}")
    return value


Kind = Literal["classifier", "regressor"]


def quality_output(
    config: QualityConfig, outputs: Mapping[str, Any] | None, request_id: str
) -> tuple[str, np.ndarray[Any, Any]]:
    if not outputs:
        raise InvalidArgumentError(
            f"request '{request_id}' was answered without outputs small enough to remember "
            f"(at most {MAX_REMEMBERED_ELEMENTS} elements), so a label cannot be scored"
        )
    name = config.output or next(iter(outputs))
    if name not in outputs:
        raise InvalidArgumentError(f"quality.output '{name}' is not an output of the answer")
    return name, np.asarray(outputs[name])


def score_label(
    kind: Literal["auto", "classifier", "regressor"],
    output: np.ndarray[Any, Any],
    label: np.ndarray[Any, Any],
) -> tuple[Kind, float, int]:
    """(kind, score sum, count): correct predictions for a classifier, |error| for a regressor.

    A classifier's label holds class indices (one per row) or scores shaped like the output (its
    argmax is the class); a regressor's label has the output's shape.
    """
    label = np.asarray(label)
    if kind == "auto":
        is_classifier = (
            output.ndim >= 2 and output.shape[-1] > 1 and (label.shape == output.shape[:-1])
        )
        kind = "classifier" if is_classifier else "regressor"
    if kind == "classifier":
        predicted = output.argmax(axis=-1)
        truth = label.argmax(axis=-1) if label.shape == output.shape else label
        if truth.shape != predicted.shape:
            raise InvalidArgumentError(
                f"label shape {list(label.shape)} fits neither the class indices "
                f"{list(predicted.shape)} nor the scores {list(output.shape)} of the answer"
            )
        return "classifier", float(np.count_nonzero(predicted == truth)), int(predicted.size)
    if label.shape != output.shape:
        raise InvalidArgumentError(
            f"label shape {list(label.shape)} differs from the answer's {list(output.shape)}"
        )
    errors = np.abs(output.astype(np.float64) - label.astype(np.float64))
    if not np.all(np.isfinite(errors)):
        raise InvalidArgumentError("label or answer holds NaN or inf")
    return "regressor", float(errors.sum()), int(errors.size)


@dataclass
class QualityWindow:
    start_s: float  # wall-clock start of the window
    kind: Kind
    total: float = 0.0  # correct predictions, or sum of |error|
    count: int = 0

    @property
    def value(self) -> float:
        """Accuracy for a classifier, mean absolute error for a regressor; NaN when empty."""
        return self.total / self.count if self.count else math.nan


class QualityWindows:
    """Tumbling windows of label quality for each variant of one endpoint (newest last)."""

    def __init__(self, config: QualityConfig, variants: int) -> None:
        self.config = config
        self.windows: list[list[QualityWindow]] = [[] for _ in range(variants)]

    def add(self, variant: int, kind: Kind, total: float, count: int, now_s: float) -> None:
        start = math.floor(now_s / self.config.window_s) * self.config.window_s
        windows = self.windows[variant]
        if not windows or windows[-1].start_s != start or windows[-1].kind != kind:
            windows.append(QualityWindow(start, kind))
            del windows[: -self.config.windows_kept]
        windows[-1].total += total
        windows[-1].count += count

    def latest(self, variant: int) -> QualityWindow | None:
        windows = self.windows[variant]
        return windows[-1] if windows else None
