"""Bearer-token auth: the first interceptor, so a call without a valid key runs nothing.

API keys come from ``MODELWIRE_API_KEYS`` (comma-separated) and ``api_keys_file`` (one
per line, ``#`` comments); admin keys from ``MODELWIRE_ADMIN_KEY`` and
``admin_key_file``. Auth is on when any key is configured. Then every RPC but health
and reflection needs a valid key (else UNAUTHENTICATED), and LoadModel / UnloadModel
need an admin key (PERMISSION_DENIED with an ordinary one); an admin key also works as
an API key. A presented key is hashed and compared with ``hmac.compare_digest`` against
every configured key, always all of them, so the time taken says nothing about which
key, or how much of one, matched.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from modelwire_server.config import ConfigError, ServerConfig
from modelwire_server.errors import ModelwireError, PermissionDenied, Unauthenticated

# Open to all: load balancers and grpcurl must not need a key to see if we are up.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_METHODS = frozenset(
    {"/modelwire.v1.ModelService/LoadModel", "/modelwire.v1.ModelService/UnloadModel"}
)
# How a refused call is answered: the handler it would have run, the call, the refusal.
Refuse = Callable[[grpc.RpcMethodHandler, grpc.HandlerCallDetails, Exception], Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class Role(enum.Enum):
    USER = "user"
    ADMIN = "admin"


# The role of the current call's key (None: auth is off, or the method needs no key).
# Set by the interceptor in the call's own task, so its handler sees it.
caller_role: contextvars.ContextVar[Role | None] = contextvars.ContextVar(
    "caller_role", default=None
)


@dataclass(frozen=True)
class Keys:
    """SHA-256 digests of the configured keys (equal lengths for compare_digest)."""

    api: tuple[bytes, ...] = ()
    admin: tuple[bytes, ...] = ()

    @classmethod
    def from_config(cls, config: ServerConfig) -> Keys:
        api = [*config.api_keys, *read_key_file(config.api_keys_file, "api_keys_file")]
        admin = [config.admin_key] if config.admin_key else []
        admin += read_key_file(config.admin_key_file, "admin_key_file")
        return cls(tuple(map(_digest, api)), tuple(map(_digest, admin)))

    @property
    def enabled(self) -> bool:
        return bool(self.api or self.admin)

    def role_of(self, token: str) -> Role | None:
        digest = _digest(token)
        is_admin, is_user = _matches(digest, self.admin), _matches(digest, self.api)
        return Role.ADMIN if is_admin else Role.USER if is_user else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _matches(digest: bytes, keys: Sequence[bytes]) -> bool:
    found = False
    for key in keys:  # no early exit: every key is compared every time
        found |= hmac.compare_digest(digest, key)
    return found


def read_key_file(path: str | None, what: str) -> list[str]:
    """The keys of a key file: one per line; blank lines and ``#`` comments skipped."""
    if not path:
        return []
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    lines = (line.strip() for line in text.splitlines())
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ConfigError(f"{what} {path} holds no keys")
    return keys


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if the call sent one."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's bearer token before anything else sees the call.

    ``refuse`` turns a refusal into the call's answer; the server passes the request
    interceptor's, so refused calls get a request id, a status and an access log line.
    """

    def __init__(self, keys: Keys, refuse: Refuse) -> None:
        self.keys = keys
        self.refuse = refuse

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        role, refusal = self.check(handler_call_details)
        caller_role.set(role)
        handler = await continuation(handler_call_details)
        if refusal is None or handler is None:
            return handler
        return self.refuse(handler, handler_call_details, refusal)

    def check(self, details: grpc.HandlerCallDetails) -> tuple[Role | None, ModelwireError | None]:
        """The caller's role (None for open methods), and why the call may not go on."""
        if details.method.startswith(OPEN_PREFIXES):
            return None, None
        token = bearer_token(details.invocation_metadata)
        if token is None:
            return None, Unauthenticated(
                "this server needs an API key: send 'authorization: Bearer <key>'"
            )
        role = self.keys.role_of(token)
        if role is None:
            return None, Unauthenticated("the API key is not valid")
        if details.method in ADMIN_METHODS and role is not Role.ADMIN:
            rpc = details.method.rsplit("/", 1)[-1]
            return role, PermissionDenied(f"{rpc} needs the admin key")
        return role, None
