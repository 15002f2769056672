"""Fresh-install smoke test: run by ``make smoke`` with the python of a throwaway venv that has
only the built wheel installed (no extras), from the repository root.

Whatever a subcommand needs at run time must be a runtime dependency: this serves the example
repository and answers one request with headrace's client, quantizes an example model, and
profiles a CSV, exactly as a new user would after ``pip install headrace``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HEADRACE = [str(Path(sys.executable).with_name("headrace"))]
EXAMPLES = Path("examples/models")


def check(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def serve_and_infer(with_tritonclient: bool = False) -> None:
    from headrace.client import Client

    server = subprocess.Popen(
        [
            *HEADRACE,
            "serve",
            "--model-repository",
            str(EXAMPLES),
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = None
        for line in server.stdout:
            match = re.search(r"serving gRPC on [\d.]+:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        if port is None:
            raise SystemExit("FAILED: headrace serve never said it was serving")
        with Client(f"127.0.0.1:{port}") as client:
            result = client.infer("tabular", {"x": np.ones((2, 32), np.float32)})
        assert result.outputs["y"].shape == (2, 1), result.outputs
        print(f"serve: tabular answered {result.outputs['y'].ravel().tolist()}")
        if with_tritonclient:
            import tritonclient.grpc as triton

            x = triton.InferInput("x", [2, 32], "FP32")
            x.set_data_from_numpy(np.ones((2, 32), np.float32))
            theirs = triton.InferenceServerClient(f"127.0.0.1:{port}").infer("tabular", [x])
            assert np.array_equal(theirs.as_numpy("y"), result.outputs["y"])
            print("serve: tritonclient in the same process gets the same answer")
    finally:
        server.terminate()
        server.wait(60)


def quantize(workdir: Path) -> None:
    target = workdir / "int8" / "tabular" / "1"
    out = check(
        [
            *HEADRACE,
            "quantize",
            str(EXAMPLES / "tabular" / "1" / "model.onnx"),
            "--out",
            str(target),
        ]
    )
    assert (target / "model.int8").is_file(), out
    print(f"quantize: {out.strip().splitlines()[-1] if out.strip() else 'ok'}")


def profile(workdir: Path) -> None:
    data = workdir / "train.csv"
    rng = np.random.default_rng(0)
    np.savetxt(data, rng.standard_normal((500, 3)), delimiter=",", header="a,b,c", comments="")
    out = check([*HEADRACE, "profile", "--data", str(data), "--out", str(workdir / "ref.json")])
    assert (workdir / "ref.json").is_file(), out
    print(f"profile: {out.strip()}")


def serve_after_tritonclient() -> None:
    """A user installs Triton's client after headrace (pip may move protobuf and grpcio to what
    tritonclient wants); the server must still start, and both clients work in one process."""
    check([sys.executable, "-m", "pip", "install", "--quiet", "tritonclient[grpc]"])
    versions = check(
        [
            sys.executable,
            "-c",
            "import google.protobuf, grpc; print(google.protobuf.__version__, grpc.__version__)",
        ]
    )
    print(f"after tritonclient: protobuf, grpcio = {versions.strip()}")
    serve_and_infer(with_tritonclient=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        serve_and_infer()
        quantize(Path(tmp))
        profile(Path(tmp))
    print("fresh install: serve, quantize and profile work without extras")
    if "--with-tritonclient" in sys.argv:
        serve_after_tritonclient()
        print("after installing tritonclient: the server starts and both clients agree")


if __name__ == "__main__":
    main()
