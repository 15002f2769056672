"""`headrace quantize` output served over gRPC through the batcher's native int8 runner."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from conftest import start_server, stop_server
from headrace.client import AsyncClient, Client
from helpers import onnx_models

# int8 weights (per channel) and per-row int8 activations on a 64-128-128-10 ReLU MLP: the
# served int8 answer stays within 2% of the fp32 output's range (plus 1e-3) of fp32's.
RELATIVE_TOLERANCE = 0.02


def test_quantized_model_served_with_batching_matches_fp32(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    fp32 = onnx_models.mlp([64, 128, 128, 10], seed=11)
    source = onnx_models.write_model(repo, "mlp_fp32", fp32)
    out_dir = repo / "mlp_int8" / "1"
    quantized = subprocess.run(
        [sys.executable, "-m", "headrace", "quantize", str(source), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert quantized.returncode == 0, quantized.stderr
    assert (out_dir / "model.int8").stat().st_size <= 0.3 * source.stat().st_size
    # A batch waits up to 20 ms for rows: the int8 model answers in microseconds, so on a busy
    # machine requests sent together could otherwise reach an idle batcher one at a time.
    (repo / "mlp_int8" / "model.toml").write_text(
        "max_batch_size = 32\n[batching]\nmax_queue_delay_us = 20000\n"
    )
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(40)]
    running, thread = start_server(repo)
    try:
        with Client(running.address) as client:
            metadata = client.model_metadata("mlp_int8")
            assert metadata.platform == "headrace_int8"
            assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("x", [-1, 64])]

        async def main() -> tuple[list[np.ndarray], list[np.ndarray]]:
            async with AsyncClient(running.address) as client:
                int8 = await asyncio.gather(*(client.infer("mlp_int8", {"x": x}) for x in inputs))
                ref = await asyncio.gather(*(client.infer("mlp_fp32", {"x": x}) for x in inputs))
            return [r.outputs["y"] for r in int8], [r.outputs["y"] for r in ref]

        int8_out, fp32_out = asyncio.run(main())
        with Client(running.address) as client:
            stats = client.model_statistics("mlp_int8").model_stats[0]
    finally:
        stop_server(running, thread)
    scale = max(float(np.abs(y).max()) for y in fp32_out)
    for got, want in zip(int8_out, fp32_out, strict=True):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= RELATIVE_TOLERANCE * scale + 1e-3
    assert stats.inference_count == sum(x.shape[0] for x in inputs) + 0
    assert any(b.batch_size > 3 for b in stats.batch_stats), "requests were never batched"
    assert onnx.load(str(source)).graph.node  # the fp32 source is untouched
