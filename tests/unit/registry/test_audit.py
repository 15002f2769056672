"""The audit log: fsynced JSON lines, read back by model and time, whole after kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from headrace.errors import InvalidArgumentError
from headrace.registry.audit import AuditCause, AuditLog, AuditOutcome, AuditRecord


def record(model: str, to_version: int, at: float, **fields: object) -> AuditRecord:
    values: dict[str, object] = {
        "model": model,
        "from_version": to_version - 1 or None,
        "to_version": to_version,
        "cause": AuditCause.ALIAS_MOVED,
        "actor": "poller",
        "outcome": AuditOutcome.SWITCHED,
        "time_unix_s": at,
    }
    values.update(fields)
    return AuditRecord(**values)  # type: ignore[arg-type]


def test_append_and_read_back_filtered(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "log.jsonl"
    with AuditLog(path) as audit:
        audit.append(record("fraud", 1, 100.0, cause="startup", download_ms=12.5, load_ms=3))
        audit.append(record("churn", 4, 101.0))
        audit.append(
            record(
                "fraud",
                2,
                102.0,
                outcome="failed",
                cause=AuditCause.LOAD_FAILED,
                reason="warm-up failed: shape",
            )
        )
        asyncio.run(audit.append_async(record("fraud", 3, 103.0, actor="CN=ops", drain_ms=4.0)))

        everything = audit.read()
        assert [(r.model, r.to_version) for r in everything] == [
            ("fraud", 1),
            ("churn", 4),
            ("fraud", 2),
            ("fraud", 3),
        ]
        first = everything[0]
        assert first.cause == AuditCause.STARTUP and first.download_ms == 12.5
        assert first.load_ms == 3.0 and first.warm_ms is None
        assert [r.to_version for r in audit.read(model="fraud")] == [1, 2, 3]
        window = audit.read(model="fraud", since_unix_s=101.0, until_unix_s=103.0)
        assert [(r.to_version, r.outcome, r.reason) for r in window] == [
            (2, AuditOutcome.FAILED, "warm-up failed: shape")
        ]
        assert [r.to_version for r in audit.read(limit=2)] == [2, 3]
        assert audit.read(model="nobody") == []

    line = json.loads(path.read_text().splitlines()[3])
    assert line["time"] == "1970-01-01T00:01:43Z" and line["actor"] == "CN=ops"
    assert line["cause"] == "alias_moved" and line["outcome"] == "switched"
    assert line["from_version"] == 2 and line["drain_ms"] == 4.0


def test_bad_records_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="cause"):
        record("fraud", 1, 1.0, cause="because")
    with pytest.raises(InvalidArgumentError, match="load_ms"):
        record("fraud", 1, 1.0, load_ms=-1)
    audit = AuditLog(tmp_path / "log.jsonl")
    audit.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        audit.append(record("fraud", 1, 1.0))


def test_torn_last_line_is_skipped_and_the_next_append_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as audit:
        audit.append(record("fraud", 1, 1.0))
    with path.open("a") as handle:
        handle.write('{"model": "fraud", "to_vers')  # a crash mid-write
    with AuditLog(path) as audit:
        assert [r.to_version for r in audit.read()] == [1]
        audit.append(record("fraud", 2, 2.0))
        assert [r.to_version for r in audit.read()] == [1, 2]


APPENDER = """
import sys
from pathlib import Path
from headrace.registry.audit import AuditLog, AuditRecord

audit = AuditLog(Path(sys.argv[1]))
for number in range(1, 1_000_000):
    audit.append(AuditRecord("fraud", number - 1 or None, number, "alias_moved", "poller",
                             "switched", reason="x" * 200, time_unix_s=float(number)))
    print(number, flush=True)  # after append returned: this record is on disk
"""


def test_every_acknowledged_record_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    acknowledged = 0
    try:
        for line in process.stdout:
            acknowledged = int(line)
            if acknowledged >= 200:
                break
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    records = AuditLog(path).read()
    numbers = [r.to_version for r in records]
    # Everything acknowledged is there, in order, and nothing beyond a record or two in flight.
    assert numbers[:acknowledged] == list(range(1, acknowledged + 1))
    assert numbers == list(range(1, len(numbers) + 1))
    assert all(r.cause == AuditCause.ALIAS_MOVED and r.actor == "poller" for r in records)


def test_endpoint_records_beside_model_records_and_lines_without_kind(tmp_path: Path) -> None:
    from headrace.registry.audit import EndpointAction, EndpointAuditRecord

    path = tmp_path / "log.jsonl"
    # A line written before records had a kind is a model record.
    old = json.loads(record("fraud", 2, 99.0).to_json())
    del old["kind"]
    path.write_text(json.dumps(old) + "\n")
    switched = EndpointAuditRecord(
        endpoint="bg",
        action=EndpointAction.SWITCH,
        actor="token:admin",
        before={"active": "blue"},
        after={"active": "green"},
        variant="green",
        time_unix_s=100.0,
    )
    with AuditLog(path) as audit:
        audit.append(switched)
        audit.append(record("fraud", 3, 101.0))
        audit.append(EndpointAuditRecord("bg", "canary_rollback", "canary", time_unix_s=102.0))
        assert [(r.model, r.to_version) for r in audit.read()] == [("fraud", 2), ("fraud", 3)]
        endpoints = audit.read_endpoints("bg")
        assert endpoints[0] == switched
        assert [r.action for r in endpoints] == ["switch", "canary_rollback"]
        assert audit.read_endpoints(since_unix_s=101.0, limit=5)[0].actor == "canary"
        assert audit.read_endpoints("other") == []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line.get("kind") for line in lines] == [None, "endpoint", "model", "endpoint"]
    assert (lines[1]["from"], lines[1]["to"]) == ({"active": "blue"}, {"active": "green"})
    with pytest.raises(InvalidArgumentError, match="not a valid EndpointAction"):
        EndpointAuditRecord("bg", "teleported", "admin")
