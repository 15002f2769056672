"""Support for the routing wire tests: the repository with endpoints of every strategy, and
tritonclient runs in a separate interpreter (triton_driver.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from helpers import onnx_models

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "triton_driver.py"
X = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)  # what the driver sends

ENDPOINTS = """
[[endpoint]]
name = "split"
variants = [{ name = "va", model = "a", weight = 50 }, { name = "vb", model = "b", weight = 50 }]

[[endpoint]]
name = "bg"
strategy = "blue_green"
variants = [{ name = "blue", model = "a" }, { name = "green", model = "b" }]

[[endpoint]]
name = "bandit"
strategy = "bandit"
variants = [{ name = "va", model = "a" }, { name = "vb", model = "b" }]
[endpoint.bandit]
algorithm = "thompson"
reward = "bernoulli"

[[endpoint]]
name = "shadowed"
variants = [{ name = "main", model = "a" }]
shadows = [{ name = "next", model = "c" }]
"""


def write_repository(root: Path) -> Path:
    repo = root / "models"
    for seed, name in enumerate(("a", "b", "c")):
        onnx_models.write_model(repo, name, onnx_models.mlp([8, 16, 2], seed=seed))
    onnx_models.write_model(repo, "narrow", onnx_models.mlp([4, 8, 2]))
    (repo / "_endpoints.toml").write_text(ENDPOINTS)
    return repo


def drive(address: str, command: str, **args: Any) -> dict[str, Any]:
    """Run one triton_driver.py command to completion; its JSON report."""
    done = subprocess.run(
        [sys.executable, str(DRIVER), address, command, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report
