"""What feedback needs to remember: which variant served a request id, bounded by count and age;
and model quality per variant and window, from labels (delayed ground truth).

A request id is remembered when its answer leaves, in a ring of ``max_entries`` slots: the
newest answer takes the oldest one's slot. An id that is unknown, dropped or older than the TTL
answers NOT_FOUND and never adds state. An endpoint that takes labels (``[endpoint.quality]
labels = true``) also keeps a copy of each answer's quality output, at most
MAX_REMEMBERED_ELEMENTS elements, so memory stays within max_entries x that many elements.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from headrace.errors import HeadraceError, InvalidArgumentError, NotFoundError, StatusCode
from headrace.routing.config import QualityConfig

_Owner = TypeVar("_Owner")

# The largest quality output kept per remembered answer (a classifier's scores for a few rows,
# a regressor's values): beyond it the answer is remembered without it and a label is refused.
# Bounds label memory at max_entries x 8 KiB (float64).
MAX_REMEMBERED_ELEMENTS = 1024

_REWARDED, _LABELLED = 1, 2


class FeedbackAlreadyGivenError(HeadraceError):
    """A reward (or label) for this request id was already received."""

    code = StatusCode.ALREADY_EXISTS


@dataclass(frozen=True, slots=True)
class Served(Generic[_Owner]):
    """One answered request, as feedback finds it by its id."""

    request_id: str
    slot: int
    owner: _Owner  # the endpoint's runtime state
    endpoint: str
    variant_index: int
    time_ns: int
    output: np.ndarray[Any, Any] | None  # the copied quality output, when labels are taken
    rewarded: bool
    labelled: bool


def kept_output(config: QualityConfig, outputs: Mapping[str, Any] | None) -> Any:
    """The copy of an answer's quality output that a label will be scored against, or None.

    The engine calls it only for endpoints with ``labels = true``; copying keeps neither the
    batch buffer that an output may be a view of nor the other outputs alive.
    """
    if not outputs:
        return None
    value = outputs.get(config.output) if config.output else next(iter(outputs.values()))
    if value is None:
        return None
    array = np.asarray(value)
    return array.copy() if array.size <= MAX_REMEMBERED_ELEMENTS else None


# Expired entries are swept from the old end every SWEEP_EVERY answers, at most SWEEP_MAX at a
# time: amortized O(1) per answer, and a sweep after a quiet hour never stalls the loop.
SWEEP_EVERY = 64
SWEEP_MAX = 256

# Fields of an entry (a list, so the flags can change in place); _SLOT is its place in the ring.
_OWNER, _ENDPOINT, _VARIANT, _TIME, _OUTPUT, _FLAGS, _SLOT = range(7)


class FeedbackStore(Generic[_Owner]):
    """request id -> what answered it: the last ``max_entries`` answers, none older than TTL.

    A ring of ids in answer order says which id leaves when a new one comes; a dict finds an
    id's entry. Written on the event-loop thread (remember, on each answer; mark, on feedback);
    not thread-safe by itself.
    """

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 3600.0) -> None:
        if max_entries < 1 or not ttl_s > 0:
            raise InvalidArgumentError("feedback memory needs max_entries >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_ns = int(ttl_s * 1e9)
        self._entries: dict[str, list[Any]] = {}
        self._ring: list[str | None] = [None] * max_entries
        self._next = 0  # the ring slot the next answer takes (the oldest, once the ring is full)
        self._sweep = 0  # the oldest slot the sweep has not passed; slots _sweep.._next-1 are live
        self.evicted = 0  # live entries dropped for room: a sign max_entries is small

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self,
        request_id: str,
        owner: _Owner,
        endpoint: str,
        variant_index: int,
        now_ns: int,
        output: Any = None,
    ) -> None:
        entries, ring, slot = self._entries, self._ring, self._next
        old = ring[slot]
        if old is not None:
            entry = entries.get(old)
            # the id may have been answered again since, in a newer slot: keep that entry
            if entry is not None and entry[_SLOT] == slot:
                del entries[old]
                if now_ns - entry[_TIME] <= self.ttl_ns:
                    self.evicted += 1
            if self._sweep == slot:
                self._sweep = slot + 1 if slot + 1 < self.max_entries else 0
        ring[slot] = request_id
        # a reused id: the newest answer is the one the client means
        entries[request_id] = [owner, endpoint, variant_index, now_ns, output, 0, slot]
        self._next = slot + 1 if slot + 1 < self.max_entries else 0
        if not self._next % SWEEP_EVERY:
            self.sweep(now_ns)

    def sweep(self, now_ns: int, limit: int = SWEEP_MAX) -> int:
        """Drop up to ``limit`` expired entries from the old end; returns how many."""
        entries, ring, dropped = self._entries, self._ring, 0
        cursor = self._sweep
        for _ in range(limit):
            request_id = ring[cursor]
            if request_id is None:
                break  # the sweep caught up with the newest answer
            entry = entries.get(request_id)
            if entry is not None and entry[_SLOT] == cursor:
                if now_ns - entry[_TIME] <= self.ttl_ns:
                    break
                del entries[request_id]
                dropped += 1
            ring[cursor] = None
            cursor = cursor + 1 if cursor + 1 < self.max_entries else 0
        self._sweep = cursor
        return dropped

    def lookup(self, request_id: str, now_ns: int) -> Served[_Owner]:
        entry = self._entries.get(request_id)
        if entry is None:
            raise NotFoundError(
                f"no answered request with id '{request_id}' is remembered (unknown, or "
                f"dropped: the last {self.max_entries} answers are kept)"
            )
        if now_ns - entry[_TIME] > self.ttl_ns:
            del self._entries[request_id]  # its ring slot is cleared when the sweep passes it
            raise NotFoundError(
                f"request '{request_id}' was answered more than {self.ttl_ns / 1e9:g} s ago; "
                "its feedback window has expired"
            )
        flags = entry[_FLAGS]
        return Served(
            request_id,
            entry[_SLOT],
            entry[_OWNER],
            entry[_ENDPOINT],
            entry[_VARIANT],
            entry[_TIME],
            entry[_OUTPUT],
            bool(flags & _REWARDED),
            bool(flags & _LABELLED),
        )

    def mark(
        self, served: Served[_Owner], *, rewarded: bool = False, labelled: bool = False
    ) -> None:
        """Record that a reward or label for this answer was counted."""
        entry = self._entries.get(served.request_id)
        if entry is not None and entry[_SLOT] == served.slot:
            entry[_FLAGS] |= (_REWARDED if rewarded else 0) | (_LABELLED if labelled else 0)


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


def labelled_output(config: QualityConfig, served: Served[Any], request_id: str) -> Any:
    """The kept quality output a label is scored against (InvalidArgumentError if none)."""
    if not config.labels:
        raise InvalidArgumentError(
            f"endpoint '{served.endpoint}' does not keep its answers for labels; set "
            "[endpoint.quality] labels = true to score labels"
        )
    if served.output is None:
        raise InvalidArgumentError(
            f"request '{request_id}' was answered without a quality output "
            f"('{config.output or 'the first output'}') of at most {MAX_REMEMBERED_ELEMENTS} "
            "elements, so a label cannot be scored against it"
        )
    return served.output


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
