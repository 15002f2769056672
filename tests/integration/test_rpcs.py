"""Every RPC of the v2 service (and health, reflection) against a real server on loopback."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from headrace import wire
from headrace.client import Client
from headrace.errors import NotFoundError, UnimplementedError
from headrace.wire import inference as pb


@pytest.fixture()
def client(server):  # type: ignore[no-untyped-def]
    with Client(server.address) as c:
        yield c


@pytest.fixture()
def stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address) as channel:
        yield wire.Stub(channel, wire.INFERENCE_SERVICE)


def test_live_ready_and_model_ready(client: Client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("mlp", "3")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("broken")


def test_server_metadata_lists_only_supported_extensions(client: Client) -> None:
    metadata = client.server_metadata()
    assert metadata.name == "headrace"
    assert metadata.version
    assert set(metadata.extensions) == {
        "model_repository",
        "model_configuration",
        "statistics",
        "schedule_policy",
    }


def test_model_metadata(client: Client) -> None:
    metadata = client.model_metadata("two_in_two_out")
    assert metadata.platform == "onnxruntime_onnx"
    assert metadata.versions == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("a", "FP32", [-1, 4]),
        ("b", "FP32", [-1, 4]),
    ]
    assert [t.name for t in metadata.outputs] == ["sum", "product"]
    assert client.model_metadata("mlp").versions == ["1", "2"]
    with pytest.raises(NotFoundError, match="no_such_model"):
        client.model_metadata("no_such_model")


def test_model_config_in_tritons_shape(client: Client) -> None:
    config = client.model_config("two_in_two_out")
    assert config.name == "two_in_two_out"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64  # all inputs have a dynamic first dim
    assert [list(i.dims) for i in config.input] == [[4], [4]]
    assert config.input[0].data_type == pb.TYPE_FP32
    # A model without a batch dimension is not batched and keeps its full dims.
    reshaper = client.model_config("reshaper")
    assert reshaper.max_batch_size == 0
    assert [list(i.dims) for i in reshaper.input] == [[6], [2]]
    assert client.model_config("identity_bytes").input[0].data_type == pb.TYPE_STRING


def test_infer_echoes_id_and_reports_version(client: Client) -> None:
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    latest = client.infer("mlp", {"x": x}, request_id="req-42")
    assert latest.id == "req-42"
    assert latest.model_version == "2"
    first = client.infer("mlp", {"x": x}, version="1")
    assert first.model_version == "1"
    assert not np.allclose(first.outputs["y"], latest.outputs["y"])


def test_statistics_count_requests(client: Client) -> None:
    before = client.model_statistics("two_in_two_out").model_stats[0]
    a = np.ones((3, 4), np.float32)
    client.infer("two_in_two_out", {"a": a, "b": a})
    after = client.model_statistics("two_in_two_out").model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 3
    assert after.execution_count == before.execution_count + 1
    assert after.last_inference > 0
    everything = client.model_statistics()
    assert {s.name for s in everything.model_stats} >= {"mlp", "two_in_two_out"}
    with pytest.raises(NotFoundError):
        client.model_statistics("no_such_model")


def test_repository_index_reports_the_broken_model(client: Client) -> None:
    index = {(m.name, m.version): m for m in client.repository_index()}
    assert index[("mlp", "1")].state == "READY"
    assert index[("mlp", "2")].state == "READY"
    broken = index[("broken", "")]
    assert broken.state == "UNAVAILABLE"
    assert broken.reason  # the load error, e.g. ONNX Runtime's parse failure
    ready_only = {m.name for m in client.repository_index(ready_only=True)}
    assert "broken" not in ready_only and "mlp" in ready_only


def test_unload_and_load(client: Client) -> None:
    x = np.ones((1, 4), np.float32)
    client.unload_model("two_in_two_out")
    assert not client.is_model_ready("two_in_two_out")
    with pytest.raises(NotFoundError):
        client.infer("two_in_two_out", {"a": x, "b": x})
    index = {m.name: m for m in client.repository_index()}
    assert index["two_in_two_out"].state == "UNAVAILABLE"
    client.load_model("two_in_two_out")
    assert client.is_model_ready("two_in_two_out")
    assert np.array_equal(client.infer("two_in_two_out", {"a": x, "b": x}).outputs["sum"], 2 * x)
    with pytest.raises(NotFoundError):
        client.load_model("no_such_model")
    with pytest.raises(NotFoundError):
        client.unload_model("no_such_model")


def test_load_with_inline_model_files_is_refused_clearly(stub) -> None:  # type: ignore[no-untyped-def]
    request = pb.RepositoryModelLoadRequest(model_name="mlp")
    request.parameters["config"].string_param = "{}"
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(request)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unsupported_extensions_are_unimplemented(stub) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "system_shared_memory" in info.value.details()


def test_stream_infer_answers_each_request_and_keeps_errors_in_band(stub) -> None:  # type: ignore[no-untyped-def]
    def requests():  # type: ignore[no-untyped-def]
        for i in range(20):
            x = np.full((1, 4), i, np.float32)
            request = pb.ModelInferRequest(model_name="two_in_two_out", id=f"r{i}")
            for name in ("a", "b"):
                request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
                request.raw_input_contents.append(x.tobytes())
            yield request
            if i == 10:  # a bad request in the middle: answered in band, stream stays open
                yield pb.ModelInferRequest(model_name="no_such_model", id="bad")

    responses = list(stub.ModelStreamInfer(requests()))
    assert len(responses) == 21
    by_id = {r.infer_response.id: r for r in responses}
    assert "unknown model 'no_such_model'" in by_id["bad"].error_message
    for i in range(20):
        answer = by_id[f"r{i}"]
        assert answer.error_message == ""
        total = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32)
        assert np.array_equal(total, np.full(4, 2 * i, np.float32))


def test_health_check_and_watch(server) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest()).status == serving
        name = "inference.GRPCInferenceService"
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == serving
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=name))
        assert next(watch).status == serving
        watch.cancel()


def test_reflection_lists_services(server) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name for s in next(responses).list_services_response.service}
    assert "inference.GRPCInferenceService" in services
    assert "grpc.health.v1.Health" in services


def test_unix_socket(server) -> None:  # type: ignore[no-untyped-def]
    with Client(f"unix:{server.uds}") as client:
        assert client.is_server_live()
        x = np.ones((2, 4), np.float32)
        result = client.infer("two_in_two_out", {"a": x, "b": 3 * x}, outputs=["product"])
        assert list(result.outputs) == ["product"]
        assert np.array_equal(result.outputs["product"], 3 * x)


def test_metrics_endpoint(server, client: Client) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    client.infer("mlp", {"x": np.ones((1, 8), np.float32)})
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        text = response.read().decode()
    assert (
        'headrace_inference_request_success_total{endpoint="mlp",model="mlp",variant="mlp",'
        'version="2"}' in text
    )
    assert "headrace_inference_request_duration_seconds_bucket" in text


def test_unimplemented_error_type() -> None:
    assert UnimplementedError("x").code.name == "UNIMPLEMENTED"
