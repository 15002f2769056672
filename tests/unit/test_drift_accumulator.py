"""The sharded, windowed accumulator (csrc/drift/drift_accumulator.cc) through the bindings."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from headrace import _core
from headrace.monitoring.drift import DriftMonitor, DriftSettings, build_profile


def _layout(features: int = 6, categorical: int = 2) -> _core.BinLayout:
    layout = _core.BinLayout()
    rng = np.random.default_rng(0)
    for _ in range(features):
        layout.add_numerical(np.unique(np.quantile(rng.normal(size=5_000), np.arange(1, 20) / 20)))
    for k in range(categorical):
        layout.add_categorical(4 + k)
    return layout


def _data(rows: int, seed: int, features: int = 6, categorical: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((rows, features + categorical))
    x[:, :features] = rng.normal(size=(rows, features))
    x[:, features:] = rng.integers(-1, 8, size=(rows, categorical))
    x[rng.random(size=x.shape) < 0.01] = np.nan
    return x


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_merging_shards_and_windows_equals_counting_in_one_go() -> None:
    layout = _layout()
    data = _data(30_000, seed=1)
    accumulator = _core.DriftAccumulator(layout, window_rows=4_000, windows_kept=100, shards=3)
    # Uneven batches, float32 and float64 alternating (the reference counts the same values).
    start = 0
    batches = []
    for i, size in enumerate([1, 999, 2500, 77, 13_000, 423, 13_000]):
        batch = data[start : start + size]
        batches.append(batch.astype(np.float32) if i % 2 else batch)
        start += size
    for batch in batches:
        accumulator.observe(batch)
    accumulator.close_window()
    windows = accumulator.closed_windows()
    in_one_go = sum(layout.count(b) for b in batches)
    assert sum(w.rows for w in windows) == start
    assert np.array_equal(sum(w.counts for w in windows), in_one_go)
    assert np.array_equal(accumulator.merged(len(windows)).counts, in_one_go)
    # merged(k) is the exact sum of the last k windows.
    assert np.array_equal(accumulator.merged(2).counts, windows[-1].counts + windows[-2].counts)
    assert [w.index for w in windows] == list(range(len(windows)))


def test_merged_with_the_open_window_is_exact() -> None:
    layout = _layout()
    accumulator = _core.DriftAccumulator(layout, window_rows=1_000, windows_kept=5)
    data = _data(2_500, seed=15)
    for start in range(0, 2_500, 500):
        accumulator.observe(data[start : start + 500])
    merged = accumulator.merged(1, include_open=True)
    assert (merged.windows, merged.index, merged.rows) == (2, 2, 1_500)
    assert np.array_equal(merged.counts, layout.count(data[1_000:]))
    nothing = accumulator.merged(0)
    assert nothing.windows == 0 and nothing.rows == 0 and not nothing.counts.any()


def test_windows_close_by_rows_exactly_when_batches_divide() -> None:
    layout = _layout()
    data = _data(10_000, seed=2)
    accumulator = _core.DriftAccumulator(layout, window_rows=2_000, windows_kept=10)
    for start in range(0, 10_000, 500):
        accumulator.observe(data[start : start + 500])
    windows = accumulator.closed_windows()
    assert [w.rows for w in windows] == [2_000] * 5
    assert all(w.closed_by == "rows" for w in windows)
    for i, w in enumerate(windows):
        assert np.array_equal(w.counts, layout.count(data[i * 2_000 : (i + 1) * 2_000]))
    assert accumulator.open_snapshot().rows == 0


def test_windows_roll_on_time_with_a_fake_clock() -> None:
    layout = _layout()
    clock = FakeClock()
    accumulator = _core.DriftAccumulator(layout, window_rows=0, window_s=10.0, clock=clock)
    a, b, c = _data(100, 3), _data(50, 4), _data(70, 5)
    accumulator.observe(a)
    clock.now_s = 5.0
    accumulator.observe(b)
    assert accumulator.closed_windows() == []
    clock.now_s = 10.0  # window 0 is due: batch c belongs to window 1
    accumulator.observe(c)
    windows = accumulator.closed_windows()
    assert len(windows) == 1
    assert (windows[0].start_ns, windows[0].end_ns, windows[0].rows) == (0, 10 * 10**9, 150)
    assert windows[0].closed_by == "time"
    assert np.array_equal(windows[0].counts, layout.count(a) + layout.count(b))
    clock.now_s = 19.0
    assert not accumulator.poll()
    clock.now_s = 20.5
    assert accumulator.poll()  # no traffic needed: poll closes a due window
    windows = accumulator.closed_windows()
    assert windows[1].rows == 70 and windows[1].start_ns == 10 * 10**9
    assert windows[1].end_ns == int(20.5 * 10**9)
    assert np.array_equal(windows[1].counts, layout.count(c))


def test_rows_or_time_whichever_first() -> None:
    layout = _layout()
    clock = FakeClock()
    accumulator = _core.DriftAccumulator(layout, window_rows=1_000, window_s=60.0, clock=clock)
    accumulator.observe(_data(1_000, 6))  # rows first
    clock.now_s = 30.0
    accumulator.observe(_data(10, 7))
    clock.now_s = 90.0  # time first
    accumulator.poll()
    assert [(w.rows, w.closed_by) for w in accumulator.closed_windows()] == [
        (1_000, "rows"),
        (10, "time"),
    ]


def test_ring_keeps_the_last_windows() -> None:
    accumulator = _core.DriftAccumulator(_layout(), window_rows=10, windows_kept=3)
    for seed in range(7):
        accumulator.observe(_data(10, seed))
    assert [w.index for w in accumulator.closed_windows()] == [4, 5, 6]
    assert accumulator.windows_closed == 7
    assert accumulator.merged(100).rows == 30


def test_export_and_import_between_accumulators_is_exact() -> None:
    layout = _layout()
    replica = _core.DriftAccumulator(layout, windows_kept=4)
    central = _core.DriftAccumulator(layout, windows_kept=4)
    first, second = _data(3_000, 8), _data(2_000, 9)
    replica.observe(first)
    replica.close_window()
    exported = replica.merged(1)
    central.observe(second)
    # What crosses the process boundary is a plain array and a row count.
    central.import_counts(np.array(exported.counts.tolist(), dtype=np.uint64), exported.rows)
    central.close_window()
    merged = central.merged(1)
    assert merged.rows == 5_000
    assert np.array_equal(merged.counts, layout.count(first) + layout.count(second))
    with pytest.raises(_core.CoreError):
        central.import_counts(np.zeros(3, dtype=np.uint64), 1)


def test_counting_from_several_python_threads_gives_exact_totals() -> None:
    layout = _layout()
    accumulator = _core.DriftAccumulator(layout, window_rows=5_000, windows_kept=1_000, shards=2)
    per_thread = [_data(20_000, seed=10 + t) for t in range(6)]
    barrier = threading.Barrier(len(per_thread) + 1)
    errors: list[BaseException] = []

    def writer(data: np.ndarray) -> None:
        try:
            barrier.wait()
            for start in range(0, len(data), 250):
                accumulator.observe(data[start : start + 250])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reader() -> None:
        barrier.wait()
        for _ in range(50):
            accumulator.open_snapshot()
            accumulator.merged(3)
            accumulator.closed_windows()

    threads = [threading.Thread(target=writer, args=(d,)) for d in per_thread]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    accumulator.close_window()
    windows = accumulator.closed_windows()
    assert accumulator.windows_closed == len(windows)
    assert sum(w.rows for w in windows) == 6 * 20_000
    expected = sum(layout.count(d) for d in per_thread)
    assert np.array_equal(sum(w.counts for w in windows), expected)


def test_monitor_threads_with_a_python_clock_do_not_deadlock() -> None:
    # The clock re-takes the GIL inside the accumulator; every locking call releases it first.
    rng = np.random.default_rng(12)
    profile = build_profile(rng.normal(size=(2_000, 4)))
    clock = FakeClock()
    monitor = DriftMonitor(profile, DriftSettings(window_rows=300, window_s=1.0), clock=clock)

    def writer(seed: int) -> None:
        data = np.random.default_rng(seed).normal(size=(3_000, 4))
        for start in range(0, 3_000, 100):
            monitor.observe(data[start : start + 100])
            clock.now_s += 0.01

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        monitor.report(windows=2)
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    monitor.close_window()
    assert sum(w.rows for w in monitor.closed_windows()) == 12_000


def test_batches_of_the_wrong_shape_are_refused() -> None:
    accumulator = _core.DriftAccumulator(_layout())
    with pytest.raises(_core.CoreError):
        accumulator.observe(np.zeros((3, 5)))
    with pytest.raises(_core.CoreError):
        accumulator.observe(np.zeros(8))
    # Non-contiguous and integer batches are copied, and count the same.
    data = _data(100, 13)
    accumulator.observe(np.asfortranarray(data))
    accumulator.observe(np.nan_to_num(data).astype(np.int64))
    assert accumulator.open_snapshot().rows == 200


def test_observe_releases_the_gil() -> None:
    # With a long switch interval the main thread keeps the GIL across bytecodes; the spinner
    # thread can then only run while observe() has released it.
    layout = _layout(features=64, categorical=0)
    accumulator = _core.DriftAccumulator(layout)
    batch = np.random.default_rng(14).normal(size=(200_000, 64))
    progress = 0
    start = threading.Event()
    done = threading.Event()

    def spinner() -> None:
        nonlocal progress
        start.wait()
        while not done.is_set():
            progress += 1

    thread = threading.Thread(target=spinner)
    thread.start()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        start.set()
        before = progress
        accumulator.observe(batch)
        during = progress - before
    finally:
        sys.setswitchinterval(interval)
        done.set()
        thread.join()
    assert during > 0
