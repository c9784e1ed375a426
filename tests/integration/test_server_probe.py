"""The MLflow server probe speaks as the MLflow client does: over TLS with the client's CA or
insecure setting, with its credentials, and never repeats a password it was given.

The server here is a real HTTPS server on loopback with a certificate from a private CA (as
a company's MLflow behind its own CA is): /health is open, the API wants basic auth."""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from image_finetune.errors import ServiceError
from image_finetune.registry.client import check_server

USER, PASSWORD = "alice", "correct-horse-battery"
MLFLOW_ENV = (
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def private_ca_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlflow.internal")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "ca.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class MlflowLike(BaseHTTPRequestHandler):
    """/health for anyone; everything else for USER:PASSWORD only (as basic-auth MLflow)."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.path == "/health" or self.headers.get("Authorization") == expected:
            status, body = 200, b'{"experiments": []}'
        else:
            status, body = 401, b"You are not authenticated."
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    cert, key = private_ca_certificate(tmp_path_factory.mktemp("ca"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), MlflowLike)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()


@pytest.fixture(autouse=True)
def client_env(monkeypatch) -> None:
    """Each test states the client settings it has; none leak in from the session."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


def test_a_private_ca_is_unreachable_until_the_client_trusts_it(tls_server, monkeypatch):
    uri, ca = tls_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with pytest.raises(ServiceError, match="is unreachable .*CERTIFICATE_VERIFY_FAILED"):
        check_server(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(ca))
    check_server(uri)


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_insecure_tls_is_honoured_as_the_client_would(tls_server, monkeypatch):
    uri, _ = tls_server
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    check_server(uri)


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_missing_or_wrong_credentials_are_refused_by_name(tls_server, monkeypatch, password):
    uri, ca = tls_server
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(ca))
    if password:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    with pytest.raises(
        ServiceError,
        match=r"refused the credentials \(401\); set "
        "MLFLOW_TRACKING_USERNAME",
    ) as refused:
        check_server(uri)
    assert "wrong-password" not in str(refused.value)


def test_a_password_in_the_uri_never_reaches_the_message():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServiceError, match="is unreachable") as unreachable:
        check_server(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    assert PASSWORD not in str(unreachable.value)
    assert f"http://***@127.0.0.1:{port}" in str(unreachable.value)
