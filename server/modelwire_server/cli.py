"""``modelwire-server serve``: start the server from a config file, flags and environment."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("modelwire_server")

SERVER_MODULES = ("torch", "transformers", "yaml", "grpc_health", "grpc_reflection")
INSTALL_HINT = (
    "modelwire-server needs the server extra, which is not installed: "
    "pip install 'modelwire[server]' (from a checkout: pip install '.[server]')"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelwire-server", description="Modelwire gRPC model server"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve models over gRPC")
    serve.add_argument("--config", help="YAML file listing the models (default: the tiny preset)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 50051)")
    serve.add_argument("--preset", choices=["tiny"], help="serve a built-in offline preset")
    serve.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument("--log-format", choices=["text", "json"], help="json: one object a line")
    serve.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (0: a free one)"
    )
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve TLS")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates")
    serve.add_argument(
        "--serve-without-models",
        action="store_true",
        default=None,
        help="stay up when no model loads (for LoadModel); otherwise the server exits 1",
    )
    add_model_flags(serve)
    check = commands.add_parser(
        "healthcheck", help="exit 0 if a server's InferenceService is SERVING (for containers)"
    )
    check.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    check.add_argument("--tls-ca", help="PEM CA bundle to verify a TLS server with")
    check.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS")
    check.add_argument("--tls-key", help="PEM private key of --tls-cert")
    check.add_argument("--tls-server-name", help="the name the server's certificate carries")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelwire")
    except PackageNotFoundError:
        return "unknown"


class _ModelFlag(argparse.Action):
    """``--model SOURCE`` starts an entry; ``--task/--name/--dtype/--device/--quantization``
    describe the ``--model`` before them."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        entries: list[dict[str, str]] = getattr(namespace, "model", None) or []
        if self.dest == "model":
            entries.append({"source": value})
        elif not entries:
            parser.error(f"{option} describes a --model: put it after the --model it is for")
        elif self.dest in entries[-1]:
            parser.error(f"{option} is given twice for --model {entries[-1]['source']}")
        else:
            entries[-1][self.dest] = value
        namespace.model = entries


def add_model_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--model",
        action=_ModelFlag,
        metavar="SOURCE",
        help="serve a hub id or local directory (repeatable); the flags below describe it",
    )
    serve.add_argument("--task", action=_ModelFlag, help="the --model's task (default: inferred)")
    serve.add_argument(
        "--name", action=_ModelFlag, help="the --model's name (default: its last path part)"
    )
    serve.add_argument("--dtype", action=_ModelFlag, help="the --model's dtype (default auto)")
    serve.add_argument("--device", action=_ModelFlag, help="the --model's device (default auto)")
    serve.add_argument(
        "--quantization",
        action=_ModelFlag,
        help="the --model's weight-only quantization: none, int8, int4 or fp8 (default none)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        help="serve the OpenAI-compatible HTTP API on this port (0: a free one)",
    )


def flag_models(entries: list[dict[str, str]] | None) -> list[Any]:
    """ModelConfigs for the ``--model`` flags, tasks inferred where not given."""
    from modelwire_server.task_inference import flag_model

    return [flag_model(e.pop("source"), **e) for e in entries or []]


def missing_server_modules() -> list[str]:
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "healthcheck":
        return healthcheck(args.target, args.timeout, _tls_options(args))
    if missing_server_modules():
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    from modelwire_server.access_log import configure_logging
    from modelwire_server.config import ConfigError, resolve

    try:
        config = resolve(
            config_file=args.config,
            host=args.host,
            port=args.port,
            preset=args.preset,
            log_format=args.log_format,
            metrics_port=args.metrics_port,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
            serve_without_models=args.serve_without_models,
            http_port=args.http_port,
            models=flag_models(args.model),
        )
    except ConfigError as exc:
        print(f"modelwire-server: {exc}", file=sys.stderr)
        return 2
    level = args.log_level or os.environ.get("MODELWIRE_LOG_LEVEL") or config.log_level
    configure_logging(level, config.log_format)
    from modelwire_server import progress

    progress.configure(bar=config.log_format == "text" and sys.stderr.isatty())
    try:
        return asyncio.run(_serve(config))
    except ConfigError as exc:  # a key or certificate file that cannot be used
        print(f"modelwire-server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"modelwire-server: {exc}", file=sys.stderr)
        return 1


async def _serve(config: object) -> int:
    from modelwire_server.server import ModelwireServer

    server = ModelwireServer(config)  # type: ignore[arg-type]
    port = await server.start()
    # Printed on stdout so that scripts (and tests) starting us on port 0 learn the port.
    print(f"modelwire-server listening on {server.config.host}:{port}", flush=True)
    if server.http_port is not None:
        print(f"modelwire-server HTTP on {server.config.host}:{server.http_port}", flush=True)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Future[None]] = []

    def drain(sig: signal.Signals) -> None:
        log.info(
            "%s: draining; running calls have up to %gs to finish (grace_period_s)",
            sig.name,
            server.config.grace_period_s,
        )
        stopping.append(asyncio.ensure_future(server.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, drain, sig)
    await server.wait()
    log.info("stopped")
    return server.exit_code


def _tls_options(args: argparse.Namespace) -> dict[str, str] | None:
    """healthcheck's TLS flags (None: plaintext)."""
    given = {"ca": args.tls_ca, "cert": args.tls_cert, "key": args.tls_key}
    if not any(given.values()):
        return None
    return {k: v for k, v in {**given, "server_name": args.tls_server_name}.items() if v}


def _channel(target: str, tls: dict[str, str] | None) -> Any:
    import grpc

    if tls is None:
        return grpc.insecure_channel(target)
    pem = {k: Path(tls[k]).read_bytes() if k in tls else None for k in ("ca", "key", "cert")}
    credentials = grpc.ssl_channel_credentials(pem["ca"], pem["key"], pem["cert"])
    options = (
        [("grpc.ssl_target_name_override", tls["server_name"])] if "server_name" in tls else []
    )
    return grpc.secure_channel(target, credentials, options=options)


def healthcheck(target: str, timeout: float, tls: dict[str, str] | None = None) -> int:
    """Ask the gRPC health service; print the status; 0 only when SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service="modelwire.v1.InferenceService")
    try:
        with _channel(target, tls) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except OSError as exc:  # a TLS file that cannot be read
        print(f"{target}: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
