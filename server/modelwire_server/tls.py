"""TLS for the gRPC port from PEM files; mutual TLS when a client CA is configured."""

from __future__ import annotations

from pathlib import Path

import grpc

from modelwire_server.config import ConfigError, ServerConfig

_PEM = b"-----BEGIN "


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """None without ``tls_cert_file``; with ``tls_client_ca_file`` clients must present a
    certificate that CA signed."""
    if not config.tls_cert_file or not config.tls_key_file:
        return None
    cert = read_pem(config.tls_cert_file, "tls_cert_file")
    key = read_pem(config.tls_key_file, "tls_key_file")
    client_ca = config.tls_client_ca_file
    ca = read_pem(client_ca, "tls_client_ca_file") if client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def read_pem(path: str, what: str) -> bytes:
    """A PEM file's bytes; a missing or non-PEM file is a ConfigError naming it (gRPC
    itself would only fail at the first handshake)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if _PEM not in data:
        raise ConfigError(f"{what} {path} is not a PEM file")
    return data
