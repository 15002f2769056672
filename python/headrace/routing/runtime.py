"""One endpoint's live state: its routes, the strategy's state, statistics and recent events.

One thread at a time counts outcomes (the engine's routing lock: the only writer of counters and
strategy state); ``choose_route`` runs on any thread without it (its refills of pre-drawn choices
may race harmlessly under the GIL). Admin operations build a new runtime from the
old one and swap it into the table, carrying over what still applies (a variant's statistics and
bandit arm when its model and version are unchanged, the split table, the active colour), so a
request never sees a half-made endpoint. ``switch``/``rollback`` assign one field and may run on
any thread.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from headrace.errors import InvalidArgumentError
from headrace.routing.bandit import Bandit
from headrace.routing.canary import BASELINE, CANDIDATE, CanaryAction, CanaryDecision, CanaryRamp
from headrace.routing.config import EndpointConfig
from headrace.routing.events import CANARY_ACTOR, OPERATOR, RoutingEvent
from headrace.routing.feedback import QualityWindows
from headrace.routing.split import SLOTS, initial_table, key_bytes, key_slot, rebalance
from headrace.routing.stats import ShadowStats, VariantStats

# Random split decisions drawn per numpy call: ~40 ns a request instead of a Python random()
# and a table lookup (~400 ns here); a weight change discards at most this many draws.
SPLIT_DRAWS = 1024
# Sticky string keys whose slots an endpoint remembers (at most this many, each at most this
# long): a few MB at worst, for ~0.5 us less per sticky request.
STICKY_CACHED_KEYS = 65_536
STICKY_CACHED_KEY_CHARS = 64
EVENTS_KEPT = 100  # recent events per endpoint, for the report (the full trail goes to on_event)


class ShadowTarget:
    """A shadow of an endpoint: where its copies go and how they compare."""

    __slots__ = ("model", "name", "sample", "stats", "tolerance", "version")

    def __init__(self, name: str, model: str, version: str, sample: float, tolerance: float):
        self.name = name
        self.model = model
        self.version = version
        self.sample = sample
        self.tolerance = tolerance
        self.stats = ShadowStats()


class Route:
    """The variant chosen for one request; what the engine runs and reports.

    ``variant`` is the string for the ``headrace_variant`` response parameter; ``model`` and
    ``version`` (a version number, an alias, or "" for the model's default) say what to run.
    """

    __slots__ = (
        "endpoint",
        "index",
        "model",
        "runtime",
        "shadows",
        "stats",
        "variant",
        "version",
    )

    def __init__(
        self,
        runtime: EndpointRuntime,
        index: int,
        variant: str,
        model: str,
        version: str,
    ) -> None:
        self.runtime = runtime
        self.endpoint = runtime.name
        self.index = index
        self.variant = variant
        self.model = model
        self.version = version
        self.shadows: tuple[ShadowTarget, ...] = runtime.shadows
        self.stats: VariantStats = runtime.stats[index]

    def __repr__(self) -> str:
        return (
            f"Route(endpoint={self.endpoint!r}, variant={self.variant!r}, model={self.model!r}, "
            f"version={self.version!r})"
        )


def _fingerprint(config: EndpointConfig) -> str:
    text = json.dumps(config.to_toml_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _variant_key(config: EndpointConfig, index: int) -> tuple[str, str, str]:
    v = config.variants[index]
    return (v.name, v.model, v.version)


class EndpointRuntime:
    def __init__(
        self,
        config: EndpointConfig,
        *,
        seed: str,
        now_ns: int,
        implicit: bool = False,
        previous: EndpointRuntime | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.implicit = implicit  # a plain model seen as an endpoint of one variant
        self.fingerprint = _fingerprint(config)
        self.sticky_key = config.sticky_key
        self.salt = zlib.crc32(config.name.encode())
        # sticky key (a short string: a request parameter such as a user id) -> its slot
        self._sticky_slots: dict[str, int] = {}
        self._random = random.Random(f"{seed}:{config.name}").random
        self.shadows = tuple(
            ShadowTarget(s.name, s.model, s.version, s.sample, s.tolerance) for s in config.shadows
        )
        self.stats = [VariantStats() for _ in config.variants]
        self.routes = tuple(
            Route(self, i, v.name, v.model, v.version) for i, v in enumerate(config.variants)
        )
        self.index_of = {v.name: i for i, v in enumerate(config.variants)}
        self.quality = QualityWindows(config.quality, len(config.variants))
        self.keeps_labels = config.quality.labels  # answers keep their quality output
        self.events: collections.deque[RoutingEvent] = collections.deque(maxlen=EVENTS_KEPT)
        self.deleted = False
        # Strategy state: exactly one of these is used, per config.strategy.
        # A split draws its random slots in blocks (one numpy call per SPLIT_DRAWS requests,
        # not a Python random() per request); a new table drops the draws made from the old.
        self._split_rng = np.random.default_rng(list(f"{seed}:{config.name}:split".encode()))
        self.table = initial_table(config.weights()) if config.strategy == "split" else None
        self.ramp = (
            CanaryRamp(config.canary_settings(), self.salt, now_ns, self.stats)
            if config.strategy == "canary"
            else None
        )
        self.bandit: Bandit[Route] | None = (
            Bandit(
                config.bandit_settings(),
                [stats.rewards for stats in self.stats],
                zlib.crc32(f"{seed}:{config.name}".encode()),
                self.routes,
            )
            if config.strategy == "bandit"
            else None
        )
        active = config.blue_green.active if config.blue_green else None
        self.active = self.index_of[active] if active else 0
        self.previous_active = 1 - self.active if config.strategy == "blue_green" else 0
        # The strategy's choice, bound once (a bandit's choose returns the route itself).
        self.choose_route: Callable[[Mapping[str, Any] | None, Mapping[str, Any] | None], Route]
        if self.bandit is not None:
            self.choose_route = self.bandit.choose
        else:
            self.choose_route = {
                "split": self._choose_split,
                "canary": self._choose_canary,
                "blue_green": self._choose_blue_green,
            }[config.strategy]
        if previous is not None:
            self._carry_over(previous)

    # -- choosing (event-loop thread) ------------------------------------------------------------

    def _sticky_slot(
        self, parameters: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None
    ) -> int:
        """The slot the request's sticky key hashes to, or -1 (no key: route at random)."""
        key = self.sticky_key
        if key is None:
            return -1
        value = parameters.get(key) if parameters else None
        if value is None and inputs is not None:
            value = inputs.get(key)
        if value is None:
            return -1
        if type(value) is str and len(value) <= STICKY_CACHED_KEY_CHARS:
            # Returning users send the same key again: a dict lookup instead of encoding and
            # hashing it. Bounded: cleared when full (the slots are recomputed as keys return).
            cached = self._sticky_slots.get(value)
            if cached is None:
                cached = key_slot(value.encode(), self.salt)  # a str's bytes, as key_bytes
                if len(self._sticky_slots) >= STICKY_CACHED_KEYS:
                    self._sticky_slots.clear()
                self._sticky_slots[value] = cached
            return cached
        data = key_bytes(value)
        return -1 if data is None else key_slot(data, self.salt)

    @property
    def table(self) -> bytearray | None:
        """A split's slot table (slot -> variant index); None for other strategies."""
        return self._table

    @table.setter
    def table(self, table: bytearray | None) -> None:
        self._table = table
        self._draws: Iterator[Route] = iter(())

    def _choose_split(
        self, parameters: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None
    ) -> Route:
        if self.sticky_key is not None:
            slot = self._sticky_slot(parameters, inputs)
            if slot >= 0:
                return self.routes[self._table[slot]]  # type: ignore[index]
        route = next(self._draws, None)
        return route if route is not None else self._draw_splits()

    def _draw_splits(self) -> Route:
        """Draw the next SPLIT_DRAWS random slots at once; returns the first one's route."""
        assert self._table is not None
        slots = self._split_rng.integers(0, SLOTS, SPLIT_DRAWS)
        owners = np.frombuffer(self._table, dtype=np.uint8)[slots].tolist()
        routes = self.routes
        draws: Iterator[Route] = iter([routes[i] for i in owners])
        self._draws = draws  # another thread's refill may replace it: take ours from our own
        return next(draws)

    def _choose_canary(
        self, parameters: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None
    ) -> Route:
        ramp = self.ramp
        assert ramp is not None
        slot = self._sticky_slot(parameters, inputs) if self.sticky_key is not None else -1
        if slot < 0:
            candidate = self._random() * 100.0 < ramp.candidate_percent
        else:
            candidate = ramp.rank[slot] < ramp.candidate_ranks
        return self.routes[CANDIDATE if candidate else BASELINE]

    def _choose_blue_green(
        self, parameters: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None
    ) -> Route:
        return self.routes[self.active]

    # -- outcomes (event-loop thread) ------------------------------------------------------------

    def reward(self, index: int, reward: float, now_ns: int) -> RoutingEvent | None:
        """Count a reward (already checked finite, and by :meth:`check_reward`)."""
        self.stats[index].rewards.add(reward)
        if self.bandit is not None:
            self.bandit.refresh()
        if self.ramp is not None:
            before = self.ramp.candidate_percent
            return self.canary_event(self.ramp.reward(index, reward, now_ns), before)
        return None

    def check_reward(self, reward: float) -> None:
        if self.bandit is not None:
            self.bandit.check_reward(reward)

    def canary_event(  # a decision of the ramp's, as the event the router emits
        self,
        decision: CanaryDecision | None,
        before_percent: float,
        actor: str = CANARY_ACTOR,
    ) -> RoutingEvent | None:
        if decision is None:
            return None
        ramp = self.ramp
        assert ramp is not None
        candidate = self.routes[CANDIDATE].variant
        kind = {
            CanaryAction.ROLLBACK: "rollback",
            CanaryAction.PROMOTE: "promotion",
            CanaryAction.ADVANCE: "step",
        }[decision.action]
        detail = {
            "rollback": f"candidate '{candidate}' rolled back to 0 %: {decision.reason}",
            "promotion": f"candidate '{candidate}' promoted to 100 %: {decision.reason}",
            "step": f"candidate '{candidate}' advanced to {ramp.candidate_percent:g} %: "
            f"{decision.reason}",
        }[kind]
        return self.record(
            kind,
            detail,
            candidate,
            actor=actor,
            before={"candidate_percent": before_percent},
            after={"candidate_percent": ramp.candidate_percent},
            reason=decision.reason,
            candidate_percent=ramp.candidate_percent,
        )

    def record(
        self,
        kind: str,
        detail: str,
        variant: str = "",
        *,
        actor: str = OPERATOR,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        keep: bool = True,
        **fields: Any,
    ) -> RoutingEvent:
        """A new event; ``keep`` adds it to the recent events (the report's) at once."""
        event = RoutingEvent(
            time.time(), self.name, kind, detail, variant, fields, actor, before or {}, after or {}
        )
        if keep:
            self.events.append(event)
        return event

    # -- operator actions --------------------------------------------------------------------------

    def switch(
        self,
        to: str | None,
        kind: str = "switch",
        actor: str = OPERATOR,
        before_apply: Callable[[RoutingEvent], None] | None = None,
    ) -> RoutingEvent:
        """Blue-green: make ``to`` (default: the other colour) active for the next request.

        ``before_apply`` sees the event before the change takes effect (the audit trail); if it
        raises, nothing changes."""
        if self.config.strategy != "blue_green":
            raise InvalidArgumentError(
                f"endpoint '{self.name}' has strategy '{self.config.strategy}'; "
                "Switch applies to blue_green endpoints"
            )
        target = 1 - self.active if to is None or to == "" else self._variant_index(to)
        old = self.active
        variant = self.routes[target].variant
        if target == old:
            return self.record(kind, f"variant '{variant}' is already active", variant, actor=actor)
        event = self.record(
            kind,
            f"active variant '{self.routes[old].variant}' -> '{variant}'",
            variant,
            actor=actor,
            before={"active": self.routes[old].variant},
            after={"active": variant},
            keep=False,
        )
        if before_apply is not None:
            before_apply(event)
        # One assignment: the next resolve() reads the new colour, requests in flight finish
        # on the old one (both stay loaded), so no request fails across the switch.
        self.previous_active, self.active = old, target
        self.events.append(event)
        return event

    def rollback(
        self,
        actor: str = OPERATOR,
        before_apply: Callable[[RoutingEvent], None] | None = None,
    ) -> RoutingEvent:
        """Blue-green: back to the colour before the last switch. Canary: candidate to 0 %."""
        if self.config.strategy == "blue_green":
            return self.switch(
                self.routes[self.previous_active].variant,
                kind="rollback",
                actor=actor,
                before_apply=before_apply,
            )
        ramp = self.ramp
        if ramp is not None:
            decision = CanaryDecision(CanaryAction.ROLLBACK, "rolled back by an operator")
            candidate = self.routes[CANDIDATE].variant
            event = self.record(
                "rollback",
                f"candidate '{candidate}' rolled back to 0 %: {decision.reason}",
                candidate,
                actor=actor,
                before={"candidate_percent": ramp.candidate_percent},
                after={"candidate_percent": 0.0},
                keep=False,
                reason=decision.reason,
                candidate_percent=0.0,
            )
            if before_apply is not None:
                before_apply(event)
            ramp.apply(decision, 0)
            self.events.append(event)
            return event
        raise InvalidArgumentError(
            f"endpoint '{self.name}' has strategy '{self.config.strategy}'; "
            "Rollback applies to blue_green and canary endpoints"
        )

    def _variant_index(self, name: str) -> int:
        index = self.index_of.get(name)
        if index is None:
            raise InvalidArgumentError(
                f"endpoint '{self.name}' has no variant '{name}' "
                f"(variants: {', '.join(self.index_of)})"
            )
        return index

    def pinned(self, name: object) -> Route:
        """The route a request pins with the ``headrace_variant`` parameter."""
        return self.routes[self._variant_index(str(name))]

    # -- state carried over an update, and persisted ---------------------------------------------

    def _carry_over(self, previous: EndpointRuntime) -> None:
        old_keys = {_variant_key(previous.config, i): i for i in range(len(previous.routes))}
        for index in range(len(self.routes)):
            old = old_keys.get(_variant_key(self.config, index))
            if old is None:
                continue
            self.stats[index] = self.routes[index].stats = previous.stats[old]
            if self.bandit is not None:
                self.bandit.arms[index] = self.stats[index].rewards
            if self.config.quality == previous.config.quality:
                self.quality.windows[index] = previous.quality.windows[old]
        for shadow in self.shadows:
            for old_shadow in previous.shadows:
                if (shadow.name, shadow.model, shadow.version) == (
                    old_shadow.name,
                    old_shadow.model,
                    old_shadow.version,
                ):
                    shadow.stats = old_shadow.stats
        self.events.extend(previous.events)
        if self.table is not None and previous.table is not None:
            self.table = rebalance(
                previous.table,
                [r.variant for r in previous.routes],
                [r.variant for r in self.routes],
                self.config.weights(),
                self.salt,
            )
        if self.ramp is not None and previous.ramp is not None:
            same = [_variant_key(self.config, i) for i in range(2)] == [
                _variant_key(previous.config, i) for i in range(2)
            ]
            if same and self.config.canary_settings() == previous.config.canary_settings():
                self.ramp = previous.ramp  # an unrelated change (a shadow) keeps the ramp going
                self.ramp.arms = self.stats  # the same variants' statistics (carried over above)
        if self.ramp is not None and self.ramp is not previous.ramp:
            self.ramp.mark_step_start()  # statistics carried over are history, not this step
        # A switched colour survives an update that leaves the blue-green settings alone.
        old_active = previous.routes[previous.active].variant
        if (
            self.config.strategy == previous.config.strategy == "blue_green"
            and self.config.blue_green == previous.config.blue_green
            and old_active in self.index_of
        ):
            self.active = self.index_of[old_active]
            self.previous_active = 1 - self.active
        if self.bandit is not None:
            self.bandit.refresh()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"fingerprint": self.fingerprint}
        if self.table is not None:
            state["table"] = base64.b64encode(bytes(self.table)).decode()
        if self.ramp is not None:
            state["canary"] = self.ramp.state_dict()
        if self.bandit is not None:
            state["bandit"] = self.bandit.state_dict()
        if self.config.strategy == "blue_green":
            state["active"] = self.routes[self.active].variant
            state["previous_active"] = self.routes[self.previous_active].variant
        return state

    def restore(self, state: Mapping[str, Any], now_ns: int) -> None:
        """Resume saved state; ignored when the endpoint's config changed since it was saved."""
        if state.get("fingerprint") != self.fingerprint:
            return
        if self.table is not None and "table" in state:
            table = bytearray(base64.b64decode(state["table"]))
            if len(table) == SLOTS and max(table) < len(self.routes):
                self.table = table
        if self.ramp is not None and "canary" in state:
            self.ramp.restore(state["canary"], now_ns)
        if self.bandit is not None and "bandit" in state:
            self.bandit.restore(state["bandit"])
        if "active" in state and state["active"] in self.index_of:
            self.active = self.index_of[state["active"]]
            self.previous_active = self.index_of.get(state.get("previous_active", ""), 0)
