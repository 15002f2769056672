"""Endpoint administration over gRPC and the `headrace endpoints` command: create, update,
delete, switch and rollback persist across a server restart; errors name what is wrong; the
admin RPCs are control RPCs and feedback is not; Prometheus series carry endpoint labels."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import RunningServer, start_server, stop_server
from headrace import wire
from headrace.cli import main as cli
from headrace.wire import admin as pb
from integration.routing.routing_wire import drive, write_repository

ADMIN_TOKEN = "admin-" + "z" * 32


def variant(name: str, model: str, weight: float | None = None) -> Any:
    if weight is None:
        return pb.EndpointVariant(name=name, model=model)
    return pb.EndpointVariant(name=name, model=model, weight=weight)


def code_of(call: Any, request: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, **kwargs)
    except grpc.RpcError as error:
        return error.code(), error.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


@pytest.fixture()
def fresh(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield write_repository(tmp_path), tmp_path / "state"


def test_endpoint_changes_persist_across_a_restart(fresh: tuple[Path, Path]) -> None:
    repo, state = fresh
    running, thread = start_server(repo, state_dir=state)
    try:
        with grpc.insecure_channel(running.address) as channel:
            admin = wire.Stub(channel, wire.ADMIN_SERVICE)
            made = admin.CreateEndpoint(
                pb.CreateEndpointRequest(
                    endpoint=pb.Endpoint(
                        name="made", variants=[variant("va", "a", 80), variant("vb", "b", 20)]
                    )
                )
            ).endpoint
            # Stored with its defaults filled in.
            assert made.strategy == "split" and made.quality.kind == "auto"
            assert [v.weight for v in made.variants] == [80, 20]
            updated = admin.UpdateEndpoint(
                pb.UpdateEndpointRequest(
                    endpoint=pb.Endpoint(
                        name="made", variants=[variant("va", "a", 10), variant("vc", "c", 90)]
                    )
                )
            ).endpoint
            assert [v.name for v in updated.variants] == ["va", "vc"]
            admin.CreateEndpoint(
                pb.CreateEndpointRequest(
                    endpoint=pb.Endpoint(
                        name="colours",
                        strategy="blue_green",
                        variants=[variant("blue", "a"), variant("green", "b")],
                    )
                )
            )
            assert admin.Switch(pb.SwitchRequest(endpoint="colours")).active == "green"
            admin.CreateEndpoint(
                pb.CreateEndpointRequest(
                    endpoint=pb.Endpoint(name="gone", variants=[variant("x", "a")])
                )
            )
            admin.DeleteEndpoint(pb.DeleteEndpointRequest(name="gone"))
            admin.DeleteEndpoint(pb.DeleteEndpointRequest(name="bandit"))  # a declared one
            errors = [
                (
                    admin.CreateEndpoint,
                    pb.CreateEndpointRequest(
                        endpoint=pb.Endpoint(name="made", variants=[variant("x", "a")])
                    ),
                    grpc.StatusCode.ALREADY_EXISTS,
                    "already exists",
                ),
                (
                    admin.CreateEndpoint,
                    pb.CreateEndpointRequest(
                        endpoint=pb.Endpoint(
                            name="odd", variants=[variant("x", "a"), variant("y", "narrow")]
                        )
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "variant 'y' does not match variant 'x'",
                ),
                (
                    admin.CreateEndpoint,
                    pb.CreateEndpointRequest(
                        endpoint=pb.Endpoint(name="ghost", variants=[variant("x", "nobody")])
                    ),
                    grpc.StatusCode.NOT_FOUND,
                    "variant 'x': unknown model 'nobody'",
                ),
                (
                    admin.CreateEndpoint,
                    pb.CreateEndpointRequest(
                        endpoint=pb.Endpoint(name="bad", strategy="roulette", variants=[])
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "'endpoint.strategy'",
                ),
                (
                    admin.DeleteEndpoint,
                    pb.DeleteEndpointRequest(name="nothing"),
                    grpc.StatusCode.NOT_FOUND,
                    "unknown endpoint 'nothing'",
                ),
                (
                    admin.Switch,
                    pb.SwitchRequest(endpoint="made"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "Switch applies to blue_green endpoints",
                ),
            ]
            for call, request, code, text in errors:
                got, details = code_of(call, request)
                assert (got, text in details) == (code, True), (request, got, details)
    finally:
        stop_server(running, thread)

    again, thread = start_server(repo, state_dir=state)
    try:
        with grpc.insecure_channel(again.address) as channel:
            admin = wire.Stub(channel, wire.ADMIN_SERVICE)
            listed = admin.ListEndpoints(pb.ListEndpointsRequest()).endpoints
            by_name = {e.endpoint.name: e for e in listed}
            assert sorted(by_name) == ["bg", "colours", "made", "shadowed", "split"]
            assert [(v.name, v.model, v.weight) for v in by_name["made"].endpoint.variants] == [
                ("va", "a", 10),
                ("vc", "c", 90),
            ]
            assert by_name["colours"].state.active == "green"
            with_models = admin.ListEndpoints(pb.ListEndpointsRequest(include_models=True))
            implicit = {e.endpoint.name for e in with_models.endpoints if e.implicit}
            assert implicit == {"a", "b", "c", "narrow"}
        answers = drive(again.address, "answers", model="made", n=30)["answers"]
        assert {a["variant"] for a in answers} <= {"va", "vc"}
        assert "vc" in {a["variant"] for a in answers}  # 0.1^30 to see only va
        colours = drive(again.address, "answers", model="colours", n=3)["answers"]
        assert {a["variant"] for a in colours} == {"green"}
    finally:
        stop_server(again, thread)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli(["endpoints", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_endpoints_command(
    fresh: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, state = fresh
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    running, thread = start_server(repo, state_dir=state, admin_token_file=token_file)
    server = ["--server", running.address]
    with_token = [*server, "--token-file", str(token_file)]
    try:
        code, out, err = run_cli(capsys, "list", *with_token)
        assert code == 0, err
        assert "split" in out and "blue_green" in out and "active blue" in out
        # Control RPCs need the admin token: without it the command says so and fails.
        code, out, err = run_cli(capsys, "list", *server)
        assert code == 1 and "UNAUTHENTICATED" in err
        new = tmp_path / "new.toml"
        new.write_text(
            '[[endpoint]]\nname = "canary"\nstrategy = "canary"\n'
            'variants = [{ name = "base", model = "a" }, { name = "cand", model = "b" }]\n'
        )
        code, out, err = run_cli(capsys, "create", *with_token, str(new))
        assert (code, out.strip()) == (0, "created endpoint canary"), err
        new.write_text(new.read_text().replace('model = "b"', 'model = "c"'))
        code, out, err = run_cli(capsys, "update", *with_token, str(new))
        assert (code, out.strip()) == (0, "updated endpoint canary"), err
        code, out, err = run_cli(capsys, "list", *with_token)
        assert "cand=c" in out and "ramping step 0: 5 %" in out
        code, out, err = run_cli(capsys, "rollback", *with_token, "canary")
        assert code == 0 and "rolled back to 0 %" in out, err
        code, out, err = run_cli(capsys, "switch", *with_token, "bg", "--to", "green")
        assert code == 0 and "active: green" in out, err
        drive(running.address, "answers", model="split", n=10)
        code, out, err = run_cli(capsys, "report", *with_token, "split")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "endpoint split (split), control va"
        assert sum(int(line.split()[2]) for line in lines[2:4]) == 10  # requests per variant
        assert "repeated" in out  # the caveat about repeated looks
        code, out, err = run_cli(capsys, "report", *with_token, "nothing")
        assert code == 1 and "NOT_FOUND" in err and "unknown endpoint 'nothing'" in err
        bad = tmp_path / "bad.toml"
        bad.write_text('[[endpoint]]\nname = "x"\nvariants = [{ name = "v", modle = "a" }]\n')
        code, out, err = run_cli(capsys, "create", *with_token, str(bad))
        assert code == 2 and "'endpoint[0].variants[0].modle': unknown key" in err
        code, out, err = run_cli(capsys, "delete", *with_token, "canary")
        assert code == 0, err
        code, out, err = run_cli(capsys, "list", *with_token, "--json")
        assert code == 0 and '"canary"' not in out and '"split"' in out
    finally:
        stop_server(running, thread)


def test_the_token_comes_from_the_environment(
    fresh: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, state = fresh
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    running, thread = start_server(repo, state_dir=state, admin_token_file=token_file)
    try:
        monkeypatch.setenv("HEADRACE_TOKEN", ADMIN_TOKEN)
        code, out, err = run_cli(capsys, "list", "--server", running.address)
        assert code == 0 and "split" in out, err
        monkeypatch.setenv("HEADRACE_TOKEN", "wrong-" + "q" * 32)
        code, out, err = run_cli(capsys, "list", "--server", running.address)
        assert code == 1 and "PERMISSION_DENIED" in err
    finally:
        stop_server(running, thread)


def test_feedback_is_not_a_control_rpc(fresh: tuple[Path, Path]) -> None:
    repo, state = fresh
    running, thread = start_server(repo, state_dir=state, control_rpcs="off")
    try:
        with grpc.insecure_channel(running.address) as channel:
            feedback = wire.Stub(channel, wire.FEEDBACK_SERVICE)
            admin = wire.Stub(channel, wire.ADMIN_SERVICE)
            # Control RPCs are off, feedback still answers (here: an id it does not know).
            code, _ = code_of(feedback.Feedback, pb.FeedbackRequest(request_id="x", reward=1))
            assert code == grpc.StatusCode.NOT_FOUND
            answer = drive(running.address, "answers", model="split", n=1)["answers"][0]
            receipt = feedback.Feedback(pb.FeedbackRequest(request_id=answer["id"], reward=1))
            assert (receipt.endpoint, receipt.variant) == ("split", answer["variant"])
            for call, request in (
                (admin.ListEndpoints, pb.ListEndpointsRequest()),
                (admin.Switch, pb.SwitchRequest(endpoint="bg")),
                (admin.Rollback, pb.RollbackRequest(endpoint="bg")),
                (admin.DeleteEndpoint, pb.DeleteEndpointRequest(name="split")),
                (admin.CreateEndpoint, pb.CreateEndpointRequest()),
                (admin.UpdateEndpoint, pb.UpdateEndpointRequest()),
                (admin.GetExperimentReport, pb.GetExperimentReportRequest(endpoint="split")),
            ):
                assert code_of(call, request)[0] == grpc.StatusCode.PERMISSION_DENIED
    finally:
        stop_server(running, thread)


def test_metrics_carry_endpoint_and_variant(routing_server: RunningServer) -> None:
    pin = {"headrace_variant": "vb"}
    drive(routing_server.address, "answers", model="split", n=4, parameters=pin)
    url = f"http://127.0.0.1:{routing_server.metrics_port}/metrics"
    with urllib.request.urlopen(url) as response:
        text = response.read().decode()
    labels = 'endpoint="split",model="b",variant="vb",version="1"'
    assert f"headrace_inference_request_success_total{{{labels}}}" in text
    assert f"headrace_inference_request_duration_seconds_count{{{labels}}}" in text
    assert 'headrace_blue_green_active{endpoint="bg",variant="blue"}' in text
