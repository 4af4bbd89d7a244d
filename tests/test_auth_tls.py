"""Bearer-token auth and TLS: real servers, a throwaway CA made here, the SDK and raw stubs."""

from __future__ import annotations

import datetime
import hmac
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelwire import AsyncClient, AuthenticationError, NotFoundError
from modelwire.v1 import generate_pb2, model_service_pb2, model_service_pb2_grpc
from modelwire.v1 import inference_service_pb2_grpc as inference_grpc
from modelwire_server import auth, cli
from modelwire_server.auth import Keys, Role, bearer_token
from modelwire_server.config import ConfigError, ServerConfig, resolve
from modelwire_server.tls import server_credentials
from tests.conftest import RunningServer, start_server

API_KEY, OTHER_KEY, ADMIN_KEY = "key-for-apps", "key-for-ci", "key-for-operators"


# --- a throwaway PKI ------------------------------------------------------------------


@dataclass
class Issued:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: str, issuer: str, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A CA that signs server and client certificates for 127.0.0.1 / localhost."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            _builder(name, name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, subject: str, usage: x509.ObjectIdentifier) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            _builder(subject, self.name, key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass
class Pki:
    ca: Authority
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate some other CA signed
    dir: Path

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, other = Authority("modelwire test CA"), Authority("some other CA")
    return Pki(
        ca=ca,
        server=ca.issue("modelwire test server", ExtendedKeyUsageOID.SERVER_AUTH),
        client=ca.issue("modelwire test client", ExtendedKeyUsageOID.CLIENT_AUTH),
        stranger=other.issue("stranger", ExtendedKeyUsageOID.CLIENT_AUTH),
        dir=tmp_path_factory.mktemp("pki"),
    )


def tls_config(pki: Pki, *, mutual: bool) -> ServerConfig:
    return ServerConfig(
        port=0,
        tls_cert_file=pki.write("server.pem", pki.server.cert),
        tls_key_file=pki.write("server.key", pki.server.key),
        tls_client_ca_file=pki.write("ca.pem", pki.ca.pem) if mutual else None,
    )


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[RunningServer]:
    running = start_server(tls_config(pki, mutual=False))  # no models: ModelService answers
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[RunningServer]:
    running = start_server(tls_config(pki, mutual=True))
    yield running
    running.stop()


