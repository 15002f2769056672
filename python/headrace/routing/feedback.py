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
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np

from headrace.errors import HeadraceError, InvalidArgumentError, NotFoundError, StatusCode
from headrace.routing.config import QualityConfig

# The largest quality output kept per remembered answer (a classifier's scores for a few rows,
# a regressor's values): beyond it the answer is remembered without it and a label is refused.
# Bounds label memory at max_entries x 8 KiB (float64).
MAX_REMEMBERED_ELEMENTS = 1024

_REWARDED, _LABELLED = 1, 2


class FeedbackAlreadyGivenError(HeadraceError):
    """A reward (or label) for this request id was already received."""

    code = StatusCode.ALREADY_EXISTS


class Answer(Protocol):
    """What answered a request, as the feedback memory keeps it (the router's ``Route``)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def index(self) -> int: ...  # the variant's place in its endpoint


_Answer = TypeVar("_Answer", bound=Answer)


@dataclass(frozen=True, slots=True)
class Served(Generic[_Answer]):
    """One answered request, as feedback finds it by its id."""

    request_id: str
    slot: int
    answer: _Answer  # the route that answered: endpoint runtime, variant index, endpoint name
    time_ns: int
    output: np.ndarray[Any, Any] | None  # the copied quality output, when labels are taken
    rewarded: bool
    labelled: bool

    @property
    def endpoint(self) -> str:
        return self.answer.endpoint


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


class FeedbackStore(Generic[_Answer]):
    """request id -> what answered it: the last ``max_entries`` answers, none older than TTL.

    Two rings of ``max_entries`` slots each. Ids the server assigned (``ids``: a request sent
    without one) carry their sequence number, so an assigned answer goes to slot ``seq %
    max_entries`` of the assigned ring and is found again by parsing its id: no dict, no
    search. Ids a client chose go to the client ring in answer order (the newest takes the
    oldest's slot) and a dict finds their slot. What a slot remembers lives in parallel
    preallocated lists (answer, time, flags), so remembering allocates no container: the
    garbage collector never has a hundred thousand live entries to traverse, and an assigned
    answer costs a few item stores (a dict entry per answer plus a list per entry cost about a
    microsecond a request, between cache misses in a 100k-entry dict and collections).

    Expiry: a client-ring entry older than the TTL is swept from the old end as answers arrive;
    any entry is refused once older than the TTL. Written on the event-loop thread (remember,
    on each answer; mark, on feedback); not thread-safe by itself.
    """

    def __init__(
        self, max_entries: int = 100_000, ttl_s: float = 3600.0, ids: RequestIds | None = None
    ) -> None:
        if max_entries < 1 or not ttl_s > 0:
            raise InvalidArgumentError("feedback memory needs max_entries >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_ns = int(ttl_s * 1e9)
        # the ids this store can find without a dict (give them out with ids.numbered())
        self.ids = ids if ids is not None else RequestIds()
        self._assigned_prefix = self.ids.prefix + "-"
        n = max_entries
        # slots [0, n): the client ring; [n, 2n): the assigned ring
        self._slots: dict[str, int] = {}  # client id -> its slot
        self._ids: list[str | None] = [None] * n  # client slot -> the id it remembers
        # Lists, not array('q'): an item store or read of an array boxes or unboxes a Python int
        # (~150 ns more per answer here); the int objects a list keeps are not tracked by the
        # garbage collector.
        self._seqs: list[int] = [-1] * n  # assigned slot - n -> the sequence number, or -1
        self._answers: list[Any] = [None] * (2 * n)
        self._times: list[int] = [0] * (2 * n)
        self._flags = bytearray(2 * n)
        # slot -> the kept quality output (only endpoints that take labels keep one)
        self._outputs: dict[int, Any] = {}
        self._next = 0  # the client slot the next answer takes (the oldest once the ring is full)
        self._sweep = 0  # the oldest client slot the sweep has not passed
        self.evicted = 0  # live entries dropped for room: a sign max_entries is small

    def __len__(self) -> int:
        """Entries remembered (client ids not yet swept, assigned ids not yet overwritten)."""
        return len(self._slots) + self.max_entries - self._seqs.count(-1)

    def remember(
        self,
        request_id: str,
        answer: _Answer,
        now_ns: int,
        output: Any = None,
        seq: int = -1,
    ) -> None:
        """Remember an answer; ``seq`` is the number of an id from ``ids.numbered()`` (-1: the
        client chose the id)."""
        times = self._times
        if seq >= 0:
            n = self.max_entries
            slot = seq % n
            seqs = self._seqs
            if seqs[slot] >= 0 and now_ns - times[slot + n] <= self.ttl_ns:
                self.evicted += 1  # a live entry overwritten
            seqs[slot] = seq
            slot += n
        else:
            slot = self._remember_client(request_id, now_ns)
        self._answers[slot] = answer
        times[slot] = now_ns
        self._flags[slot] = 0
        if output is not None:
            self._outputs[slot] = output
        elif self._outputs:
            self._outputs.pop(slot, None)

    def _remember_client(self, request_id: str, now_ns: int) -> int:
        slots, ids, slot = self._slots, self._ids, self._next
        old = ids[slot]
        if old is not None:
            # the id may have been answered again since, in a newer slot: keep that one
            if slots.get(old) == slot:
                del slots[old]
                if now_ns - self._times[slot] <= self.ttl_ns:
                    self.evicted += 1
            if self._sweep == slot:
                self._sweep = slot + 1 if slot + 1 < self.max_entries else 0
        ids[slot] = request_id
        slots[request_id] = slot  # a reused id: the newest answer is the one the client means
        self._next = slot + 1 if slot + 1 < self.max_entries else 0
        if not self._next % SWEEP_EVERY:
            self.sweep(now_ns)
        return slot

    def sweep(self, now_ns: int, limit: int = SWEEP_MAX) -> int:
        """Drop up to ``limit`` expired client-id entries from the old end; returns how many."""
        slots, ids, dropped = self._slots, self._ids, 0
        cursor = self._sweep
        for _ in range(limit):
            request_id = ids[cursor]
            if request_id is None:
                break  # the sweep caught up with the newest answer
            if slots.get(request_id) == cursor:
                if now_ns - self._times[cursor] <= self.ttl_ns:
                    break
                del slots[request_id]
                dropped += 1
            ids[cursor] = None
            self._answers[cursor] = None
            if self._outputs:
                self._outputs.pop(cursor, None)
            cursor = cursor + 1 if cursor + 1 < self.max_entries else 0
        self._sweep = cursor
        return dropped

    def _find(self, request_id: str) -> int:
        """The slot remembering ``request_id``, or -1."""
        slot = self._slots.get(request_id)
        if slot is not None:
            return slot
        prefix = self._assigned_prefix
        if request_id.startswith(prefix):
            tail = request_id[len(prefix) :]
            if tail.isascii() and tail.isdigit() and len(tail) < 19:
                seq = int(tail)
                index = seq % self.max_entries
                if self._seqs[index] == seq:
                    return index + self.max_entries
        return -1

    def lookup(self, request_id: str, now_ns: int) -> Served[_Answer]:
        slot = self._find(request_id)
        if slot < 0:
            raise NotFoundError(
                f"no answered request with id '{request_id}' is remembered (unknown, or "
                f"dropped: the last {self.max_entries} answers are kept)"
            )
        if now_ns - self._times[slot] > self.ttl_ns:
            if slot < self.max_entries:
                del self._slots[request_id]  # its ring slot is cleared when the sweep passes it
            else:
                self._seqs[slot - self.max_entries] = -1
            raise NotFoundError(
                f"request '{request_id}' was answered more than {self.ttl_ns / 1e9:g} s ago; "
                "its feedback window has expired"
            )
        flags = self._flags[slot]
        return Served(
            request_id,
            slot,
            self._answers[slot],
            self._times[slot],
            self._outputs.get(slot),
            bool(flags & _REWARDED),
            bool(flags & _LABELLED),
        )

    def mark(
        self, served: Served[_Answer], *, rewarded: bool = False, labelled: bool = False
    ) -> None:
        """Record that a reward or label for this answer was counted."""
        if self._find(served.request_id) == served.slot:
            self._flags[served.slot] |= (_REWARDED if rewarded else 0) | (
                _LABELLED if labelled else 0
            )


class RequestIds:
    """Ids for requests sent without one: a random per-process prefix and a counter.

    Unique across restarts and replicas with overwhelming probability (64 random bits), and
    cheaper than a uuid4 per request.
    """

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"

    def numbered(self) -> tuple[int, str]:
        """(sequence number, id): the number lets a FeedbackStore built with these ids keep
        the answer without a dict (``remember(..., seq=number)``)."""
        seq = next(self._counter)
        return seq, f"{self.prefix}-{seq}"


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
