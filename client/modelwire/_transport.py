"""Channels, shared by a client and its ``with_options`` copies.

Retries are gRPC's own (a service config ``retryPolicy``), not a loop in the SDK: gRPC
retries only while the server has sent nothing back (no headers, no message), i.e. when
it did not process the request, and it does exponential backoff with jitter itself.
The policy is fixed per channel, so each ``max_retries`` value gets its own channel.

Several replicas: a list of ``host:port`` addresses becomes one ``ipv4:``/``ipv6:``
target and a ``dns:///`` name stays as it is; both get gRPC's own ``round_robin``
balancing (a connection to each address, calls spread over the ready ones), so the SDK
needs no balancing code of its own.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from modelwire.v1 import inference_service_pb2_grpc, model_service_pb2_grpc

RETRIED_SERVICES = ("modelwire.v1.InferenceService", "modelwire.v1.ModelService")

# gRPC itself caps attempts at 5, whatever the policy says.
MAX_RETRIES_HONOURED = 4

_DEFAULT_OPTIONS: dict[str, Any] = {
    "grpc.enable_retries": 1,
    # The default reconnect backoff grows to 120 s; a model server that is still
    # starting should be picked up within a couple of seconds of binding its port.
    "grpc.max_reconnect_backoff_ms": 2000,
}


def channel_target(target: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for one address, a ``dns:///`` name or a list of ``host:port``;
    and whether to balance calls round-robin over the addresses it resolves to."""
    if isinstance(target, str):
        return target, target.startswith("dns:")
    addresses = [_ip_address(t) for t in target]
    if not addresses:
        raise ValueError("`target` must name at least one address")
    if len(addresses) == 1:
        return addresses[0][1], False
    families = {family for family, _ in addresses}
    if len(families) > 1:
        raise ValueError("`target` cannot mix IPv4 and IPv6 addresses in one list")
    return f"{families.pop()}:{','.join(a for _, a in addresses)}", True


def _ip_address(address: str) -> tuple[str, str]:
    """("ipv4" or "ipv6", "ip:port") for one ``host:port``; a host name is looked up
    once, here (use a ``dns:///`` target for names whose addresses change)."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"each target must be 'host:port', got {address!r}")
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = ipaddress.ip_address(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
    if ip.version == 6:
        return "ipv6", f"[{ip}]:{port}"
    return "ipv4", f"{ip}:{port}"


def service_config(max_retries: int, *, round_robin: bool = False) -> str:
    """The channel's service config: retry UNAVAILABLE up to ``max_retries`` times, and
    round-robin balancing over several addresses."""
    method_config: dict[str, Any] = {"name": [{"service": s} for s in RETRIED_SERVICES]}
    if max_retries > 0:
        method_config["retryPolicy"] = {
            "maxAttempts": min(max_retries, MAX_RETRIES_HONOURED) + 1,
            "initialBackoff": "0.2s",
            "maxBackoff": "5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    config: dict[str, Any] = {"methodConfig": [method_config]}
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


@dataclass(frozen=True)
class Stubs:
    """A channel and the stubs bound to it."""

    channel: grpc.aio.Channel
    inference: inference_service_pb2_grpc.InferenceServiceStub
    models: model_service_pb2_grpc.ModelServiceStub


class Transport:
    """Opens channels on first use (inside the caller's event loop) and closes them all."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None,
        channel_options: Sequence[tuple[str, Any]],
    ) -> None:
        self.target, self._round_robin = channel_target(target)
        self._credentials = credentials
        self._channel_options = list(channel_options)
        self._stubs: dict[int, Stubs] = {}
        self._closed = False

    def stubs(self, max_retries: int) -> Stubs:
        """The channel for this retry budget, opened on first use."""
        if self._closed:
            raise RuntimeError("the client is closed")
        stubs = self._stubs.get(max_retries)
        if stubs is None:
            channel = self._open(max_retries)
            stubs = Stubs(
                channel,
                inference_service_pb2_grpc.InferenceServiceStub(channel),
                model_service_pb2_grpc.ModelServiceStub(channel),
            )
            self._stubs[max_retries] = stubs
        return stubs

    def _open(self, max_retries: int) -> grpc.aio.Channel:
        # A dict so that the caller's options replace ours rather than sit beside them.
        config = service_config(max_retries, round_robin=self._round_robin)
        options = {**_DEFAULT_OPTIONS, "grpc.service_config": config}
        options.update(self._channel_options)
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.target, options=list(options.items()))
        return grpc.aio.secure_channel(
            self.target, self._credentials, options=list(options.items())
        )

    async def close(self) -> None:
        """Close every channel; calls in flight are cancelled. Safe to repeat."""
        self._closed = True
        stubs, self._stubs = list(self._stubs.values()), {}
        for s in stubs:
            await s.channel.close()
