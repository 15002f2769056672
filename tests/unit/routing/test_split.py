"""split: weighted A/B/n with sticky keys on a slot table (headrace.routing.split)."""

from __future__ import annotations

from collections import Counter

import pytest
from scipy import stats

from headrace.routing.split import SLOTS, initial_table, key_slot, rebalance, target_counts
from unit.routing.routing_support import MakeEndpoints, endpoint, variants

REQUESTS = 20_000


def binomial_999(n: int, p: float) -> tuple[int, int]:
    """The central 99.9 % interval of Binomial(n, p)."""
    return int(stats.binom.ppf(0.0005, n, p)), int(stats.binom.ppf(0.9995, n, p))


@pytest.mark.parametrize(
    "weights",
    [(("a", 70), ("b", 30)), (("a", 50), ("b", 30), ("c", 20)), (("a", 1), ("b", 1), ("c", 1))],
)
def test_shares_are_within_the_binomial_interval(
    make_endpoints: MakeEndpoints, weights: tuple[tuple[str, float], ...]
) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(*weights)))
    counts = Counter(routing.resolve("e").variant for _ in range(REQUESTS))
    total = sum(w for _, w in weights)
    for name, weight in weights:
        low, high = binomial_999(REQUESTS, weight / total)
        assert low <= counts[name] <= high, (name, counts)
    assert sum(counts.values()) == REQUESTS


def test_a_variant_of_weight_zero_gets_nothing(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1), ("b", 0))))
    assert {routing.resolve("e").variant for _ in range(5_000)} == {"a"}


