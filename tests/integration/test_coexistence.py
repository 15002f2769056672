"""headrace's client and Triton's client in one process, imported in either order, both talking
to the server: headrace's messages live in a descriptor pool of their own (headrace.wire)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import RunningServer

SCRIPT = """
import sys
import numpy as np
order = sys.argv[2]
if order == "headrace-first":
    import headrace.client
    import tritonclient.grpc as triton
else:
    import tritonclient.grpc as triton
    import headrace.client
address = sys.argv[1]
x = np.arange(8, dtype=np.float32).reshape(1, 8)
with headrace.client.Client(address) as client:
    ours = client.infer("mlp", {"x": x}).outputs["y"]
theirs_client = triton.InferenceServerClient(address)
tensor = triton.InferInput("x", [1, 8], "FP32")
tensor.set_data_from_numpy(x)
theirs = theirs_client.infer("mlp", [tensor]).as_numpy("y")
assert np.array_equal(ours, theirs), (ours, theirs)
print("both clients agree")
"""


@pytest.mark.parametrize("order", ["headrace-first", "tritonclient-first"])
def test_both_clients_in_one_process(server: RunningServer, order: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, server.address, order],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "both clients agree" in result.stdout
