"""Drives a headrace server with tritonclient, in its own interpreter: tritonclient's generated
protos and headrace's both define the `inference` package, and one process's default descriptor
pool holds only one of them.

    python triton_driver.py HOST:PORT COMMAND 'JSON ARGUMENTS'

Commands print one JSON object on the last line of stdout:
  answers  {model, n, ids, stream, parameters}: n requests (ModelInfer, or ModelStreamInfer when
           stream), with ids "r<i>" when ids else none; per answer its id, model_name,
           model_version, headrace_variant and y; plus the endpoint's metadata and config.
  callers  {model, callers, before, after, wanted, limit_s}: that many threads, each with its own
           client, infer in a loop. Once every caller has `before` answers it prints "ready" and
           reads one line from stdin (the test switches the endpoint meanwhile); then runs until
           every caller has `after` answers from `wanted` since that line. Reports failures and
           each caller's variants in order.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

X = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)


def request_input() -> Any:
    infer_input = grpcclient.InferInput("x", list(X.shape), "FP32")
    infer_input.set_data_from_numpy(X)
    return infer_input


def describe(result: Any) -> dict[str, Any]:
    response = result.get_response()
    variant = response.parameters["headrace_variant"].string_param
    return {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "variant": variant,
        "y": result.as_numpy("y").tolist(),
    }


def answers(address: str, args: dict[str, Any]) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(url=address)
    model, n = args["model"], args["n"]
    parameters = args.get("parameters") or None
    out: list[dict[str, Any]] = []
    if args.get("stream"):
        results: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for i in range(n):
            client.async_stream_infer(
                model,
                [request_input()],
                request_id=f"r{i}" if args.get("ids") else "",
                parameters=parameters,
            )
        for _ in range(n):
            result, error = results.get(timeout=60)
            out.append({"error": str(error)} if error is not None else describe(result))
        client.stop_stream()
    else:
        for i in range(n):
            result = client.infer(
                model,
                [request_input()],
                request_id=f"r{i}" if args.get("ids") else "",
                parameters=parameters,
            )
            out.append(describe(result))
    metadata = client.get_model_metadata(model)
    config = client.get_model_config(model).config
    return {
        "answers": out,
        "metadata": {
            "name": metadata.name,
            "versions": list(metadata.versions),
            "inputs": [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs],
            "outputs": [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs],
        },
        "config": {"name": config.name, "max_batch_size": config.max_batch_size},
        "ready": client.is_model_ready(model),
    }


def callers(address: str, args: dict[str, Any]) -> dict[str, Any]:
    model, count = args["model"], args["callers"]
    before, after, wanted = args["before"], args["after"], args["wanted"]
    deadline = time.monotonic() + args.get("limit_s", 120)
    variants: list[list[str]] = [[] for _ in range(count)]
    failures: list[str] = []
    marks = [-1] * count  # each caller's answer count when the test said it had switched
    stop = threading.Event()
    lock = threading.Lock()

    def call(index: int) -> None:
        client = grpcclient.InferenceServerClient(url=address)
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                result = client.infer(model, [request_input()])
            except Exception as error:  # every failure is recorded and reported
                with lock:
                    failures.append(f"caller {index}: {error}")
                continue
            variant = result.get_response().parameters["headrace_variant"].string_param
            with lock:
                variants[index].append(variant)
        client.close()

    def counted(condition: Any) -> bool:
        while time.monotonic() < deadline:
            with lock:
                if condition():
                    return True
            time.sleep(0.01)
        return False

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    ready = counted(lambda: all(len(v) >= before for v in variants))
    print("ready" if ready else "not ready", flush=True)
    sys.stdin.readline()
    with lock:
        marks = [len(v) for v in variants]
    done = counted(
        lambda: all(v[m:].count(wanted) >= after for v, m in zip(variants, marks, strict=True))
    )
    stop.set()
    for thread in threads:
        thread.join(60)
    return {
        "ready": ready,
        "done": done,
        "failures": failures,
        "variants": variants,
        "marks": marks,
    }


def main() -> int:
    address, command, raw = sys.argv[1], sys.argv[2], sys.argv[3]
    args = json.loads(raw)
    report = {"answers": answers, "callers": callers}[command](address, args)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
