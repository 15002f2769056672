"""A closed-loop KServe v2 gRPC load generator (grpc.aio on uvloop), for servers perf_analyzer
cannot drive (MLServer has no ModelConfig RPC) and, for a like-for-like comparison, for the others.

    python bench/loadgen.py --target 127.0.0.1:8001 --model tabular --in-features 32 \
        --concurrency 8 --duration-s 5 [--rows 1] [--warmup-s 1] [--streaming]

N workers each keep one request in flight over one shared channel (HTTP/2 multiplexes them), as
perf_analyzer's concurrency mode does. Each request carries a random FP32 ``x [rows, in]`` in
``raw_input_contents``; the request is serialized once and sent as bytes, and answers are parsed
only once to check them, so the client spends its CPU on gRPC, not on protobuf. Latency is taken
per request from send to answer; only requests that finish inside the measured window count.
Prints one JSON object: throughput (requests/s and rows/s), p50/p99 latency (us), errors.

With ``--entity NAME`` (repeatable; a model whose features fill its input) requests carry INT64
``NAME [rows]`` keys drawn from 1..``--keys`` instead of ``x``: ``--payloads`` distinct requests,
serialized once and sent in turn, so that lookups ask for many keys.

Being Python, it is client-bound near 8k requests/s on one Zen 2 core: rows near that figure
measure the client, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
import numpy as np
import uvloop

from headrace.wire import inference as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
# A run gives up after this many failed requests rather than measure an error path.
MAX_ERRORS = 100


def _identity(data: bytes) -> bytes:
    return data


def make_request(model: str, in_features: int, rows: int, seed: int = 0) -> Any:
    x = np.random.default_rng(seed).random((rows, in_features), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, in_features])
    request.raw_input_contents.append(x.tobytes())
    return request


def make_entity_payloads(
    model: str, entities: list[str], keys: int, rows: int, count: int, seed: int = 0
) -> list[bytes]:
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(count):
        request = pb.ModelInferRequest(model_name=model)
        for name in entities:
            request.inputs.add(name=name, datatype="INT64", shape=[rows])
            request.raw_input_contents.append(
                rng.integers(1, keys + 1, rows, dtype=np.int64).tobytes()
            )
        payloads.append(request.SerializeToString())
    return payloads


def check_response(data: bytes, rows: int) -> None:
    response = pb.ModelInferResponse.FromString(data)
    if not response.outputs or response.outputs[0].shape[0] != rows:
        raise RuntimeError(f"unexpected answer: {response}")


def percentile_us(latencies_ns: list[int], q: float) -> float:
    if not latencies_ns:
        return float("nan")
    return float(np.percentile(np.asarray(latencies_ns, dtype=np.int64), q)) / 1000.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.entity:
        payloads = make_entity_payloads(
            args.model, args.entity, args.keys, args.rows, args.payloads
        )
    else:
        payloads = [make_request(args.model, args.in_features, args.rows).SerializeToString()]
    sent = 0
    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.so_reuseport", 0)]
    latencies: list[int] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(args.target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        check_infer = channel.unary_unary(
            INFER, request_serializer=_identity, response_deserializer=_identity
        )
        check_response(await check_infer(payloads[0], timeout=10), args.rows)

        start_ns = time.perf_counter_ns() + int(args.warmup_s * 1e9)
        end_ns = start_ns + int(args.duration_s * 1e9)

        async def unary_worker() -> None:
            infer = channel.unary_unary(
                INFER, request_serializer=_identity, response_deserializer=_identity
            )
            nonlocal sent
            while True:
                sent_ns = time.perf_counter_ns()
                if sent_ns >= end_ns or len(errors) >= MAX_ERRORS:
                    return
                sent += 1
                try:
                    await infer(payloads[sent % len(payloads)], timeout=30)
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    continue
                done = time.perf_counter_ns()
                if start_ns <= sent_ns and done <= end_ns:
                    latencies.append(done - sent_ns)

        async def stream_worker() -> None:
            # One stream per worker, one request in flight on it: the stream analogue of a
            # closed-loop unary worker.
            call = channel.stream_stream(
                STREAM_INFER, request_serializer=_identity, response_deserializer=_identity
            )()
            nonlocal sent
            try:
                while True:
                    sent_ns = time.perf_counter_ns()
                    if sent_ns >= end_ns or len(errors) >= MAX_ERRORS:
                        return
                    sent += 1
                    await call.write(payloads[sent % len(payloads)])
                    answer = pb.ModelStreamInferResponse.FromString(await call.read())
                    if answer.error_message:
                        errors.append(answer.error_message)
                        continue
                    done = time.perf_counter_ns()
                    if start_ns <= sent_ns and done <= end_ns:
                        latencies.append(done - sent_ns)
            finally:
                call.cancel()

        worker = stream_worker if args.streaming else unary_worker
        # Bounded: every worker returns at end_ns (each request has its own 30 s deadline).
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    requests_per_s = len(latencies) / args.duration_s
    return {
        "target": args.target,
        "model": args.model,
        "rows": args.rows,
        "concurrency": args.concurrency,
        "streaming": args.streaming,
        "duration_s": args.duration_s,
        "requests": len(latencies),
        "sent": sent + 1,  # every request, warm-up and the check included
        "requests_per_s": requests_per_s,
        "rows_per_s": requests_per_s * args.rows,
        "p50_us": percentile_us(latencies, 50),
        "p99_us": percentile_us(latencies, 99),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--model", required=True)
    parser.add_argument("--in-features", type=int, required=True)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--streaming", action="store_true", help="use ModelStreamInfer")
    parser.add_argument("--entity", action="append", help="send INT64 keys NAME [rows], not x")
    parser.add_argument("--keys", type=int, default=10_000, help="entity keys drawn from 1..N")
    parser.add_argument("--payloads", type=int, default=1024, help="distinct entity requests")
    args = parser.parse_args(argv)
    if not args.target.startswith("127.0.0.1:"):
        parser.error("only 127.0.0.1 targets")
    result = uvloop.run(run(args))
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
