"""``Endpoints``: the names clients call, each routing to one of its variants.

The engine's whole interface to routing (see the package docstring for the call sequence):
:meth:`Endpoints.resolve` before running a request, :meth:`Endpoints.complete` after answering
it, :meth:`Endpoints.feedback` for the Feedback RPC, and the admin methods for AdminService.

Threads: ``complete`` and ``feedback`` run on one thread at a time (they share unlocked
counters: the engine holds its routing lock around them); ``resolve`` may run on any thread
without that lock (choosing reads the strategy's state; its refills of pre-drawn choices may race
without harm under the GIL). Admin methods may run on any thread (the engine should run them with
``asyncio.to_thread``, as they write the state folder): they are serialized by a lock and swap
the endpoint table whole, so ``resolve`` sees the old endpoint or the new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headrace.errors import (
    HeadraceError,
    InvalidArgumentError,
    NotFoundError,
    StatusCode,
)
from headrace.routing.config import (
    EndpointConfig,
    ModelSignature,
    ShadowConfig,
    VariantConfig,
    check_signatures,
    load_endpoints_file,
    parse_endpoint,
)
from headrace.routing.events import OPERATOR, RoutingEvent
from headrace.routing.feedback import (
    FeedbackAlreadyGivenError,
    FeedbackStore,
    RequestIds,
    check_reward,
    kept_output,
    labelled_output,
    score_label,
)
from headrace.routing.persistence import STATE_FILE, SavedState, load_state, save_state
from headrace.routing.report import ExperimentReport, build_report
from headrace.routing.runtime import EndpointRuntime, Route

log = logging.getLogger(__name__)

# A request parameter naming a variant pins the request to it (as Seldon's x-seldon-route does):
# clients replay the `headrace_variant` they were answered with to stay on it.
PIN_PARAMETER = "headrace_variant"

SignatureOf = Callable[[str, str], ModelSignature]


class EndpointExistsError(HeadraceError):
    code = StatusCode.ALREADY_EXISTS


@dataclass(frozen=True)
class FeedbackReceipt:
    endpoint: str
    variant: str


@dataclass(frozen=True)
class FeedbackItem:
    request_id: str
    reward: float | None = None
    label: Any = None  # a numpy array, or None
    endpoint: str | None = None


def changed_keys(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after): the top-level keys whose values differ, each side's value (None where a
    side lacks the key)."""
    keys = [k for k in (*old, *(k for k in new if k not in old)) if old.get(k) != new.get(k)]
    return {k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}


