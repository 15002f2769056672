"""TLS on the gRPC port, and the asyncio client."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import start_server, stop_server
from headrace.client import AsyncClient, Client, TlsConfig
from headrace.errors import InvalidArgumentError, UnavailableError


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls(repository: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    running, thread = start_server(repository, tls_cert=cert, tls_key=key)
    try:
        tls = TlsConfig(root_certificates=cert.read_bytes(), server_name_override="localhost")
        with Client(running.address, tls=tls) as client:
            x = np.ones((1, 4), np.float32)
            assert np.array_equal(
                client.infer("two_in_two_out", {"a": x, "b": x}).outputs["sum"], 2 * x
            )
        with Client(running.address) as plaintext, pytest.raises(UnavailableError):
            plaintext.is_server_live()
    finally:
        stop_server(running, thread)


def test_async_client(server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with AsyncClient(server.address) as client:
            assert await client.is_server_live()
            assert await client.is_model_ready("two_in_two_out")
            assert (await client.health()) == "SERVING"
            metadata = await client.model_metadata("two_in_two_out")
            assert [t.name for t in metadata.inputs] == ["a", "b"]
            results = await asyncio.gather(
                *(
                    client.infer(
                        "two_in_two_out",
                        {"a": np.full((2, 4), i, np.float32), "b": np.ones((2, 4), np.float32)},
                        outputs=["product"],
                    )
                    for i in range(32)
                )
            )
            for i, result in enumerate(results):
                assert np.array_equal(result.outputs["product"], np.full((2, 4), i, np.float32))
            with pytest.raises(InvalidArgumentError, match="unknown input 'c'"):
                await client.infer("two_in_two_out", {"c": np.ones((1, 4), np.float32)})

    asyncio.run(main())
