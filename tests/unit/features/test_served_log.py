"""The served-feature log: rows in = rows out, rotation by size and by time, drops counted."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry

from headrace.features import ServedLog, ServedRows, read_served_log


def rows(n: int, request_id: str = "r", model: str = "fraud", start: int = 0) -> ServedRows:
    keys = np.arange(start, start + n, dtype=np.int64)
    return ServedRows(
        model=model,
        version="2",
        time_ns=1_700_000_000_123_456_789,
        request_id=request_id,
        endpoint=None,
        variant="b",
        entities={"user_id": keys, "item_id": np.array([b"i%d" % k for k in keys], dtype=object)},
        columns=("user_stats.age", "amount"),
        values=np.stack([keys * 2.0, keys + 0.5], axis=1).astype(np.float32),
        outputs={
            "score": keys.astype(np.float32) / 10,
            "probs": np.stack([keys, -keys], axis=1).astype(np.float32),
            "label": np.array([b"yes"] * n, dtype=object),
        },
    )


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_what_was_appended_reads_back(tmp_path: Path) -> None:
    log = ServedLog(tmp_path)
    assert log.append(rows(3, "first"))
    assert log.append(rows(2, "second", start=3))
    assert log.flush(timeout_s=30)
    table = read_served_log(tmp_path)
    assert table.num_rows == 5
    assert table["request_id"].to_pylist() == ["first"] * 3 + ["second"] * 2
    assert table["row"].to_pylist() == [0, 1, 2, 0, 1]
    assert table["user_id"].to_pylist() == [0, 1, 2, 3, 4]
    assert table["item_id"].to_pylist() == [b"i0", b"i1", b"i2", b"i3", b"i4"]
    assert table["user_stats.age"].to_pylist() == [0, 2, 4, 6, 8]
    assert table["amount"].to_pylist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert table["output.probs"].to_pylist()[4] == [4.0, -4.0]
    assert table["output.label"].to_pylist() == [b"yes"] * 5
    assert table["model"].to_pylist() == ["fraud"] * 5
    assert table["variant"].to_pylist() == ["b"] * 5 and table["endpoint"].null_count == 5
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert table["time"][0].value == 1_700_000_000_123_456
    log.close()


def test_rows_are_written_in_batches_or_after_their_delay(tmp_path: Path) -> None:
    # A full batch is written at once, however long the delay.
    log = ServedLog(tmp_path / "batch", write_rows=5, write_delay_s=3600)
    assert log.write_rows == 5
    log.append(rows(3))
    log.append(rows(2, start=3))
    wait_for(lambda: log.written_rows == 5, "a full batch written")
    log.close()
    # A batch that does not fill is written once its oldest row waited write_delay_s.
    log = ServedLog(tmp_path / "delay", write_rows=10_000, write_delay_s=0.05)
    log.append(rows(1))
    wait_for(lambda: log.written_rows == 1, "a waiting row written")
    log.close()
    # A batch never needs more than half of the queue.
    small = ServedLog(tmp_path / "small", max_queued_rows=8)
    assert small.write_rows == 4
    small.close()


def test_files_rotate_by_size_without_a_flush(tmp_path: Path) -> None:
    log = ServedLog(tmp_path, max_file_bytes=1, max_file_age_s=3600)
    log.append(rows(4))
    wait_for(lambda: log.files_written >= 1, "a full file is closed")
    log.append(rows(4, start=4))
    wait_for(lambda: log.files_written >= 2, "a second file is closed")
    assert len(list((tmp_path / "fraud").glob("*.parquet"))) == 2
    assert read_served_log(tmp_path)["user_id"].to_pylist() == list(range(8))
    log.close()


def test_files_rotate_by_age(tmp_path: Path) -> None:
    log = ServedLog(tmp_path, max_file_age_s=0.05)
    log.append(rows(2))
    wait_for(lambda: log.files_written == 1, "an old file is closed")
    assert read_served_log(tmp_path).num_rows == 2
    log.close()


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = ServedLog(tmp_path, max_queued_rows=4, registry=registry)
    start = time.monotonic()
    assert not log.append(rows(10))
    assert time.monotonic() - start < 5  # a hang guard, not a latency check
    assert log.dropped_rows == 10
    assert registry.get_sample_value("headrace_served_log_dropped_rows_total") == 10
    assert log.append(rows(3))
    log.close()
    assert not log.append(rows(1))
    assert log.dropped_rows == 11
    assert registry.get_sample_value("headrace_served_log_rows_total") == 3


def test_models_and_schemas_get_their_own_files(tmp_path: Path) -> None:
    log = ServedLog(tmp_path)
    log.append(rows(2, model="fraud"))
    log.append(rows(1, model="ranker"))
    other = rows(1, model="fraud")
    changed = dataclasses.replace(other, columns=("user_stats.age", "price"))
    log.append(changed)
    log.close()
    assert read_served_log(tmp_path, model="ranker").num_rows == 1
    fraud = read_served_log(tmp_path, model="fraud")
    assert fraud.num_rows == 3
    assert fraud["price"].to_pylist() == [None, None, 0.5]
    assert read_served_log(tmp_path).num_rows == 4