class Endpoints:
    """The endpoint table, the feedback memory and the routing state folder."""

    def __init__(
        self,
        configs: Iterable[EndpointConfig] = (),
        *,
        state_dir: Path | None = None,
        signature_of: SignatureOf | None = None,
        seed: str | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_clock_s: Callable[[], float] = time.time,
        feedback_max_entries: int = 100_000,
        feedback_ttl_s: float = 3600.0,
        on_event: Callable[[RoutingEvent], None] | None = None,
        audit: Callable[[RoutingEvent], None] | None = None,
        request_ids: RequestIds | None = None,
    ) -> None:
        self._state_dir = state_dir
        # Sees an operator's change before it takes effect (and before the state folder is
        # written); if it raises, the change is not made: a change nobody could audit does not
        # happen. The router's own decisions (a canary's rollback) go to on_event only.
        self._audit = audit
        self._signature_of = signature_of
        self._seed = seed if seed is not None else os.urandom(8).hex()
        self._clock_ns = clock_ns
        self._wall_clock_s = wall_clock_s
        self._on_event = on_event
        self._lock = threading.Lock()
        self._dirty = False
        self.feedback_store: FeedbackStore[Route] = FeedbackStore(
            feedback_max_entries, feedback_ttl_s, request_ids
        )
        self._implicit: dict[str, EndpointRuntime] = {}
        declared = {c.name: c for c in configs}
        saved = load_state(state_dir) if state_dir is not None else SavedState()
        self._overrides = dict(saved.overrides)
        source = str(state_dir / STATE_FILE) if state_dir is not None else "<state>"
        for name, data in saved.overrides.items():
            if data is None:
                declared.pop(name, None)
            else:
                declared[name] = parse_endpoint(data, source)
        table: dict[str, EndpointRuntime] = {}
        now_ns = clock_ns()
        for config in declared.values():
            self._check(config)
            runtime = EndpointRuntime(config, seed=self._seed, now_ns=now_ns)
            if config.name in saved.runtime:
                runtime.restore(saved.runtime[config.name], now_ns)
            table[config.name] = runtime
        self._table = table

    @classmethod
    def from_file(cls, path: Path | None, **options: Any) -> Endpoints:
        """Endpoints declared in ``path`` (an endpoints.toml; None: none declared)."""
        return cls(load_endpoints_file(path) if path is not None else (), **options)

    # -- the request path (event-loop thread) ----------------------------------------------------

    def resolve(
        self,
        name: str,
        version: str = "",
        parameters: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Route:
        """The variant that serves a request to ``name`` (an endpoint or a plain model).

        ``parameters`` are the request's parameters (the sticky key and ``headrace_variant`` are
        read there), ``inputs`` its input tensors by name (a sticky key may name one).
        NotFoundError for an unknown name; InvalidArgumentError for a version sent to an
        endpoint (its variants say which versions run) or a pin to an unknown variant.
        """
        runtime = self._table.get(name)
        if runtime is None:
            runtime = self._implicit.get(name)
            if runtime is None:
                raise NotFoundError(f"unknown model or endpoint '{name}'")
            if version:
                return Route(runtime, 0, name, name, version)
            return runtime.routes[0]
        if version:
            raise InvalidArgumentError(
                f"'{name}' is an endpoint that chooses the version itself; send an empty "
                f"model_version (or pin a variant with the '{PIN_PARAMETER}' parameter)"
            )
        if parameters and PIN_PARAMETER in parameters:
            return runtime.pinned(parameters[PIN_PARAMETER])
        return runtime.choose_route(parameters, inputs)

    def complete(
        self,
        route: Route,
        ok: bool,
        latency_ns: int,
        request_id: str | None = None,
        outputs: Mapping[str, Any] | None = None,
        seq: int = -1,
    ) -> None:
        """Count a request's outcome; remember a successful answer's id for feedback (``seq``:
        the id's number when it came from ``feedback_store.ids.numbered()``).

        ``ok`` is False for failures of the server or model (INTERNAL, UNAVAILABLE, deadline),
        not for a client's bad input; ``latency_ns`` is an int. ``outputs`` (by name) are read
        only when the endpoint takes labels, to keep a copy of the quality output.
        """
        route.stats.observe(ok, latency_ns)
        runtime = route.runtime
        ramp = runtime.ramp
        if ramp is None and (not ok or request_id is None):
            return  # the common case below is kept short: it runs for every request
        now_ns = self._clock_ns()
        if ok and request_id is not None:
            self.feedback_store.remember(
                request_id,
                route,
                now_ns,
                kept_output(runtime.config.quality, outputs) if runtime.keeps_labels else None,
                seq,
            )
        if ramp is not None:  # CanaryRamp.observe, inline: is a judgement of the step due?
            ramp.countdown -= 1
            if ramp.countdown <= 0 or now_ns >= ramp.check_due_ns:
                before = ramp.candidate_percent
                decision = ramp.judge(now_ns)
                if decision is not None:
                    event = runtime.canary_event(decision, before)
                    if event is not None:
                        self._emit(event, dirty=True)

    # -- feedback (event-loop thread) ------------------------------------------------------------

    def feedback(
        self,
        request_id: str,
        *,
        reward: float | None = None,
        label: Any = None,
        endpoint: str | None = None,
    ) -> FeedbackReceipt:
        """A reward and/or a label for an answered request, found by its id.

        NotFoundError for an unknown or expired id (or an endpoint deleted since);
        InvalidArgumentError for a non-finite reward, a reward a Bernoulli bandit cannot take,
        a label that does not fit the answer, or ``endpoint`` other than the one that answered;
        ALREADY_EXISTS for a second reward (or label) for the same id. Nothing is counted unless
        every part is valid.
        """
        if reward is None and label is None:
            raise InvalidArgumentError("feedback needs a reward, a label or both")
        value = None if reward is None else check_reward(reward)
        now_ns = self._clock_ns()
        served = self.feedback_store.lookup(request_id, now_ns)
        if endpoint and endpoint != served.endpoint:
            raise InvalidArgumentError(
                f"request '{request_id}' was answered by endpoint '{served.endpoint}', "
                f"not '{endpoint}'"
            )
        runtime, index = self._current(served.answer.runtime, served.answer.index, request_id)
        scored = None
        if value is not None:
            if served.rewarded:
                raise FeedbackAlreadyGivenError(f"request '{request_id}' already has a reward")
            runtime.check_reward(value)
        if label is not None:
            if served.labelled:
                raise FeedbackAlreadyGivenError(f"request '{request_id}' already has a label")
            quality = runtime.config.quality
            output = labelled_output(quality, served, request_id)
            scored = score_label(quality.kind, output, label)
        self.feedback_store.mark(served, rewarded=value is not None, labelled=scored is not None)
        if value is not None:
            event = runtime.reward(index, value, now_ns)
            if event is not None:
                self._emit(event, dirty=True)
            if runtime.bandit is not None:
                self._dirty = True
        if scored is not None:
            runtime.quality.add(index, scored[0], scored[1], scored[2], self._wall_clock_s())
        return FeedbackReceipt(runtime.name, runtime.routes[index].variant)

    def feedback_batch(
        self, items: Sequence[FeedbackItem]
    ) -> list[FeedbackReceipt | HeadraceError]:
        """Each item on its own: a receipt, or the error that item alone gets."""
        results: list[FeedbackReceipt | HeadraceError] = []
        for item in items:
            try:
                results.append(
                    self.feedback(
                        item.request_id,
                        reward=item.reward,
                        label=item.label,
                        endpoint=item.endpoint,
                    )
                )
            except HeadraceError as error:
                results.append(error)
        return results

    def _current(
        self, owner: EndpointRuntime, index: int, request_id: str
    ) -> tuple[EndpointRuntime, int]:
        """The live runtime and variant index for what answered (the endpoint may have changed)."""
        current = self._table.get(owner.name) or self._implicit.get(owner.name)
        if current is None or owner.deleted:
            raise NotFoundError(f"the endpoint that answered request '{request_id}' was deleted")
        if current is owner:
            return owner, index
        variant: VariantConfig = owner.config.variants[index]
        wanted = (variant.name, variant.model, variant.version)
        for new_index, candidate in enumerate(current.config.variants):
            if (candidate.name, candidate.model, candidate.version) == wanted:
                return current, new_index
        raise NotFoundError(
            f"variant '{variant.name}' that answered request '{request_id}' is no longer part "
            f"of endpoint '{owner.name}'"
        )

    # -- admin (any thread) ------------------------------------------------------------------------

    def get(self, name: str) -> EndpointRuntime:
        runtime = self._table.get(name) or self._implicit.get(name)
        if runtime is None:
            raise NotFoundError(f"unknown endpoint '{name}'")
        return runtime

    def report(self, name: str) -> ExperimentReport:
        """The experiment report of an endpoint (or a plain model): GetExperimentReport."""
        return build_report(self.get(name))

    def names(self, include_models: bool = False) -> list[str]:
        names = set(self._table)
        if include_models:
            names |= set(self._implicit)
        return sorted(names)

    def create(
        self, config: EndpointConfig | Mapping[str, Any], *, actor: str = OPERATOR
    ) -> EndpointRuntime:
        """A new endpoint; ``actor`` (who asks) goes to the audit trail, as for every change."""
        config = self._config(config)
        with self._lock:
            if config.name in self._table:
                raise EndpointExistsError(f"endpoint '{config.name}' already exists")
            self._check(config)
            runtime = EndpointRuntime(config, seed=self._seed, now_ns=self._clock_ns())
            event = runtime.record(
                "created",
                f"endpoint '{config.name}' created",
                actor=actor,
                after=config.to_toml_dict(),
                keep=False,
            )
            self._audit_change(event)
            runtime.events.append(event)
            self._table = {**self._table, config.name: runtime}
            self._overrides[config.name] = config.to_toml_dict()
            self._save_locked()
        self._emit(event)
        return runtime

    def update(
        self, config: EndpointConfig | Mapping[str, Any], *, actor: str = OPERATOR
    ) -> EndpointRuntime:
        config = self._config(config)
        with self._lock:
            previous = self._table.get(config.name)
            if previous is None:
                raise NotFoundError(f"unknown endpoint '{config.name}'")
            self._check(config)
            runtime = EndpointRuntime(
                config, seed=self._seed, now_ns=self._clock_ns(), previous=previous
            )
            before, after = changed_keys(previous.config.to_toml_dict(), config.to_toml_dict())
            event = runtime.record(
                "updated",
                f"endpoint '{config.name}' updated"
                + (f": {', '.join(sorted(after))}" if after else " (no change)"),
                actor=actor,
                before=before,
                after=after,
                keep=False,
            )
            self._audit_change(event)
            runtime.events.append(event)
            self._table = {**self._table, config.name: runtime}
            self._overrides[config.name] = config.to_toml_dict()
            self._save_locked()
        self._emit(event)
        return runtime

    def delete(self, name: str, *, actor: str = OPERATOR) -> None:
        with self._lock:
            runtime = self._table.get(name)
            if runtime is None:
                raise NotFoundError(f"unknown endpoint '{name}'")
            event = runtime.record(
                "deleted",
                f"endpoint '{name}' deleted",
                actor=actor,
                before=runtime.config.to_toml_dict(),
                keep=False,
            )
            self._audit_change(event)
            runtime.events.append(event)
            self._table = {k: v for k, v in self._table.items() if k != name}
            runtime.deleted = True
            self._overrides[name] = None
            self._save_locked()
        self._emit(event)

    def switch(self, name: str, to: str | None = None, *, actor: str = OPERATOR) -> RoutingEvent:
        """Blue-green: the next request goes to ``to`` (default: the inactive colour)."""
        with self._lock:
            event = self._declared(name).switch(to, actor=actor, before_apply=self._audit_change)
            self._save_locked()
        self._emit(event)
        return event

    def rollback(self, name: str, *, actor: str = OPERATOR) -> RoutingEvent:
        """Blue-green: back to the previous colour; canary: the candidate to 0 %."""
        with self._lock:
            event = self._declared(name).rollback(actor=actor, before_apply=self._audit_change)
            self._save_locked()
        self._emit(event)
        return event

    def _audit_change(self, event: RoutingEvent) -> None:
        if self._audit is not None and event.before != event.after:
            self._audit(event)

    def add_model(self, name: str) -> None:
        """A plain model that clients may call by name (an endpoint of one variant)."""
        with self._lock:
            if name in self._implicit:
                return
            config = EndpointConfig(name=name, variants=(VariantConfig(name=name, model=name),))
            runtime = EndpointRuntime(
                config, seed=self._seed, now_ns=self._clock_ns(), implicit=True
            )
            self._implicit = {**self._implicit, name: runtime}

    def remove_model(self, name: str) -> None:
        with self._lock:
            runtime = self._implicit.get(name)
            if runtime is not None:
                runtime.deleted = True
                self._implicit = {k: v for k, v in self._implicit.items() if k != name}

    def persist(self) -> bool:
        """Write the state folder if strategy state changed since (canary steps, bandit arms).

        Call it off the event loop, every few seconds and at shutdown. Returns whether it wrote.
        """
        with self._lock:
            if not self._dirty:
                return False
            self._save_locked()
            return True

    # -- internals -------------------------------------------------------------------------------

    def _declared(self, name: str) -> EndpointRuntime:
        runtime = self._table.get(name)
        if runtime is None:
            raise NotFoundError(f"unknown endpoint '{name}'")
        return runtime

    def _config(self, config: EndpointConfig | Mapping[str, Any]) -> EndpointConfig:
        return config if isinstance(config, EndpointConfig) else parse_endpoint(config)

    def _check(self, config: EndpointConfig) -> None:
        """Every variant and shadow must exist and share one signature."""
        if self._signature_of is None:
            return
        signatures: dict[str, ModelSignature] = {}
        targets: list[VariantConfig | ShadowConfig] = [*config.variants, *config.shadows]
        for target in targets:
            try:
                signatures[target.name] = self._signature_of(target.model, target.version)
            except HeadraceError as error:
                wrapped = type(error)(
                    f"endpoint '{config.name}', variant '{target.name}': {error.message}"
                )
                wrapped.code = error.code
                raise wrapped from None
        check_signatures(config.name, signatures)

    def _save_locked(self) -> None:
        self._dirty = False
        if self._state_dir is None:
            return
        runtime = {name: rt.state_dict() for name, rt in self._table.items()}
        save_state(self._state_dir, SavedState(dict(self._overrides), runtime))

    def _emit(self, event: RoutingEvent, dirty: bool = False) -> None:
        if dirty:
            self._dirty = True
        level = logging.WARNING if event.kind == "rollback" else logging.INFO
        log.log(level, "endpoint %s: %s", event.endpoint, event.detail)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a metrics or audit hook must not fail a request
                log.exception("routing event hook failed for %s", event)
