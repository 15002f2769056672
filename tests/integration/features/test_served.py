"""Models with ``[features]`` served over gRPC and driven by tritonclient: clients send entities
and request inputs, the server fills ``x`` from the store, concurrent requests share store round
trips, bad entities are INVALID_ARGUMENT, and the served log holds what the model received."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc.model_config_pb2 import DataType
from tritonclient.utils import InferenceServerException

from conftest import RunningServer, start_server, stop_server
from headrace.engine import Engine
from headrace.errors import InvalidArgumentError, UnavailableError
from headrace.features import read_served_log
from integration.features import served_repo
from integration.features.redis_server import RedisServer
from integration.features.triton import infer, wait_for

REDIS_DB = 2
CALLERS = 64
HELD_TIMEOUT_MS = 120_000


def engine_of(server: RunningServer) -> Engine:
    engine: Engine = server.server.engine  # type: ignore[attr-defined]
    return engine


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[RunningServer, Path, Path]]:
    url = redis_server.url(REDIS_DB)
    client = redis_server.client(REDIS_DB)
    client.flushdb()
    client.close()
    root = tmp_path_factory.mktemp("served-features")
    # held: a store that may take its time (the coalescing test holds it).
    repo = served_repo.write_repository(root, url, {"held": ("default", HELD_TIMEOUT_MS)})
    served_repo.push(repo / "scored_embedded", url)
    log_dir = root / "served-log"
    running, thread = start_server(repo, served_log=log_dir)
    yield running, repo, log_dir
    stop_server(running, thread)


@pytest.fixture()
def client(served: tuple[RunningServer, Path, Path]) -> Iterator[Any]:
    triton = grpcclient.InferenceServerClient(served[0].address)
    yield triton
    triton.close()


@pytest.mark.parametrize("model", ["scored", "scored_embedded"])
def test_a_features_model_answers_as_the_bare_model_on_the_assembled_rows(
    client: Any, model: str
) -> None:
    # What clients see: the entity and request inputs, not the input the features fill.
    wanted = [("user_id", "INT64", [-1]), ("item_id", "BYTES", [-1]), ("amount", "FP32", [-1])]
    metadata = client.get_model_metadata(model)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == wanted
    config = client.get_model_config(model).config
    # ModelConfig leaves out the batch dimension: one value per row.
    assert [(t.name, DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("user_id", "TYPE_INT64", []),
        ("item_id", "TYPE_STRING", []),
        ("amount", "TYPE_FP32", []),
    ]
    assert config.max_batch_size == 64
    for seed, rows in enumerate((1, 3, 7, 16)):
        inputs = served_repo.request(rows, seed)
        y, variant = infer(client, model, inputs)
        bare, _ = infer(client, "bare", {"x": served_repo.expected_x(inputs)})
        assert variant == model
        assert np.array_equal(y, bare), (model, rows)
    # [-1, 1] entity and request inputs are taken as [-1].
    inputs = served_repo.request(5, 99)
    column = {name: array.reshape(-1, 1) for name, array in inputs.items()}
    assert np.array_equal(infer(client, model, column)[0], infer(client, model, inputs)[0])


def test_64_concurrent_callers_share_store_round_trips(
    served: tuple[RunningServer, Path, Path], redis_server: RedisServer
) -> None:
    """64 callers with a request each in flight at once: their lookups go to the store in two
    MGETs (the first caller's, then everything that came while it was out). The store holds its
    answer until every lookup has reached the server: on this machine Redis answers faster than
    64 Python callers can send, and a store that answers before the next lookup comes is asked
    once per lookup (the coalescer has no timer; bench_features.py shows the natural ratio)."""
    running = served[0]
    requests = [served_repo.request(2, 1000 + c) for c in range(CALLERS)]
    check = grpcclient.InferenceServerClient(running.address)
    expected = [infer(check, "bare", {"x": served_repo.expected_x(r)})[0] for r in requests]
    infer(check, "held", requests[0])  # the store's connection is open
    check.close()
    features = engine_of(running).get_version("held").features
    assert features is not None
    coalescer = features.joiner.coalescer
    clients = [grpcclient.InferenceServerClient(running.address) for _ in range(CALLERS)]
    answers: list[Any] = [None] * CALLERS

    def caller(index: int) -> None:
        try:
            answers[index] = infer(clients[index], "held", requests[index])[0]
        except InferenceServerException as error:
            answers[index] = error

    redis_server.reset_stats()
    assert redis_server.process is not None
    pid = redis_server.process.pid
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    os.kill(pid, signal.SIGSTOP)
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: coalescer.pending_lookups == CALLERS, "every caller's lookup")
    finally:
        os.kill(pid, signal.SIGCONT)
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    for answer, want in zip(answers, expected, strict=True):
        assert isinstance(answer, np.ndarray), answer
        assert np.array_equal(answer, want)
    round_trips = redis_server.command_calls("mget")
    print(f"{round_trips} MGET round trips for {CALLERS} concurrent requests")
    assert 1 <= round_trips <= 2


BAD_INPUTS = [
    ("user_id", {"user_id": np.array([1000, 1003], np.int32)}, "expected INT64 or BYTES"),
    ("user_id", {"user_id": np.array([[1000, 1003]] * 2, np.int64)}, "expected [-1] or [-1, 1]"),
    ("item_id", {"item_id": np.array([3, 4], np.int64)}, "INT64, expected BYTES"),
    ("amount", {"amount": np.array([b"1", b"2"], object)}, "a number per row"),
    ("amount", {"amount": np.ones((2, 2), np.float32)}, "a number per row"),
    ("item_id", {"item_id": np.array([b"item-1"] * 3, object)}, "has 3 rows"),
]


@pytest.mark.parametrize("model", ["scored", "scored_embedded"])
@pytest.mark.parametrize(("name", "override", "message"), BAD_INPUTS)
def test_bad_entity_and_request_inputs_are_invalid_argument(
    client: Any, model: str, name: str, override: dict[str, Any], message: str
) -> None:
    inputs: dict[str, Any] = {**served_repo.request(2, 5), **override}
    with pytest.raises(InferenceServerException) as raised:
        infer(client, model, inputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert name in raised.value.message() and message in raised.value.message()


def test_missing_and_unknown_inputs_are_invalid_argument(client: Any) -> None:
    inputs = served_repo.request(2, 6)
    del inputs["item_id"]
    with pytest.raises(InferenceServerException) as raised:
        infer(client, "scored", inputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing input 'item_id'" in raised.value.message()
    # The input the features fill is not the client's to send.
    x = served_repo.expected_x(served_repo.request(2, 6))
    with pytest.raises(InferenceServerException) as raised:
        infer(client, "scored", {**served_repo.request(2, 6), "x": x})
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unknown input 'x'" in raised.value.message()


def served_rows(log_dir: Path, model: str) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = read_served_log(log_dir, model).to_pydict()
    return rows


def test_the_served_log_holds_one_row_per_served_row_as_the_model_received_it(
    served: tuple[RunningServer, Path, Path], client: Any
) -> None:
    running, _, log_dir = served
    engine = engine_of(running)
    log = engine.features.served_log
    assert log is not None
    shadow = engine.get_version("scored_embedded")
    shadow_runs = shadow.statistics().success_count
    sent: dict[str, tuple[dict[str, Any], Any, str, str]] = {}
    for index, (rows, endpoint) in enumerate(((1, "scored"), (4, "ranking"), (9, "scored"),
                                              (2, "ranking"))):  # fmt: skip
        inputs = served_repo.request(rows, 500 + index)
        request_id = f"logged-{index}"
        y, variant = infer(client, endpoint, inputs, request_id=request_id)
        sent[request_id] = (inputs, y, endpoint, variant)
    # The endpoint's shadow copies ran (they are not served, so not logged).
    wait_for(lambda: shadow.statistics().success_count == shadow_runs + 2, "the shadow copies")
    assert log.flush(60)
    table = served_rows(log_dir, "scored")
    mine = [i for i, rid in enumerate(table["request_id"]) if rid in sent]
    assert len(mine) == sum(len(inputs["user_id"]) for inputs, *_ in sent.values())
    assert not set(served_rows(log_dir, "scored_embedded")["request_id"]) & set(sent)
    columns = ["user_stats.age", "user_stats.spend_30d", "item_stats.ctr_7d", "amount"]
    for request_id, (inputs, y, endpoint, variant) in sent.items():
        at = sorted((table["row"][i], i) for i in mine if table["request_id"][i] == request_id)
        assert [row for row, _ in at] == list(range(len(inputs["user_id"])))
        logged_x = np.array([[table[c][i] for c in columns] for _, i in at], np.float32)
        # What the model received: the bare model on these rows answers what the client got.
        assert np.array_equal(logged_x, served_repo.expected_x(inputs))
        bare, _ = infer(client, "bare", {"x": logged_x})
        assert np.array_equal(bare, y)
        assert np.array_equal(np.array([table["output.y"][i] for _, i in at], np.float32), y)
        assert [table["user_id"][i] for _, i in at] == inputs["user_id"].tolist()
        assert [table["item_id"][i] for _, i in at] == inputs["item_id"].tolist()
        assert variant == ("main" if endpoint == "ranking" else "scored")
        for _, i in at:
            assert (table["model"][i], table["version"][i]) == ("scored", "1")
            assert (table["endpoint"][i], table["variant"][i]) == (endpoint, variant)


def test_blocking_infer_through_the_serving_loop(served: tuple[RunningServer, Path, Path]) -> None:
    # Engine.infer from a thread of its own: the redis lookup runs on the server's loop.
    running = served[0]
    engine = engine_of(running)
    inputs = served_repo.request(6, 71)
    for model in ("scored", "scored_embedded"):
        result = engine.infer(model, inputs)
        bare = engine.infer("bare", {"x": served_repo.expected_x(inputs)})
        assert np.array_equal(result.outputs["y"], bare.outputs["y"])
    with pytest.raises(InvalidArgumentError, match="user_id"):
        engine.infer("scored", {**inputs, "user_id": inputs["user_id"].astype(np.float32)})

    async def blocking_on_the_serving_loop() -> None:
        # It would wait for the loop it blocks: refused at once, not hung.
        with pytest.raises(RuntimeError, match="use infer_async"):
            engine.infer("scored", inputs)

    asyncio.run_coroutine_threadsafe(blocking_on_the_serving_loop(), running.loop).result(60)


def test_an_engine_without_a_server_serves_features_blocking_and_async(
    served: tuple[RunningServer, Path, Path], redis_server: RedisServer
) -> None:
    # The engine's own loop thread reads redis, for blocking callers and for loops that come and
    # go (each asyncio.run closes its own: connections there would leak).
    _, repo, _ = served
    engine = Engine.from_repository(repo, metrics_port=-1)
    try:
        inputs = served_repo.request(5, 81)
        want = engine.infer("bare", {"x": served_repo.expected_x(inputs)}).outputs["y"]
        for _ in range(2):
            result = asyncio.run(engine.infer_async("scored", inputs))
            assert np.array_equal(result.outputs["y"], want)
        assert np.array_equal(engine.infer("scored", inputs).outputs["y"], want)
    finally:
        engine.close()


def connected_clients(redis_server: RedisServer) -> int:
    client = redis_server.client()
    try:
        return int(client.info("clients")["connected_clients"])
    finally:
        client.close()


def test_a_retired_version_closes_its_store_connection(
    served: tuple[RunningServer, Path, Path], redis_server: RedisServer
) -> None:
    running, repo, _ = served
    engine = engine_of(running)
    client = grpcclient.InferenceServerClient(running.address)
    try:
        infer(client, "scored", served_repo.request(1, 3))  # connected
        before = connected_clients(redis_server)
        toml = repo / "scored" / "model.toml"
        toml.write_text(toml.read_text().replace("timeout_ms = 5000", "timeout_ms = 4000"))
        engine.load_model("scored")  # a new version replaces the old, which closes
        wait_for(lambda: connected_clients(redis_server) < before, "the old connection closed")
        inputs = served_repo.request(3, 4)
        bare, _ = infer(client, "bare", {"x": served_repo.expected_x(inputs)})
        assert np.array_equal(infer(client, "scored", inputs)[0], bare)
    finally:
        client.close()


def test_a_features_model_loads_and_warms_up_while_its_store_is_down(tmp_path: Path) -> None:
    closed_port = RedisServer(tmp_path / "unused").port  # chosen free, never started
    url = f"redis://127.0.0.1:{closed_port}/0"
    extra = {"down_default": ("default", 200), "down_503": ("unavailable", 200)}
    repo = served_repo.write_repository(tmp_path, url, extra)
    engine = Engine.from_repository(repo, metrics_port=-1)
    try:
        assert engine.is_model_ready("down_default") and engine.is_model_ready("down_503")
        inputs = served_repo.request(3, 9)
        defaults = {**inputs, "user_id": np.full(3, 7, np.int64)}
        defaults["item_id"] = np.array([b"no-such-item"] * 3, object)
        want = engine.infer("bare", {"x": served_repo.expected_x(defaults)}).outputs["y"]
        assert np.array_equal(engine.infer("down_default", inputs).outputs["y"], want)
        with pytest.raises(UnavailableError, match="features of model 'down_503'"):
            engine.infer("down_503", inputs)
    finally:
        engine.close()