async def plaintext_list_models(target: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            await stub.ListModels(model_service_pb2.ListModelsRequest(), timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


# --- TLS --------------------------------------------------------------------------------


async def test_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(
    tls_server: RunningServer, pki: Pki
) -> None:
    async with AsyncClient(tls_server.target, root_certificates=pki.ca.pem, timeout=30) as client:
        assert list(await client.list_models()) == []
    assert await plaintext_list_models(tls_server.target) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_from_its_ca(
    mtls_server: RunningServer, pki: Pki
) -> None:
    def client(issued: Issued | None) -> AsyncClient:
        return AsyncClient(
            mtls_server.target,
            root_certificates=pki.ca.pem,
            private_key=issued.key if issued else None,
            certificate_chain=issued.cert if issued else None,
            timeout=30,
            max_retries=0,
        )

    async with client(pki.client) as trusted:
        assert list(await trusted.list_models()) == []
    for issued in (None, pki.stranger):
        async with client(issued) as refused:
            with pytest.raises(Exception) as caught:
                await refused.list_models()
            assert getattr(caught.value, "code", None) == grpc.StatusCode.UNAVAILABLE


def test_tls_files_are_checked_at_start(pki: Pki, tmp_path: Path) -> None:
    good = tls_config(pki, mutual=True)
    assert server_credentials(good) is not None
    assert server_credentials(ServerConfig()) is None
    with pytest.raises(ConfigError, match="cannot read tls_key_file"):
        server_credentials(ServerConfig(tls_cert_file=good.tls_cert_file, tls_key_file="/nope"))
    garbage = tmp_path / "ca.txt"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"tls_client_ca_file .* is not a PEM file"):
        server_credentials(
            ServerConfig(
                tls_cert_file=good.tls_cert_file,
                tls_key_file=good.tls_key_file,
                tls_client_ca_file=str(garbage),
            )
        )


def test_tls_flags_and_half_a_setup(capsys: pytest.CaptureFixture[str]) -> None:
    config = resolve(
        environ={"MODELWIRE_TLS_CERT_FILE": "env.pem", "MODELWIRE_TLS_KEY_FILE": "env.key"},
        tls_cert_file="flag.pem",
    )
    assert (config.tls_cert_file, config.tls_key_file) == ("flag.pem", "env.key")
    assert cli.main(["serve", "--tls-cert", "server.pem"]) == 2
    assert "set both or neither" in capsys.readouterr().err
    assert cli.main(["serve", "--tls-client-ca", "ca.pem"]) == 2
    assert "needs tls_cert_file" in capsys.readouterr().err


# --- auth -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"# one key per line\n{API_KEY}\n\n  {OTHER_KEY}  \n")
    config = ServerConfig(port=0, api_keys_file=str(keys), admin_key=ADMIN_KEY)
    running = start_server(config)
    yield running
    running.stop()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_calls_need_a_valid_key(auth_server: RunningServer) -> None:
    for key in (API_KEY, OTHER_KEY, ADMIN_KEY):
        async with AsyncClient(auth_server.target, api_key=key, timeout=30) as client:
            assert list(await client.list_models()) == []
            with pytest.raises(NotFoundError):  # past auth: there is no such model
                await client.classify_text("hello")
    for key in (None, "wrong", API_KEY + "x", API_KEY[:-1]):
        async with AsyncClient(auth_server.target, api_key=key, timeout=30) as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.list_models()
            assert caught.value.request_id  # refused calls carry a request id too
            with pytest.raises(AuthenticationError):
                await client.classify_text("hello")


async def test_streaming_calls_are_refused_before_they_start(auth_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(auth_server.target) as channel:
        stub = inference_grpc.InferenceServiceStub(channel)
        call = stub.Generate(generate_pb2.GenerateRequest(prompt="hi"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dict(caught.value.trailing_metadata())["x-request-id"]


async def test_loading_and_unloading_need_the_admin_key(auth_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(auth_server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        calls = [
            (stub.LoadModel, model_service_pb2.LoadModelRequest(model="m"), "LoadModel"),
            (stub.UnloadModel, model_service_pb2.UnloadModelRequest(model="m"), "UnloadModel"),
        ]
        for method, request, rpc in calls:
            answers = {}
            for name, metadata in (
                ("none", ()),
                ("api", bearer(API_KEY)),
                ("admin", bearer(ADMIN_KEY)),
            ):
                try:
                    await method(request, metadata=metadata, timeout=30)
                    answers[name] = (grpc.StatusCode.OK, "")
                except grpc.aio.AioRpcError as error:
                    answers[name] = (error.code(), error.details())
            assert answers["none"][0] == grpc.StatusCode.UNAUTHENTICATED
            refusal = f"{rpc} needs the admin key"
            assert answers["api"] == (grpc.StatusCode.PERMISSION_DENIED, refusal)
            # What an admin gets next is the RPC's own business (an allow-list, say):
            # auth let it through.
            assert answers["admin"][0] != grpc.StatusCode.UNAUTHENTICATED
            assert answers["admin"][1] != answers["api"][1]


async def test_health_and_reflection_need_no_key(auth_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(auth_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in reflection.ServerReflectionInfo(iter([request]), timeout=30):
            names = {s.name for s in answer.list_services_response.service}
            break
    assert "modelwire.v1.InferenceService" in names


def test_keys_come_from_the_environment_and_files(tmp_path: Path) -> None:
    admin_file = tmp_path / "admin"
    admin_file.write_text("rotated-admin\n")
    config = resolve(
        environ={"MODELWIRE_API_KEYS": " a1, ,a2 ", "MODELWIRE_ADMIN_KEY": "boss"},
        admin_key_file=str(admin_file),
    )
    keys = Keys.from_config(config)
    assert [keys.role_of(k) for k in ("a1", "a2", "boss", "rotated-admin", "a3", "")] == [
        Role.USER, Role.USER, Role.ADMIN, Role.ADMIN, None, None,
    ]  # fmt: skip
    assert not Keys.from_config(resolve(environ={})).enabled
    assert "boss" not in repr(config) and "a1" not in repr(config)
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        Keys.from_config(ServerConfig(api_keys_file=str(empty)))
    with pytest.raises(ConfigError, match="cannot read api_keys_file"):
        Keys.from_config(ServerConfig(api_keys_file=str(tmp_path / "missing")))


def test_every_key_is_compared_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[int] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(1)
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = Keys.from_config(ServerConfig(api_keys=["k1", "k2", "k3"], admin_key="adm"))
    for token in ("k1", "k3", "adm", "nope"):
        compared.clear()
        keys.role_of(token)
        assert len(compared) == 4, token  # no early exit on a match or a miss


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x-other", "1"), ("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_token([]) is None


# --- what ModelService shows of sources -------------------------------------------------


@pytest.fixture(scope="module")
def auth_models_server(preset_cache: Path) -> Iterator[RunningServer]:
    from modelwire_server.config import ModelConfig
    from modelwire_server.server import preset_configs

    models = [m for m in preset_configs("tiny") if m.name == "tiny-sentiment"]
    broken = ModelConfig(name="broken", task="ner", source="/srv/secret-models/ner-v2")
    config = ServerConfig(port=0, models=[*models, broken], api_keys=[API_KEY], admin_key=ADMIN_KEY)
    running = start_server(config)
    yield running
    running.stop()


async def test_only_admin_keys_see_the_servers_paths(auth_models_server: RunningServer) -> None:
    path = auth_models_server.runner("tiny-sentiment").config.source
    assert path.startswith("/") and path.endswith("/tiny-sentiment")  # the preset's cache
    seen = {}
    for key in (API_KEY, ADMIN_KEY):
        async with AsyncClient(auth_models_server.target, api_key=key, timeout=30) as client:
            listed = {m.name: m for m in await client.list_models()}
            got = {n: await client.get_model(n) for n in ("tiny-sentiment", "broken")}
            for name, info in got.items():
                assert (info.source, info.failure_message) == (
                    listed[name].source,
                    listed[name].failure_message,
                )
            seen[key] = got
    user, admin = seen[API_KEY], seen[ADMIN_KEY]
    assert admin["tiny-sentiment"].source == path
    assert admin["broken"].source == "/srv/secret-models/ner-v2"
    assert "/srv/secret-models/ner-v2" in admin["broken"].failure_message
    assert user["tiny-sentiment"].source == "tiny-sentiment"  # its last directory name
    assert user["broken"].source == "ner-v2"
    assert user["broken"].state == "failed" and "ner-v2" in user["broken"].failure_message
    assert "/srv" not in user["broken"].failure_message
