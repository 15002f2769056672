"""Run by test_process.py in its own interpreter: tritonclient's generated protos and headrace's
both define the `inference` package, and one process's default descriptor pool holds only one.

Usage: python tritonclient_check.py HOST:PORT  -> prints a JSON report on stdout.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> int:
    client = grpcclient.InferenceServerClient(url=sys.argv[1])
    report: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("tabular"),
        "metadata_inputs": [
            (i.name, i.datatype, list(i.shape)) for i in client.get_model_metadata("tabular").inputs
        ],
        "max_batch_size": client.get_model_config("tabular").config.max_batch_size,
    }
    x = np.linspace(-1, 1, 3 * 32, dtype=np.float32).reshape(3, 32)
    infer_input = grpcclient.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer(
        "tabular", [infer_input], outputs=[grpcclient.InferRequestedOutput("y")], request_id="t1"
    )
    report["y"] = result.as_numpy("y").tolist()
    report["id"] = result.get_response().id
    stats = client.get_inference_statistics("tabular")
    report["success_count"] = stats.model_stats[0].inference_stats.success.count
    try:
        client.infer("no_such_model", [infer_input])
        report["error"] = None
    except grpcclient.InferenceServerException as error:
        report["error"] = error.status()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
