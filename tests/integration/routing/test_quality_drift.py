"""Label quality in drift monitoring, over gRPC against a real server: labels sent with Feedback
that make a classifier's accuracy drop show in GetDriftReport per variant and window, and the
``[drift] min_accuracy`` rule fires the retraining trigger and the drift-detected gauge."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from conftest import start_server, stop_server
from headrace import wire
from headrace.cli import main as cli_main
from headrace.client import Client
from headrace.wire import admin as pb
from helpers import onnx_models

WINDOW_S = 2.0  # the endpoint's quality window: labels for 20 answers fall in one or two
SCRIPT = (
    "import sys, pathlib; p = pathlib.Path(sys.argv[1]); "
    "p.open('a').write(sys.stdin.read().strip() + '\\n')"
)


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def write_repository(root: Path, sink: Path) -> Path:
    repo = root / "models"
    command = json.dumps([sys.executable, "-c", SCRIPT, str(sink)])
    toml = (
        "[drift]\nbins = 10\nwindow_rows = 0\nwindow_s = 3600\n"
        f"min_accuracy = 0.9\nmin_labels = 5\ncooldown_s = 0\ntrigger_command = {command}\n"
    )
    onnx_models.write_model(repo, "clf", onnx_models.mlp([8, 16, 2], seed=5), toml=toml)
    data = root / "train.npy"
    np.save(data, np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32))
    code = cli_main(
        ["profile", "--data", str(data), "--model-repository", str(repo), "--model", "clf",
         "--version", "1"]
    )  # fmt: skip
    assert code == 0
    (repo / "_endpoints.toml").write_text(
        '[[endpoint]]\nname = "judged"\nvariants = [{ name = "main", model = "clf" }]\n'
        f"[endpoint.quality]\nlabels = true\nwindow_s = {WINDOW_S}\n"
    )
    return repo


def fired(sink: Path) -> list[dict[str, Any]]:
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]


def test_a_quality_drop_is_in_the_drift_report_and_fires_the_alert(tmp_path: Path) -> None:
    sink = tmp_path / "fired.jsonl"
    repo = write_repository(tmp_path, sink)
    running, thread = start_server(repo, state_dir=tmp_path / "state", trust_model_triggers=True)
    try:
        rng = np.random.default_rng(1)
        with Client(running.address) as client:
            answers = [
                client.infer("judged", {"x": rng.standard_normal((1, 8)).astype(np.float32)})
                for _ in range(20)
            ]
        with grpc.insecure_channel(running.address) as channel:
            feedback = wire.Stub(channel, wire.FEEDBACK_SERVICE)
            admin = wire.Stub(channel, wire.ADMIN_SERVICE)
            for answer in answers:
                predicted = int(next(iter(answer.outputs.values())).argmax(axis=-1)[0])
                wrong = pb.LabelTensor(shape=[1], int64_contents=[1 - predicted])
                feedback.Feedback(pb.FeedbackRequest(request_id=answer.id, label=wrong))

            def report() -> Any:
                return admin.GetDriftReport(pb.GetDriftReportRequest(model="clf"))

            # Wait for the state: a closed window judged, the trigger's report written.
            wait_for(lambda: report().quality_decision == "alert")
            wait_for(lambda: bool(fired(sink)))
            answer_report = report()
        windows = list(answer_report.quality)
        assert {(w.endpoint, w.variant, w.kind, w.metric) for w in windows} == {
            ("judged", "main", "classifier", "accuracy")
        }
        assert sum(w.count for w in windows) == 20
        judged = [w for w in windows if w.decision == "alert"]
        assert judged and all(w.closed and w.value == 0.0 and w.count >= 5 for w in judged)
        assert (answer_report.min_accuracy, answer_report.min_labels) == (0.9, 5)
        assert answer_report.max_mae != answer_report.max_mae  # NaN: no rule for regressors
        (alert,) = fired(sink)
        assert (alert["alert"], alert["model"], alert["version"]) == ("quality", "clf", "1")
        assert (alert["kind"], alert["count"]) == ("classifier", judged[0].count)
        assert (alert["endpoint"], alert["variant"], alert["metric"]) == (
            "judged",
            "main",
            "accuracy",
        )
        assert alert["value"] == 0.0 and alert["threshold"] == 0.9 and alert["decision"] == "alert"
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"

        def metrics() -> str:
            with urllib.request.urlopen(url) as response:
                return str(response.read().decode())

        # The command wrote its report before it exited; the firing is counted (outcome ok)
        # once the watcher has seen it exit: wait for that state, not for the file alone.
        firing = 'headrace_drift_trigger_firings_total{model="clf",outcome="ok",version="1"} 1.0'
        wait_for(lambda: firing in metrics())
        detected = (
            'headrace_drift_detected{feature="quality:judged/main",model="clf",test="accuracy",'
            'version="1"} 1.0'
        )
        assert detected in metrics()
    finally:
        stop_server(running, thread)
