"""The HTTP API serves TLS with the gRPC port's files, mutual TLS included."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from modelwire_server.config import ServerConfig
from tests.conftest import RunningServer, start_server
from tests.test_auth_tls import Authority, Issued


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    ca = Authority("modelwire test CA")
    server = ca.issue("modelwire test server", ExtendedKeyUsageOID.SERVER_AUTH)
    client = ca.issue("modelwire test client", ExtendedKeyUsageOID.CLIENT_AUTH)
    root = tmp_path_factory.mktemp("http-pki")
    paths = {}
    for name, data in [("ca.pem", ca.pem), ("server.pem", server.cert), ("server.key", server.key)]:
        (root / name).write_bytes(data)
        paths[name] = str(root / name)
    return {"paths": paths, "client": client, "root": root}


def _server(files: dict, *, mutual: bool) -> RunningServer:
    paths = files["paths"]
    return start_server(
        ServerConfig(
            port=0,
            http_port=0,
            tls_cert_file=paths["server.pem"],
            tls_key_file=paths["server.key"],
            tls_client_ca_file=paths["ca.pem"] if mutual else None,
        )
    )


@pytest.fixture(scope="module")
def tls_server(files: dict) -> Iterator[RunningServer]:
    running = _server(files, mutual=False)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mtls_server(files: dict) -> Iterator[RunningServer]:
    running = _server(files, mutual=True)
    yield running
    running.stop()


def _context(files: dict, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["paths"]["ca.pem"])
    if client is not None:
        root: Path = files["root"]
        (root / "client.pem").write_bytes(client.cert)
        (root / "client.key").write_bytes(client.key)
        context.load_cert_chain(root / "client.pem", root / "client.key")
    return context


async def test_https_for_clients_that_trust_the_ca(tls_server: RunningServer, files) -> None:
    port = tls_server.server.http_port
    async with httpx.AsyncClient(verify=_context(files)) as http:
        reply = await http.get(f"https://127.0.0.1:{port}/v1/models")
    assert reply.status_code == 200 and reply.json() == {"object": "list", "data": []}
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):  # plaintext HTTP is not served
            await http.get(f"http://127.0.0.1:{port}/v1/models")


async def test_mutual_tls_needs_a_client_certificate(mtls_server: RunningServer, files) -> None:
    url = f"https://127.0.0.1:{mtls_server.server.http_port}/health"
    async with httpx.AsyncClient(verify=_context(files, files["client"])) as http:
        assert (await http.get(url)).status_code == 200
    async with httpx.AsyncClient(verify=_context(files)) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(url)
