"""Weighted splitting with sticky keys: a table of slots, each owned by one variant.

A request picks a slot (at random, or by hashing its sticky key) and goes to the slot's owner, so
a variant's share of traffic is its share of the slots. When the weights change, only as many
slots change owner as the new weights require: a variant that loses weight gives up slots, one
that gains takes exactly those. A key therefore moves only when the slot it hashes to must move,
which no stateless weighted hash guarantees once there are more than two variants (rendezvous
hashing and cumulative ranges both move keys between variants whose weights did not change).
The table is part of the endpoint's persisted state, so keys stay put across restarts.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

# Slots per table: shares are exact to 1/SLOTS (0.01 %); the table costs SLOTS bytes per endpoint
# and a weight change walks it once. Finer resolution buys nothing a weight in the config can say.
SLOTS = 10_000


def target_counts(weights: Sequence[float], slots: int = SLOTS) -> list[int]:
    """Slots per variant in proportion to ``weights`` (largest remainder; ties to the first)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights sum to 0")
    exact = [w * slots / total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: slots - sum(counts)]:
        counts[i] += 1
    return counts


def initial_table(weights: Sequence[float], slots: int = SLOTS) -> bytearray:
    """A table where variant i owns a contiguous run of slots (keys hash uniformly over slots)."""
    table = bytearray()
    for index, count in enumerate(target_counts(weights, slots)):
        table.extend(bytes([index]) * count)
    return table


def rebalance(
    table: bytes | bytearray,
    old_names: Sequence[str],
    new_names: Sequence[str],
    new_weights: Sequence[float],
    seed: int,
) -> bytearray:
    """The table for new variants and weights that moves the fewest slots.

    Variants are matched by name; a variant no longer present frees all its slots. Which of a
    variant's slots it gives up is drawn from a permutation fixed by ``seed``, so replicas that
    apply the same changes in the same order arrive at the same table.
    """
    slots = len(table)
    targets = target_counts(new_weights, slots)
    new_index = {name: i for i, name in enumerate(new_names)}
    owner = [new_index.get(old_names[v], -1) for v in table]
    held = [0] * len(new_names)
    for o in owner:
        if o >= 0:
            held[o] += 1
    surplus = [held[i] - targets[i] for i in range(len(new_names))]
    order = list(range(slots))
    random.Random(seed).shuffle(order)
    freed: list[int] = []
    for slot in order:
        o = owner[slot]
        if o < 0:
            freed.append(slot)
        elif surplus[o] > 0:
            surplus[o] -= 1
            owner[slot] = -1
            freed.append(slot)
    position = 0
    for index, target in enumerate(targets):
        for _ in range(target - held[index] if target > held[index] else 0):
            owner[freed[position]] = index
            position += 1
    return bytearray(owner)


def key_slot(key: bytes, salt: int, slots: int = SLOTS) -> int:
    """The slot a sticky key hashes to; ``salt`` (per endpoint) decorrelates endpoints."""
    # CRC-32 spreads keys evenly over 10^4 slots (tested) at ~70 ns; a cryptographic hash costs
    # several times that on every sticky request and buys no uniformity we need.
    h = zlib.crc32(key, salt)
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF  # mix: CRC is linear in its input bits
    return (h ^ (h >> 16)) % slots


def key_bytes(value: object) -> bytes | None:
    """The bytes a sticky key value hashes as (None: nothing usable, route at random)."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool | int | float):
        return repr(value).encode()
    tobytes = getattr(value, "tobytes", None)
    if tobytes is None:
        return None
    if getattr(getattr(value, "dtype", None), "kind", "") == "O":  # BYTES tensor of objects
        items = value.ravel().tolist()  # type: ignore[attr-defined]
        return b"\0".join(i if isinstance(i, bytes) else str(i).encode() for i in items)
    data: bytes = tobytes()
    return data