def test_a_sticky_key_always_gets_the_same_variant(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(
        endpoint(name="e", sticky_key="user_id", variants=variants(("a", 50), ("b", 50)))
    )
    seen: dict[str, set[str]] = {}
    for repeat in range(20):
        for user in range(500):
            key = f"user-{user}"
            seen.setdefault(key, set()).add(routing.resolve("e", "", {"user_id": key}).variant)
        assert repeat >= 0
    assert all(len(v) == 1 for v in seen.values())
    # and the keys spread over both variants in about the configured shares
    shares = Counter(next(iter(v)) for v in seen.values())
    assert 200 <= shares["a"] <= 300


def test_sticky_slots_remembered_for_string_keys_stay_bounded_and_exact(
    make_endpoints: MakeEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A string key's slot is remembered (no hash per returning user) in a bounded table; a key
    gets the variant its hash gives whether it was remembered, forgotten when the table was
    cleared, too long to remember, or sent as an input tensor instead of a parameter."""
    import numpy as np

    from headrace.routing import runtime

    monkeypatch.setattr(runtime, "STICKY_CACHED_KEYS", 100)
    routing = make_endpoints(
        endpoint(name="e", sticky_key="user_id", variants=variants(("a", 50), ("b", 50)))
    )
    live = routing.get("e")
    table = live.table
    assert table is not None

    def expected(key: str) -> str:
        return live.routes[table[key_slot(key.encode(), live.salt)]].variant

    keys = [f"user-{i}" for i in range(250)] + ["x" * 65, "x" * 200]
    for _ in range(2):
        for key in keys:
            assert routing.resolve("e", "", {"user_id": key}).variant == expected(key)
            assert len(live._sticky_slots) <= 100
    assert "x" * 65 not in live._sticky_slots  # longer than STICKY_CACHED_KEY_CHARS
    tensor = {"user_id": np.array([b"user-7"], dtype=object)}
    assert routing.resolve("e", "", None, tensor).variant == expected("user-7")


def test_a_sticky_key_may_be_an_input_tensor(make_endpoints: MakeEndpoints) -> None:
    import numpy as np

    routing = make_endpoints(
        endpoint(name="e", sticky_key="user", variants=variants(("a", 50), ("b", 50)))
    )
    chosen = set()
    for user in range(200):
        tensor = np.array([user], dtype=np.int64)
        first = routing.resolve("e", inputs={"user": tensor}).variant
        assert all(
            routing.resolve("e", inputs={"user": tensor.copy()}).variant == first for _ in range(5)
        )
        chosen.add(first)
    assert chosen == {"a", "b"}
    text = np.array([b"alice"], dtype=object)
    first = routing.resolve("e", inputs={"user": text}).variant
    assert (
        routing.resolve("e", inputs={"user": np.array([b"alice"], dtype=object)}).variant == first
    )


def test_sticky_keys_spread_evenly_over_slots() -> None:
    counts = Counter(key_slot(f"user-{i}".encode(), salt=12345, slots=100) for i in range(100_000))
    chi2, p = stats.chisquare([counts[s] for s in range(100)])
    assert p > 0.001, chi2


def moved_fraction(routing_before: list[str], routing_after: list[str]) -> float:
    return sum(a != b for a, b in zip(routing_before, routing_after, strict=True)) / len(
        routing_before
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((("a", 70), ("b", 30)), (("a", 60), ("b", 40))),
        # shifting weight between the first and last of three must not disturb the middle one
        ((("a", 40), ("b", 20), ("c", 40)), (("a", 30), ("b", 20), ("c", 50))),
        ((("a", 34), ("b", 33), ("c", 33)), (("a", 24), ("b", 38), ("c", 38))),
    ],
)
def test_a_10_point_weight_change_moves_at_most_11_percent_of_keys(
    make_endpoints: MakeEndpoints,
    before: tuple[tuple[str, float], ...],
    after: tuple[tuple[str, float], ...],
) -> None:
    routing = make_endpoints(endpoint(name="e", sticky_key="user_id", variants=variants(*before)))
    keys = [{"user_id": f"u{i}"} for i in range(20_000)]
    first = [routing.resolve("e", "", k).variant for k in keys]
    routing.update(endpoint(name="e", sticky_key="user_id", variants=variants(*after)))
    second = [routing.resolve("e", "", k).variant for k in keys]
    assert 0.08 <= moved_fraction(first, second) <= 0.11
    # every moved key went to a variant that gained weight, from one that lost it
    gained = {n for (n, w), (_, w0) in zip(after, before, strict=True) if w > w0}
    lost = {n for (n, w), (_, w0) in zip(after, before, strict=True) if w < w0}
    for a, b in zip(first, second, strict=True):
        if a != b:
            assert a in lost and b in gained


def test_rebalance_moves_exactly_the_slots_the_weights_require() -> None:
    table = initial_table([50, 30, 20])
    assert Counter(table) == {0: 5000, 1: 3000, 2: 2000}
    new = rebalance(table, ["a", "b", "c"], ["a", "b", "c"], [40, 30, 30], seed=7)
    assert Counter(new) == {0: 4000, 1: 3000, 2: 3000}
    assert sum(x != y for x, y in zip(table, new, strict=True)) == 1000
    # a removed variant frees its slots; an added one takes its share from the others
    renamed = rebalance(new, ["a", "b", "c"], ["c", "a", "d"], [30, 40, 30], seed=7)
    assert Counter(renamed) == {0: 3000, 1: 4000, 2: 3000}
    old_names, new_names = ["a", "b", "c"], ["c", "a", "d"]
    unchanged = sum(old_names[x] == new_names[y] for x, y in zip(new, renamed, strict=True))
    assert unchanged == SLOTS - 3000  # only b's slots moved (to d)


def test_target_counts_sum_to_the_slots() -> None:
    for weights in ([1, 1, 1], [0.3, 0.3, 0.4], [1e-9, 1], [7, 0, 3]):
        counts = target_counts(weights)
        assert sum(counts) == SLOTS
        assert all(c >= 0 for c in counts)
    with pytest.raises(ValueError, match="sum to 0"):
        target_counts([0, 0])


def test_keys_stay_put_across_a_restart(make_endpoints: MakeEndpoints, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = endpoint(name="e", sticky_key="u", variants=variants(("a", 70), ("b", 30)))
    routing = make_endpoints(config, state_dir=tmp_path)
    routing.update(endpoint(name="e", sticky_key="u", variants=variants(("a", 60), ("b", 40))))
    keys = [{"u": str(i)} for i in range(3_000)]
    before = [routing.resolve("e", "", k).variant for k in keys]
    # a new process, same file declaration and state folder, another random seed
    restarted = make_endpoints(config, state_dir=tmp_path, seed="other")
    assert [restarted.resolve("e", "", k).variant for k in keys] == before
