"""Who may change what is served: the protected default, admin and inference tokens, client
certificates, control RPCs turned off, and model names that are not paths."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import RunningServer, start_server, stop_server
from headrace import wire
from headrace.client import Client, TlsConfig
from headrace.errors import UnavailableError
from headrace.wire import inference as pb
from helpers import onnx_models

ADMIN_TOKEN = "admin-" + "a" * 32
INFER_TOKEN = "infer-" + "b" * 32


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("access") / "models"
    onnx_models.write_model(repo, "mlp", onnx_models.mlp([8, 16, 2]))
    return repo


def token_file(directory: Path, name: str, token: str) -> Path:
    path = directory / name
    path.write_text(token + "\n")
    return path


def call_code(address: str, method: str, token: str | None = None) -> grpc.StatusCode:
    """The status of one control or inference call (OK when it succeeds)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(address) as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        try:
            if method == "load":
                stub.RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="mlp"), metadata=metadata
                )
            else:
                request = pb.ModelInferRequest(model_name="mlp")
                request.inputs.add(name="x", datatype="FP32", shape=[1, 8])
                request.raw_input_contents.append(np.ones((1, 8), np.float32).tobytes())
                stub.ModelInfer(request, metadata=metadata)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture()
def served(repo: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    settings = dict(request.param)
    if settings.pop("admin", False):
        settings["admin_token_file"] = token_file(tmp_path, "admin", ADMIN_TOKEN)
    if settings.pop("inference", False):
        settings["inference_token_file"] = token_file(tmp_path, "infer", INFER_TOKEN)
    running, thread = start_server(repo, **settings)
    yield running
    stop_server(running, thread)


@pytest.mark.parametrize("served", [{}], indirect=True)
def test_loopback_without_credentials_is_the_protected_default(served: RunningServer) -> None:
    assert call_code(served.address, "load") == grpc.StatusCode.OK
    assert call_code(served.address, "infer") == grpc.StatusCode.OK


@pytest.mark.parametrize("served", [{"admin": True}], indirect=True)
def test_admin_token_guards_control_rpcs_only(served: RunningServer) -> None:
    assert call_code(served.address, "load") == grpc.StatusCode.UNAUTHENTICATED
    assert call_code(served.address, "load", "not-the-token") == grpc.StatusCode.PERMISSION_DENIED
    assert call_code(served.address, "load", ADMIN_TOKEN) == grpc.StatusCode.OK
    assert call_code(served.address, "infer") == grpc.StatusCode.OK
    with Client(served.address, token=ADMIN_TOKEN) as client:
        client.load_model("mlp")  # headrace's client sends the token


@pytest.mark.parametrize("served", [{"admin": True, "inference": True}], indirect=True)
def test_inference_token(served: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert call_code(served.address, "infer") == grpc.StatusCode.UNAUTHENTICATED
    assert call_code(served.address, "infer", "wrong") == grpc.StatusCode.PERMISSION_DENIED
    assert call_code(served.address, "infer", INFER_TOKEN) == grpc.StatusCode.OK
    assert call_code(served.address, "load", INFER_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
    monkeypatch.setenv("HEADRACE_TOKEN", INFER_TOKEN)
    with Client(served.address) as client:  # from the environment
        assert client.infer("mlp", {"x": np.ones((1, 8), np.float32)}).outputs["y"].shape == (1, 2)


@pytest.mark.parametrize("served", [{"control_rpcs": "off"}], indirect=True)
def test_control_rpcs_turned_off(served: RunningServer) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "control_rpcs=off" in info.value.details()
    assert call_code(served.address, "infer") == grpc.StatusCode.OK


@pytest.mark.parametrize("served", [{"host": "0.0.0.0"}], indirect=True)
def test_any_address_without_credentials_turns_control_off(served: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--admin-token-file" in info.value.details()


@pytest.mark.parametrize("served", [{}], indirect=True)
@pytest.mark.parametrize(
    "name", ["../../../../etc", "/etc", "a/b", "..", ".hidden", "bad\x01name", "x" * 300]
)
def test_model_names_are_not_paths(served: RunningServer, name: str) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "/tmp" not in info.value.details() and "access" not in info.value.details()
        with pytest.raises(grpc.RpcError) as missing:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="no_such_model"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "/tmp" not in missing.value.details()
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [m.name for m in index.models] == ["mlp"]  # failed names leave nothing behind


def _certificate(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    issuer: x509.Name | None,
    ca: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_client_certificate_signed_by_the_client_ca_is_an_admin_credential(
    repo: Path, tmp_path: Path
) -> None:
    ca, ca_key = _certificate("test-ca", None, None, ca=True)
    server_cert, server_key = _certificate("localhost", ca_key, ca.subject, ca=False)
    client_cert, client_key = _certificate("operator", ca_key, ca.subject, ca=False)
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "server.pem").write_bytes(_pem(server_cert))
    (tmp_path / "server.key").write_bytes(_key_pem(server_key))
    running, thread = start_server(
        repo,
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        tls_client_ca=tmp_path / "ca.pem",
    )
    try:
        anonymous = TlsConfig(root_certificates=_pem(ca), server_name_override="localhost")
        # Mutual TLS: no certificate, no connection.
        with Client(running.address, tls=anonymous) as client, pytest.raises(UnavailableError):
            client.infer("mlp", {"x": np.ones((1, 8), np.float32)}, timeout_s=10)
        operator = TlsConfig(
            root_certificates=_pem(ca),
            private_key=_key_pem(client_key),
            certificate_chain=_pem(client_cert),
            server_name_override="localhost",
        )
        with Client(running.address, tls=operator) as client:
            assert client.infer("mlp", {"x": np.ones((1, 8), np.float32)}).model_version == "1"
            client.load_model("mlp")
    finally:
        stop_server(running, thread)
